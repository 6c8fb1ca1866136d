"""Toy data the tests train on: a 10-class Fashion-MNIST look-alike written as the IDX files the loader reads."""

import os

import numpy as np

from siamese_k3.data import write_idx
from siamese_k3.data.datasets import IDX_FILES

# The short CLI training most tests use: 2 epochs of 6 steps on 8-d embeddings.
TINY = ["--epochs", "2", "--steps-per-epoch", "6", "--batch-size", "32", "--classes-per-batch", "4", "--embedding-dim", "8", "--quiet"]
# What the resume and overwrite tests train (tests/test_training*.py): 3 epochs of 3 steps, 40 validation images,
# no PNGs (a resumed run is compared by its history, metrics and weights; matplotlib took 2-3 s of a toy run,
# a third of it on torch; TINY's runs, `finished_run` among them, draw them).
COMMON = ["--steps-per-epoch", "3", "--batch-size", "16", "--classes-per-batch", "4", "--embedding-dim", "8",
          "--validation-size", "40", "--quiet", "--no-plots"]
SMALL = ["--epochs", "3", *COMMON]


def write_clustered_idx(directory, train=240, test=120, seed=0):
    """A 10-class toy Fashion-MNIST (`clustered_arrays`) written as its four IDX files; the arrays."""
    arrays = clustered_arrays(train, test, seed)
    os.makedirs(directory, exist_ok=True)
    for key, stem in IDX_FILES.items():
        write_idx(os.path.join(directory, stem + ".gz"), arrays[key])
    return arrays


def clustered_arrays(train=240, test=120, seed=0):
    """{x_train, y_train, x_test, y_test}: each of 10 classes a fixed random 28×28 pattern plus noise."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, (10, 28, 28))
    arrays = {}
    for split, count in (("train", train), ("test", test)):
        labels = np.arange(count) % 10
        images = np.clip(prototypes[labels] + rng.normal(0, 60, (count, 28, 28)), 0, 255)
        arrays[f"x_{split}"] = images.astype(np.uint8)
        arrays[f"y_{split}"] = labels.astype(np.uint8)
    return arrays
