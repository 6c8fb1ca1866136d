"""siamese_k3.data.datasets: IDX files, the search for Fashion-MNIST / MNIST, its error messages."""

import gzip
import os
import struct

import keras
import numpy as np
import pytest

from siamese_k3.data import datasets
from siamese_k3.data.datasets import (
    CLASS_NAMES,
    IDX_FILES,
    DatasetFormatError,
    DatasetNotFoundError,
    load_dataset,
    read_idx,
    write_idx,
)
from siamese_k3.errors import SiameseK3Error

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real dataset anywhere: empty HOME, no KERAS_HOME/SIAMESE_K3_DATA, a missing Debian dir."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.delenv("SIAMESE_K3_DATA", raising=False)
    monkeypatch.setattr(datasets, "DEBIAN_DIRS", {"fashion_mnist": str(tmp_path / "debian")})
    return tmp_path


def fake_split(seed, train=12, test=6):
    rng = np.random.default_rng(seed)
    return (
        (rng.integers(0, 256, (train, 28, 28), dtype=np.uint8), rng.integers(0, 10, train, dtype=np.uint8)),
        (rng.integers(0, 256, (test, 28, 28), dtype=np.uint8), rng.integers(0, 10, test, dtype=np.uint8)),
    )


def write_split(directory, data, gz=True):
    os.makedirs(directory, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = data
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for key, stem in IDX_FILES.items():
        write_idx(os.path.join(directory, stem + (".gz" if gz else "")), arrays[key])
    return directory


def assert_same_data(loaded, expected):
    for (images, labels), (want_images, want_labels) in zip(loaded, expected):
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
        assert images.dtype == np.uint8 and images.ndim == 3


# --- IDX format -------------------------------------------------------------------------


def test_read_idx_of_a_hand_written_file(tmp_path):
    values = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path = tmp_path / "small-idx2-ubyte"
    path.write_bytes(b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + values.tobytes())
    np.testing.assert_array_equal(read_idx(path), values)


def test_read_idx_big_endian_int32_gzipped(tmp_path):
    values = [1, -2, 70000]
    path = tmp_path / "ints.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x0c\x01" + struct.pack(">I3i", 3, *values)))
    result = read_idx(path)
    np.testing.assert_array_equal(result, values)
    assert result.dtype == np.int32 and result.dtype.isnative


def test_write_idx_header_bytes(tmp_path):
    path = write_idx(tmp_path / "labels-idx1-ubyte", np.array([7, 8, 9], dtype=np.uint8))
    with open(path, "rb") as handle:
        assert handle.read() == b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes([7, 8, 9])


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 5 * 4, dtype=np.uint8).reshape(2, 5, 4),
        np.array([3, 1, 4, 1, 5], dtype=np.uint8),
        np.array([-3, 2], dtype=np.int8),
        np.array([[-30000, 2]], dtype=np.int16),
        np.array([-(2**31), 2**31 - 1], dtype=np.int32),
        np.array([0.5, -1.25], dtype=np.float32),
        np.array([[1e300], [-2.0]], dtype=np.float64),
    ],
    ids=["uint8-3d", "uint8-1d", "int8", "int16", "int32", "float32", "float64"],
)
def test_idx_round_trip(tmp_path, array, suffix):
    path = write_idx(tmp_path / ("data" + suffix), array)
    result = read_idx(path)
    assert result.dtype == array.dtype and result.shape == array.shape
    np.testing.assert_array_equal(result, array)
    result[...] = 0  # writable


def test_gz_file_is_gzip(tmp_path):
    path = write_idx(tmp_path / "a.gz", np.zeros(3, np.uint8))
    with open(path, "rb") as handle:
        assert handle.read(2) == b"\x1f\x8b"


def test_write_idx_rejects_int64(tmp_path):
    with pytest.raises(SiameseK3Error, match="int64"):
        write_idx(tmp_path / "x", np.arange(3))


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_idx_names_the_file(tmp_path, suffix):
    path = str(write_idx(tmp_path / ("images" + suffix), np.zeros((4, 28, 28), np.uint8)))
    with open(path, "rb") as handle:
        raw = handle.read()
    with open(path, "wb") as handle:
        handle.write(raw[: len(raw) // 2])
    with pytest.raises(DatasetFormatError, match=path.replace(".", r"\.")):
        read_idx(path)


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(DatasetFormatError, match="not an IDX file"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(SiameseK3Error, match="nothing-here"):
        read_idx(tmp_path / "nothing-here")


# --- where load_dataset looks -----------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_load_from_data_dir(isolated, gz):
    data = fake_split(0)
    directory = write_split(isolated / "mine", data, gz=gz)
    assert_same_data(load_dataset("fashion_mnist", data_dir=directory, download=False), data)


def test_load_from_data_dir_subfolder(isolated):
    data = fake_split(1)
    write_split(isolated / "mine" / "mnist", data)
    assert_same_data(load_dataset("mnist", data_dir=isolated / "mine", download=False), data)


@pytest.mark.parametrize("subfolder", ["", "fashion_mnist", "fashion-mnist"])
def test_load_from_environment(isolated, monkeypatch, subfolder):
    data = fake_split(2)
    write_split(isolated / "env" / subfolder, data)
    monkeypatch.setenv("SIAMESE_K3_DATA", str(isolated / "env"))
    assert_same_data(load_dataset("fashion_mnist", download=False), data)


def test_data_dir_comes_before_environment(isolated, monkeypatch):
    first, second = fake_split(3), fake_split(4)
    write_split(isolated / "explicit", first)
    write_split(isolated / "env", second)
    monkeypatch.setenv("SIAMESE_K3_DATA", str(isolated / "env"))
    assert_same_data(load_dataset("fashion_mnist", data_dir=isolated / "explicit", download=False), first)
    assert_same_data(load_dataset("fashion_mnist", download=False), second)


def test_load_from_keras_cache(isolated):
    data = fake_split(5)
    write_split(isolated / "home" / ".keras" / "datasets" / "fashion-mnist", data)
    assert_same_data(load_dataset("fashion_mnist", download=False), data)


def test_load_from_keras_home(isolated, monkeypatch):
    data = fake_split(6)
    write_split(isolated / "kh" / "datasets" / "fashion-mnist", data)
    monkeypatch.setenv("KERAS_HOME", str(isolated / "kh"))
    assert_same_data(load_dataset("fashion_mnist", download=False), data)


def test_load_keras_mnist_npz(isolated):
    data = fake_split(7)
    (x_train, y_train), (x_test, y_test) = data
    cache = isolated / "home" / ".keras" / "datasets"
    cache.mkdir(parents=True)
    np.savez(cache / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    assert_same_data(load_dataset("mnist", download=False), data)


def test_load_from_debian_dir(isolated):
    data = fake_split(8)
    write_split(isolated / "debian", data)
    assert_same_data(load_dataset("fashion-mnist", download=False), data)


def test_a_data_dir_without_the_dataset_is_an_error_not_a_fall_back(isolated):
    """Issue 24: --data-dir pointing at an empty folder used to train on the system copy without a word."""
    write_split(isolated / "debian", fake_split(3))  # a copy elsewhere, which must not be used
    (isolated / "mine").mkdir()
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("fashion_mnist", data_dir=isolated / "mine", download=False)
    message = str(caught.value)
    assert f"data_dir={str(isolated / 'mine')!r} holds no fashion_mnist dataset" in message
    assert str(isolated / "debian") not in message and "\n" not in message


def test_download_fallback(isolated, monkeypatch):
    data = fake_split(9)
    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: data)
    assert_same_data(load_dataset("mnist"), data)


# --- when it fails ----------------------------------------------------------------------


def test_not_found_lists_every_place(isolated, monkeypatch):
    monkeypatch.setenv("SIAMESE_K3_DATA", str(isolated / "env"))
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("fashion_mnist", download=False)
    message = str(caught.value)
    assert isinstance(caught.value, SiameseK3Error)
    for place in [
        isolated / "env",
        isolated / "env" / "fashion-mnist",
        isolated / "home" / ".keras" / "datasets" / "fashion-mnist",
        isolated / "debian",
    ]:
        assert str(place) + " (" in message
    assert "does not exist" in message and "download=False" in message
    for advice in ["apt-get install dataset-fashion-mnist", "data_dir=DIR", "SIAMESE_K3_DATA", "train-images-idx3-ubyte"]:
        assert advice in message
    assert "\n" not in message


def test_failed_download_is_reported(isolated, monkeypatch):
    def offline():
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DatasetNotFoundError, match="network unreachable") as caught:
        load_dataset("mnist")
    assert "mnist.npz" in str(caught.value) and "apt-get" not in str(caught.value)


def test_incomplete_directory_is_reported(isolated):
    directory = write_split(isolated / "mine", fake_split(10))
    os.remove(os.path.join(directory, "t10k-labels-idx1-ubyte.gz"))
    with pytest.raises(DatasetNotFoundError, match="incomplete: no t10k-labels-idx1-ubyte"):
        load_dataset("fashion_mnist", data_dir=directory, download=False)


def test_missing_data_dir(isolated):
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        load_dataset("fashion_mnist", data_dir=isolated / "typo", download=False)


def test_corrupt_file_is_named(isolated):
    directory = write_split(isolated / "mine", fake_split(11))
    broken = os.path.join(directory, "train-images-idx3-ubyte.gz")
    with open(broken, "rb") as handle:
        raw = handle.read()
    with open(broken, "wb") as handle:
        handle.write(raw[:-40])
    with pytest.raises(DatasetFormatError, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion_mnist", data_dir=directory, download=False)


def test_labels_that_do_not_fit_the_images(isolated):
    directory = write_split(isolated / "mine", fake_split(12))
    write_idx(os.path.join(directory, "t10k-labels-idx1-ubyte.gz"), np.zeros(5, np.uint8))
    with pytest.raises(DatasetFormatError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion_mnist", data_dir=directory, download=False)


def test_unknown_dataset():
    with pytest.raises(SiameseK3Error, match="cifar10"):
        load_dataset("cifar10")


def test_class_names():
    assert CLASS_NAMES["fashion_mnist"][0] == "T-shirt/top" and CLASS_NAMES["fashion_mnist"][9] == "Ankle boot"
    assert CLASS_NAMES["mnist"] == [str(digit) for digit in range(10)]


@pytest.mark.skipif(not os.path.isdir(DEBIAN_DIR), reason="apt package dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("SIAMESE_K3_DATA", raising=False)
    (x_train, y_train), (x_test, y_test) = load_dataset("fashion_mnist", data_dir=DEBIAN_DIR, download=False)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y_test), np.full(10, 1000))
