"""A similarity index: a gallery of embeddings, with labels and ids, searched for each query's k nearest.

    index = SimilarityIndex(distance="cosine", method="hnsw")
    index.add(gallery_embeddings, labels=gallery_labels, ids=gallery_paths)
    result = index.search(query_embeddings, k=5)   # distances, indices, labels, ids: [Q, k] each
    index.save("runs/fmnist/index")                # and SimilarityIndex.load("runs/fmnist/index")

Numpy and, optionally, FAISS (``pip install 'siamese_k3[search]'``); never a Keras backend,
so the answers are the same whichever backend trained the embeddings.

Methods (`METHODS`):

- ``"exact"``: every query against every item. FAISS `IndexFlatL2` / `IndexFlatIP` when FAISS
  is installed (``engine="auto"`` or ``"faiss"``); otherwise, or with ``engine="numpy"``,
  `exact_search`: numpy, queries in chunks, memory O(chunk · N).
- ``"hnsw"``: FAISS `IndexHNSWFlat`, a navigable small-world graph (params ``M``,
  ``ef_construction``, ``ef_search``; a larger ``ef_search`` is slower and finds more of the
  true neighbours). Approximate.
- ``"ivf"``: FAISS `IndexIVFFlat`, k-means cells of which ``nprobe`` of ``nlist`` are
  scanned per query (``nlist`` defaults to round(√N), ``nprobe`` to max(1, nlist / 16)).
  Approximate; for large galleries, where HNSW's graph takes too long to build.

Distances are those of `siamese_k3.distances` (d(q, y) = ||q - y||, ||q - y||² or
1 - ⟨q, y⟩ / (||q|| ||y||)) and every result is in the index's own distance. FAISS's L2 metric
returns ||q - y||², of which "euclidean" takes the square root; "cosine" L2-normalises the
vectors (norms clamped at 1e-12) and searches by inner product, d = 1 - ⟨q̂, ŷ⟩.

Order and ties: each query's neighbours come by increasing distance, equal distances by
increasing index (the order items were added in). Exact search gives the same neighbours with
either engine as long as distances differ by more than float32 rounding (FAISS and numpy round
the same sums differently); where FAISS reports a tie at the k-th place, that query is recomputed
with numpy so the lowest indices win there too. An approximate search may find fewer than k
neighbours: the rest have index -1, distance inf, label and id None.

Memory: the index keeps the vectors as float32 (what `save` writes and the numpy engine
searches); FAISS keeps its own copy inside its index, plus HNSW's graph or IVF's cells.
"""

import json
import os
from typing import NamedTuple

import numpy as np

from siamese_k3.checks import check_choice, check_distance
from siamese_k3.errors import SiameseK3Error
from siamese_k3.files import atomic_folder, write_json

METHODS = ("exact", "hnsw", "ivf")
ENGINES = ("auto", "numpy", "faiss")
DEFAULT_PARAMS = {
    "exact": {"chunk_size": None},
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 64},
    "ivf": {"nlist": None, "nprobe": None, "train_size": None},
}
INSTALL_HINT = "pip install 'siamese_k3[search]'"
FORMAT = "siamese_k3.index/1"
INDEX_FILES = ("index.json", "vectors.npy", "items.json", "faiss.index")
_NORM_EPSILON = 1e-12
# Scores per chunk of the numpy search ([rows, N] floats, and a [rows, N] mask beside them).
_CHUNK_ELEMENTS = 2**24
_MAX_CHUNK_ROWS = 1024


class SearchResult(NamedTuple):
    """Each query's k neighbours: arrays of shape [Q, k]."""

    distances: np.ndarray  # float32, in the index's distance; inf where nothing was found
    indices: np.ndarray  # int64 positions in the gallery (add order); -1 where nothing was found
    labels: object  # the neighbours' labels, or None when the index has no labels
    ids: object  # object array of the neighbours' ids, or None when the index has no ids


# --- numpy: exact search in chunks ------------------------------------------------------


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
    _check_k(k, len(gallery) - (exclude is not None), "gallery")
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
    _check_same_dimension(queries, gallery)
    depths = np.broadcast_to(np.asarray(k, dtype=np.int64), (len(queries),))
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
        if exclude.shape != (len(queries),):
            raise SiameseK3Error(f"exclude has {exclude.size} entries for {len(queries)} queries: give one per query.")
    if len(queries):
        _check_k(int(depths.max()), len(gallery) - (exclude is not None), "gallery")
        _check_k(int(depths.min()), len(gallery), "gallery")
    matrix = _prepare_gallery(gallery, distance)
    return _search_chunks(matrix, *_prepare_queries(queries, distance), depths, distance, exclude, chunk_size)


def _prepare_gallery(gallery, distance):
    """matrix [D + 1, N] with s(q, y) = [q, 1] @ matrix[:, y]: the last row adds ||y||² within the product."""
    if distance == "cosine":
        normalized = normalize_rows(gallery)
        return np.vstack([-normalized.T, np.zeros((1, len(gallery)), gallery.dtype)])
    return np.vstack([-2.0 * gallery.T, np.sum(gallery * gallery, axis=1)[None, :]])


def _prepare_queries(queries, distance):
    """([q, 1] [Q, D + 1], ||q||² [Q, 1] or zeros for cosine) for `_search_chunks`."""
    if distance == "cosine":
        queries = normalize_rows(queries)
        norms = np.zeros((len(queries), 1), queries.dtype)
    else:
        norms = np.sum(queries * queries, axis=1, keepdims=True)
    return np.hstack([queries, np.ones((len(queries), 1), queries.dtype)]), norms


def _search_chunks(matrix, queries, norms, depths, distance, exclude, chunk_size):
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
    """d from the scores s of `_prepare_gallery`: 1 + s (cosine), max(s + ||q||², 0) and its root."""
    if distance == "cosine":
        return 1.0 + top_scores
    squared = np.maximum(top_scores + norms, 0.0)
    return np.sqrt(squared) if distance == "euclidean" else squared


# --- the index --------------------------------------------------------------------------


class SimilarityIndex:
    """Embeddings with optional labels and ids, searched with `search`; saved with `save`, read with `load`.

    Args:
        distance: the run's distance, ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        method: ``"exact"``, ``"hnsw"`` or ``"ivf"`` (see the module docstring).
        engine: ``"auto"`` (FAISS when it is installed, numpy otherwise), ``"numpy"`` (exact
            only) or ``"faiss"``.
        params: overrides of `DEFAULT_PARAMS[method]`: exact ``chunk_size`` (numpy), hnsw
            ``M``, ``ef_construction``, ``ef_search``, ivf ``nlist``, ``nprobe``,
            ``train_size`` (k-means sample, default 64 · nlist). ``ef_search`` and ``nprobe``
            are read at every search, so ``index.params["ef_search"] = 128`` applies to the next.
        fingerprint: any string saved with the index (a run's id, a model's hash); `load`
            refuses an index whose fingerprint is not the one it is given.
    """

    def __init__(self, distance="euclidean", method="exact", engine="auto", params=None, fingerprint=None):
        self.distance = check_distance(distance)
        self.method = check_choice(method, METHODS, "method")
        self.engine = _resolve_engine(self.method, check_choice(engine, ENGINES, "engine"))
        if params is not None and not isinstance(params, dict):
            raise TypeError(f"params must be a dict such as {{'ef_search': 128}}, not {type(params).__name__}.")
        unknown = sorted(set(params or {}) - set(DEFAULT_PARAMS[self.method]))
        if unknown:
            raise SiameseK3Error(
                f"params {unknown} do not apply to method={self.method!r}: it takes "
                f"{', '.join(DEFAULT_PARAMS[self.method])}."
            )
        self.params = {**DEFAULT_PARAMS[self.method], **(params or {})}
        self.fingerprint = fingerprint
        self._vectors = None  # float32 [N, D]
        self._labels = None
        self._ids = None
        self._faiss = None  # built on the first search, then kept up to date by `add`
        self._prepared = None  # numpy engine: the gallery prepared once for `_search_chunks`
        self._ids_array = None  # the ids as an object array, for fancy indexing

    def __len__(self):
        return 0 if self._vectors is None else len(self._vectors)

    @property
    def dim(self):
        """The embeddings' dimension, None before the first `add`."""
        return None if self._vectors is None else self._vectors.shape[1]

    @property
    def vectors(self):
        """The gallery as added, float32 [N, D] (read-only)."""
        vectors = np.zeros((0, 0), np.float32) if self._vectors is None else self._vectors.view()
        vectors.flags.writeable = False
        return vectors

    @property
    def labels(self):
        return self._labels

    @property
    def ids(self):
        return None if self._ids is None else list(self._ids)

    def add(self, embeddings, labels=None, ids=None):
        """Append [N, D] embeddings, with one label and/or one id (a path, a row number, any JSON value) each.

        Every call gives labels if the first did, and ids if the first did. Returns the index.
        """
        embeddings = _finite_matrix(embeddings, "embeddings")
        if self._vectors is not None:
            _check_same_dimension(embeddings, self._vectors, what="embeddings")
        labels = _per_item(labels, len(embeddings), "labels", self._labels, first=self._vectors is None)
        ids = _per_item(ids, len(embeddings), "ids", self._ids, first=self._vectors is None)
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self._vectors = embeddings if self._vectors is None else np.concatenate([self._vectors, embeddings])
        if labels is not None:
            self._labels = labels if self._labels is None else np.concatenate([self._labels, labels])
        if ids is not None:
            self._ids = ids if self._ids is None else self._ids + ids
        self._prepared = None
        self._ids_array = None
        if self._faiss is not None:
            self._faiss.add(_faiss_vectors(embeddings, self.distance))
        return self

    def search(self, queries, k=10):
        """Each query's `k` nearest items: a `SearchResult` of [Q, k] arrays (see the module docstring for order)."""
        if not len(self):
            raise SiameseK3Error("The index is empty: add embeddings (index.add(embeddings, labels)) before searching.")
        queries = _finite_matrix(queries, "queries")
        _check_same_dimension(queries, self._vectors, what="queries")
        k = _check_k(k, len(self), "index")
        queries = queries.astype(np.float32)
        if self.engine == "numpy":
            distances, indices = self._numpy_search(queries, k)
        else:
            distances, indices = self._faiss_search(queries, k)
        labels, ids = self._gather_labels(indices), self._gather_ids(indices)
        return SearchResult(distances.astype(np.float32), indices, labels, ids)

    def _numpy_search(self, queries, k):
        if self._prepared is None:
            self._prepared = _prepare_gallery(self._vectors, self.distance)
        depths = np.full(len(queries), k)
        chunks = list(_search_chunks(self._prepared, *_prepare_queries(queries, self.distance), depths,
                                     self.distance, None, self.params.get("chunk_size")))  # fmt: skip
        return np.concatenate([chunk[1] for chunk in chunks]), np.concatenate([chunk[2] for chunk in chunks])

    def _faiss_search(self, queries, k):
        faiss_index = self._built()
        if self.method == "hnsw":
            faiss_index.hnsw.efSearch = max(int(self.params["ef_search"]), k)
        elif self.method == "ivf":
            faiss_index.nprobe = min(_nprobe(self.params, faiss_index.nlist), faiss_index.nlist)
        fetch = min(k + 1, len(self)) if self.method == "exact" else k  # one more: a tie at the k-th place shows
        raw_distances, indices = faiss_index.search(_faiss_vectors(queries, self.distance), fetch)
        distances = _from_faiss(raw_distances, self.distance)
        distances[indices < 0] = np.inf
        order = np.lexsort((indices, distances), axis=-1)
        distances, indices = np.take_along_axis(distances, order, 1), np.take_along_axis(indices, order, 1)
        if fetch > k:
            tied = np.flatnonzero(distances[:, k - 1] == distances[:, k])
            if tied.size:
                distances[tied, :k], indices[tied, :k] = self._numpy_search(queries[tied], k)
        return distances[:, :k], indices[:, :k].astype(np.int64)

    def _built(self):
        if self._faiss is None:
            self._faiss = _build_faiss(self._vectors, self.distance, self.method, self.params)
            if self.method == "ivf":  # what "auto" became, saved with the index
                nlist = self._faiss.nlist
                self.params.update(nlist=nlist, nprobe=_nprobe(self.params, nlist),
                                   train_size=min(len(self), _train_size(self.params, nlist)))  # fmt: skip
        return self._faiss

    def _gather_labels(self, indices):
        if self._labels is None:
            return None
        if np.all(indices >= 0):
            return self._labels[indices]
        labels = np.empty(indices.shape, dtype=object)
        found = indices >= 0
        labels[found] = self._labels[indices[found]]
        return labels

    def _gather_ids(self, indices):
        if self._ids is None:
            return None
        if self._ids_array is None:
            self._ids_array = np.empty(len(self._ids) + 1, dtype=object)  # the last entry: None, for index -1
            for position, item in enumerate(self._ids):
                self._ids_array[position] = item
        return self._ids_array[indices]

    def save(self, folder):
        """Write the index into `folder`: vectors.npy (float32), items.json (labels, ids), index.json, faiss.index.

        The folder is written as one unit: a new folder beside it replaces it whole
        (`siamese_k3.files.atomic_folder`), so a kill leaves the old index or the new one,
        never files of both; a folder holding other files is refused. faiss.index is
        written for "hnsw" and "ivf" (the graph or cells, not rebuilt on `load`); an exact
        index is rebuilt from the vectors.
        Returns `folder`.
        """
        if not len(self):
            raise SiameseK3Error("The index is empty: add embeddings before saving it.")
        folder = os.fspath(folder)
        items = {"labels": None if self._labels is None else self._labels.tolist(), "ids": self._ids}
        try:
            json.dumps(items, default=_json_scalar)
        except (TypeError, ValueError) as error:
            raise SiameseK3Error(
                f"Cannot save the index's labels or ids as JSON ({error}): use strings, numbers, lists or dicts."
            ) from None
        with atomic_folder(folder, INDEX_FILES) as partial:  # one unit: never new vectors beside old items
            np.save(os.path.join(partial, "vectors.npy"), self._vectors)
            write_json(os.path.join(partial, "items.json"), items)
            faiss_file = None
            if self.engine == "faiss" and self.method != "exact":
                faiss_file = "faiss.index"
                _import_faiss(self.method).write_index(self._built(), os.path.join(partial, faiss_file))
            metadata = {"format": FORMAT, "distance": self.distance, "method": self.method, "params": self.params,
                        "fingerprint": self.fingerprint, "count": len(self), "dim": self.dim,
                        "faiss_index": faiss_file}  # fmt: skip
            write_json(os.path.join(partial, "index.json"), metadata)
        return folder

    @classmethod
    def load(cls, folder, fingerprint=None, engine="auto"):
        """The index `save` wrote into `folder`; with `fingerprint`, refuse one saved with another."""
        folder = os.fspath(folder)
        metadata = _read_json(os.path.join(folder, "index.json"), folder)
        if metadata.get("format") != FORMAT:
            raise SiameseK3Error(f"{folder}/index.json is not a siamese_k3 index (format {metadata.get('format')!r}).")
        if fingerprint is not None and metadata.get("fingerprint") != fingerprint:
            raise SiameseK3Error(
                f"The index in {folder} was built for {metadata.get('fingerprint')!r}, not {fingerprint!r}: "
                "rebuild it from this run's embeddings."
            )
        index = cls(metadata["distance"], metadata["method"], engine, metadata["params"], metadata.get("fingerprint"))
        try:
            vectors = np.load(os.path.join(folder, "vectors.npy"))
        except (OSError, ValueError) as error:
            raise SiameseK3Error(f"Cannot read {folder}/vectors.npy ({error}): save the index again.") from None
        items = _read_json(os.path.join(folder, "items.json"), folder)
        if vectors.shape != (metadata["count"], metadata["dim"]):
            raise SiameseK3Error(
                f"{folder}/vectors.npy holds {vectors.shape}, index.json says {metadata['count']} × {metadata['dim']}: "
                "save the index again."
            )
        _check_items(items, metadata["count"], folder)
        index._vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index._labels = None if items["labels"] is None else np.asarray(items["labels"])
        index._ids = items["ids"]
        if index.engine == "faiss" and metadata.get("faiss_index"):
            faiss = _import_faiss(index.method)
            stored = faiss.read_index(os.path.join(folder, metadata["faiss_index"]))
            index._faiss = stored if stored.ntotal == len(vectors) else None  # else rebuilt on the first search
        return index

    def __repr__(self):
        return (f"SimilarityIndex(distance={self.distance!r}, method={self.method!r}, engine={self.engine!r}, "
                f"items={len(self)}, dim={self.dim})")  # fmt: skip


# --- FAISS ------------------------------------------------------------------------------


def faiss_available():
    """True when `import faiss` works (the ``search`` extra)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _import_faiss(method):
    try:
        import faiss
    except ImportError:
        raise SiameseK3Error(
            f"method={method!r} with engine 'faiss' needs FAISS, which is not installed: {INSTALL_HINT}."
        ) from None
    return faiss


def _resolve_engine(method, engine):
    if engine == "numpy" and method != "exact":
        raise SiameseK3Error(
            f"method={method!r} is approximate search, which only FAISS does: use engine='faiss' ({INSTALL_HINT}), "
            "or method='exact' with engine='numpy'."
        )
    if engine == "auto":
        engine = "faiss" if method != "exact" or faiss_available() else "numpy"
    if engine == "faiss":
        _import_faiss(method)
    return engine


def _faiss_vectors(vectors, distance):
    vectors = normalize_rows(vectors.astype(np.float32)) if distance == "cosine" else vectors
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _from_faiss(raw_distances, distance):
    """FAISS's L2 metric gives ||q - y||², its inner product ⟨q̂, ŷ⟩: into the index's distance."""
    if distance == "cosine":
        return 1.0 - raw_distances
    squared = np.maximum(raw_distances, 0.0)
    return np.sqrt(squared) if distance == "euclidean" else squared


def _nprobe(params, nlist):
    return int(params["nprobe"]) if params["nprobe"] else max(1, nlist // 16)


def _train_size(params, nlist):
    return int(params["train_size"]) if params["train_size"] else 64 * nlist


def _build_faiss(vectors, distance, method, params):
    faiss = _import_faiss(method)
    dim = vectors.shape[1]
    metric = faiss.METRIC_INNER_PRODUCT if distance == "cosine" else faiss.METRIC_L2
    data = _faiss_vectors(vectors, distance)
    if method == "exact":
        index = faiss.IndexFlatIP(dim) if distance == "cosine" else faiss.IndexFlatL2(dim)
    elif method == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(params["M"]), metric)
        index.hnsw.efConstruction = int(params["ef_construction"])
    else:
        nlist = int(params["nlist"]) if params["nlist"] else int(round(np.sqrt(len(data))))
        nlist = max(1, min(nlist, len(data)))
        quantizer = faiss.IndexFlatIP(dim) if distance == "cosine" else faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
        index.cp.min_points_per_centroid = 1  # small galleries: no warning, k-means as asked
        train_size = _train_size(params, nlist)
        sample = data
        if len(data) > train_size:
            sample = data[np.sort(np.random.default_rng(0).choice(len(data), train_size, replace=False))]
        index.train(sample)
    index.add(data)
    return index


# --- checks -----------------------------------------------------------------------------


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


def _finite_matrix(array, name):
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype.kind not in "iuf":
        raise SiameseK3Error(
            f"{name} must be a numeric [N, D] array (one row per item); got shape {array.shape}, dtype {array.dtype}"
            + (": for one vector, pass vector[None]." if array.ndim == 1 else ".")
        )
    if not np.all(np.isfinite(array)):
        raise SiameseK3Error(f"{name} hold NaN or inf: check the model's outputs.")
    return array


def _check_same_dimension(array, reference, what="queries"):
    if array.shape[1] != reference.shape[1]:
        raise SiameseK3Error(
            f"{what} have {array.shape[1]} dimensions but the gallery's embeddings have {reference.shape[1]}: "
            "embed them with the model that built the index."
        )


def _check_k(k, available, what):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SiameseK3Error(f"k={k!r} is not a number of neighbours: expected an integer >= 1.")
    if k > available:
        raise SiameseK3Error(
            f"k={k} but the {what} holds only {available} candidate items: ask for at most k={available}, "
            "or add more items."
        )
    return int(k)


def _per_item(values, count, name, existing, first):
    """`values` as a list of `count` entries, or None; labels/ids given on every add or on none."""
    if values is None:
        if not first and existing is not None:
            raise SiameseK3Error(f"The index's items have {name}: give {name} for these embeddings too.")
        return None
    if not first and existing is None:
        raise SiameseK3Error(f"The index's first embeddings came without {name}: add these without {name} too, "
                             f"or rebuild the index with {name} for every item.")  # fmt: skip
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise TypeError(f"{name} must be a list or array with one entry per embedding, not {type(values).__name__}.")
    if name == "labels":
        values = np.asarray(values).reshape(-1)
    else:
        values = values.tolist() if isinstance(values, np.ndarray) else list(values)
    if len(values) != count:
        raise SiameseK3Error(f"{len(values)} {name} for {count} embeddings: give one per row.")
    return values


def _json_scalar(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _check_items(items, count, folder):
    """items.json: {"labels": list or None, "ids": list or None}, each list one entry per vector."""
    if not isinstance(items, dict) or not {"labels", "ids"} <= set(items):
        raise SiameseK3Error(f"{folder}/items.json is damaged (no labels and ids): save the index again.")
    for name in ("labels", "ids"):
        if items[name] is not None and (not isinstance(items[name], list) or len(items[name]) != count):
            size = len(items[name]) if isinstance(items[name], list) else type(items[name]).__name__
            raise SiameseK3Error(
                f"{folder}/items.json holds {size} {name} for {count} vectors: the index is not whole; save it again."
            )


def _read_json(path, folder):
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise SiameseK3Error(
            f"No index in {folder} ({os.path.basename(path)} is missing): build one with "
            "SimilarityIndex(...).add(embeddings, labels).save(folder)."
        ) from None
    except (OSError, ValueError) as error:
        raise SiameseK3Error(f"Cannot read {path} ({error}): save the index again.") from None
