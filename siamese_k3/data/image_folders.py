"""Paired image folders (the Totally-Looks-Like layout) as a stream of triplets.

Layout::

    DIRECTORY/
        left/   a.jpg  b.jpg  ...
        right/  a.jpg  b.jpg  ...

The files sharing a name in `left/` and `right/` form a pair. Seed 004 (the
keras.io "Siamese network with custom training loop" example) trains a
ResNet50 on such folders: anchor = a left image, positive = its right partner,
negative = any other image of either folder.
"""

import os
import warnings

import keras
import numpy as np
from PIL import Image, ImageOps

from siamese_k3.checks import check_integer, check_seed
from siamese_k3.errors import SiameseK3Error

SIDES = ("left", "right")
_LAYOUT = "expected DIRECTORY/left/NAME and DIRECTORY/right/NAME, one pair per shared file name"
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# Random streams, keyed [seed, stream, epoch or 0, batch index or group start].
_TRAINING_STREAM, _EVALUATION_STREAM = 0, 1


def load_image(path, target_shape=(200, 200), grayscale=False):
    """One image file as a float32 array [H, W, 3] of raw 0-255 RGB pixels ([H, W] if grayscale).

    The one rule by which siamese_k3 reads image files (embeddings, similarity,
    search, the index and the paired-folder datasets), in this order:

    1. EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): a photo
       reads upright, as image viewers show it.
    2. Every mode becomes 8 bits per channel:

       - 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) and 32-bit
         integer (``I``) images: each value v becomes round(v / 257), clipped to
         [0, 255] (so 0 -> 0 and 65535 -> 255; a value written as v * 257 reads
         as v);
       - bilevel (``1``), palette (``P``), ``CMYK``, ``YCbCr`` and the others
         PIL knows: PIL's own conversion (CMYK: R = (255 - C)(255 - K) / 255, ...);
       - with transparency (``LA``, ``RGBA``, ``PA``, a palette with a transparent
         entry): composited over white, c' = round(c · a / 255 + 255 · (1 - a / 255));
       - 32-bit float (``F``) images are refused: their range is unknown.
    3. The 8-bit image is made RGB (grey replicated to the three channels) or,
       with `grayscale` (models whose input shape is [H, W]), grey by PIL's ITU-R
       601-2 luma, L = (299 R + 587 G + 114 B) / 1000.
    4. It is resized (bilinear, aspect ratio not kept) to `target_shape` =
       (height, width); ``target_shape=None`` keeps its own size.

    Raises `SiameseK3Error` naming the file when it is missing, a folder, or
    not an image PIL can read.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise SiameseK3Error(f"{path} is a folder, not an image file: give the image files in it.")
    if not os.path.isfile(path):
        raise SiameseK3Error(f"Image file not found: {path}.")
    try:
        with Image.open(path) as image:
            image = _eight_bit(ImageOps.exif_transpose(image), path).convert("L" if grayscale else "RGB")
            if target_shape is not None:
                height, width = _check_target_shape(target_shape)
                if image.size != (width, height):
                    image = image.resize((width, height), Image.BILINEAR)
            return np.asarray(image, dtype=np.float32)
    except _PIL_ERRORS as error:
        raise SiameseK3Error(
            f"Cannot read the image {path}: {error}. Replace or delete the file."
        ) from error


_WIDE_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _eight_bit(image, path):
    """`image` (any PIL mode) as an 8-bit L or RGB image, by step 2 of `load_image`'s rule."""
    mode = image.mode
    if mode in _WIDE_INTEGER_MODES:
        values = np.asarray(image).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8))
    if mode == "F":
        raise SiameseK3Error(
            f"{path} is a 32-bit float image (mode F), whose pixel range is unknown: save it as an 8- or 16-bit image."
        )
    if mode in ("P", "PA") and (mode == "PA" or "transparency" in image.info):
        image, mode = image.convert("RGBA"), "RGBA"
    elif mode in ("La", "RGBa"):  # premultiplied alpha
        mode = "LA" if mode == "La" else "RGBA"
        image = image.convert(mode)
    if mode in ("LA", "RGBA"):
        values = np.asarray(image).astype(np.float64)
        alpha = values[..., -1:] / 255.0
        composite = np.rint(values[..., :-1] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        return Image.fromarray(composite[..., 0] if mode == "LA" else composite)
    return image if mode in ("L", "RGB") else image.convert("RGB")


def _check_target_shape(target_shape):
    try:
        height, width = (int(size) for size in target_shape)
    except (TypeError, ValueError):
        raise SiameseK3Error(
            f"target_shape must be (height, width), two positive integers; got {target_shape!r}."
        ) from None
    if height < 1 or width < 1:
        raise SiameseK3Error(f"target_shape must be positive; got {target_shape!r}.")
    return height, width


def _list_images(folder):
    """Visible regular files in `folder`, by name (hidden files such as .DS_Store skipped)."""
    return {
        entry.name
        for entry in os.scandir(folder)
        if entry.is_file() and not entry.name.startswith(".")
    }


def _check_readable(path):
    try:
        with Image.open(path) as image:
            image.verify()
    except _PIL_ERRORS as error:
        raise SiameseK3Error(
            f"{path} is not a readable image ({error}). Every file in left/ and right/ must be "
            "an image: replace or delete it."
        ) from error


def _named(names, limit=5):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def find_pairs(directory, skip_unpaired=False, verify=True):
    """Sorted names of the files present in both `directory/left` and `directory/right`.

    Raises `SiameseK3Error` for a missing or empty folder, a file without a partner
    (unless `skip_unpaired`, which warns and skips it) or, with `verify`, a file PIL
    cannot read (checked with ``Image.verify()``: headers and, for PNG, checksums).
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise SiameseK3Error(f"Image folder not found: {directory} ({_LAYOUT}).")
    listed = {}
    for side in SIDES:
        folder = os.path.join(directory, side)
        if not os.path.isdir(folder):
            raise SiameseK3Error(f"Missing folder {folder}: {_LAYOUT}.")
        listed[side] = _list_images(folder)
        if not listed[side]:
            raise SiameseK3Error(f"The folder {folder} has no image files: {_LAYOUT}.")
    details = []
    for side, other in (SIDES, SIDES[::-1]):
        unpaired = listed[side] - listed[other]
        if unpaired:
            details.append(
                f"{os.path.join(directory, side)}: {_named(unpaired)} (no file of that name "
                f"in {os.path.join(directory, other)})"
            )
    if details and not skip_unpaired:
        raise SiameseK3Error(
            f"Files without a partner: {'; '.join(details)}. Every file needs a partner of the "
            "same name in the other folder: add or remove files, or pass skip_unpaired=True "
            "to skip them."
        )
    if details:
        warnings.warn(f"Skipping files without a partner: {'; '.join(details)}.", stacklevel=3)
    names = sorted(listed["left"] & listed["right"])
    if not names:
        raise SiameseK3Error(f"No pairs in {directory}: no file name is in both left/ and right/.")
    if verify:
        for name in names:
            for side in SIDES:
                _check_readable(os.path.join(directory, side, name))
    return names


def split_pair_names(names, validation_split, subset, seed):
    """The `subset` ("training" or "validation") of `names`, split by a seeded permutation.

    The last ``round(validation_split · N)`` names of the permutation (at least one)
    are the validation subset; the rest are training. Same names and seed → same
    split, so the two subsets are disjoint and cover every name.
    """
    if not 0.0 < float(validation_split) < 1.0:
        raise SiameseK3Error(
            f"validation_split must be between 0 and 1 (exclusive); got {validation_split!r}."
        )
    if subset not in ("training", "validation"):
        raise SiameseK3Error(
            'subset must be "training" or "validation" when validation_split is set; '
            f"got {subset!r}."
        )
    count = len(names)
    validation_count = max(1, int(round(float(validation_split) * count)))
    if validation_count >= count:
        raise SiameseK3Error(
            f"validation_split={validation_split} leaves no training pairs out of {count}."
        )
    order = np.random.default_rng(seed).permutation(count)
    training_count = count - validation_count
    chosen = order[training_count:] if subset == "validation" else order[:training_count]
    return [names[index] for index in sorted(chosen)]


class PairedImageFolders(keras.utils.PyDataset):
    """Triplets from paired folders: ``((anchor, positive, negative),)`` per batch.

    Each item is a 1-tuple holding three float32 arrays [B, H, W, 3] of raw 0-255
    RGB pixels (put the model's preprocessing inside the model), ready for
    ``SiameseModel.fit(PairedImageFolders(...))``:

    - anchor: ``left/NAME``; positive: ``right/NAME``, for the batch's B pair names;
    - negative: for each triplet, an image drawn at random from left/ or right/
      whose name is NOT one of the batch's B pair names (seed 004's rule).

    Pairs are ordered by name, reshuffled each epoch when `shuffle` (by
    `on_epoch_end`); batch `index` of epoch `e` depends only on (seed, e, index),
    so it is the same in any worker and on any rerun. The last incomplete batch
    is dropped (every batch has B triplets, as in the seed); another part of the
    data is dropped after the next shuffle.

    Args:
        directory: folder holding `left/` and `right/`.
        target_shape: (height, width) every image is resized to.
        batch_size: triplets per batch; needs at least ``batch_size + 1`` pairs so
            that negatives exist.
        shuffle: reshuffle the pairs every epoch.
        seed: integer seed for shuffling, negatives and the validation split
            (None: random shuffling and negatives, validation split with seed 0).
        validation_split: fraction of pairs held out; with `subset`, the two
            subsets (built with the same seed) are disjoint sets of pair names.
        subset: ``"training"`` or ``"validation"`` (only with `validation_split`).
        skip_unpaired: warn about and skip files without a partner instead of
            raising.
        verify_images: open every image with ``PIL.Image.verify()`` at construction,
            so a broken file fails now and not in the middle of an epoch.
        **pydataset_kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size``
            for `keras.utils.PyDataset`.
    """

    def __init__(
        self,
        directory,
        target_shape=(200, 200),
        batch_size=32,
        shuffle=True,
        seed=None,
        validation_split=None,
        subset=None,
        skip_unpaired=False,
        verify_images=True,
        **pydataset_kwargs,
    ):
        super().__init__(**pydataset_kwargs)
        self.directory = os.fspath(directory)
        self.target_shape = _check_target_shape(target_shape)
        batch_size = check_integer(batch_size, "batch_size", minimum=1)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = check_seed(seed)
        names = find_pairs(self.directory, skip_unpaired=skip_unpaired, verify=verify_images)
        if validation_split is not None:
            names = split_pair_names(names, validation_split, subset, 0 if seed is None else seed)
        elif subset is not None:
            raise SiameseK3Error(f"subset={subset!r} needs validation_split to be set as well.")
        self.subset = subset
        self.pair_names = names
        if len(names) <= self.batch_size:
            raise SiameseK3Error(
                f"Too few pairs for one batch: {len(names)} pair(s)"
                + (f" in the {subset} subset" if subset else "")
                + f" of {self.directory}, batch_size={self.batch_size}. A batch needs "
                "batch_size pairs plus at least one other pair to draw negatives from: "
                "lower batch_size or add pairs."
            )
        self.epoch = 0
        self._order = self._epoch_order(0)

    @property
    def num_batches(self):
        return len(self.pair_names) // self.batch_size

    def __len__(self):
        return self.num_batches

    def pair_paths(self, name):
        """(left path, right path) of the pair `name`."""
        return tuple(os.path.join(self.directory, side, name) for side in SIDES)

    def set_epoch(self, epoch):
        """Make `epoch` (an int >= 0) the current epoch, as for `ClassBalancedBatches.set_epoch` (resuming)."""
        self.epoch = check_integer(epoch, "epoch")
        self._order = self._epoch_order(self.epoch)

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def _epoch_order(self, epoch):
        if not self.shuffle:
            return np.arange(len(self.pair_names))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.pair_names))

    def _negative_paths(self, batch_names, rng):
        """Seed 004's rule: each negative is a random image of either folder, from a
        pair that is not in `batch_names`."""
        excluded = set(batch_names)
        candidates = [name for name in self.pair_names if name not in excluded]
        chosen = rng.integers(len(candidates), size=len(batch_names))
        sides = rng.integers(2, size=len(batch_names))
        return [
            os.path.join(self.directory, SIDES[side], candidates[index])
            for index, side in zip(chosen, sides)
        ]

    def triplet_paths(self, index, epoch=None):
        """The file paths of batch `index` (of `epoch`, default the current one):
        lists (anchors, positives, negatives)."""
        if not 0 <= index < self.num_batches:
            raise IndexError(f"Batch index {index} out of range [0, {self.num_batches}).")
        epoch = self.epoch if epoch is None else epoch
        order = self._order if epoch == self.epoch else self._epoch_order(epoch)
        positions = order[index * self.batch_size : (index + 1) * self.batch_size]
        names = [self.pair_names[position] for position in positions]
        rng = np.random.default_rng([self.seed, _TRAINING_STREAM, epoch, index])
        anchors, positives = zip(*(self.pair_paths(name) for name in names))
        return list(anchors), list(positives), self._negative_paths(names, rng)

    def _load(self, paths):
        return np.stack([load_image(path, self.target_shape) for path in paths])

    def __getitem__(self, index):
        if index < 0:
            index += self.num_batches
        return (tuple(self._load(paths) for paths in self.triplet_paths(index)),)

    def triplet_arrays(self, max_triplets=None):
        """Every pair once, in name order, as arrays (anchor, positive, negative).

        For evaluation: independent of the epoch and of `shuffle`, the same for a
        given seed. Pairs are grouped in batches of `batch_size` by name order (the
        last group may be smaller) and each group draws its negatives by the batch
        rule. `max_triplets` keeps only the first ones.
        """
        count = len(self.pair_names)
        if max_triplets is not None:
            count = min(int(max_triplets), count)
        paths = ([], [], [])
        for start in range(0, count, self.batch_size):
            names = self.pair_names[start : min(start + self.batch_size, count)]
            rng = np.random.default_rng([self.seed, _EVALUATION_STREAM, 0, start])
            anchors, positives = zip(*(self.pair_paths(name) for name in names))
            negatives = self._negative_paths(names, rng)
            for collected, new in zip(paths, (anchors, positives, negatives)):
                collected.extend(new)
        return tuple(self._load(group) for group in paths)
