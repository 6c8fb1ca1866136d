"""Similarity search: the exact search in chunks against a brute-force sort, and FAISS's approximate HNSW and IVF.

    python -m benchmarks.tools.search --sizes 100000,1000000

Data: synthetic clustered vectors, `--dim` dimensions: `--clusters` centres drawn from
N(0, I), each vector a centre plus N(0, `--spread`² I) noise; the `--queries` queries are
drawn the same way (same centres, other noise). For every gallery size N:

- ``brute force (numpy sort)``: each query's whole distance row (‖q‖² + ‖y‖² - 2 q·y) sorted
  by a stable `np.argsort`: the reference, run on the first `--brute-force-queries` queries;
- ``exact, numpy chunks``: `siamese_k3.search.exact_search`, what `retrieval_metrics` and
  ``SimilarityIndex(engine="numpy")`` run (argpartition per chunk of queries);
- ``exact, faiss flat``: ``SimilarityIndex(method="exact", engine="faiss")`` (`IndexFlatL2`);
- ``hnsw`` / ``ivf``: ``SimilarityIndex(method=..., engine="faiss")`` with the library's
  defaults; `--hnsw-ef-search` and `--ivf-nprobe` take lists of values, each timed on the same
  build (a row each).

Figures: build seconds (adding the gallery, training IVF's k-means, building HNSW's graph;
FAISS indexes are built by the first search, timed apart), queries/s (all queries in one
`search` call, the best of `--repeats`), recall@k against the exact neighbours (the share of
each query's true k nearest that were returned), "= brute force": the share of queries whose k
neighbours are exactly the brute force's, in order; memory: what building and searching added to
the process's peak resident set (freed heap memory handed back first), and the saved index's
size (the vectors, plus FAISS's graph or cells for HNSW and IVF). Every library with its default
threads (FAISS: OpenMP, one per core; numpy: its BLAS's).

Then `retrieval_metrics` (leave-one-out retrieval metrics) on `--retrieval-items` items of
`--retrieval-classes` classes (the same generator, noise `--retrieval-spread`), timed.

With `--embeddings GALLERY.npy --query-embeddings QUERIES.npy --labels LABELS.npy` the data is a
trained run's instead (for example the Fashion-MNIST train split as the gallery and the test split
as queries, written by `Run.embed`), and `retrieval_metrics` runs on the gallery with its labels.
"""

import argparse
import ctypes
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks import launcher, measure


def clustered_vectors(count, dim, clusters, spread, seed, centres_seed=0):
    """float32 [count, dim]: centres ~ N(0, I) (from `centres_seed`) plus N(0, spread² I) noise; and the labels."""
    centres = np.random.default_rng(centres_seed).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, count)
    vectors = centres[labels]
    vectors += np.float32(spread) * rng.standard_normal((count, dim), dtype=np.float32)
    return vectors, labels


def brute_force(queries, gallery, k, block=64):
    """Each query's k nearest by a stable sort of its whole squared-distance row (the reference)."""
    norms = np.sum(gallery * gallery, axis=1)
    found = []
    for start in range(0, len(queries), block):
        chunk = queries[start : start + block]
        rows = np.sum(chunk * chunk, axis=1)[:, None] + norms[None, :] - 2.0 * chunk @ gallery.T
        found.append(np.argsort(rows, axis=1, kind="stable")[:, :k])
    return np.concatenate(found)


def recall_at_k(found, exact):
    return float(np.mean([len(set(row) & set(true)) / len(true) for row, true in zip(found, exact)]))


def _trimmed_rss_mib():
    """The resident set after handing freed heap memory back to the OS (glibc), so a peak above it is new memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return _rss_mib()


def _rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _folder_mib(folder):
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)) / 2**20


def _best_seconds(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


SEARCH_KNOBS = {"hnsw": "ef_search", "ivf": "nprobe"}  # read at every search: one build, several settings


def _index_rows(args, size, gallery, queries, exact, reference, row):
    from siamese_k3.search import SimilarityIndex, faiss_available

    rows = []
    for method in args.methods.split(","):
        label = "exact, faiss flat" if method == "exact" else method
        if not faiss_available():
            rows.append(dict(row, search=label, skipped="faiss not installed: pip install 'siamese_k3[search]'"))
            continue
        settings = {"hnsw": args.hnsw_ef_search, "ivf": args.ivf_nprobe}.get(method)
        settings = [int(value) for value in settings.split(",")] if settings else [None]
        memory = measure.Memory(None, on_gpu=False)
        before = _trimmed_rss_mib()
        memory.start()
        start = time.perf_counter()
        index = SimilarityIndex("euclidean", method, "faiss").add(gallery)
        index.search(queries[:1], args.k)  # builds the FAISS index
        build_s = time.perf_counter() - start
        timed = []
        for value in settings:
            if value is not None:
                index.params[SEARCH_KNOBS[method]] = value
            timed.append((dict(index.params), *_best_seconds(lambda: index.search(queries, args.k), args.repeats)))
        memory.stop("index")
        with tempfile.TemporaryDirectory() as folder:
            saved_mib = _folder_mib(index.save(folder))
        for params, seconds, result in timed:
            extra = {}
            if method == "exact":
                extra["equal"] = round(float(np.mean(np.all(result.indices[: len(reference)] == reference, axis=1))), 4)
            else:
                extra["params"] = ", ".join(f"{key} {value}" for key, value in params.items())
            rows.append(dict(row, **extra, search=label, build_s=round(build_s, 2),
                             queries_per_s=round(len(queries) / seconds),
                             recall=round(recall_at_k(result.indices, exact), 4),
                             added_peak_mib=round(memory.peaks["index"] - before), saved_mib=round(saved_mib)))  # fmt: skip
            launcher.log(f"N={size} {label} {extra.get('params', '')}: build {build_s:.1f} s, "
                         f"{len(queries) / seconds:.0f} q/s, recall {rows[-1]['recall']}")  # fmt: skip
        del index, timed
    return rows


def search_rows(args, size):
    from siamese_k3.search import exact_search

    if args.embeddings:  # a trained run's embeddings (siamese-k3 embed, Run.embed): gallery and queries
        gallery = np.load(args.embeddings).astype(np.float32)
        queries = np.load(args.query_embeddings).astype(np.float32)[: args.queries]
        size = len(gallery)
    else:
        gallery, _ = clustered_vectors(size, args.dim, args.clusters, args.spread, seed=1)
        queries, _ = clustered_vectors(args.queries, args.dim, args.clusters, args.spread, seed=2)
    row = {"gallery": size, "dim": gallery.shape[1], "queries": len(queries), "k": args.k, "device": measure.cpu_name()}
    subset = queries[: args.brute_force_queries]
    brute_s, reference = _best_seconds(lambda: brute_force(subset, gallery, args.k), 1)
    memory = measure.Memory(None, on_gpu=False)
    before = _trimmed_rss_mib()
    memory.start()
    exact_s, (_, exact) = _best_seconds(lambda: exact_search(queries, gallery, args.k), args.repeats)
    memory.stop("exact")
    equal = float(np.mean(np.all(exact[: len(subset)] == reference, axis=1)))
    rows = [dict(row, search="brute force (numpy sort)", queries_per_s=round(len(subset) / brute_s, 1), recall=1.0,
                 equal=1.0),
            dict(row, search="exact, numpy chunks", queries_per_s=round(len(queries) / exact_s), recall=1.0,
                 equal=round(equal, 4), speedup=round((brute_s / len(subset)) / (exact_s / len(queries)), 1),
                 added_peak_mib=round(memory.peaks["exact"] - before))]  # fmt: skip
    launcher.log(f"N={size}: brute force {len(subset) / brute_s:.1f} q/s, "
                 f"chunks {len(queries) / exact_s:.0f} q/s, equal {equal}")
    return rows + _index_rows(args, size, gallery, queries, exact, reference, row)


def retrieval_row(args):
    from siamese_k3.search import retrieval_metrics

    if args.embeddings:
        embeddings, labels = np.load(args.embeddings).astype(np.float32), np.load(args.labels)
    else:
        embeddings, labels = clustered_vectors(args.retrieval_items, args.dim, args.retrieval_classes,
                                                args.retrieval_spread, seed=3)
    start = time.perf_counter()
    metrics = retrieval_metrics(embeddings, labels)
    seconds = time.perf_counter() - start
    launcher.log(f"retrieval_metrics on {args.retrieval_items}: {seconds:.1f} s")
    return {"items": len(labels), "classes": len(np.unique(labels)), "dim": embeddings.shape[1], "seconds": round(seconds, 1),
            "map_at_r": round(metrics["map_at_r"], 4), "device": measure.cpu_name()}  # fmt: skip


SEARCH_COLUMNS = [
    ("gallery N", "gallery", ":"),
    ("search", "search", ""),
    ("build s", lambda row: row.get("build_s", "—"), ":"),
    ("queries/s", lambda row: row.get("queries_per_s", row.get("skipped", "")), ":"),
    ("recall@k vs exact", lambda row: row.get("recall", ""), ":"),
    ("= brute force", lambda row: row.get("equal", "—"), ":"),
    ("speed-up vs brute force", lambda row: row.get("speedup", "—"), ":"),
    ("added peak MiB", lambda row: row.get("added_peak_mib", "—"), ":"),
    ("saved MiB", lambda row: row.get("saved_mib", "—"), ":"),
    ("params", lambda row: row.get("params", ""), ""),
]
RETRIEVAL_COLUMNS = [
    ("retrieval_metrics items", "items", ":"),
    ("classes", "classes", ":"),
    ("dim", "dim", ":"),
    ("seconds", "seconds", ":"),
    ("MAP@R", "map_at_r", ":"),
]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="gallery sizes N")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.25, help="noise scale around each centre")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--brute-force-queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--methods", default="exact,hnsw,ivf", help="FAISS methods to time")
    parser.add_argument("--hnsw-ef-search", help="HNSW ef_search values, comma-separated (default: the library's)")
    parser.add_argument("--ivf-nprobe", help="IVF nprobe values, comma-separated (default: the library's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--retrieval-items", type=int, default=60000, help="0: skip retrieval_metrics")
    parser.add_argument("--retrieval-classes", type=int, default=10)
    parser.add_argument("--retrieval-spread", type=float, default=1.0)
    parser.add_argument("--embeddings", help=".npy float32 [N, D] gallery of a trained run (replaces --sizes)")
    parser.add_argument("--query-embeddings", help=".npy queries, with --embeddings")
    parser.add_argument("--labels", help=".npy labels of --embeddings, for retrieval_metrics")
    parser.add_argument("--out", default="benchmarks/results/search.json")
    args = parser.parse_args(argv)

    rows = []
    for size in [0] if args.embeddings else map(int, args.sizes.split(",")):
        rows += search_rows(args, size)
    table = launcher.markdown_table(rows, SEARCH_COLUMNS)
    if args.retrieval_items:
        retrieval = retrieval_row(args)
        rows.append(retrieval)
        table += "\n" + launcher.markdown_table([retrieval], RETRIEVAL_COLUMNS)
    threads = _faiss_threads()
    data = (f"embeddings {args.embeddings}, queries {args.query_embeddings}" if args.embeddings else
            f"{args.dim}-d vectors around {args.clusters} centres (noise {args.spread})")  # fmt: skip
    note = (f"{measure.cpu_name()}; {data}, {args.queries} queries, k = {args.k}; FAISS threads: {threads}, "
            "numpy: its BLAS's default")  # fmt: skip
    launcher.write_outputs(table, rows, args.out, "benchmarks.tools.search", argv, note)
    return 0


def _faiss_threads():
    try:
        import faiss
    except ImportError:
        return "not installed"
    return f"{faiss.omp_get_max_threads()} (faiss {faiss.__version__})"


if __name__ == "__main__":
    sys.exit(main())
