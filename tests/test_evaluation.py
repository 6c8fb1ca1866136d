"""siamese_k3.search.evaluation and .kernel's distances against brute-force references written out here with explicit loops."""

import itertools
import math

import numpy as np
import pytest

from siamese_k3.errors import SiameseK3Error
from siamese_k3.search.evaluation import distance_statistics, raw_pixel_baseline, retrieval_metrics, verification_metrics
from siamese_k3.search.kernel import paired_distance, pairwise_distance

from references import reference_distance

pytestmark = pytest.mark.backend_independent  # numpy, files and checks: one backend runs it (tests/README.md)

DISTANCES = ["euclidean", "squared_euclidean", "cosine"]


# --- statistics and distances -----------------------------------------------------------


def test_distance_statistics_like_pandas_describe():
    stats = distance_statistics([4.0, 1.0, 3.0, 2.0])
    expected = {"count": 4, "mean": 2.5, "std": math.sqrt(5 / 3), "min": 1, "25%": 1.75, "50%": 2.5, "75%": 3.25, "max": 4}
    assert list(stats) == list(expected)
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value)


def test_distance_statistics_empty_and_single():
    empty = distance_statistics([])
    assert empty["count"] == 0 and all(math.isnan(empty[key]) for key in empty if key != "count")
    single = distance_statistics([2.0])
    assert single["mean"] == 2.0 and single["max"] == 2.0 and math.isnan(single["std"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("distance", DISTANCES)
def test_pairwise_and_paired_distances(distance, dtype):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 3)).astype(dtype), rng.standard_normal((4, 3)).astype(dtype)
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    result = pairwise_distance(x, y, distance)
    assert result.shape == (5, 4) and result.dtype == dtype
    for i, j in itertools.product(range(5), range(4)):
        assert result[i, j] == pytest.approx(reference_distance(x[i], y[j], distance), abs=tolerance)
    square = pairwise_distance(x, distance=distance)
    assert np.all(np.diag(square) == 0.0)
    assert square[0, 1] == pytest.approx(reference_distance(x[0], x[1], distance), abs=tolerance)
    paired = paired_distance(x[:4], y, distance)
    for i in range(4):
        assert paired[i] == pytest.approx(reference_distance(x[i], y[i], distance), abs=tolerance)


def test_unknown_distance():
    with pytest.raises(ValueError, match="manhattan"):
        pairwise_distance(np.ones((2, 2)), distance="manhattan")


# --- verification -----------------------------------------------------------------------


def verification_data(seed=0, n=60):
    rng = np.random.default_rng(seed)
    is_same = rng.integers(0, 2, n).astype(bool)
    # integer-rounded scores: plenty of ties between same and different pairs
    distances = np.round(rng.normal(2.0, 1.0, n) + np.where(is_same, 0.0, 1.0), 0)
    return distances, is_same


def brute_force_auc(scores, is_same):
    """P(same pair scores higher than a different pair), ties 1/2, over all pairs of pairs."""
    wins = [
        1.0 if same_score > other else 0.5 if same_score == other else 0.0
        for same_score in scores[is_same]
        for other in scores[~is_same]
    ]
    return sum(wins) / len(wins)


def accuracy(distances, is_same, threshold):
    return np.mean([(d < threshold) == same for d, same in zip(distances, is_same)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_verification_metrics_against_brute_force(seed):
    distances, is_same = verification_data(seed)
    result = verification_metrics(distances, is_same, threshold=2.5)
    assert result["accuracy_at_threshold"] == pytest.approx(accuracy(distances, is_same, 2.5))
    values = sorted(set(distances.tolist()))
    candidates = [values[0] - 1, values[-1] + 1] + [(a + b) / 2 for a, b in zip(values, values[1:])]
    best = max(accuracy(distances, is_same, threshold) for threshold in candidates)
    # no threshold at all (not only candidates) does better
    assert best >= max(accuracy(distances, is_same, t) for t in np.linspace(-2, 8, 1001))
    assert result["best_accuracy"] == pytest.approx(best)
    assert accuracy(distances, is_same, result["best_threshold"]) == pytest.approx(best)
    assert result["roc_auc"] == pytest.approx(brute_force_auc(-distances, is_same))
    assert result["positive"] == distance_statistics(distances[is_same])
    assert result["negative"] == distance_statistics(distances[~is_same])


def test_verification_metrics_for_similarities():
    distances, is_same = verification_data(3)
    similarities = 5.0 - distances
    by_distance = verification_metrics(distances, is_same, threshold=2.5)
    by_similarity = verification_metrics(similarities, is_same, threshold=2.5, higher_is_same=True)
    expected = np.mean((similarities > 2.5) == is_same)
    assert by_similarity["accuracy_at_threshold"] == pytest.approx(expected)
    assert by_similarity["best_accuracy"] == pytest.approx(by_distance["best_accuracy"])
    assert by_similarity["best_threshold"] == pytest.approx(5.0 - by_distance["best_threshold"])
    assert by_similarity["roc_auc"] == pytest.approx(brute_force_auc(similarities, is_same))
    assert by_similarity["positive"]["mean"] == pytest.approx(similarities[is_same].mean())


def test_verification_hand_example():
    # same pairs at 0.1 and 0.5, different ones at 0.4 and 0.8: 0.5 loses to 0.4, 3 of 4 comparisons won.
    # Thresholds 0.25 and 0.65 both get 3 of 4 right; 0.25 predicts fewer "same".
    result = verification_metrics([0.1, 0.4, 0.5, 0.8], [1, 0, 1, 0])
    assert result["roc_auc"] == pytest.approx(0.75)
    assert result["best_accuracy"] == 0.75 and result["best_threshold"] == pytest.approx(0.25)
    assert "accuracy_at_threshold" not in result


def test_verification_auc_undefined_with_one_kind():
    assert math.isnan(verification_metrics([1.0, 2.0], [1, 1])["roc_auc"])


def test_verification_length_mismatch():
    with pytest.raises(SiameseK3Error, match="is_same"):
        verification_metrics([1.0, 2.0], [1])


# --- retrieval --------------------------------------------------------------------------


def brute_force_retrieval(embeddings, labels, distance, ks):
    """Musgrave et al. 2020 metrics by explicit loops over queries; ties broken by index."""
    sums = {"precision_at_1": 0.0, "r_precision": 0.0, "map_at_r": 0.0, **{f"recall_at_{k}": 0.0 for k in ks}}
    queries = 0
    for query in range(len(labels)):
        others = [i for i in range(len(labels)) if i != query]
        ranked = sorted(others, key=lambda i: (reference_distance(embeddings[query], embeddings[i], distance), i))
        relevant = [int(labels[i] == labels[query]) for i in ranked]
        r = sum(relevant)
        if r == 0:
            continue
        queries += 1
        sums["precision_at_1"] += relevant[0]
        sums["r_precision"] += sum(relevant[:r]) / r
        sums["map_at_r"] += sum(sum(relevant[: i + 1]) / (i + 1) * relevant[i] for i in range(r)) / r
        for k in ks:
            sums[f"recall_at_{k}"] += float(any(relevant[:k]))
    return {**{key: value / queries for key, value in sums.items()}, "num_queries": queries}


def assert_metrics_equal(result, expected):
    assert set(result) == set(expected)
    for key in expected:
        assert result[key] == pytest.approx(expected[key], abs=1e-12), key


def test_map_at_r_hand_example():
    # 1-D points 0, 1, 2, 3 labelled a, b, a, a. Query 0: b, a, a -> R=2, rel=[0,1]: MAP@R = (0 + 1/2)/2 = 1/4.
    # Query 1 (b): R=0, skipped. Query 2: items 1 and 3 tie at distance 1, index 1 first:
    # rel=[0,1] -> 1/4. Query 3: rel=[1,0] -> (1)/2 = 1/2. Mean: (1/4 + 1/4 + 1/2)/3 = 1/3.
    result = retrieval_metrics(np.array([[0.0], [1.0], [2.0], [3.0]]), ["a", "b", "a", "a"], ks=(1, 2))
    expected = {
        "precision_at_1": 1 / 3,
        "r_precision": 1 / 2,
        "map_at_r": 1 / 3,
        "recall_at_1": 1 / 3,
        "recall_at_2": 1.0,
        "num_queries": 3,
    }
    assert_metrics_equal(result, expected)


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
@pytest.mark.parametrize("distance", DISTANCES)
def test_retrieval_against_brute_force(distance, chunk_size):
    rng = np.random.default_rng(1)
    labels = np.concatenate([rng.integers(0, 4, 45), [9]])  # label 9: a query with R = 0
    embeddings = rng.standard_normal((46, 5)) + labels[:, None] * 0.3
    ks = (1, 3, 10)
    result = retrieval_metrics(embeddings, labels, distance=distance, ks=ks, chunk_size=chunk_size)
    expected = brute_force_retrieval(embeddings, labels, distance, ks)
    assert result["num_queries"] == 45
    assert_metrics_equal(result, expected)


@pytest.mark.parametrize("chunk_size", [1, 5, 100])
@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean"])
def test_retrieval_ties_broken_by_index(distance, chunk_size):
    # Points on a small integer grid: many exact ties, also at the R-th place.
    rng = np.random.default_rng(2)
    embeddings = rng.integers(0, 3, (40, 2)).astype(np.float64)
    labels = rng.integers(0, 3, 40)
    result = retrieval_metrics(embeddings, labels, distance=distance, ks=(1, 2, 4), chunk_size=chunk_size)
    assert_metrics_equal(result, brute_force_retrieval(embeddings, labels, distance, (1, 2, 4)))


def test_retrieval_chunked_equals_unchunked():
    rng = np.random.default_rng(3)
    embeddings = rng.standard_normal((500, 8)).astype(np.float32)
    labels = rng.integers(0, 7, 500)
    whole = retrieval_metrics(embeddings, labels, chunk_size=500)
    for chunk_size in (1, 64, 333):
        assert_metrics_equal(retrieval_metrics(embeddings, labels, chunk_size=chunk_size), whole)


def test_retrieval_k_beyond_the_set():
    embeddings = np.array([[0.0], [1.0], [5.0]])
    result = retrieval_metrics(embeddings, [0, 1, 0], ks=(1, 50))
    assert result["recall_at_50"] == 1.0 and result["num_queries"] == 2


def test_retrieval_all_labels_unique():
    result = retrieval_metrics(np.eye(3), [0, 1, 2])
    assert result["num_queries"] == 0 and math.isnan(result["map_at_r"])


def test_retrieval_rejects_bad_input():
    with pytest.raises(SiameseK3Error, match="one label per row"):
        retrieval_metrics(np.zeros((3, 2)), [0, 1])
    with pytest.raises(SiameseK3Error, match="NaN"):
        retrieval_metrics(np.array([[0.0], [np.nan]]), [0, 0])


def test_raw_pixel_baseline_is_retrieval_on_flat_pixels():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (30, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 3, 30)
    expected = brute_force_retrieval(images.reshape(30, -1) / 255.0, labels, "euclidean", (1, 5))
    result = raw_pixel_baseline(images, labels, ks=(1, 5))
    for key in expected:
        assert result[key] == pytest.approx(expected[key], abs=1e-9)


def brute_force_retrieval_numpy(embeddings, labels, distance, ks, rows_per_block=500):
    """The same metrics for many items: full distance rows, fully sorted by (distance, index), in numpy.

    Independent of siamese_k3: each block of queries gets its whole distance row (‖x‖² + ‖y‖² - 2xy,
    or 1 - cos), its own entry set to inf, and a stable argsort of the entire row (no partition).
    """
    x = np.asarray(embeddings, np.float64)
    if distance == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    norms = (x * x).sum(axis=1)
    sums = {"precision_at_1": 0.0, "r_precision": 0.0, "map_at_r": 0.0, **{f"recall_at_{k}": 0.0 for k in ks}}
    queries = 0
    for start in range(0, len(x), rows_per_block):
        block = np.arange(start, min(start + rows_per_block, len(x)))
        if distance == "cosine":
            rows = 1.0 - x[block] @ x.T
        else:
            rows = np.maximum(norms[block, None] + norms[None, :] - 2.0 * x[block] @ x.T, 0.0)
            rows = np.sqrt(rows) if distance == "euclidean" else rows
        rows[np.arange(len(block)), block] = np.inf
        ranked = np.argsort(rows, axis=1, kind="stable")  # the query itself (inf) last
        r = (labels[None, :] == labels[block][:, None]).sum(axis=1) - 1
        relevant = labels[ranked[:, : max(r.max(), max(ks))]] == labels[block][:, None]
        keep = r > 0
        relevant, r = relevant[keep], r[keep]
        queries += keep.sum()
        positions = np.arange(1, relevant.shape[1] + 1)
        within_r = positions[None, :] <= r[:, None]
        precision_at_i = np.cumsum(relevant, axis=1) / positions
        sums["precision_at_1"] += relevant[:, 0].sum()
        sums["r_precision"] += ((relevant & within_r).sum(axis=1) / r).sum()
        sums["map_at_r"] += ((precision_at_i * (relevant & within_r)).sum(axis=1) / r).sum()
        for k in ks:
            sums[f"recall_at_{k}"] += relevant[:, :k].any(axis=1).sum()
    return {**{key: value / queries for key, value in sums.items()}, "num_queries": int(queries)}


@pytest.mark.parametrize("distance, grid", [("euclidean", True), ("cosine", False)])  # grid: exact ties at scale
def test_retrieval_at_10000_items_equals_brute_force(distance, grid):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 25, 10_000)
    if grid:  # small integers: exact in float64 however summed, so ties are real ties in both
        embeddings = (rng.integers(0, 4, (10_000, 6)) + 2 * (labels[:, None] % 3)).astype(np.float64)
    else:
        embeddings = rng.standard_normal((10_000, 12)) + 0.8 * rng.standard_normal((25, 12))[labels]
    ks = (1, 5, 50)
    result = retrieval_metrics(embeddings, labels, distance=distance, ks=ks, chunk_size=777)
    assert_metrics_equal(result, brute_force_retrieval_numpy(embeddings, labels, distance, ks))
