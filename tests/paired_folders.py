"""Builds small Totally-Looks-Like style folders of generated images for the tests.

Pair `i` is ``left/pair_XXX.EXT`` and ``right/pair_XXX.EXT``: flat-colour images whose
red channel is ``8·i + 8`` (the pair id) and green channel 40 (left) or 200 (right), so
a decoded pixel tells which file it came from; blue is a gradient so the images are
not trivial.
"""

import numpy as np
from PIL import Image

SIDE_GREEN = {"left": 40, "right": 200}


def pair_name(index, extension="png"):
    return f"pair_{index:03d}.{extension}"


def make_image(index, side, size=(40, 48)):
    height, width = size
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 8 * index + 8
    image[..., 1] = SIDE_GREEN[side]
    image[..., 2] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    return image


def make_paired_folders(root, count=24, size=(40, 48), jpeg_every=4):
    """`count` pairs under `root`/left and `root`/right; every `jpeg_every`-th is a JPEG."""
    for side in ("left", "right"):
        (root / side).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        extension = "jpg" if jpeg_every and index % jpeg_every == jpeg_every - 1 else "png"
        for side in ("left", "right"):
            Image.fromarray(make_image(index, side, size)).save(
                root / side / pair_name(index, extension)
            )
    return root


def pair_ids(images):
    """Pair id of each image of a batch [B, H, W, 3] (from the red channel)."""
    red = np.asarray(images)[:, :, :, 0].mean(axis=(1, 2))
    return np.rint((red - 8) / 8).astype(int)


def sides(images):
    green = np.asarray(images)[:, :, :, 1].mean(axis=(1, 2))
    return np.where(green > 120, "right", "left")
