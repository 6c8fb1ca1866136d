"""The one numpy implementation of the embedding distances and of exact k-nearest-neighbour search.

Every numpy consumer of distances goes through here: the retrieval metrics (`siamese_k3.search.evaluation`),
the index's numpy engine (`siamese_k3.search.index`), calibration's pairs and a run's verification pairs.
The distances are those `siamese_k3.distances` computes in `keras.ops` for training:

    d(x, y) = ||x - y||              "euclidean"
    d(x, y) = ||x - y||²             "squared_euclidean"
    d(x, y) = 1 - ⟨x, y⟩ / (||x|| ||y||)   "cosine" (norms clamped at 1e-12)

- `paired_distance`: row i of x against row i of y, [B];
- `pairwise_distance`: every row of x against every row of y, [B, M];

They are the numpy twins of `siamese_k3.distances.paired_distance` and `pairwise_distance` (keras.ops,
tensors in and out): one name per operation, and the module says which arrays it takes.
- `exact_search` / `iter_exact_search`: each query's k nearest gallery rows, by brute force in chunks
  (memory O(chunk · N)), ordered by (distance, index).

float32 inputs compute in float32, anything else in float64. Imports: numpy, `siamese_k3.checks`,
`siamese_k3.errors`; nothing else of the package.
"""

import numpy as np

from siamese_k3.checks import check_distance
from siamese_k3.errors import SiameseK3Error

_NORM_EPSILON = 1e-12
# Scores per chunk of the numpy search ([rows, N] floats, and a [rows, N] mask beside them).
_CHUNK_ELEMENTS = 2**24
_MAX_CHUNK_ROWS = 1024


def as_float_array(array):
    """float32 stays float32 (fast matmul); everything else becomes float64."""
    array = np.asarray(array)
    return array if array.dtype == np.float32 else array.astype(np.float64)


def normalize_rows(x):
    """x / max(||x||, 1e-12) row by row."""
    norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
    return x / np.maximum(norm, _NORM_EPSILON)


def exact_search(queries, gallery, k, distance="euclidean", exclude=None, chunk_size=None):
    """The k nearest gallery rows of every query, by brute force in chunks: (distances, indices), [Q, k] each.

    For query q the result is the k gallery rows y with the smallest d(q, y), ordered by
    (d(q, y), index): equal distances by increasing index. They are ranked by the score

        s(q, y) = ||y||² - 2 ⟨q, y⟩   ("euclidean", "squared_euclidean": d² - ||q||²)
        s(q, y) = -⟨q̂, ŷ⟩             ("cosine": d - 1)

    which orders y as d does, and d is recovered from it (d² = max(s + ||q||², 0)). Queries
    run `chunk_size` rows at a time (default: as many as keep a chunk's [rows, N] scores near
    16 M entries, at most 1024), so memory is O(chunk_size · N); per row only a few more than
    the k smallest scores are sorted, by (score, index) (`_candidates` says how they are found
    without a partition). float32 inputs are ranked in float32, anything else in float64.

    Args:
        queries: [Q, D] array.
        gallery: [N, D] array.
        k: neighbours per query, 1 <= k <= N (N - 1 with `exclude`).
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        exclude: optional [Q] gallery indices, one per query, never returned for it (leave-one-out:
            the query's own row when the queries are the gallery).

    Example:
        >>> exact_search([[0.0, 0.0]], [[3.0, 4.0], [1.0, 0.0]], k=1)  # -> ([[1.0]], [[1]])
    """
    queries, gallery = _common_float(queries, gallery)
    check_k(k, len(gallery) - (exclude is not None), "gallery")
    distances = [np.empty((0, int(k)), gallery.dtype)]
    indices = [np.empty((0, int(k)), np.int64)]
    for _, chunk_distances, chunk_indices in iter_exact_search(queries, gallery, k, distance, exclude, chunk_size):
        distances.append(chunk_distances)
        indices.append(chunk_indices)
    return np.concatenate(distances), np.concatenate(indices)


def iter_exact_search(queries, gallery, k, distance="euclidean", exclude=None, chunk_size=None):
    """`exact_search` chunk by chunk: yields (rows, distances, indices) for each chunk of queries.

    `k` may be one number or one per query ([Q]); a chunk's width is the largest k among its
    rows (`rows`: the chunk's query numbers), so callers that need a different depth per query
    (R in `siamese_k3.evaluation.retrieval_metrics`) never sort more than each chunk needs.
    """
    check_distance(distance)
    queries, gallery = _common_float(queries, gallery)
    check_same_dimension(queries, gallery)
    depths = np.broadcast_to(np.asarray(k, dtype=np.int64), (len(queries),))
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
        if exclude.shape != (len(queries),):
            raise SiameseK3Error(f"exclude has {exclude.size} entries for {len(queries)} queries: give one per query.")
    if len(queries):
        check_k(int(depths.max()), len(gallery) - (exclude is not None), "gallery")
        check_k(int(depths.min()), len(gallery), "gallery")
    matrix = prepare_gallery(gallery, distance)
    return search_chunks(matrix, *prepare_queries(queries, distance), depths, distance, exclude, chunk_size)


def prepare_gallery(gallery, distance):
    """matrix [D + 1, N] with s(q, y) = [q, 1] @ matrix[:, y]: the last row adds ||y||² within the product."""
    if distance == "cosine":
        normalized = normalize_rows(gallery)
        return np.vstack([-normalized.T, np.zeros((1, len(gallery)), gallery.dtype)])
    return np.vstack([-2.0 * gallery.T, np.sum(gallery * gallery, axis=1)[None, :]])


def prepare_queries(queries, distance):
    """The queries with a column of ones, shape (Q, D + 1), and ||q||², shape (Q, 1) (zeros for cosine), for `search_chunks`."""
    if distance == "cosine":
        queries = normalize_rows(queries)
        norms = np.zeros((len(queries), 1), queries.dtype)
    else:
        norms = np.sum(queries * queries, axis=1, keepdims=True)
    return np.hstack([queries, np.ones((len(queries), 1), queries.dtype)]), norms


def search_chunks(matrix, queries, norms, depths, distance, exclude, chunk_size):
    count = matrix.shape[1]
    rows_per_chunk = int(chunk_size) if chunk_size else max(1, min(_MAX_CHUNK_ROWS, _CHUNK_ELEMENTS // max(count, 1)))
    for start in range(0, len(queries), rows_per_chunk):
        stop = min(start + rows_per_chunk, len(queries))
        scores = queries[start:stop] @ matrix
        if exclude is not None:
            scores[np.arange(stop - start), exclude[start:stop]] = np.inf  # never among the k: k <= N - 1
        neighbours, top_scores = _smallest(scores, int(depths[start:stop].max()))
        yield np.arange(start, stop), _distances(top_scores, norms[start:stop], distance), neighbours


def _smallest(scores, depth):
    """(column indices, scores) [Q, depth] of each row's `depth` smallest scores, sorted by (score, index)."""
    if depth >= scores.shape[1]:
        order = np.argsort(scores, axis=1, kind="stable")[:, :depth]
        return order, np.take_along_axis(scores, order, axis=1)
    indices, values = _candidates(scores, depth)
    if values.dtype == np.float32 and scores.shape[1] < 2**32 - 1:
        return _sorted_float32(indices, values, depth)
    order = np.argsort(values, axis=1, kind="stable")[:, :depth]  # candidates are in index order
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(values, order, axis=1)


def _candidates(scores, depth):
    """(indices, scores) [Q, W], W >= depth, in index order: each item scoring at most its row's depth-th smallest.

    The depth-th smallest score of a row is bounded from above by an order statistic of a
    strided sample of its columns (3 standard deviations beyond the expected rank), and every
    score at or below the bound is kept: a comparison and a scan, cheaper than a partition.
    Rows where the bound keeps fewer than depth items take the exact depth-th smallest score
    (`np.partition`). Ties of the depth-th score are all kept, so sorting the candidates by
    (score, index) gives the lowest indices among them. Rows shorter than W are padded with
    index -1, score inf.
    """
    bound = _sampled_bound(scores, depth)
    if bound is None:
        bound = np.partition(scores, depth - 1, axis=1)[:, depth - 1 : depth]
    kept = scores <= bound
    counts = np.count_nonzero(kept, axis=1)
    short = np.flatnonzero(counts < depth)
    if short.size:
        bound[short] = np.partition(scores[short], depth - 1, axis=1)[:, depth - 1 : depth]
        kept[short] = scores[short] <= bound[short]
        counts[short] = np.count_nonzero(kept[short], axis=1)
    indices = np.empty((len(scores), int(counts.max())), np.int64)
    values = np.empty(indices.shape, scores.dtype)
    for row, count in enumerate(counts):  # row by row: each stays in cache
        columns = np.flatnonzero(kept[row])
        indices[row, :count], indices[row, count:] = columns, -1
        values[row, :count], values[row, count:] = scores[row, columns], np.inf
    return indices, values


_SAMPLE_COLUMNS = 2048


def _sampled_bound(scores, depth):
    """[Q, 1] scores likely above each row's depth-th smallest (see `_candidates`), or None for small rows."""
    step = scores.shape[1] // _SAMPLE_COLUMNS
    if step < 4:
        return None
    sample = scores[:, ::step]
    share = depth / scores.shape[1]
    rank = int(np.ceil(sample.shape[1] * share + 3.0 * np.sqrt(sample.shape[1] * share * (1.0 - share)) + 2.0))
    if rank >= sample.shape[1]:
        return None
    return np.partition(sample, rank, axis=1)[:, rank : rank + 1]


_SIGN = np.uint32(2**31)
_ALL = np.uint32(2**32 - 1)


def _sorted_float32(indices, values, depth):
    """The `depth` first (indices, values) of each row by (value, index), with one sort of uint64 keys.

    The bits of a float32, with the sign bit flipped for a positive one and every bit flipped
    for a negative one, compare as unsigned integers as the floats do; above the index in a
    uint64 (padding, index -1, becomes 2³² - 1), one quicksort (vectorised in numpy 2) orders
    by (value, index), and the value comes back from the key's high half.
    """
    bits = (values + np.float32(0.0)).view(np.uint32)  # + 0: -0.0 becomes +0.0, as equal to it as floats say
    bits ^= np.where(bits >= _SIGN, _ALL, _SIGN)
    keys = bits.astype(np.uint64)
    keys <<= np.uint64(32)
    keys |= indices.view(np.uint64) & np.uint64(_ALL)
    keys.sort(axis=1)
    keys = keys[:, :depth]
    bits = (keys >> np.uint64(32)).astype(np.uint32)
    bits ^= np.where(bits >= _SIGN, _SIGN, _ALL)
    return (keys & np.uint64(_ALL)).astype(np.int64), bits.view(np.float32)


def _distances(top_scores, norms, distance):
    """d from the scores s of `prepare_gallery`: 1 + s (cosine), max(s + ||q||², 0) and its root."""
    if distance == "cosine":
        return 1.0 + top_scores
    squared = np.maximum(top_scores + norms, 0.0)
    return np.sqrt(squared) if distance == "euclidean" else squared


def paired_distance(x, y, distance="euclidean"):
    """Distance between row i of `x` and row i of `y`, shape [B] (numpy; `siamese_k3.distances.paired_distance`'s twin)."""
    check_distance(distance)
    x, y = as_float_array(x), as_float_array(y)
    if distance == "cosine":
        return 1.0 - np.sum(normalize_rows(x) * normalize_rows(y), axis=-1)
    squared = np.sum((x - y) ** 2, axis=-1)
    return squared if distance == "squared_euclidean" else np.sqrt(squared)


def pairwise_distance(x, y=None, distance="euclidean"):
    """Distance between every row of `x` [B, D] and every row of `y` [M, D] (default `x`): [B, M].

    - ``"squared_euclidean"``: ||x - y||², expanded as ||x||² - 2 ⟨x, y⟩ + ||y||²,
      clamped at 0;
    - ``"euclidean"``: its square root;
    - ``"cosine"``: 1 - ⟨x, y⟩ / (||x|| ||y||), norms clamped at 1e-12.

    float32 inputs compute in float32, anything else in float64. When `y`
    is omitted the diagonal is exactly 0.
    """
    check_distance(distance)
    x = as_float_array(x)
    same = y is None
    y = x if same else as_float_array(y)
    if distance == "cosine":
        result = 1.0 - normalize_rows(x) @ normalize_rows(y).T
    else:
        result = np.sum(x * x, axis=1)[:, None] - 2.0 * (x @ y.T) + np.sum(y * y, axis=1)[None, :]
        np.maximum(result, 0.0, out=result)
    if same:
        np.fill_diagonal(result, 0.0)
    return np.sqrt(result) if distance == "euclidean" else result


# --- checks --------------------------------------------------------------------------------


def _common_float(queries, gallery):
    queries, gallery = as_float_array(queries), as_float_array(gallery)
    if queries.ndim != 2 or gallery.ndim != 2:
        raise SiameseK3Error(
            f"queries and gallery must be [Q, D] and [N, D] arrays; got shapes {queries.shape} and {gallery.shape}."
        )
    if queries.dtype != gallery.dtype:
        queries, gallery = queries.astype(np.float64), gallery.astype(np.float64)
    if not (np.all(np.isfinite(queries)) and np.all(np.isfinite(gallery))):
        raise SiameseK3Error("queries or gallery hold NaN or inf: check the model's outputs.")
    return queries, gallery


def finite_matrix(array, name):
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype.kind not in "iuf":
        raise SiameseK3Error(
            f"{name} must be a numeric [N, D] array (one row per item); got shape {array.shape}, dtype {array.dtype}"
            + (": for one vector, pass vector[None]." if array.ndim == 1 else ".")
        )
    if not np.all(np.isfinite(array)):
        raise SiameseK3Error(f"{name} hold NaN or inf: check the model's outputs.")
    return array


def check_same_dimension(array, reference, what="queries"):
    if array.shape[1] != reference.shape[1]:
        raise SiameseK3Error(
            f"{what} have {array.shape[1]} dimensions but the gallery's embeddings have {reference.shape[1]}: "
            "embed them with the model that built the index."
        )


def check_k(k, available, what):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SiameseK3Error(f"k={k!r} is not a number of neighbours: expected an integer >= 1.")
    if k > available:
        raise SiameseK3Error(
            f"k={k} but the {what} holds only {available} candidate items: ask for at most k={available}, "
            "or add more items."
        )
    return int(k)
