"""Using a trained embedding model: embeddings of images (files or arrays), and the distance of two.

Embeddings are always float32 numpy arrays, whatever precision the run trained
in (a ``mixed_bfloat16`` model computes in bfloat16; its outputs are cast).
"""

import os

import keras
import numpy as np

from siamese_k3.search.kernel import paired_distance
from siamese_k3.data import load_image
from siamese_k3.errors import SiameseK3Error
from siamese_k3.files import atomic_path


def load_images(paths, input_shape, resize=True):
    """Image files as one uint8-range float array shaped for a model taking `input_shape` (grey if 2-d).

    Each file is read by `siamese_k3.data.load_image`'s rule (EXIF orientation,
    16-bit scaled by 1/257, transparency over white, grey or RGB as the model
    takes). With ``resize=False`` an image of another size is refused
    (`SiameseK3Error` naming it).
    """
    grayscale = len(input_shape) == 2
    height, width = input_shape[:2]
    images = []
    for path in paths:
        image = load_image(os.fspath(path), (height, width) if resize else None, grayscale=grayscale)
        if image.shape[:2] != (height, width):
            raise SiameseK3Error(
                f"image {os.fspath(path)} is {image.shape[1]}x{image.shape[0]}; this run's model takes "
                f"{width}x{height} images: resize it first (only pairs:DIR runs resize their inputs)."
            )
        images.append(image)
    return np.stack(images) if images else np.zeros((0, *input_shape), np.float32)


def as_pixels(images, input_shape, resize=True):
    """`images` as one numeric array [N, *input_shape] of raw 0-255 pixels; the checks `embed` makes.

    `images`: image file paths (one, or a list; a 1-d numpy array of strings too),
    an array [N, *input_shape] (or one image without the batch axis), or a list
    mixing paths and single-image arrays. An empty list or array gives an array
    of 0 images. `SiameseK3Error` for a shape that is not the run's, a
    non-numeric array, or NaN / inf pixels (naming which images); `TypeError`
    for something that is neither paths nor an array.
    """
    input_shape = tuple(input_shape)
    if _is_path(images):
        images = [images]
    elif isinstance(images, np.ndarray) and images.ndim == 1 and images.dtype.kind in "USO":
        images = images.tolist()  # a column of paths
    if isinstance(images, (list, tuple)) and any(_is_path(item) or _is_image(item) for item in images):
        pixels = np.stack([_one_image(item, position, len(images), input_shape, resize)
                           for position, item in enumerate(images)])  # fmt: skip
        _check_finite(pixels)
        return pixels
    if images is None or isinstance(images, (dict, set, bytes)):
        raise TypeError(f"images must be image file paths or an array of pixels, not {type(images).__name__}.")
    try:
        pixels = np.asarray(images)
    except ValueError:  # a ragged nested list
        raise SiameseK3Error(
            "images are of different sizes: give an array [N, "
            f"{', '.join(map(str, input_shape))}] (raw 0-255 pixels), or image file paths."
        ) from None
    _check_numeric(pixels, "images have")
    if pixels.size == 0 and pixels.shape[:1] == (0,) and (pixels.ndim == 1 or pixels.shape[1:] == input_shape):
        return np.zeros((0, *input_shape), np.float32)
    if pixels.shape == input_shape:
        pixels = pixels[None]
    if pixels.shape[1:] != input_shape:
        raise SiameseK3Error(
            f"images of shape {pixels.shape} do not fit this run: expected [N, {', '.join(map(str, input_shape))}] "
            "(raw 0-255 pixels), or image file paths."
        )
    _check_finite(pixels)
    return pixels


def embed(embedding_model, images, input_shape, batch_size=256, verbose=0, resize=True):
    """float32 embeddings [N, D] of `images`: file paths, an array of raw 0-255 pixels, or a list of both.

    `images` is checked by `as_pixels` (an array must have the run's
    `input_shape` per row; a single image may omit the batch axis). No images
    (an empty list, an array [0, *input_shape]) give an empty float32 array [0, D].
    """
    pixels = as_pixels(images, input_shape, resize=resize)
    if not len(pixels):
        return np.zeros((0, int(embedding_model.output_shape[-1])), np.float32)
    embeddings = embedding_model.predict(pixels, batch_size=batch_size, verbose=verbose)
    return np.asarray(keras.ops.convert_to_numpy(embeddings)).astype(np.float32)


def _is_path(value):
    return isinstance(value, (str, os.PathLike))


def _is_image(value):
    """An array-like holding one image or more (not a number or a row of a nested list)."""
    return hasattr(value, "shape") and len(value.shape) >= 2


def _one_image(item, position, count, input_shape, resize):
    """Item `position` of a list given to `as_pixels`: a file read by `load_images`, or one image's pixels."""
    if _is_path(item):
        return load_images([item], input_shape, resize=resize)[0]
    pixels = np.asarray(item)
    _check_numeric(pixels, f"image {position} of {count} has")
    if pixels.shape != input_shape:
        raise SiameseK3Error(
            f"image {position} of {count} has shape {pixels.shape}; this run's model takes "
            f"{list(input_shape)} (raw 0-255 pixels, one image), or an image file path."
        )
    return pixels.astype(np.float32)


def _check_numeric(pixels, subject):
    """SiameseK3Error unless `pixels` hold numbers; `subject` starts the message ("images have")."""
    if pixels.dtype.kind not in "iuf":
        raise SiameseK3Error(
            f"{subject} dtype {pixels.dtype}: expected numbers (raw 0-255 pixels), or image file paths."
        )


def _check_finite(pixels):
    """SiameseK3Error naming how many images [N, ...] hold NaN or inf pixels, and which (by position)."""
    if pixels.dtype.kind != "f":
        return
    bad = np.flatnonzero(~np.isfinite(pixels.reshape(len(pixels), -1)).all(axis=1))
    if bad.size:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if bad.size > 10 else "")
        raise SiameseK3Error(
            f"{bad.size} of {len(pixels)} images hold NaN or inf pixels (images {shown}): give finite raw 0-255 pixels."
        )


def similarity(first, second, distance):
    """{distance name: value, "cosine_similarity": value} of two embeddings (1-d float arrays)."""
    first, second = np.asarray(first, np.float32)[None], np.asarray(second, np.float32)[None]
    return {
        distance: float(paired_distance(first, second, distance)[0]),
        "cosine_similarity": 1.0 - float(paired_distance(first, second, "cosine")[0]),
    }


def save_embeddings(path, embeddings):
    """`embeddings` as float32 .npy at exactly `path` (numpy would add .npy to another name), atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.save(handle, np.asarray(embeddings, np.float32))
    return os.fspath(path)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(paths, name="images"):
    """(image files, skipped files) of `paths`, a gallery as `Run.build_index` and ``siamese-k3 index`` take it.

    A file stands for itself. A folder stands for the files with an image suffix
    (`IMAGE_SUFFIXES`, any case) in it and in its subfolders, sorted by path
    (each path is the folder joined with the file's relative path); hidden files
    and folders (``.name``) are left out, and the other files are returned as
    skipped. `SiameseK3Error` when no image file is left; `name` names `paths` in it.
    """
    files, skipped = [], []
    for path in map(os.fspath, paths):
        if not os.path.isdir(path):
            files.append(path)
            continue
        found = []
        for folder, subfolders, names in os.walk(path):
            subfolders[:] = [entry for entry in subfolders if not entry.startswith(".")]
            for entry in names:
                if not entry.startswith("."):
                    found.append(os.path.join(folder, entry))
        for item in sorted(found):
            (files if item.lower().endswith(IMAGE_SUFFIXES) else skipped).append(item)
    if not files:
        raise SiameseK3Error(
            f"{name} {' '.join(map(os.fspath, paths))} holds no image files ({', '.join(IMAGE_SUFFIXES)})."
        )
    return files, skipped
