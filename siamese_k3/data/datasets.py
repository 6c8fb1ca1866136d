"""Fashion-MNIST and MNIST from local files first, a download last; the IDX file format.

`load_dataset(name)` returns ``(x_train, y_train), (x_test, y_test)`` exactly
as ``keras.datasets.<name>.load_data()`` does (uint8 images [N, 28, 28],
uint8 labels [N]), but looks for the files on disk before downloading
anything. Places, in order (each directory also through its ``<name>/``
sub-folder):

1. the ``data_dir`` argument (the CLI's ``--data-dir``); when it is given, the only place;
2. the directory named by ``$SIAMESE_K3_DATA``;
3. the Keras cache, ``$KERAS_HOME`` or ``~/.keras``: ``datasets/fashion-mnist/``
   (the four .gz files keras downloads) and ``datasets/mnist.npz``;
4. for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist/``, where the
   Debian package ``dataset-fashion-mnist`` installs the four .gz files;
5. ``keras.datasets.<name>.load_data()``, which downloads (``download=True``).

In a directory the dataset is either the four IDX files
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each gzipped, with a
``.gz`` suffix, or not) or one ``<name>.npz`` with the arrays ``x_train``,
``y_train``, ``x_test``, ``y_test`` (keras' ``mnist.npz``).
"""

import gzip
import logging
import os
import zlib

import numpy as np

from siamese_k3.checks import check_choice
from siamese_k3.errors import DatasetFormatError, DatasetNotFoundError, SiameseK3Error

logger = logging.getLogger(__name__)

CLASS_NAMES = {
    "fashion_mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
    "mnist": [str(digit) for digit in range(10)],
}
DATASETS = tuple(CLASS_NAMES)

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
DATA_ENV = "SIAMESE_K3_DATA"
DEBIAN_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
DEBIAN_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}
# Folder names a dataset may go by: ours, then the one keras and Debian use.
FOLDER_NAMES = {"fashion_mnist": ("fashion_mnist", "fashion-mnist"), "mnist": ("mnist",)}

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/).
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path):
    """Read an IDX file (gzipped or not) into a numpy array in native byte order.

    Format: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), a byte with the number of
    dimensions n, n big-endian uint32 sizes, then the data, big-endian, C
    order. Gzip is recognised by its magic bytes, whatever the file's name.

    Raises:
        DatasetFormatError: the file is not IDX, is truncated, or has trailing bytes.

    Example:
        >>> images = read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
        >>> images.shape, images.dtype   # ((10000, 28, 28), dtype('uint8'))
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise SiameseK3Error(f"Cannot read IDX file {path}: {error.strerror or error}.") from error
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise DatasetFormatError(
                f"{path} is a damaged gzip file ({error}); delete it and fetch it again."
            ) from error
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES:
        raise DatasetFormatError(
            f"{path} is not an IDX file: it starts with bytes {raw[:4].hex() or '(empty)'}, "
            "expected 0000, a type byte (08, 09, 0b, 0c, 0d or 0e) and the number of dimensions."
        )
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(
            f"{path} is truncated: its IDX header lists {ndim} dimensions but ends early."
        )
    shape = tuple(int(size) for size in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        state = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise DatasetFormatError(
            f"{path} is {state}: shape {shape} of {dtype.name} needs {expected} data bytes, "
            f"found {len(raw) - header}; delete it and fetch it again."
        )
    array = np.frombuffer(raw, dtype, count=expected // dtype.itemsize, offset=header)
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array):
    """Write `array` as an IDX file, gzipped when `path` ends with ``.gz``; return `path`.

    Supported dtypes: uint8, int8, int16, int32, float32, float64; at least
    one dimension. `read_idx(write_idx(path, array))` equals `array`.
    """
    path = os.fspath(path)
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise SiameseK3Error(
            f"write_idx({path!r}): IDX cannot store dtype {array.dtype}; cast the array to one "
            "of uint8, int8, int16, int32, float32, float64 first."
        )
    if array.ndim < 1 or array.ndim > 255:
        raise SiameseK3Error(
            f"write_idx({path!r}): IDX needs 1 to 255 dimensions, got {array.ndim}."
        )
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + np.ascontiguousarray(array, IDX_DTYPES[code]).tobytes()
    if path.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    with open(path, "wb") as handle:
        handle.write(payload)
    return path


def load_dataset(name, data_dir=None, download=True):
    """``(x_train, y_train), (x_test, y_test)`` of Fashion-MNIST or MNIST, local files first.

    Looks in the places listed in this module's docstring, in that order,
    and returns the first complete copy found.

    Args:
        name: ``"fashion_mnist"`` or ``"mnist"``.
        data_dir: a directory holding the files (or a ``<name>/`` folder with them). When
            given, it is the only place looked in: a folder without the dataset is an error,
            never a silent fall-back to another copy.
        download: when no local copy exists (and no `data_dir` is given), fall back to
            ``keras.datasets.<name>.load_data()``, which downloads.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: images [N, H, W] and labels
        [N] as stored (uint8 for the real files).

    Raises:
        DatasetNotFoundError: nowhere held the dataset; the message lists each place and why.
        DatasetFormatError: a file was found but is corrupt; the message names it.
    """
    name = _check_name(name)
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DatasetNotFoundError(
            f"data_dir {os.fspath(data_dir)!r} is not a directory; pass the folder that holds "
            f"the {name} files ({', '.join(IDX_FILES.values())}, .gz or not, or {name}.npz)."
        )
    looked = []
    for directory in _search_directories(name, data_dir):
        data, reason = _load_directory(directory, name)
        if data is not None:
            logger.info("Loaded %s from %s", name, reason)
            return data
        looked.append(f"{directory} ({reason})")
    if data_dir is not None:
        raise DatasetNotFoundError(
            f"data_dir={os.fspath(data_dir)!r} holds no {name} dataset: looked in {'; '.join(looked)}. "
            f"Put the {name} files there ({', '.join(IDX_FILES.values())}, .gz or not, or {name}.npz), "
            "or leave data_dir out to use the installed copy."
        )
    if download:
        data, reason = _download(name)
        if data is not None:
            return data
        looked.append(reason)
    else:
        looked.append(f"keras.datasets.{name}.load_data() (not tried: download=False)")
    raise DatasetNotFoundError(_not_found_message(name, looked))


def _check_name(name):
    key = str(name).lower().replace("-", "_")
    if key not in CLASS_NAMES:
        check_choice(name, DATASETS, "dataset")
    return key


def _keras_home():
    return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def _search_directories(name, data_dir):
    """Directories to look in, in order, without repeats (only `data_dir`'s when it is given)."""
    if data_dir is not None:
        return [os.fspath(data_dir), *(os.path.join(os.fspath(data_dir), folder) for folder in FOLDER_NAMES[name])]
    bases = []
    if os.environ.get(DATA_ENV):
        bases.append(os.environ[DATA_ENV])
    directories = []
    for base in bases:
        directories.append(base)
        directories.extend(os.path.join(base, folder) for folder in FOLDER_NAMES[name])
    keras_datasets = os.path.join(_keras_home(), "datasets")
    directories.extend(os.path.join(keras_datasets, folder) for folder in FOLDER_NAMES[name])
    directories.append(keras_datasets)
    if name in DEBIAN_DIRS:
        directories.append(DEBIAN_DIRS[name])
    unique = []
    for directory in directories:
        if os.path.normpath(directory) not in map(os.path.normpath, unique):
            unique.append(directory)
    return unique


def _load_directory(directory, name):
    """(data, source) when `directory` holds the dataset, else (None, why not)."""
    if not os.path.isdir(directory):
        return None, "does not exist"
    found, missing = {}, []
    for key, stem in IDX_FILES.items():
        path = _existing(os.path.join(directory, stem + ".gz"), os.path.join(directory, stem))
        if path is None:
            missing.append(stem + "(.gz)")
        else:
            found[key] = path
    if not missing:
        arrays = {key: read_idx(path) for key, path in found.items()}
        return _checked(arrays, found), directory
    for folder in FOLDER_NAMES[name]:
        npz_path = os.path.join(directory, folder + ".npz")
        if os.path.isfile(npz_path):
            return _read_npz(npz_path), npz_path
    npz_names = " or ".join(folder + ".npz" for folder in FOLDER_NAMES[name])
    if found:
        return None, f"incomplete: no {', '.join(missing)}"
    return None, f"no IDX files, no {npz_names}"


def _existing(*paths):
    return next((path for path in paths if os.path.isfile(path)), None)


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in IDX_FILES if key not in archive.files]
            if missing:
                raise DatasetFormatError(
                    f"{path} lacks the array(s) {missing}; it needs {list(IDX_FILES)} "
                    "(the layout of keras' mnist.npz)."
                )
            arrays = {key: archive[key] for key in IDX_FILES}
    except (OSError, ValueError, zlib.error, EOFError) as error:
        raise DatasetFormatError(
            f"{path} is not a readable .npz archive ({error}); delete it and fetch it again."
        ) from error
    return _checked(arrays, dict.fromkeys(IDX_FILES, path))


def _checked(arrays, sources):
    """Images [N, H, W] and labels [N] of equal length, as ``((x, y), (x, y))``."""
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        where = f"{sources[f'x_{split}']} and {sources[f'y_{split}']}"
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetFormatError(
                f"{where} do not fit together: images {images.shape} and labels {labels.shape}, "
                "expected images [N, height, width] and labels [N]; is a file swapped or damaged?"
            )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _download(name):
    """(data, None) from keras.datasets, else (None, why it failed)."""
    try:
        import keras

        return getattr(keras.datasets, name).load_data(), None
    except Exception as error:  # network, proxy, disk: any failure means "not found here"
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        return None, f"keras.datasets.{name}.load_data() (failed: {detail})"


def _not_found_message(name, looked):
    files = ", ".join(stem + ".gz" for stem in IDX_FILES.values())
    ways = []
    if name in DEBIAN_PACKAGES:
        ways.append(f"install the Debian package (apt-get install {DEBIAN_PACKAGES[name]})")
    ways.append(
        f"put {files} (gzipped or not) or {FOLDER_NAMES[name][0]}.npz in a directory and pass "
        f"it as data_dir=DIR or set {DATA_ENV} to it"
    )
    ways.append("or allow the keras.datasets download (download=True, network access)")
    return (
        f"Dataset {name} not found. Looked in: {'; '.join(looked)}. "
        f"To provide it: {'; '.join(ways)}."
    )
