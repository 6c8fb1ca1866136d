"""FAISS behind `SimilarityIndex`: building its exact, HNSW and IVF indexes and reading their distances back.

FAISS (``pip install 'siamese_k3[search]'``) is optional; `faiss_available` says whether it imports.
Its L2 metric returns ||q - y||², of which "euclidean" takes the square root; "cosine" L2-normalises
the vectors (`siamese_k3.search.kernel.normalize_rows`) and searches by inner product,
d = 1 - ⟨q̂, ŷ⟩. Imports: numpy, faiss (lazily), `siamese_k3.search.kernel`, `siamese_k3.errors`.
"""

import numpy as np

from siamese_k3.errors import SiameseK3Error
from siamese_k3.search.kernel import normalize_rows

INSTALL_HINT = "pip install 'siamese_k3[search]'"


def faiss_available():
    """True when `import faiss` works (the ``search`` extra)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def import_faiss(method):
    try:
        import faiss
    except ImportError:
        raise SiameseK3Error(
            f"method={method!r} with engine 'faiss' needs FAISS, which is not installed: {INSTALL_HINT}."
        ) from None
    return faiss


def resolve_engine(method, engine):
    if engine == "numpy" and method != "exact":
        raise SiameseK3Error(
            f"method={method!r} is approximate search, which only FAISS does: use engine='faiss' ({INSTALL_HINT}), "
            "or method='exact' with engine='numpy'."
        )
    if engine == "auto":
        engine = "faiss" if method != "exact" or faiss_available() else "numpy"
    if engine == "faiss":
        import_faiss(method)
    return engine


def faiss_vectors(vectors, distance):
    vectors = normalize_rows(vectors.astype(np.float32)) if distance == "cosine" else vectors
    return np.ascontiguousarray(vectors, dtype=np.float32)


def from_faiss(raw_distances, distance):
    """FAISS's L2 metric gives ||q - y||², its inner product ⟨q̂, ŷ⟩: into the index's distance."""
    if distance == "cosine":
        return 1.0 - raw_distances
    squared = np.maximum(raw_distances, 0.0)
    return np.sqrt(squared) if distance == "euclidean" else squared


def nprobe(params, nlist):
    return int(params["nprobe"]) if params["nprobe"] else max(1, nlist // 16)


def train_size(params, nlist):
    return int(params["train_size"]) if params["train_size"] else 64 * nlist


def build_faiss(vectors, distance, method, params):
    faiss = import_faiss(method)
    dim = vectors.shape[1]
    metric = faiss.METRIC_INNER_PRODUCT if distance == "cosine" else faiss.METRIC_L2
    data = faiss_vectors(vectors, distance)
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
        sample_size = train_size(params, nlist)
        sample = data
        if len(data) > sample_size:
            sample = data[np.sort(np.random.default_rng(0).choice(len(data), sample_size, replace=False))]
        index.train(sample)
    index.add(data)
    return index
