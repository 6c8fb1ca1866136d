"""Plots of training, of embeddings and of searches (calibration curves, neighbour sheets), written straight to PNG files.

Built on matplotlib's object-oriented `Figure` API (rendered by the Agg
canvas), never on `pyplot`: no display is needed, the global matplotlib
backend is left untouched, and no figure is kept alive after its file is
written. Every function returns the path it wrote.
"""

import os

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from siamese_k3.errors import SiameseK3Error
from siamese_k3.files import atomic_path


def _new_figure(width, height):
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path):
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with atomic_path(path) as temporary:  # a kill mid-save leaves the old file, not half a PNG
        figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")
    return path


HISTORY_PANELS = (  # (title, y label, keys)
    (None, "loss", ("loss", "val_loss")),
    ("Retrieval (held-out sample)", "score", ("val_precision_at_1", "val_r_precision", "val_map_at_r", "val_pair_roc_auc")),
    ("Active triplets", "fraction", ("fraction_positive_triplets", "val_fraction_positive_triplets")),
)


def plot_history(history, path, title="Loss"):
    """Training curves per epoch: one panel each for the losses, the retrieval metrics and the active fraction.

    Panel 1 is seed 000's `plot_metrics` (`loss` and `val_loss`); panel 2 shows
    `val_precision_at_1`, `val_r_precision`, `val_map_at_r` (`RetrievalValidation`)
    or `val_pair_roc_auc` (`PairValidation`); panel 3 `fraction_positive_triplets`
    and its `val_` twin. A panel with none of its keys is left out.

    Args:
        history: a dict like `keras.callbacks.History.history` (``{"loss": [...],
            "val_loss": [...], ...}``) or the `History` object itself.
        path: PNG file to write.
    """
    history = getattr(history, "history", history)
    if not isinstance(history, dict) or "loss" not in history:
        raise SiameseK3Error(
            "plot_history needs a dict with a 'loss' list (keras History.history); "
            f"got {type(history).__name__}"
            + (f" with keys {sorted(history)}." if isinstance(history, dict) else ".")
        )
    panels = [(name, label, [key for key in keys if history.get(key)]) for name, label, keys in HISTORY_PANELS]
    panels = [panel for panel in panels if panel[2]]
    figure = _new_figure(5 * len(panels), 4)
    for index, (name, label, keys) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for key in keys:
            values = np.asarray(history[key], dtype=float)
            axes.plot(np.arange(1, len(values) + 1), values, marker=".", label=key)
        axes.set_title(name or title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(label)
        axes.grid(True)
        axes.legend()
    return _save(figure, path)


def plot_distance_boxplot(positive_distances, negative_distances, path, title="Pair distances"):
    """Seed 000's box plot: distances of positive pairs next to those of negative pairs.

    A well-trained embedding puts the "Positive" box clearly below the "Negative" one.
    """
    positive = np.asarray(positive_distances, dtype=float).reshape(-1)
    negative = np.asarray(negative_distances, dtype=float).reshape(-1)
    if positive.size == 0 or negative.size == 0:
        raise SiameseK3Error(
            "plot_distance_boxplot needs at least one positive and one negative distance; got "
            f"{positive.size} positive and {negative.size} negative."
        )
    figure = _new_figure(5, 4)
    axes = figure.add_subplot()
    axes.boxplot([positive, negative])
    axes.set_xticks([1, 2], ["Positive", "Negative"])
    axes.set_ylabel("distance")
    axes.set_title(title)
    axes.grid(True)
    return _save(figure, path)


def _displayable(image):
    """An image as imshow takes it: [H, W] grey or [H, W, 3] RGB, floats in [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 1:  # a flattened square image, as seed 001's 784-vectors
        side = int(round(np.sqrt(image.size)))
        if side * side != image.size:
            raise SiameseK3Error(f"Cannot show a flat image of {image.size} values: not a square.")
        image = image.reshape(side, side)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise SiameseK3Error(
            f"Cannot show an image of shape {image.shape}: expected [H, W], [H, W, 1] or [H, W, 3]."
        )
    raw_pixels = image.dtype == np.uint8 or (image.size > 0 and image.max() > 1.0)
    image = image.astype(np.float32)
    if raw_pixels:
        image = image / 255.0
    return np.clip(image, 0.0, 1.0)


def plot_triplets(anchor, positive, negative, path, count=5):
    """The first `count` triplets, one row each: anchor | positive | negative (seeds 001, 004).

    Images may be grey [N, H, W], [N, H, W, 1] or RGB [N, H, W, 3], uint8 or float,
    in 0-255 or 0-1 (values above 1 are taken as 0-255); flat square vectors [N, H·W]
    are reshaped.
    """
    batches = [np.asarray(images) for images in (anchor, positive, negative)]
    sizes = {len(images) for images in batches}
    if len(sizes) != 1:
        raise SiameseK3Error(
            "plot_triplets needs as many anchors as positives and negatives; got "
            f"{len(batches[0])}, {len(batches[1])} and {len(batches[2])}."
        )
    rows = min(int(count), sizes.pop())
    if rows < 1:
        raise SiameseK3Error("plot_triplets has nothing to show: no triplets or count < 1.")
    figure = _new_figure(6, 2 * rows)
    grid = figure.subplots(rows, 3, squeeze=False)
    for row in range(rows):
        for column, (name, images) in enumerate(zip(("anchor", "positive", "negative"), batches)):
            axes = grid[row][column]
            image = _displayable(images[row])
            axes.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0)
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(name)
    return _save(figure, path)


def pca_2d(embeddings):
    """Project [N, D] embeddings onto their first two principal components → [N, 2].

    The points are centred and multiplied by the top two right singular vectors of
    the centred matrix (numpy SVD); each component's sign is arbitrary. When D < 2
    the missing column is zero.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2:
        raise SiameseK3Error(f"pca_2d needs embeddings of shape [N, D]; got {embeddings.shape}.")
    centred = embeddings - embeddings.mean(axis=0, keepdims=True)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ components[:2].T
    if projected.shape[1] < 2:
        projected = np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))
    return projected


def plot_embeddings_2d(
    embeddings, labels, path, class_names=None, max_points=5000, seed=0, title="Embeddings (PCA)"
):
    """Seed 001's PCA plot: embeddings projected to 2-D (`pca_2d`), one colour per class.

    Args:
        embeddings: [N, D] array.
        labels: [N] integer (or any hashable) class labels.
        path: PNG file to write.
        class_names: optional names for the legend, indexed by integer label
            (or a dict label → name).
        max_points: at most this many points, drawn at random with `seed`.
    """
    embeddings = np.asarray(embeddings)
    labels = np.asarray(labels).reshape(-1)
    if embeddings.ndim != 2 or len(embeddings) != len(labels) or len(labels) == 0:
        raise SiameseK3Error(
            "plot_embeddings_2d needs embeddings [N, D] and N labels (N > 0); got embeddings "
            f"of shape {embeddings.shape} and {len(labels)} labels."
        )
    if max_points is not None and len(labels) > max_points:
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(labels), size=int(max_points), replace=False)
        embeddings, labels = embeddings[chosen], labels[chosen]
    points = pca_2d(embeddings)
    classes = np.unique(labels)
    colours = _class_colours(len(classes))
    figure = _new_figure(7, 6)
    axes = figure.add_subplot()
    for colour, label in zip(colours, classes):
        mask = labels == label
        axes.scatter(
            points[mask, 0], points[mask, 1], s=8, alpha=0.7, color=colour,
            label=_class_name(label, class_names),
        )
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.set_title(title)
    axes.legend(markerscale=2, fontsize="small", loc="best")
    return _save(figure, path)


def _class_colours(count):
    colour_map = colormaps["tab10" if count <= 10 else "tab20" if count <= 20 else "viridis"]
    if count <= 20:
        return [colour_map(index) for index in range(count)]
    return [colour_map(value) for value in np.linspace(0.0, 1.0, count)]


def _class_name(label, class_names):
    if class_names is None:
        return str(label)
    try:
        return str(class_names[label.item() if hasattr(label, "item") else label])
    except (IndexError, KeyError, TypeError):
        return str(label)


def plot_calibration(thresholds, precisions, recalls, f1s, path, threshold=None, title="Calibration"):
    """Precision, recall and F1 (y, 0 to 1) against the distance threshold (x), the chosen `threshold` dashed.

    The curves of `siamese_k3.search.calibration`: a pair is "same" iff its distance <= the threshold.
    """
    curves = [np.asarray(values, dtype=float).reshape(-1) for values in (thresholds, precisions, recalls, f1s)]
    if len({curve.size for curve in curves}) != 1 or curves[0].size == 0:
        raise SiameseK3Error(
            "plot_calibration needs thresholds, precisions, recalls and f1s of one length (> 0); got "
            + ", ".join(str(curve.size) for curve in curves) + "."
        )
    figure = _new_figure(6, 4)
    axes = figure.add_subplot()
    for name, values in zip(("precision", "recall", "F1"), curves[1:]):
        axes.plot(curves[0], values, label=name)
    if threshold is not None:
        axes.axvline(float(threshold), color="black", linestyle="--", linewidth=1, label=f"threshold {float(threshold):.4g}")
    axes.set_xlabel("distance threshold (same iff distance <= threshold)")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(title, fontsize="medium")
    axes.grid(True)
    axes.legend(loc="best", fontsize="small")
    return _save(figure, path)


WRONG_LABEL_COLOUR = "red"


def plot_neighbours(query_images, neighbour_images, path, query_labels=None, neighbour_labels=None, distances=None,
                    count=8):  # fmt: skip
    """A contact sheet: one row per query, the query image then its k neighbour images, nearest first.

    A neighbour whose label differs from its query's is framed in red (`WRONG_LABEL_COLOUR`);
    titles give the labels and, when `distances` are given, each neighbour's distance.

    Args:
        query_images: [Q, ...] images (as `plot_triplets` takes them: grey or RGB, uint8 or float).
        neighbour_images: [Q, k, ...] images, e.g. ``gallery_images[result.indices]``.
        query_labels: optional [Q] labels of the queries.
        neighbour_labels: optional [Q, k] labels of the neighbours (``result.labels``).
        distances: optional [Q, k] (``result.distances``).
        count: at most this many queries (the first ones).
    """
    queries = np.asarray(query_images)
    neighbours = np.asarray(neighbour_images)
    if neighbours.ndim < 3 or len(neighbours) != len(queries) or neighbours.shape[1] < 1:
        raise SiameseK3Error(
            "plot_neighbours needs neighbour_images [Q, k, ...] for query_images [Q, ...]; got "
            f"{neighbours.shape} for {queries.shape}."
        )
    rows, k = min(int(count), len(queries)), neighbours.shape[1]
    if rows < 1:
        raise SiameseK3Error("plot_neighbours has nothing to show: no queries or count < 1.")
    labelled = query_labels is not None and neighbour_labels is not None
    if labelled:
        query_labels = np.asarray(query_labels).reshape(-1)
        neighbour_labels = np.asarray(neighbour_labels).reshape(len(neighbours), k)
    figure = _new_figure(1.4 * (k + 1), 1.6 * rows)
    grid = figure.subplots(rows, k + 1, squeeze=False)
    for row in range(rows):
        for column in range(k + 1):
            axes = grid[row][column]
            image = _displayable(queries[row] if column == 0 else neighbours[row, column - 1])
            axes.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0)
            axes.set_xticks([])
            axes.set_yticks([])
            for spine in axes.spines.values():
                spine.set_visible(False)
            caption = []
            if column == 0:
                caption.append("query")
                if labelled:
                    caption.append(str(query_labels[row]))
            else:
                if labelled:
                    caption.append(str(neighbour_labels[row, column - 1]))
                    if neighbour_labels[row, column - 1] != query_labels[row]:
                        for spine in axes.spines.values():
                            spine.set_visible(True)
                            spine.set_edgecolor(WRONG_LABEL_COLOUR)
                            spine.set_linewidth(4)
                if distances is not None:
                    caption.append(f"{float(np.asarray(distances)[row, column - 1]):.3g}")
            axes.set_title(" ".join(caption), fontsize="small")
    return _save(figure, path)
