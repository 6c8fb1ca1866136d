"""siamese_k3.metrics: the active-triplet fraction as a Keras metric, against brute force."""

import itertools

import keras
import numpy as np
import pytest

from siamese_k3 import TripletBatchAllLoss, backbones
from siamese_k3.metrics import FractionPositiveTriplets


def brute_force_fraction(embeddings, labels, margin):
    """#{(a, p, n) valid with d(a,p) - d(a,n) + m > 0} / #{valid}, euclidean, by explicit loops."""
    embeddings = np.asarray(embeddings, np.float64)
    distance = lambda i, j: np.linalg.norm(embeddings[i] - embeddings[j])  # noqa: E731
    valid = positive = 0
    for a, p, n in itertools.permutations(range(len(labels)), 3):
        if labels[a] == labels[p] and labels[a] != labels[n]:
            valid += 1
            positive += distance(a, p) - distance(a, n) + margin > 0
    return positive / valid


def test_logged_as_the_mean_over_batches(rng):
    images = rng.normal(size=(24, 6)).astype("float32")
    labels = np.arange(24) % 3
    model = backbones.mnist_dense((6,), embedding_dim=4)
    model.compile(optimizer="adam", loss=TripletBatchAllLoss(margin=0.5), metrics=[FractionPositiveTriplets(margin=0.5)])
    result = model.evaluate(images, labels, batch_size=12, verbose=0, return_dict=True)
    embeddings = model.predict(images, verbose=0)
    expected = np.mean([brute_force_fraction(embeddings[rows], labels[rows], 0.5) for rows in (slice(0, 12), slice(12, 24))])
    assert result["fraction_positive_triplets"] == pytest.approx(expected, abs=1e-5)


def test_config_round_trip():
    metric = FractionPositiveTriplets(margin=0.3, distance="cosine", normalize=True)
    again = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert isinstance(again, FractionPositiveTriplets) and again.get_config() == metric.get_config()
