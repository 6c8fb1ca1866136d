"""Search with embeddings, in numpy: exact k-nearest neighbours, the similarity index, retrieval metrics, calibration.

Modules, each importing only those above it in this list (and `siamese_k3.checks`, `.errors`, `.files`,
`.plots`), never keras or a backend, so the answers are the same whichever backend trained the embeddings:

- `kernel`: the one numpy implementation of the distances (`paired_distance`, `pairwise_distance`)
  and of exact kNN search (`exact_search`, `iter_exact_search`), in chunks;
- `faiss_engine`: FAISS's exact, HNSW and IVF indexes, when FAISS is installed;
- `index`: `SimilarityIndex`, a gallery with labels and ids, searched, saved and loaded;
- `evaluation`: distance statistics, verification and retrieval metrics (Musgrave et al. 2020);
- `calibration`: a distance threshold for a target precision or recall, and `match`.

Every public name below imports from here (``from siamese_k3.search import SimilarityIndex``), each
module on first use.
"""

import importlib

_EXPORTS = {
    **dict.fromkeys(("exact_search", "iter_exact_search", "paired_distance", "pairwise_distance"), "kernel"),
    "faiss_available": "faiss_engine",
    **dict.fromkeys(("SimilarityIndex", "SearchResult"), "index"),
    **dict.fromkeys(("distance_statistics", "verification_metrics", "retrieval_metrics", "raw_pixel_baseline"),
                    "evaluation"),
    **dict.fromkeys(("Calibration", "calibrate", "calibrate_embeddings", "match", "labelled_pairs"), "calibration"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"siamese_k3.search.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'siamese_k3.search' has no attribute {name!r}")
