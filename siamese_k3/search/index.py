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
  `siamese_k3.search.kernel`'s exact search: numpy, queries in chunks, memory O(chunk · N).
- ``"hnsw"``: FAISS `IndexHNSWFlat`, a navigable small-world graph (params ``M``,
  ``ef_construction``, ``ef_search``; a larger ``ef_search`` is slower and finds more of the
  true neighbours). Approximate.
- ``"ivf"``: FAISS `IndexIVFFlat`, k-means cells of which ``nprobe`` of ``nlist`` are
  scanned per query (``nlist`` defaults to round(√N), ``nprobe`` to max(1, nlist / 16)).
  Approximate; for large galleries, where HNSW's graph takes too long to build.

Distances are those of `siamese_k3.distances` (d(q, y) = ||q - y||, ||q - y||² or
1 - ⟨q, y⟩ / (||q|| ||y||)) and every result is in the index's own distance (FAISS's own
metrics are converted back: `siamese_k3.search.faiss_engine`).

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
from siamese_k3.search import faiss_engine
from siamese_k3.search.kernel import check_k, check_same_dimension, finite_matrix, prepare_gallery, prepare_queries, search_chunks

METHODS = ("exact", "hnsw", "ivf")
ENGINES = ("auto", "numpy", "faiss")
DEFAULT_PARAMS = {
    "exact": {"chunk_size": None},
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 64},
    "ivf": {"nlist": None, "nprobe": None, "train_size": None},
}
FORMAT = "siamese_k3.index/1"
INDEX_FILES = ("index.json", "vectors.npy", "items.json", "faiss.index")


class SearchResult(NamedTuple):
    """Each query's k neighbours: arrays of shape [Q, k]."""

    distances: np.ndarray  # float32, in the index's distance; inf where nothing was found
    indices: np.ndarray  # int64 positions in the gallery (add order); -1 where nothing was found
    labels: object  # the neighbours' labels, or None when the index has no labels
    ids: object  # object array of the neighbours' ids, or None when the index has no ids


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
        self.engine = faiss_engine.resolve_engine(self.method, check_choice(engine, ENGINES, "engine"))
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
        embeddings = finite_matrix(embeddings, "embeddings")
        if self._vectors is not None:
            check_same_dimension(embeddings, self._vectors, what="embeddings")
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
            self._faiss.add(faiss_engine.faiss_vectors(embeddings, self.distance))
        return self

    def search(self, queries, k=10):
        """Each query's `k` nearest items: a `SearchResult` of [Q, k] arrays (see the module docstring for order)."""
        if not len(self):
            raise SiameseK3Error("The index is empty: add embeddings (index.add(embeddings, labels)) before searching.")
        queries = finite_matrix(queries, "queries")
        check_same_dimension(queries, self._vectors, what="queries")
        k = check_k(k, len(self), "index")
        queries = queries.astype(np.float32)
        if self.engine == "numpy":
            distances, indices = self._numpy_search(queries, k)
        else:
            distances, indices = self._faiss_search(queries, k)
        labels, ids = self._gather_labels(indices), self._gather_ids(indices)
        return SearchResult(distances.astype(np.float32), indices, labels, ids)

    def _numpy_search(self, queries, k):
        if self._prepared is None:
            self._prepared = prepare_gallery(self._vectors, self.distance)
        depths = np.full(len(queries), k)
        chunks = list(search_chunks(self._prepared, *prepare_queries(queries, self.distance), depths,
                                     self.distance, None, self.params.get("chunk_size")))  # fmt: skip
        return np.concatenate([chunk[1] for chunk in chunks]), np.concatenate([chunk[2] for chunk in chunks])

    def _faiss_search(self, queries, k):
        faiss_index = self._built()
        if self.method == "hnsw":
            faiss_index.hnsw.efSearch = max(int(self.params["ef_search"]), k)
        elif self.method == "ivf":
            faiss_index.nprobe = min(faiss_engine.nprobe(self.params, faiss_index.nlist), faiss_index.nlist)
        fetch = min(k + 1, len(self)) if self.method == "exact" else k  # one more: a tie at the k-th place shows
        raw_distances, indices = faiss_index.search(faiss_engine.faiss_vectors(queries, self.distance), fetch)
        distances = faiss_engine.from_faiss(raw_distances, self.distance)
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
            self._faiss = faiss_engine.build_faiss(self._vectors, self.distance, self.method, self.params)
            if self.method == "ivf":  # what "auto" became, saved with the index
                nlist = self._faiss.nlist
                self.params.update(nlist=nlist, nprobe=faiss_engine.nprobe(self.params, nlist),
                                   train_size=min(len(self), faiss_engine.train_size(self.params, nlist)))  # fmt: skip
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
                faiss_engine.import_faiss(self.method).write_index(self._built(), os.path.join(partial, faiss_file))
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
            faiss = faiss_engine.import_faiss(index.method)
            stored = faiss.read_index(os.path.join(folder, metadata["faiss_index"]))
            index._faiss = stored if stored.ntotal == len(vectors) else None  # else rebuilt on the first search
        return index

    def __repr__(self):
        return (f"SimilarityIndex(distance={self.distance!r}, method={self.method!r}, engine={self.engine!r}, "
                f"items={len(self)}, dim={self.dim})")  # fmt: skip


# --- checks --------------------------------------------------------------------------------


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
