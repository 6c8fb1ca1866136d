"""Using a trained embedding model: embeddings of images (files or arrays), and the distance of two.

Embeddings are always float32 numpy arrays, whatever precision the run trained
in (a ``mixed_bfloat16`` model computes in bfloat16; its outputs are cast).
"""

import os

import keras
import numpy as np

from siamese_k3 import evaluation
from siamese_k3.data import load_image
from siamese_k3.errors import SiameseK3Error
from siamese_k3.files import atomic_path


def load_images(paths, input_shape, resize=True):
    """Image files as one uint8-range float array shaped for a model taking `input_shape` (grey if 2-d).

    With ``resize=False`` an image of another size is refused (`SiameseK3Error` naming it).
    """
    grayscale = len(input_shape) == 2
    if not resize:
        from PIL import Image

        height, width = input_shape[:2]
        for path in paths:
            try:
                with Image.open(path) as image:
                    size = image.size
            except OSError:
                continue  # load_image names an unreadable or missing file
            if size != (width, height):
                raise SiameseK3Error(
                    f"image {os.fspath(path)} is {size[0]}x{size[1]}; this run's model takes {width}x{height} "
                    "images: resize it first (only pairs:DIR runs resize their inputs)."
                )
    return np.stack([load_image(os.fspath(path), tuple(input_shape[:2]), grayscale=grayscale) for path in paths])


def embed(embedding_model, images, input_shape, batch_size=256, verbose=0, resize=True):
    """float32 embeddings of `images`: a list of file paths, or an array of raw 0-255 pixels.

    An array must have the run's `input_shape` per row (a single image may
    omit the batch axis); otherwise `SiameseK3Error` names the shape expected.
    """
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], (str, os.PathLike)):
        images = load_images(images, input_shape, resize=resize)
    images = np.asarray(images)
    if images.shape == tuple(input_shape):
        images = images[None]
    if images.shape[1:] != tuple(input_shape):
        raise SiameseK3Error(
            f"images of shape {images.shape} do not fit this run: expected [N, {', '.join(map(str, input_shape))}] "
            "(raw 0-255 pixels), or image file paths."
        )
    embeddings = embedding_model.predict(images, batch_size=batch_size, verbose=verbose)
    return np.asarray(keras.ops.convert_to_numpy(embeddings)).astype(np.float32)


def similarity(first, second, distance):
    """{distance name: value, "cosine_similarity": value} of two embeddings (1-d float arrays)."""
    first, second = np.asarray(first, np.float32)[None], np.asarray(second, np.float32)[None]
    return {
        distance: float(evaluation.paired_distances(first, second, distance)[0]),
        "cosine_similarity": 1.0 - float(evaluation.paired_distances(first, second, "cosine")[0]),
    }


def save_embeddings(path, embeddings):
    """`embeddings` as float32 .npy at exactly `path` (numpy would add .npy to another name), atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.save(handle, np.asarray(embeddings, np.float32))
    return os.fspath(path)
