"""Triplets and verification pairs from labelled images, in numpy.

Two ways to build triplets (anchor, positive, negative), from the two seed
notebooks:

- *offline* (seed 000, Fashion-MNIST): one fixed triplet per consecutive
  pair of items of a class, built once before training
  (`offline_triplet_indices`, `offline_triplets`);
- *random batches* (seed 001, MNIST): fresh random triplets for every batch
  (`random_triplet_indices`, `random_triplet_batch`, `TripletBatches`).

The builders return **indices** into `images`; `take(images, indices)` turns
them into arrays. 60 000 Fashion-MNIST triplets as indices take 1.4 MB; as
float32 images, 565 MB (seed 000 kept float64 images: 1.1 GB).

Randomness comes only from a `seed` (int, None, or a `numpy.random.Generator`).
"""

import keras
import numpy as np

from siamese_k3.checks import check_integer, check_seed
from siamese_k3.errors import SiameseK3Error


def take(images, indices):
    """One array per column of `indices`: ``tuple(images[indices[:, k]] for k ...)``.

    Example:
        >>> anchor, positive, negative = take(images, offline_triplet_indices(labels, seed=0))
    """
    indices = np.asarray(indices)
    return tuple(np.asarray(images)[indices[:, column]] for column in range(indices.shape[1]))


def offline_triplet_indices(labels, seed=None):
    """Seed 000's ``create_triplets`` as indices: int64 [T, 3] of (anchor, positive, negative).

    Classes are the sorted distinct labels c_0 < ... < c_{C-1}. For each class
    c_i, with its items a_0 < a_1 < ... < a_{n-1} in index order, and each
    j = 0 .. n-2 there is one triplet:

        anchor = a_j,  positive = a_{j+1},
        negative = a uniformly random item of class c_{(i + k) mod C},
                   with k uniform in 1 .. C-1.

    Rows are grouped by class (class c_0 first), then by j; T = N - C when
    every class has an item. A class with one item gives no triplet.

    Raises:
        SiameseK3Error: fewer than two classes.
    """
    groups = _ClassGroups(labels)
    rng = np.random.default_rng(seed)
    anchor, positive, negative_class = groups.consecutive_pairs(rng)
    return np.stack([anchor, positive, groups.sample_from(negative_class, rng)], axis=1)


def offline_triplets(images, labels, seed=None):
    """``take(images, offline_triplet_indices(labels, seed))``: (anchor, positive, negative)."""
    return take(images, offline_triplet_indices(labels, seed))


def verification_pair_indices(labels, seed=None):
    """Seed 000's ``create_pairs`` as indices: (pairs int64 [P, 2], is_same float32 [P]).

    For each class and each j as in `offline_triplet_indices`, two rows: the
    positive pair (a_j, a_{j+1}) with is_same = 1 at an even row, then the
    negative pair (a_j, random item of another class) with is_same = 0 at
    the next, odd row (P = 2 (N - C)).
    """
    groups = _ClassGroups(labels)
    rng = np.random.default_rng(seed)
    anchor, positive, negative_class = groups.consecutive_pairs(rng)
    negative = groups.sample_from(negative_class, rng)
    pairs = np.empty((2 * len(anchor), 2), dtype=np.int64)
    pairs[0::2] = np.stack([anchor, positive], axis=1)
    pairs[1::2] = np.stack([anchor, negative], axis=1)
    is_same = np.zeros(len(pairs), dtype=np.float32)
    is_same[0::2] = 1.0
    return pairs, is_same


def verification_pairs(images, labels, seed=None):
    """(left, right, is_same) arrays from `verification_pair_indices(labels, seed)`."""
    pairs, is_same = verification_pair_indices(labels, seed)
    left, right = take(images, pairs)
    return left, right, is_same


def random_triplet_indices(labels, batch_size, seed=None):
    """Seed 001's ``create_batch`` as indices: an int64 array [batch_size, 3].

    For each row, independently:

        anchor   uniform over the items whose class has at least two items,
        positive uniform over the other items of the anchor's class (never the anchor),
        negative uniform over all items of the other classes.

    Raises:
        SiameseK3Error: no class has two items, fewer than two classes, or batch_size < 1.
    """
    return _ClassGroups(labels).random_triplets(batch_size, np.random.default_rng(seed))


def random_triplet_batch(images, labels, batch_size, rng=None):
    """(anchor, positive, negative) arrays: `take` of `random_triplet_indices`, seeded by `rng`."""
    return take(images, random_triplet_indices(labels, batch_size, rng))


class TripletBatches(keras.utils.PyDataset):
    """Seed 001's ``data_generator``: endless random triplet batches, as a PyDataset.

    Item ``index`` of epoch ``epoch`` is ``((anchor, positive, negative),)``,
    three arrays of ``batch_size`` images drawn as in `random_triplet_indices`
    from ``numpy.random.default_rng([seed, epoch, index])``: the same (seed,
    epoch, index) always gives the same batch, in any order and any worker.
    That 1-tuple is what `siamese_k3.SiameseModel.fit` takes (the triplet is
    x, there are no labels). The epoch counter starts at `initial_epoch` and
    advances by one in each `on_epoch_end`; `set_epoch` sets it. How `fit`
    counts epochs, and how a resumed `fit` reads the batches an uninterrupted
    one would: `siamese_k3.data.ClassBalancedBatches`, which counts alike.

    Args:
        images: array [N, ...], given to the model as it is (scale it first).
        labels: array [N].
        batch_size: triplets per batch.
        steps_per_epoch: batches per epoch; default N // batch_size (at least 1), as in seed 001.
        seed: int; None draws one at construction.
        initial_epoch: where the epoch counter starts (default 0): the batches
            are those a sampler started at 0 gives after `initial_epoch` calls of
            `on_epoch_end`. To resume a `fit` at epoch k, pass k.
        **kwargs: `keras.utils.PyDataset` options (workers, use_multiprocessing, max_queue_size).

    Example:
        >>> model.fit(TripletBatches(x_train / 255.0, y_train, batch_size=256, seed=0), epochs=5)
    """

    def __init__(self, images, labels, batch_size=256, steps_per_epoch=None, seed=None, initial_epoch=0, **kwargs):
        super().__init__(**kwargs)
        self.images = np.asarray(images)
        self.groups = _ClassGroups(labels)
        if len(self.images) != len(self.groups.labels):
            raise SiameseK3Error(
                f"TripletBatches: images has {len(self.images)} items but labels has "
                f"{len(self.groups.labels)}; pass one label per image."
            )
        self.batch_size = check_integer(batch_size, "batch_size", minimum=1)
        if steps_per_epoch is None:
            steps_per_epoch = max(1, len(self.images) // self.batch_size)
        self.steps_per_epoch = check_integer(steps_per_epoch, "steps_per_epoch", minimum=1)
        self.seed = check_seed(seed)
        self.epoch = check_integer(initial_epoch, "initial_epoch")

    def __len__(self):
        return self.steps_per_epoch

    def __getitem__(self, index):
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch index {index} out of range [0, {self.steps_per_epoch})")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return (take(self.images, self.groups.random_triplets(self.batch_size, rng)),)

    def set_epoch(self, epoch):
        """Make `epoch` (an int >= 0) the current epoch: the batches from now on are that epoch's."""
        self.epoch = check_integer(epoch, "epoch")

    def on_epoch_end(self):
        self.epoch += 1


class _ClassGroups:
    """Items grouped by class: `order` lists item indices sorted by (class, index)."""

    def __init__(self, labels):
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise SiameseK3Error(
                f"labels must be one label per item, shape [N]; got shape {labels.shape}."
            )
        self.labels = labels
        self.classes, self.class_of, self.counts = np.unique(
            labels, return_inverse=True, return_counts=True
        )
        if len(self.classes) < 2:
            raise SiameseK3Error(
                f"Triplets need items of at least two classes; labels hold {len(self.classes)} "
                f"class(es) ({self.classes.tolist()})."
            )
        self.order = np.argsort(self.class_of, kind="stable")
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        # rank[i]: position of item i among the items of its class.
        self.rank = np.empty(len(labels), dtype=np.int64)
        self.rank[self.order] = np.arange(len(labels)) - np.repeat(self.starts, self.counts)

    def sample_from(self, class_ids, rng):
        """One uniformly random item of each class in `class_ids`."""
        offsets = rng.integers(0, self.counts[class_ids])
        return self.order[self.starts[class_ids] + offsets]

    def consecutive_pairs(self, rng):
        """(a_j, a_{j+1}, random other class) for each class and j, as in seed 000."""
        same_class_next = np.diff(self.class_of[self.order]) == 0
        anchor = self.order[:-1][same_class_next]
        positive = self.order[1:][same_class_next]
        class_count = len(self.classes)
        shift = rng.integers(1, class_count, size=len(anchor))
        return anchor, positive, (self.class_of[anchor] + shift) % class_count

    def random_triplets(self, batch_size, rng):
        batch_size = check_integer(batch_size, "batch_size", minimum=1)
        eligible = np.flatnonzero(self.counts[self.class_of] >= 2)
        if len(eligible) == 0:
            raise SiameseK3Error(
                "Triplets need a class with at least two items; every class has one."
            )
        anchor = eligible[rng.integers(0, len(eligible), size=batch_size)]
        anchor_class = self.class_of[anchor]
        count, start = self.counts[anchor_class], self.starts[anchor_class]
        # Positive: one of the count - 1 other positions of the class, skipping the anchor's.
        slot = rng.integers(0, count - 1)
        slot += slot >= self.rank[anchor]
        positive = self.order[start + slot]
        # Negative: one of the N - count positions of `order` outside the anchor's class block.
        slot = rng.integers(0, len(self.labels) - count)
        slot += np.where(slot >= start, count, 0)
        negative = self.order[slot]
        return np.stack([anchor, positive, negative], axis=1)
