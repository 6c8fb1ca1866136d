"""Issue 31: every entry point of siamese_k3.api (and the index and calibration it hands out) answers bad input with
the documented error types and one clear message (siamese_k3.errors: SiameseK3Error, a ValueError; TypeError only
for a wrong Python type).

A copy of the session's finished run (conftest.py), indexed once, serves every test here."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import siamese_k3
from siamese_k3 import Run
from siamese_k3.search.calibration import Calibration
from siamese_k3.errors import RunFolderError, SiameseK3Error
from siamese_k3.search.index import SimilarityIndex

pytestmark = pytest.mark.backend_independent  # numpy, files and checks: one backend runs it (tests/README.md)


@pytest.fixture(scope="module")
def finished(finished_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    arrays = finished_run.arrays
    shutil.copytree(finished_run.out, root / "run", ignore=shutil.ignore_patterns(".lock"))
    run = Run.open(root / "run")
    Image.fromarray(arrays["x_test"][0]).save(root / "image.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "big.png")
    (root / "folder").mkdir()
    run.build_index(dataset="fashion_mnist:test", engine="numpy")
    return root, run, arrays


def run_without(root, key):
    """A copy of the run whose config.json lacks `key`."""
    copy = root / f"without_{key}"
    if not copy.exists():
        shutil.copytree(root / "run", copy)
        config = json.loads((copy / "config.json").read_text())
        del config[key]
        (copy / "config.json").write_text(json.dumps(config))
    return copy


def nan_images(count, bad):
    images = np.zeros((count, 28, 28), np.float32)
    images[bad, 3, 4] = np.nan
    return images


def full_calibration(**changes):
    fields = dict(threshold=0.5, precision=0.9, recall=0.8, f1=0.85, objective="f1", target=None, num_same=3,
                  num_different=4, thresholds=[0.1, 0.5], precisions=[1.0, 0.9], recalls=[0.2, 0.8],
                  f1s=[0.3, 0.85], distance="euclidean")
    return {**fields, **changes}


# (call(root, run, arrays), exception type, fragment of the message)
BAD_INPUT = {
    "train: a config that is not a TrainConfig": (
        lambda root, run, arrays: siamese_k3.train("strong", out=str(root / "new")), TypeError, "TrainConfig"),
    "train: an unknown option": (
        lambda root, run, arrays: siamese_k3.train(out=str(root / "new"), epoch=2), SiameseK3Error,
        "unknown training option(s) epoch"),
    "train: a non-integer epochs": (
        lambda root, run, arrays: siamese_k3.train(out=str(root / "new"), epochs=1.5), SiameseK3Error,
        "epochs=1.5 must be a positive integer"),
    "Run.open: not a path": (lambda root, run, arrays: Run.open(None), TypeError, "not NoneType"),
    "Run.open: not a run": (lambda root, run, arrays: Run.open(root / "folder"), RunFolderError, "not a run folder"),
    "Run.open: config.json without distance": (
        lambda root, run, arrays: Run.open(run_without(root, "distance")), RunFolderError, "has no 'distance'"),
    "Run.open: config.json without input_shape": (
        lambda root, run, arrays: Run.open(run_without(root, "input_shape")), RunFolderError, "has no 'input_shape'"),
    "embed: the wrong image size": (
        lambda root, run, arrays: run.embed(np.zeros((2, 32, 32))), SiameseK3Error, r"expected [N, 28, 28]"),
    "embed: strings": (
        lambda root, run, arrays: run.embed(np.full((2, 28, 28), "x")), SiameseK3Error, "have dtype <U1"),
    "embed: objects": (
        lambda root, run, arrays: run.embed(np.full((2, 28, 28), None)), SiameseK3Error, "have dtype object"),
    "embed: None": (lambda root, run, arrays: run.embed(None), TypeError, "not NoneType"),
    "embed: NaN pixels": (
        lambda root, run, arrays: run.embed(nan_images(5, [1, 3])), SiameseK3Error,
        "2 of 5 images hold NaN or inf pixels (images 1, 3)"),
    "embed: inf pixels": (
        lambda root, run, arrays: run.embed(np.full((28, 28), np.inf)), SiameseK3Error,
        "1 of 1 images hold NaN or inf pixels (images 0)"),
    "embed: a list mixing a path and an image of the wrong size": (
        lambda root, run, arrays: run.embed([root / "image.png", np.zeros((32, 32))]), SiameseK3Error,
        "image 1 of 2 has shape (32, 32)"),
    "embed: a list with NaN images": (
        lambda root, run, arrays: run.embed([nan_images(1, [0])[0], root / "image.png", nan_images(1, [0])[0]]),
        SiameseK3Error, "2 of 3 images hold NaN or inf pixels (images 0, 2)"),
    "embed: a list with strings": (
        lambda root, run, arrays: run.embed([root / "image.png", np.full((28, 28), "x")]), SiameseK3Error,
        "image 1 of 2 has dtype <U1"),
    "embed: a missing file": (
        lambda root, run, arrays: run.embed([root / "missing.png"]), SiameseK3Error, "not found"),
    "embed: a folder": (
        lambda root, run, arrays: run.embed(root / "folder"), SiameseK3Error, "is a folder, not an image file"),
    "embed: a file of another size": (
        lambda root, run, arrays: run.embed([root / "big.png"]), SiameseK3Error, "this run's model takes 28x28"),
    "similarity: images of two sizes": (
        lambda root, run, arrays: run.similarity(np.zeros((28, 28)), np.zeros((32, 32))), SiameseK3Error,
        "image 1 of 2 has shape (32, 32)"),
    "similarity: a NaN image": (
        lambda root, run, arrays: run.similarity(nan_images(1, [0])[0], arrays["x_test"][0]), SiameseK3Error,
        "(images 0)"),
    "search: k = 0": (lambda root, run, arrays: run.search(arrays["x_test"][:1], k=0), SiameseK3Error, "k=0"),
    "search: k a string": (
        lambda root, run, arrays: run.search(arrays["x_test"][:1], k="3"), SiameseK3Error, "k='3'"),
    "search: more neighbours than the gallery": (
        lambda root, run, arrays: run.search(arrays["x_test"][:1], k=121), SiameseK3Error, "at most k=120"),
    "search: NaN queries": (
        lambda root, run, arrays: run.search(nan_images(2, [0])), SiameseK3Error, "1 of 2 images hold NaN"),
    "images: a folder": (
        lambda root, run, arrays: run.images([str(root / "folder")]), SiameseK3Error, "is a folder"),
    "images: a bad row": (
        lambda root, run, arrays: run.images(["fashion_mnist:test:x"]), SiameseK3Error,
        "neither an image file nor a dataset row"),
    "images: a row past the end": (
        lambda root, run, arrays: run.images(["fashion_mnist:test:120"]), SiameseK3Error, "has 120 rows"),
    "images: not a path": (lambda root, run, arrays: run.images([3]), TypeError, "not int"),
    "SimilarityIndex: an unknown distance": (
        lambda root, run, arrays: SimilarityIndex("manhattan"), SiameseK3Error, "distance='manhattan' is unknown: choose one of euclidean"),
    "SimilarityIndex: an unknown method": (
        lambda root, run, arrays: SimilarityIndex(method="lsh"), SiameseK3Error, "method='lsh' is unknown: choose one of"),
    "SimilarityIndex: params not a dict": (
        lambda root, run, arrays: SimilarityIndex(params=128), TypeError, "params must be a dict"),
    "SimilarityIndex: params of another method": (
        lambda root, run, arrays: SimilarityIndex(params={"nprobe": 3}), SiameseK3Error, "do not apply"),
    "SimilarityIndex.add: one vector": (
        lambda root, run, arrays: SimilarityIndex().add(np.zeros(4)), SiameseK3Error, "pass vector[None]"),
    "SimilarityIndex.add: NaN": (
        lambda root, run, arrays: SimilarityIndex().add(np.full((2, 4), np.nan)), SiameseK3Error, "NaN or inf"),
    "SimilarityIndex.add: ids as one string": (
        lambda root, run, arrays: SimilarityIndex().add(np.zeros((2, 4)), ids="ab"), TypeError,
        "ids must be a list"),
    "SimilarityIndex.add: too few labels": (
        lambda root, run, arrays: SimilarityIndex().add(np.zeros((2, 4)), labels=[1]), SiameseK3Error,
        "1 labels for 2 embeddings"),
    "SimilarityIndex.search: other dimensions": (
        lambda root, run, arrays: SimilarityIndex(engine="numpy").add(np.zeros((2, 4))).search(np.zeros((1, 3))),
        SiameseK3Error, "queries have 3 dimensions"),
    "Calibration: a threshold that is not a number": (
        lambda root, run, arrays: Calibration(**full_calibration(threshold="0.5")), TypeError,
        "threshold must be a number"),
    "Calibration: a NaN threshold": (
        lambda root, run, arrays: Calibration(**full_calibration(threshold=float("nan"))), SiameseK3Error,
        "threshold=nan must be a finite number"),
    "Calibration: a precision above 1": (
        lambda root, run, arrays: Calibration(**full_calibration(precision=1.5)), SiameseK3Error,
        "precision=1.5 must be a finite number in [0, 1]"),
    "Calibration: an unknown objective": (
        lambda root, run, arrays: Calibration(**full_calibration(objective="accuracy")), SiameseK3Error,
        "objective='accuracy' is unknown: choose one of"),
    "Calibration: an unknown distance": (
        lambda root, run, arrays: Calibration(**full_calibration(distance="manhattan")), ValueError,
        "distance='manhattan' is unknown"),
    "Calibration: a negative count": (
        lambda root, run, arrays: Calibration(**full_calibration(num_same=-1)), SiameseK3Error,
        "num_same=-1 must be an integer >= 0"),
    "Calibration: a ragged curve": (
        lambda root, run, arrays: Calibration(**full_calibration(recalls=[0.2])), SiameseK3Error,
        "four 1-d arrays of one length"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_a_documented_error_with_a_clear_message(case, finished):
    root, run, arrays = finished
    call, expected, fragment = BAD_INPUT[case]
    with pytest.raises(Exception) as raised:
        call(root, run, arrays)
    assert type(raised.value) is expected or (expected is ValueError and isinstance(raised.value, ValueError)), (
        f"{type(raised.value).__name__}: {raised.value}"
    )
    assert fragment in str(raised.value) and "\n" not in str(raised.value)
    assert isinstance(raised.value, (SiameseK3Error, TypeError)) or type(raised.value) is ValueError


def test_no_images_give_an_empty_float32_array_of_the_embedding_dimension(finished):
    _, run, _ = finished
    for nothing in (np.zeros((0, 28, 28)), np.zeros((0, 28, 28), np.uint8), []):
        embeddings = run.embed(nothing)
        assert embeddings.shape == (0, 8) and embeddings.dtype == np.float32


def test_a_list_may_mix_paths_and_arrays(finished, tmp_path):
    root, run, arrays = finished
    expected = run.embed(arrays["x_test"][:3])
    np.testing.assert_allclose(run.embed([root / "image.png", arrays["x_test"][1], str(root / "image.png")]),
                               expected[[0, 1, 0]], atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(run.embed(np.array([str(root / "image.png")])), expected[:1], atol=1e-5)
    first = run.similarity(root / "image.png", arrays["x_test"][1])
    second = run.similarity(arrays["x_test"][0], arrays["x_test"][1])
    assert first["euclidean"] == pytest.approx(second["euclidean"], abs=1e-5)


def test_images_may_mix_files_and_dataset_rows(finished):
    root, run, arrays = finished
    pixels, labels = run.images([root / "image.png", "fashion_mnist:test:5"])
    np.testing.assert_array_equal(pixels, arrays["x_test"][[0, 5]])
    assert labels is None  # a file has no label
    pixels, labels = run.images(["fashion_mnist:test:5", "fashion_mnist:test:2"])
    np.testing.assert_array_equal(labels, arrays["y_test"][[5, 2]])


def test_a_16_bit_file_embeds_as_its_8_bit_pixels(finished, tmp_path):
    """Issue 31: embed, similarity and search read files by load_image's rule: v * 257 in 16 bits is v."""
    _, run, arrays = finished
    path = tmp_path / "sixteen.png"
    Image.frombytes("I;16", (28, 28), (arrays["x_test"][2].astype("<u2") * 257).tobytes()).save(path)
    np.testing.assert_allclose(run.embed([path]), run.embed(arrays["x_test"][2:3]), atol=1e-5)
    assert run.search([path], k=1).ids[0][0] == "fashion_mnist:test:2"
