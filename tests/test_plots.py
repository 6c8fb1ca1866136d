"""siamese_k3.plots: PNG files are written headless; PCA matches an eigendecomposition."""

import os

import numpy as np
import pytest
from PIL import Image

from siamese_k3 import plots
from siamese_k3.errors import SiameseK3Error

pytestmark = pytest.mark.backend_independent  # numpy, files and checks: one backend runs it (tests/README.md)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes=2000):
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("L"))
    assert width > 100 and height > 100
    assert pixels.std() > 1.0  # not a blank canvas
    assert os.path.getsize(path) > min_bytes


def test_plot_history(tmp_path):
    history = {"loss": [1.0, 0.6, 0.4, 0.3], "val_loss": [1.1, 0.8, 0.7, 0.65]}
    path = plots.plot_history(history, tmp_path / "loss.png")
    assert str(path) == str(tmp_path / "loss.png")
    assert_png(path)


def test_plot_history_without_validation_in_new_folder(tmp_path):
    path = plots.plot_history({"loss": [0.5, 0.2]}, tmp_path / "sub" / "loss.png")
    assert_png(path)


def test_plot_history_rejects_missing_loss(tmp_path):
    with pytest.raises(SiameseK3Error, match="'loss'"):
        plots.plot_history({"accuracy": [0.1]}, tmp_path / "x.png")


def test_plot_distance_boxplot(tmp_path, rng):
    path = plots.plot_distance_boxplot(
        rng.gamma(2.0, 0.3, 200), rng.gamma(5.0, 0.4, 200), tmp_path / "box.png"
    )
    assert_png(path)


def test_plot_distance_boxplot_rejects_empty(tmp_path):
    with pytest.raises(SiameseK3Error, match="0 negative"):
        plots.plot_distance_boxplot([1.0, 2.0], [], tmp_path / "box.png")


@pytest.mark.parametrize(
    "shape, dtype, scale",
    [
        ((6, 28, 28), np.uint8, 255),
        ((6, 28, 28, 1), np.float32, 1.0),
        ((6, 32, 32, 3), np.uint8, 255),
        ((6, 32, 32, 3), np.float32, 255.0),
        ((6, 784), np.float32, 1.0),
    ],
)
def test_plot_triplets(tmp_path, rng, shape, dtype, scale):
    anchor, positive, negative = ((rng.random(shape) * scale).astype(dtype) for _ in range(3))
    path = plots.plot_triplets(anchor, positive, negative, tmp_path / "triplets.png", count=4)
    assert_png(path)
    with Image.open(path) as image:
        assert image.size[1] > image.size[0]  # four rows of three: taller than wide


def test_plot_triplets_rejects_mismatched_counts(tmp_path, rng):
    images = rng.random((4, 8, 8))
    with pytest.raises(SiameseK3Error, match="as many anchors"):
        plots.plot_triplets(images, images, images[:3], tmp_path / "t.png")


def test_plot_triplets_rejects_bad_shape(tmp_path, rng):
    images = rng.random((2, 8, 8, 5))
    with pytest.raises(SiameseK3Error, match=r"\(8, 8, 5\)"):
        plots.plot_triplets(images, images, images, tmp_path / "t.png")


def reference_pca(points):
    """Top-2 principal axes from the eigendecomposition of the covariance matrix."""
    centred = points - points.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centred, rowvar=False))
    order = np.argsort(eigenvalues)[::-1][:2]
    return centred @ eigenvectors[:, order]


@pytest.mark.parametrize("count, dim", [(50, 8), (300, 64), (10, 3)])
def test_pca_2d_matches_eigendecomposition_up_to_sign(rng, count, dim):
    # distinct variances per axis so the top two components are well separated
    points = rng.normal(size=(count, dim)) * np.linspace(5.0, 0.5, dim) + rng.normal(size=dim)
    points = points @ np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    projected = plots.pca_2d(points)
    expected = reference_pca(points)
    assert projected.shape == (count, 2)
    for column in range(2):
        sign = np.sign(projected[:, column] @ expected[:, column])
        np.testing.assert_allclose(projected[:, column], sign * expected[:, column], atol=1e-8)


def test_pca_2d_one_dimensional_input_pads_zero_column(rng):
    projected = plots.pca_2d(rng.normal(size=(20, 1)))
    assert projected.shape == (20, 2)
    np.testing.assert_array_equal(projected[:, 1], 0.0)


def test_plot_embeddings_2d(tmp_path, rng):
    labels = np.repeat(np.arange(4), 50)
    centres = rng.normal(scale=5.0, size=(4, 16))
    embeddings = centres[labels] + rng.normal(size=(200, 16))
    names = ["shirt", "trouser", "bag", "boot"]
    path = plots.plot_embeddings_2d(
        embeddings, labels, tmp_path / "pca.png", class_names=names, max_points=150
    )
    assert_png(path, min_bytes=5000)


def test_plot_embeddings_2d_rejects_length_mismatch(tmp_path, rng):
    with pytest.raises(SiameseK3Error, match="9 labels"):
        plots.plot_embeddings_2d(rng.normal(size=(10, 4)), np.zeros(9), tmp_path / "pca.png")


def test_plot_calibration(tmp_path):
    thresholds = np.linspace(0.0, 2.0, 50)
    precision = 1.0 - 0.4 * thresholds / 2.0
    recall = np.minimum(1.0, thresholds)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    path = plots.plot_calibration(thresholds, precision, recall, f1, tmp_path / "calibration.png", threshold=0.8)
    assert_png(path)
    with pytest.raises(SiameseK3Error, match="one length"):
        plots.plot_calibration(thresholds, precision[:3], recall, f1, tmp_path / "c.png")


def red_pixels(path):
    """Pixels a red frame paints: strongly red, little green or blue (the test images are grey)."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    return int(np.sum((pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)))


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 3)])
def test_plot_neighbours_frames_wrong_labels(tmp_path, rng, shape):
    queries = rng.integers(0, 256, (3, *shape), dtype=np.uint8)
    neighbours = rng.integers(0, 256, (3, 4, *shape), dtype=np.uint8)
    if len(shape) == 3:  # grey RGB images: any red pixel is a frame
        queries[..., 1:] = queries[..., :1]
        neighbours[..., 1:] = neighbours[..., :1]
    query_labels = np.array([0, 1, 2])
    right = np.repeat(query_labels[:, None], 4, axis=1)
    distances = np.sort(rng.random((3, 4)), axis=1)
    all_right = plots.plot_neighbours(queries, neighbours, tmp_path / "right.png", query_labels, right, distances)
    wrong = right.copy()
    wrong[1, 2] = 7
    one_wrong = plots.plot_neighbours(queries, neighbours, tmp_path / "wrong.png", query_labels, wrong, distances)
    assert_png(all_right, min_bytes=1000)
    assert red_pixels(all_right) == 0
    assert red_pixels(one_wrong) > 100
    with Image.open(one_wrong) as image:
        assert image.size[0] > image.size[1]  # 3 rows of 1 + 4 images: wider than tall


def test_plot_neighbours_without_labels_and_bad_shapes(tmp_path, rng):
    images = rng.random((2, 6, 6))
    assert_png(plots.plot_neighbours(images, rng.random((2, 3, 6, 6)), tmp_path / "sheet.png"), min_bytes=500)
    with pytest.raises(SiameseK3Error, match=r"\[Q, k, \.\.\.\]"):
        plots.plot_neighbours(images, rng.random((3, 3, 6, 6)), tmp_path / "bad.png")
