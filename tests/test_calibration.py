"""siamese_k3.search.calibration against counts written out here, and on held-out data it never saw."""

import itertools
import math

import numpy as np
import pytest

from siamese_k3.search.calibration import (
    Calibration,
    calibrate,
    calibrate_embeddings,
    labelled_pairs,
    match,
    precision_recall_curve,
)
from siamese_k3.errors import SiameseK3Error

pytestmark = pytest.mark.backend_independent  # numpy, files and checks: one backend runs it (tests/README.md)


def scored_pairs(seed, count, rounding=None):
    """Distances of same pairs ~ N(1, 0.4), of different pairs ~ N(2, 0.5); 30% same."""
    rng = np.random.default_rng(seed)
    is_same = rng.random(count) < 0.3
    distances = np.abs(np.where(is_same, rng.normal(1.0, 0.4, count), rng.normal(2.0, 0.5, count)))
    return (np.round(distances, rounding) if rounding is not None else distances), is_same


def counts_at(threshold, distances, is_same):
    """(precision, recall, f1) of "same iff d <= threshold", by counting."""
    true_positive = sum(1 for d, s in zip(distances, is_same) if s and d <= threshold)
    false_positive = sum(1 for d, s in zip(distances, is_same) if not s and d <= threshold)
    false_negative = sum(1 for d, s in zip(distances, is_same) if s and d > threshold)
    precision = true_positive / (true_positive + false_positive) if true_positive + false_positive else 1.0
    recall = true_positive / (true_positive + false_negative)
    f1 = 2 * true_positive / (2 * true_positive + false_positive + false_negative)
    return precision, recall, f1


@pytest.mark.parametrize("rounding", [None, 1])  # 1: many equal distances
def test_curve_against_counting(rounding):
    distances, is_same = scored_pairs(0, 300, rounding)
    thresholds, precision, recall, f1 = precision_recall_curve(distances, is_same)
    np.testing.assert_array_equal(thresholds, np.unique(distances))
    for index, threshold in enumerate(thresholds):
        assert (precision[index], recall[index], f1[index]) == pytest.approx(counts_at(threshold, distances, is_same))


@pytest.mark.parametrize("rounding", [None, 1])
@pytest.mark.parametrize("target", [0.8, 0.9, 0.97])
def test_target_precision_is_the_largest_threshold_reaching_it(target, rounding):
    distances, is_same = scored_pairs(1, 400, rounding)
    calibration = calibrate(distances, is_same, target_precision=target)
    reaching = [t for t in np.unique(distances) if counts_at(t, distances, is_same)[0] >= target]
    assert calibration.threshold == max(reaching)
    precision, recall, f1 = counts_at(calibration.threshold, distances, is_same)
    assert (calibration.precision, calibration.recall, calibration.f1) == pytest.approx((precision, recall, f1))
    assert calibration.objective == "precision" and calibration.target == target
    assert calibration.num_same == is_same.sum() and calibration.num_different == (~is_same).sum()


@pytest.mark.parametrize("target", [0.5, 0.9, 1.0])
def test_target_recall_is_the_smallest_threshold_reaching_it(target):
    distances, is_same = scored_pairs(2, 400, rounding=1)
    calibration = calibrate(distances, is_same, target_recall=target)
    reaching = [t for t in np.unique(distances) if counts_at(t, distances, is_same)[1] >= target]
    assert calibration.threshold == min(reaching) and calibration.recall >= target


def test_best_f1():
    distances, is_same = scored_pairs(3, 400)
    calibration = calibrate(distances, is_same)
    f1s = [counts_at(t, distances, is_same)[2] for t in np.unique(distances)]
    assert calibration.objective == "f1" and calibration.target is None
    assert calibration.f1 == pytest.approx(max(f1s))
    assert calibration.threshold == np.unique(distances)[int(np.argmax(f1s))]


def test_calibrated_precision_holds_on_held_out_data():
    # Embeddings of 40 classes; calibrate on one half of the items, measure on the other half.
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((40, 16))
    labels = rng.integers(0, 40, 4000)
    embeddings = centres[labels] + 0.45 * rng.standard_normal((4000, 16))
    calibration = calibrate_embeddings(embeddings[:2000], labels[:2000], "euclidean", target_precision=0.95,
                                       max_pairs=500_000, seed=0)  # fmt: skip
    held_out, held_out_labels = embeddings[2000:], labels[2000:]
    predicted = same = 0
    for row in range(len(held_out) - 1):  # every pair of the other half, its distance by the formula
        distances = np.sqrt(((held_out[row + 1 :] - held_out[row]) ** 2).sum(axis=1))
        matched = distances <= calibration.threshold
        predicted += matched.sum()
        same += (matched & (held_out_labels[row + 1 :] == held_out_labels[row])).sum()
    precision = same / predicted
    standard_error = math.sqrt(0.95 * 0.05 / predicted)
    assert predicted > 10_000  # a threshold that matches something
    assert precision >= 0.95 - 3 * standard_error, (precision, standard_error)
    assert abs(precision - calibration.precision) < 0.01


def test_labelled_pairs_all_or_sampled():
    embeddings = np.arange(12.0).reshape(6, 2)
    labels = np.array([0, 0, 1, 1, 1, 2])
    distances, is_same = labelled_pairs(embeddings, labels, "squared_euclidean")
    expected = [(float(((embeddings[i] - embeddings[j]) ** 2).sum()), labels[i] == labels[j])
                for i, j in itertools.combinations(range(6), 2)]  # fmt: skip
    assert sorted(zip(distances.tolist(), is_same.tolist())) == sorted(expected)
    distances, is_same = labelled_pairs(embeddings, labels, max_pairs=5, seed=1)
    assert len(distances) == 5 and np.all(distances > 0)  # never an item with itself


def test_match_pairs_and_query_neighbours():
    distances, is_same = scored_pairs(5, 500)
    calibration = calibrate(distances, is_same, target_precision=0.9)
    answer = match([[0.1, calibration.threshold, np.inf], [5.0, 0.0, 1.0]], calibration)
    np.testing.assert_array_equal(answer.is_same, [[True, True, False], [False, True, 1.0 <= calibration.threshold]])
    assert answer.expected_precision == calibration.precision and answer.threshold == calibration.threshold
    assert answer.expected_precision >= 0.9


def test_save_load_json_and_plot(tmp_path):
    distances, is_same = scored_pairs(6, 5000)
    calibration = calibrate(distances, is_same, target_recall=0.8, distance="cosine")
    assert len(calibration.thresholds) <= 1001 and calibration.threshold in calibration.thresholds
    path = calibration.save(tmp_path / "calibration.json")
    loaded = Calibration.load(path)
    assert loaded.threshold == calibration.threshold and loaded.distance == "cosine"
    np.testing.assert_array_equal(loaded.precisions, calibration.precisions)
    assert Calibration.from_json(calibration.to_json()).f1 == calibration.f1
    png = calibration.plot(tmp_path / "calibration.png")
    with open(png, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_errors():
    distances, is_same = scored_pairs(7, 100)
    with pytest.raises(ValueError, match="not both"):
        calibrate(distances, is_same, target_precision=0.9, target_recall=0.9)
    with pytest.raises(ValueError, match="target_precision=1.5"):
        calibrate(distances, is_same, target_precision=1.5)
    with pytest.raises(ValueError, match="best is 0.5"):
        calibrate([1.0, 1.0], [True, False], target_precision=0.9)
    with pytest.raises(ValueError, match="No pair is 'same'"):
        calibrate([1.0, 2.0], [False, False])
    with pytest.raises(ValueError, match="one flag per pair"):
        calibrate([1.0, 2.0], [True])
    with pytest.raises(SiameseK3Error, match="No calibration"):
        Calibration.load("/nonexistent/calibration.json")
