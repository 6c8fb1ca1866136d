"""siamese_k3.search.index and .kernel against a brute-force reference written here: every distance by its formula, then a sort.

The numpy engine runs everywhere; the FAISS engine where `faiss` is installed (the ``search`` extra,
which `nox -s tests` installs), so both engines are checked against the same reference.
"""

import ast
import json
import sys

import numpy as np
import pytest

from siamese_k3.errors import SiameseK3Error
from siamese_k3.search import index as index_module
from siamese_k3.search.faiss_engine import faiss_available
from siamese_k3.search.index import SimilarityIndex
from siamese_k3.search.kernel import exact_search, iter_exact_search

from references import reference_distance

pytestmark = pytest.mark.backend_independent  # numpy, files and checks: one backend runs it (tests/README.md)

DISTANCES = ["euclidean", "squared_euclidean", "cosine"]
ENGINES = ["numpy", pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss not installed"))]
needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss not installed")


def reference_search(queries, gallery, k, distance, exclude=None):
    """(distances, indices) [Q, k]: each query's items sorted by (distance, index), the first k."""
    distances, indices = [], []
    for row, query in enumerate(queries):
        pairs = sorted(
            (reference_distance(query, item, distance), index)
            for index, item in enumerate(gallery)
            if exclude is None or index != exclude[row]
        )[:k]
        distances.append([pair[0] for pair in pairs])
        indices.append([pair[1] for pair in pairs])
    return np.array(distances), np.array(indices)


def reference_distances(queries, gallery, distance):
    """[Q, N] distances by their formulas, in float64, broadcasting over every pair (small sets only)."""
    queries, gallery = np.asarray(queries, np.float64), np.asarray(gallery, np.float64)
    if distance == "cosine":
        unit_queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        return 1.0 - unit_queries @ (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
    squared = ((queries[:, None, :] - gallery[None, :, :]) ** 2).sum(axis=2)
    return squared if distance == "squared_euclidean" else np.sqrt(squared)


def clustered(count, dim, clusters, seed, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    labels = rng.integers(0, clusters, count)
    return (centres[labels] + spread * rng.standard_normal((count, dim))).astype(np.float32), labels


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("distance", DISTANCES)
def test_exact_search_against_brute_force(distance, engine):
    gallery, labels = clustered(300, 6, 5, seed=0)
    queries, _ = clustered(40, 6, 5, seed=1)
    ids = [f"images/{index}.png" for index in range(300)]
    index = SimilarityIndex(distance, "exact", engine).add(gallery[:120], labels[:120], ids[:120])
    index.add(gallery[120:], labels[120:], ids[120:])
    result = index.search(queries, k=7)
    expected_distances, expected_indices = reference_search(queries, gallery, 7, distance)
    assert index.engine == engine and len(index) == 300 and index.dim == 6
    np.testing.assert_array_equal(result.indices, expected_indices)
    np.testing.assert_allclose(result.distances, expected_distances, rtol=1e-5, atol=1e-5)
    assert result.distances.dtype == np.float32 and result.indices.dtype == np.int64
    np.testing.assert_array_equal(result.labels, labels[expected_indices])
    assert result.ids[3, 2] == f"images/{expected_indices[3, 2]}.png"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean"])
def test_exact_ties_go_to_the_lower_index(distance, engine):
    # A small integer grid: distances are exact in float32 and tie everywhere, at the k-th place too.
    rng = np.random.default_rng(2)
    gallery = rng.integers(0, 3, (200, 3)).astype(np.float32)
    queries = rng.integers(0, 3, (30, 3)).astype(np.float32)
    for k in (1, 4, 25):
        result = SimilarityIndex(distance, engine=engine).add(gallery).search(queries, k)
        expected_distances, expected_indices = reference_search(queries, gallery, k, distance)
        np.testing.assert_array_equal(result.indices, expected_indices)
        np.testing.assert_allclose(result.distances, expected_distances, rtol=1e-6)
        assert result.labels is None and result.ids is None


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_exact_search_function_in_chunks_with_exclusion(distance, chunk_size):
    rng = np.random.default_rng(3)
    gallery = rng.standard_normal((50, 4))  # float64: ranked in float64
    rows = np.array([4, 0, 49, 17])
    distances, indices = exact_search(gallery[rows], gallery, 5, distance, exclude=rows, chunk_size=chunk_size)
    expected_distances, expected_indices = reference_search(gallery[rows], gallery, 5, distance, exclude=rows)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, atol=1e-10)
    assert distances.dtype == np.float64


@pytest.mark.parametrize("k", [10, 3000])
def test_exact_search_on_a_gallery_that_fools_the_sampled_bound(k):
    # Galleries of >= 8192 items bound each row's k-th score by a strided sample of columns (every
    # 4th here). Those columns are the near items: the sample's quantile keeps too few for k = 3000,
    # and the exact k-th score must be found. Integer points: exact distances, many ties.
    rng = np.random.default_rng(6)
    gallery = rng.integers(10, 14, (8192, 2)).astype(np.float32)
    gallery[::4] = rng.integers(0, 4, (2048, 2))
    queries = rng.integers(0, 3, (3, 2)).astype(np.float32)
    distances, indices = exact_search(queries, gallery, k, "squared_euclidean")
    expected_distances, expected_indices = reference_search(queries, gallery, k, "squared_euclidean")
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(distances, expected_distances)


def test_iter_exact_search_depth_per_query():
    rng = np.random.default_rng(4)
    gallery = rng.standard_normal((30, 3))
    chunks = list(iter_exact_search(gallery[:5], gallery, [1, 2, 9, 3, 4], "euclidean", chunk_size=2))
    assert [list(rows) for rows, _, _ in chunks] == [[0, 1], [2, 3], [4]]
    assert [indices.shape[1] for _, _, indices in chunks] == [2, 9, 4]  # the widest k of each chunk
    _, expected = reference_search(gallery[:5], gallery, 9, "euclidean")
    np.testing.assert_array_equal(chunks[1][2][0], expected[2])


@needs_faiss
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("method", ["hnsw", "ivf"])
def test_approximate_search_finds_most_true_neighbours(method, distance):
    gallery, labels = clustered(3000, 8, 20, seed=5)
    queries, _ = clustered(100, 8, 20, seed=6)
    params = {"nprobe": 8} if method == "ivf" else None
    result = SimilarityIndex(distance, method, params=params).add(gallery, labels).search(queries, k=10)
    distances = reference_distances(queries, gallery, distance)
    true_neighbours = np.argsort(distances, axis=1, kind="stable")[:, :10]
    recall = np.mean([len(set(found) & set(true)) / 10 for found, true in zip(result.indices, true_neighbours)])
    assert recall >= 0.9
    found = result.indices >= 0
    expected_distances = np.take_along_axis(distances, np.maximum(result.indices, 0), axis=1)
    np.testing.assert_allclose(result.distances[found], expected_distances[found], rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(result.distances, axis=1) >= 0)
    np.testing.assert_array_equal(result.labels[found], labels[result.indices[found]])


@needs_faiss
def test_approximate_search_with_fewer_than_k_found():
    gallery, _ = clustered(64, 4, 64, seed=7, spread=0.01)
    params = {"nlist": 32, "nprobe": 1}  # each cell holds few items: one cell cannot give 10
    index = SimilarityIndex("euclidean", "ivf", params=params).add(gallery, labels=np.arange(64), ids=list(range(64)))
    result = index.search(gallery[:5], k=10)
    missing = result.indices == -1
    assert missing.any() and np.all(np.isinf(result.distances[missing]))
    assert all(label is None for label in result.labels[missing])
    assert all(item is None for item in result.ids[missing])
    assert np.all(result.indices[:, 0] == np.arange(5))  # each item finds itself first


@pytest.mark.parametrize(
    "method, engine",
    [("exact", "numpy"), pytest.param("exact", "faiss", marks=needs_faiss),
     pytest.param("hnsw", "faiss", marks=needs_faiss), pytest.param("ivf", "faiss", marks=needs_faiss)],
)  # fmt: skip
def test_save_and_load(tmp_path, method, engine):
    gallery, labels = clustered(500, 5, 4, seed=8)
    queries, _ = clustered(20, 5, 4, seed=9)
    names = np.array(["cat", "dog", "eel", "fox"])[labels]
    ids = [{"path": f"{index}.png", "row": index} for index in range(500)]
    index = SimilarityIndex("cosine", method, engine, fingerprint="run-1").add(gallery, names, ids)
    before = index.search(queries, 5)
    index.save(tmp_path / "index")
    metadata = json.loads((tmp_path / "index" / "index.json").read_text())
    assert metadata["distance"] == "cosine" and metadata["method"] == method and metadata["fingerprint"] == "run-1"
    assert metadata["count"] == 500 and metadata["dim"] == 5
    assert (tmp_path / "index" / "faiss.index").exists() == (method != "exact")
    np.testing.assert_array_equal(np.load(tmp_path / "index" / "vectors.npy"), gallery)
    loaded = SimilarityIndex.load(tmp_path / "index", fingerprint="run-1")
    after = loaded.search(queries, 5)
    np.testing.assert_array_equal(after.indices, before.indices)
    np.testing.assert_allclose(after.distances, before.distances, rtol=1e-6)
    np.testing.assert_array_equal(after.labels, names[before.indices])
    assert after.ids[0, 0] == {"path": f"{before.indices[0, 0]}.png", "row": int(before.indices[0, 0])}
    with pytest.raises(SiameseK3Error, match="run-1.*run-2"):
        SimilarityIndex.load(tmp_path / "index", fingerprint="run-2")


def test_load_missing_folder(tmp_path):
    with pytest.raises(SiameseK3Error, match="No index in"):
        SimilarityIndex.load(tmp_path)


def test_numpy_engine_in_small_chunks():
    gallery, _ = clustered(100, 3, 3, seed=10)
    numpy_index = SimilarityIndex("euclidean", engine="numpy", params={"chunk_size": 3}).add(gallery)
    _, expected = reference_search(gallery[:9], gallery, 4, "euclidean")
    np.testing.assert_array_equal(numpy_index.search(gallery[:9], 4).indices, expected)


# --- errors: ValueErrors that name the argument and what to do ------------------------------


def test_user_errors_name_the_argument():
    gallery = np.ones((5, 3), np.float32)
    index = SimilarityIndex(engine="numpy")
    with pytest.raises(SiameseK3Error, match="empty"):
        index.search(gallery, 1)
    index.add(gallery)
    with pytest.raises(ValueError, match=r"k=6 .* at most k=5"):
        index.search(gallery, 6)
    with pytest.raises(ValueError, match="k=0"):
        index.search(gallery, 0)
    with pytest.raises(ValueError, match="4 dimensions .* 3"):
        index.search(np.ones((2, 4)), 1)
    with pytest.raises(ValueError, match=r"vector\[None\]"):
        index.search(np.ones(3), 1)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 3), np.nan), 1)
    with pytest.raises(ValueError, match="manhattan"):
        SimilarityIndex("manhattan")
    with pytest.raises(ValueError, match="method='kd_tree' is unknown: choose one of"):
        SimilarityIndex(method="kd_tree")
    with pytest.raises(ValueError, match="ef_search"):
        SimilarityIndex(params={"ef_search": 10})
    with pytest.raises(ValueError, match=r"siamese_k3\[search\]"):
        SimilarityIndex(method="hnsw", engine="numpy")
    with pytest.raises(ValueError, match="one per row"):
        SimilarityIndex().add(gallery, labels=[0, 1])
    with pytest.raises(ValueError, match="labels for these"):
        SimilarityIndex().add(gallery, labels=np.arange(5)).add(gallery)
    with pytest.raises(ValueError, match="without ids"):
        SimilarityIndex().add(gallery).add(gallery, ids=list("abcde"))
    with pytest.raises(ValueError, match="k=3"):
        exact_search(gallery, gallery[:3], 3, exclude=np.arange(5))


def test_without_faiss(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    assert SimilarityIndex("cosine", "exact").engine == "numpy"
    for method in ("hnsw", "ivf"):
        with pytest.raises(ValueError, match=r"pip install 'siamese_k3\[search\]'"):
            SimilarityIndex(method=method)
    with pytest.raises(ValueError, match=r"pip install 'siamese_k3\[search\]'"):
        SimilarityIndex(engine="faiss")


def test_no_keras_backend_is_involved():
    # numpy and faiss only: the same answers whichever backend trained the embeddings
    tree = ast.parse(open(index_module.__file__).read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"keras", "tensorflow", "torch", "jax"}


def _index_of(count, label, seed=0):
    index = SimilarityIndex(engine="numpy")
    vectors = np.random.default_rng(seed).normal(size=(count, 4)).astype(np.float32)
    index.add(vectors, labels=[label] * count, ids=[f"{label}-{row}" for row in range(count)])
    return index


@pytest.mark.parametrize("stage", ["items", "metadata", "swap"])
def test_a_save_cut_short_leaves_the_old_index_whole(stage, tmp_path, monkeypatch):
    """Issue 31 #2a: the files were replaced one by one, so a kill between them left new vectors with old ids."""
    from siamese_k3 import files

    folder = tmp_path / "index"
    _index_of(5, "old").save(folder)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill: nothing after this point runs

    if stage == "swap":
        monkeypatch.setattr(files, "exchange_paths", fail)
    else:
        real = index_module.write_json
        monkeypatch.setattr(
            index_module, "write_json",
            lambda path, value: fail() if path.endswith(f"{'index' if stage == 'metadata' else 'items'}.json") else real(path, value),
        )
    with pytest.raises(KeyboardInterrupt):
        _index_of(7, "new", seed=1).save(folder)
    loaded = SimilarityIndex.load(folder)
    assert len(loaded) == 5 and loaded.ids == [f"old-{row}" for row in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no partial folder left


def test_save_replaces_the_folder_as_one_unit_and_refuses_a_folder_of_other_files(tmp_path):
    folder = tmp_path / "index"
    _index_of(5, "old").save(folder)
    _index_of(7, "new", seed=1).save(folder)
    loaded = SimilarityIndex.load(folder)
    assert len(loaded) == 7 and loaded.ids[0] == "new-0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SiameseK3Error, match=r"holds other files than an index \(index, notes.txt\)"):
        _index_of(3, "x").save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("field", ["labels", "ids"])
def test_items_that_do_not_match_the_vectors_are_refused_at_load(field, tmp_path):
    """Issue 31 #2d: a shorter items.json was an IndexError at search time."""
    _index_of(5, "a").save(tmp_path / "index")
    items = json.loads((tmp_path / "index" / "items.json").read_text())
    items[field] = items[field][:2]
    (tmp_path / "index" / "items.json").write_text(json.dumps(items))
    with pytest.raises(SiameseK3Error, match=rf"items.json holds 2 {field} for 5 vectors: the index is not whole"):
        SimilarityIndex.load(tmp_path / "index")
