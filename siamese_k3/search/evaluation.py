"""Evaluating embeddings, in numpy: distance statistics, verification, retrieval.

- `verification_metrics`: pairs with a same/different flag and one distance
  (or similarity) each: accuracy at a threshold (seed 000), the best
  threshold, ROC AUC.
- `retrieval_metrics`: every item queries all the others, the protocol of
  Musgrave et al. 2020, "A Metric Learning Reality Check": precision@1,
  R-precision, MAP@R, recall@k; the neighbours come from
  `siamese_k3.index`'s exact search, in chunks.
- `raw_pixel_baseline`: the same retrieval metrics on raw pixels, the number
  a trained embedding has to beat.
"""

import numpy as np

from siamese_k3.checks import check_distance
from siamese_k3.errors import SiameseK3Error
from siamese_k3.search.kernel import as_float_array, iter_exact_search

STATISTICS = ("count", "mean", "std", "min", "25%", "50%", "75%", "max")


def distance_statistics(distances):
    """``pandas.Series(distances).describe()`` as a dict of floats, without pandas.

    Keys: count, mean, std (ddof = 1, as pandas), min, 25%, 50%, 75%, max
    (percentiles by linear interpolation, as pandas). With no values every
    entry but count is NaN; with one value std is NaN.
    """
    values = np.asarray(distances, dtype=np.float64).ravel()
    if values.size == 0:
        return {key: (0.0 if key == "count" else float("nan")) for key in STATISTICS}
    quartiles = np.percentile(values, [25, 50, 75])
    return {
        "count": float(values.size),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else float("nan"),
        "min": float(values.min()),
        "25%": float(quartiles[0]),
        "50%": float(quartiles[1]),
        "75%": float(quartiles[2]),
        "max": float(values.max()),
    }


def verification_metrics(distances, is_same, threshold=None, higher_is_same=False):
    """Same/different verification of pairs scored by a distance (or a similarity).

    With ``higher_is_same=False`` (distances), a pair is predicted "same" iff
    ``distance < threshold`` (seed 000 used 7.0); with ``higher_is_same=True``
    (similarities, e.g. cosine similarity in seeds 003/004) iff
    ``similarity > threshold``.

    Returns a dict:

    - ``positive`` / ``negative``: `distance_statistics` of the scores of the
      same / different pairs (their ``mean`` is the mean similarity of
      anchor-positive vs anchor-negative when scores are similarities);
    - ``accuracy_at_threshold``: only when `threshold` is given;
    - ``best_threshold``, ``best_accuracy``: the highest accuracy over every
      threshold, searched exactly: the candidates are the midpoints between
      consecutive distinct sorted scores plus one threshold below all of them
      and one above (``min - 1`` / ``max + 1``, predicting all "different" or all
      "same"); among equally good thresholds the one that predicts the fewest
      "same" wins;
    - ``roc_auc``: P(score of a same pair is better than that of a different
      pair), ties counting 1/2 (the Mann-Whitney U statistic / (n_same n_diff));
      NaN when either kind of pair is missing.
    """
    scores = np.asarray(distances, dtype=np.float64).ravel()
    same = np.asarray(is_same).ravel().astype(bool)
    if scores.shape != same.shape:
        raise SiameseK3Error(
            f"verification_metrics: {scores.size} distances but {same.size} is_same flags; "
            "pass one flag per pair."
        )
    if not np.all(np.isfinite(scores)):
        raise SiameseK3Error(
            "verification_metrics: distances hold NaN or inf; check the embeddings."
        )
    # Work with "smaller = same" scores; a similarity s becomes -s.
    sign = -1.0 if higher_is_same else 1.0
    ranked = sign * scores
    result = {
        "positive": distance_statistics(scores[same]),
        "negative": distance_statistics(scores[~same]),
    }
    if threshold is not None:
        result["accuracy_at_threshold"] = float(np.mean((ranked < sign * threshold) == same))
    best_threshold, best_accuracy = _best_threshold(ranked, same)
    result["best_threshold"] = sign * best_threshold
    result["best_accuracy"] = best_accuracy
    result["roc_auc"] = _roc_auc(-ranked, same)
    return result


def _best_threshold(scores, same):
    """(threshold, accuracy) maximising mean((scores < threshold) == same)."""
    if scores.size == 0:
        return float("nan"), float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_same = scores[order], same[order]
    # Predicting the k smallest "same":
    # accuracy = (same among them + different among the rest) / n.
    same_below = np.concatenate([[0], np.cumsum(sorted_same)])
    different_above = (~sorted_same).sum() - np.concatenate([[0], np.cumsum(~sorted_same)])
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_scores) > 0) + 1, [scores.size]])
    accuracy = (same_below[cuts] + different_above[cuts]) / scores.size
    best = int(np.argmax(accuracy))
    cut = cuts[best]
    if cut == 0:
        threshold = sorted_scores[0] - 1.0
    elif cut == scores.size:
        threshold = sorted_scores[-1] + 1.0
    else:
        threshold = 0.5 * (sorted_scores[cut - 1] + sorted_scores[cut])
    return float(threshold), float(accuracy[best])


def _roc_auc(scores, positive):
    """Mann-Whitney AUC of `scores` (higher = positive), ties counting 1/2."""
    n_positive, n_negative = int(positive.sum()), int((~positive).sum())
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Average 1-based rank of each tie group.
    starts = np.flatnonzero(np.concatenate([[True], np.diff(sorted_scores) > 0]))
    ends = np.concatenate([starts[1:], [scores.size]])
    ranks = np.empty(scores.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u_statistic = ranks[positive].sum() - n_positive * (n_positive + 1) / 2.0
    return float(u_statistic / (n_positive * n_negative))


def retrieval_metrics(embeddings, labels, distance="euclidean", ks=(1, 5, 10), chunk_size=None):
    """Leave-one-out retrieval, as in Musgrave et al. 2020 "A Metric Learning Reality Check".

    Every item is a query; its references are all the other items (the query
    itself excluded), ranked by increasing `distance`, equal distances by
    increasing index. For a query q with label y_q let R = the number of
    other items labelled y_q and rel(i) = 1 if the i-th ranked reference has
    label y_q, else 0. Then, averaged over the queries with R >= 1 (queries
    whose label is unique are skipped):

    - ``precision_at_1`` = rel(1);
    - ``r_precision``    = (1/R) Σ_{i=1..R} rel(i);
    - ``map_at_r``       = (1/R) Σ_{i=1..R} P(i) rel(i), with P(i) = (1/i) Σ_{j<=i} rel(j);
    - ``recall_at_{k}``  = 1 if some rel(i) = 1 for i <= k, else 0, for each k in `ks`.

    ``num_queries`` is the number of queries averaged over. The neighbours
    come from the similarity index's exact search
    (`siamese_k3.index.iter_exact_search`, numpy): queries run in chunks of
    `chunk_size` rows (default: as many as keep a chunk near 16 M distances,
    at most 1024), so memory is O(chunk_size · N); per chunk only the
    nearest max(R, max ks) references are sorted, by (distance, index). "euclidean" ranks by the squared distance (the
    same order). float32 embeddings are ranked in float32, anything else in
    float64; k beyond N - 1 counts as N - 1.

    Example:
        >>> retrieval_metrics(backbone.predict(x_test), y_test)["map_at_r"]
    """
    check_distance(distance)
    embeddings = as_float_array(embeddings)
    labels = np.asarray(labels).ravel()
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise SiameseK3Error(
            f"retrieval_metrics: embeddings must be [N, D] with one label per row; got embeddings "
            f"{embeddings.shape} and {len(labels)} labels."
        )
    if not np.all(np.isfinite(embeddings)):
        raise SiameseK3Error(
            "retrieval_metrics: embeddings hold NaN or inf; check the model's outputs."
        )
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks) or (chunk_size is not None and int(chunk_size) < 1):
        raise SiameseK3Error(
            f"retrieval_metrics: ks and chunk_size must be positive, got {ks}, {chunk_size}."
        )
    _, class_of, counts = np.unique(labels, return_inverse=True, return_counts=True)
    relevant = counts[class_of] - 1  # R of each query
    keys = ["precision_at_1", "r_precision", "map_at_r"] + [f"recall_at_{k}" for k in ks]
    totals = dict.fromkeys(keys, 0.0)
    queries = np.flatnonzero(relevant > 0)
    depths = np.minimum(np.maximum(relevant[queries], max(ks)), len(labels) - 1)
    chunks = iter_exact_search(embeddings[queries], embeddings, depths, distance, exclude=queries, chunk_size=chunk_size)
    for rows, _, neighbours in chunks:
        chunk = queries[rows]
        _accumulate(totals, class_of[neighbours] == class_of[chunk][:, None], relevant[chunk], ks)
    count = len(queries)
    result = {key: float(value) / count if count else float("nan") for key, value in totals.items()}
    result["num_queries"] = count
    return result


def _accumulate(totals, hits, relevant, ks):
    """Add the chunk's per-query metrics (hits [Q, depth] of 0/1, R [Q]) to `totals`."""
    depth = hits.shape[1]
    positions = np.arange(1, depth + 1)
    within_r = positions[None, :] <= relevant[:, None]
    hits_within_r = hits & within_r
    precision_at_i = np.cumsum(hits, axis=1) / positions
    totals["precision_at_1"] += hits[:, 0].sum()
    totals["r_precision"] += (hits_within_r.sum(axis=1) / relevant).sum()
    totals["map_at_r"] += ((precision_at_i * hits_within_r).sum(axis=1) / relevant).sum()
    for k in ks:
        totals[f"recall_at_{k}"] += hits[:, : min(k, depth)].any(axis=1).sum()


def raw_pixel_baseline(images, labels, **kwargs):
    """`retrieval_metrics` on raw pixels: images [N, ...] as float32 [N, prod(...)] / 255.

    The score an embedding must beat; on the Fashion-MNIST test split
    (euclidean) it is precision@1 = 0.809, MAP@R = 0.301. `kwargs` go to
    `retrieval_metrics` (distance, ks, chunk_size).
    """
    images = np.asarray(images)
    pixels = images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)
    return retrieval_metrics(pixels, labels, **kwargs)
