"""Evaluating a run: its metrics first (`evaluate`), then its plots (`RunEvaluation.write_plots`), then a table.

- A labelled run (fashion_mnist, mnist): leave-one-out retrieval on the test
  split (`evaluation.retrieval_metrics`), verification on balanced test pairs,
  the raw-pixel baseline, and the collapse check.
- A pairs:DIR run (seeds 003/004): positive vs negative distances and cosine
  similarities on the held-out pairs, and the collapse check.

Both calibrate a "same or not" distance threshold (`calibrate_held_out`; the
pairs runs on their held-out pairs), saved as calibration.json and .png: it is
what `siamese-k3 similarity` answers "same" or "different" with.

The collapse check (``metrics["collapse"]``) compares the embeddings with the
raw pixels of the same images: ``distinct_fraction`` (rows that differ from
every other) and ``distance_spread`` (the coefficient of variation, std / mean,
of the distances of up to 2000 random pairs). A run is flagged ``collapsed``
when either falls below a tenth of the raw pixels' (a model mapping everything
to nearly one point); the CLI's ``--strict`` then exits non-zero.
"""

import dataclasses
import os

import keras
import numpy as np

from siamese_k3 import plots
from siamese_k3.search import calibration as calibrating
from siamese_k3.search import evaluation
from siamese_k3.search.kernel import paired_distance
from siamese_k3.data import offline_triplet_indices, take, verification_pair_indices
from siamese_k3.errors import SiameseK3Error

COLLAPSE_FRACTION = 0.1


@dataclasses.dataclass
class RunEvaluation:
    """The metrics of a run, and what its plots are drawn from."""

    metrics: dict
    distances: tuple  # (same-pair distances, different-pair distances)
    triplets: tuple  # (anchor, positive, negative) images to show
    embeddings: object = None
    labels: object = None
    class_names: object = None
    calibration: object = None  # a siamese_k3.search.Calibration, or None

    def write_calibration(self, folder, fingerprint=None, plot=True):
        """calibration.json and (`plot`) calibration.png (the curve), when the evaluation calibrated.

        `fingerprint`: the model's (`RunFolder.fingerprint`), saved in calibration.json and checked when read.
        """
        if self.calibration is not None:
            write_calibration(self.calibration, folder, fingerprint, plot)

    def write_plots(self, folder, history=None):
        """distances.png, triplets.png, embeddings_pca.png (labelled runs) and loss.png (given `history`)."""
        if history:
            plots.plot_history(history, os.path.join(folder, "loss.png"))
        plots.plot_distance_boxplot(*self.distances, os.path.join(folder, "distances.png"))
        plots.plot_triplets(*self.triplets, os.path.join(folder, "triplets.png"))
        if self.embeddings is not None:
            plots.plot_embeddings_2d(
                self.embeddings, self.labels, os.path.join(folder, "embeddings_pca.png"), class_names=self.class_names
            )


def write_calibration(calibration, folder, fingerprint=None, plot=True):
    """`calibration` as calibration.json and (`plot`) calibration.png (the curve) in `folder`.

    `fingerprint`: the model's (`RunFolder.fingerprint`), saved in calibration.json and checked when read.
    """
    calibration = dataclasses.replace(calibration, fingerprint=fingerprint or calibration.fingerprint)
    calibration.save(os.path.join(folder, "calibration.json"))
    if plot:
        calibration.plot(os.path.join(folder, "calibration.png"))


def evaluate(config, facts, embedding_model, data):
    """`RunEvaluation` of a trained embedding model on the run's held-out data."""
    if "validation" in data:
        return _evaluate_pairs(config, embedding_model, data["validation"])
    images, labels = data["x_test"], data["y_test"]
    embeddings = _float32(embedding_model.predict(images, batch_size=512, verbose=0))
    metrics = evaluation.retrieval_metrics(embeddings, labels, distance=config.distance)
    pairs, is_same = verification_pair_indices(labels, seed=config.seed)
    is_same = np.asarray(is_same).astype(bool)
    distances = paired_distance(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]], config.distance)
    metrics["verification"] = evaluation.verification_metrics(distances, is_same)
    metrics["raw_pixel_baseline"] = evaluation.raw_pixel_baseline(images, labels)
    metrics["collapse"] = collapse_metrics(embeddings, images, config.distance, seed=config.seed)
    try:
        calibration, metrics["calibration"] = calibrate_held_out(embeddings, labels, config.distance, config.seed)
    except SiameseK3Error as error:  # too few items or classes to calibrate on: say so, keep the metrics
        calibration, metrics["calibration"] = None, {"error": str(error)}
    metrics["backend"] = keras.backend.backend()
    triplets = offline_triplet_indices(labels, seed=config.seed)[::997][:5]
    return RunEvaluation(
        metrics, (distances[is_same], distances[~is_same]), take(images, triplets),
        embeddings=embeddings, labels=labels, class_names=facts.get("class_names"), calibration=calibration,
    )


def calibrate_held_out(embeddings, labels, distance, seed=0, target_precision=None, target_recall=None):
    """(Calibration, summary): a threshold chosen on one half of the test split, measured on the other.

    The split is a seeded permutation; the threshold is the best F1's, or the
    target's (`siamese_k3.search.calibration.calibrate`), on the pairs of the first half.
    The summary holds the threshold, its precision and recall on that half, and
    the precision and recall at that threshold on the pairs of the other half:
    what to expect on new data. None and an empty summary when the run fails to
    calibrate (for example, no threshold reaches `target_precision`).
    """
    labels = np.asarray(labels).reshape(-1)
    order = np.random.default_rng([seed, 1]).permutation(len(labels))
    half = len(order) // 2
    fitting, held_out = order[:half], order[half:]
    calibration = calibrating.calibrate_embeddings(
        embeddings[fitting], labels[fitting], distance, target_precision, target_recall, seed=seed
    )
    distances, is_same = calibrating.labelled_pairs(embeddings[held_out], labels[held_out], distance, seed=seed)
    predicted = calibrating.match(distances, calibration).is_same
    true_positives = int(np.sum(predicted & is_same))
    summary = {
        "threshold": calibration.threshold, "objective": calibration.objective, "target": calibration.target,
        "precision": calibration.precision, "recall": calibration.recall,
        "held_out_precision": true_positives / int(np.sum(predicted)) if np.any(predicted) else 1.0,
        "held_out_recall": true_positives / max(int(np.sum(is_same)), 1),
    }
    return calibration, summary


def _evaluate_pairs(config, embedding_model, validation):
    """Seeds 003/004: positive vs negative distances and cosine similarities on held-out pairs."""
    anchor, positive, negative = validation.triplet_arrays()
    predict = lambda images: _float32(embedding_model.predict(images, batch_size=32, verbose=0))  # noqa: E731
    anchor_e, positive_e, negative_e = predict(anchor), predict(positive), predict(negative)
    positive_d = paired_distance(anchor_e, positive_e, config.distance)
    negative_d = paired_distance(anchor_e, negative_e, config.distance)
    is_same = np.concatenate([np.ones_like(positive_d, bool), np.zeros_like(negative_d, bool)])
    metrics = evaluation.verification_metrics(np.concatenate([positive_d, negative_d]), is_same)
    cosine = lambda x, y: 1.0 - paired_distance(x, y, "cosine")  # noqa: E731
    metrics["mean_cosine_similarity_anchor_positive"] = float(np.mean(cosine(anchor_e, positive_e)))
    metrics["mean_cosine_similarity_anchor_negative"] = float(np.mean(cosine(anchor_e, negative_e)))
    metrics["num_validation_pairs"] = int(len(anchor))
    everything = np.concatenate([anchor_e, positive_e])
    metrics["collapse"] = collapse_metrics(everything, np.concatenate([anchor, positive]), config.distance, config.seed)
    calibration = calibrating.calibrate(np.concatenate([positive_d, negative_d]), is_same, distance=config.distance)
    metrics["calibration"] = {
        "threshold": calibration.threshold, "objective": calibration.objective, "target": None,
        "precision": calibration.precision, "recall": calibration.recall,
    }
    metrics["backend"] = keras.backend.backend()
    return RunEvaluation(metrics, (positive_d, negative_d), (anchor, positive, negative), calibration=calibration)


def collapse_metrics(embeddings, images, distance="euclidean", seed=0, pairs=2000):
    """Whether `embeddings` collapsed, measured against the raw pixels of the same `images`.

    ``distinct_fraction``: the fraction of rows that no other row equals (after
    rounding to 1e-6 of the largest absolute value). ``distance_spread``: std /
    mean of the `distance` between up to `pairs` random pairs of rows (0 when
    every distance is 0). The same two for the flattened pixels (euclidean) are
    under ``raw_pixels``. ``collapsed`` is True when either of the embeddings'
    values is below `COLLAPSE_FRACTION` times the pixels'.
    """
    model = _spread(np.asarray(embeddings, np.float64), distance, seed, pairs)
    raw = _spread(np.asarray(images, np.float64).reshape(len(images), -1), "euclidean", seed, pairs)
    collapsed = any(model[key] < COLLAPSE_FRACTION * raw[key] for key in model)
    if not np.all(np.isfinite(embeddings)):
        collapsed = True
    return {**model, "raw_pixels": raw, "collapsed": bool(collapsed)}


def _spread(rows, distance, seed, pairs):
    scale = np.max(np.abs(rows)) if rows.size and np.all(np.isfinite(rows)) else 1.0
    rounded = np.round(rows / (scale or 1.0), 6)
    _, counts = np.unique(rounded, axis=0, return_counts=True)
    distinct = float(np.sum(counts == 1) / max(len(rows), 1))
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, len(rows), (2, pairs))
    keep = first != second
    values = paired_distance(rows[first[keep]], rows[second[keep]], distance)
    mean = float(np.mean(values)) if values.size else 0.0
    spread = float(np.std(values) / mean) if mean > 0 else 0.0
    return {"distinct_fraction": distinct, "distance_spread": spread}


def table(metrics):
    """The console table of a run's metrics (model beside raw pixels), as lines."""
    rows = []
    if "map_at_r" in metrics:
        baseline = metrics["raw_pixel_baseline"]
        rows.append(("metric", "model", "raw pixels"))
        for key in ("precision_at_1", "r_precision", "map_at_r", "recall_at_5", "recall_at_10"):
            rows.append((key, f"{metrics[key]:.4f}", f"{baseline[key]:.4f}"))
        verification = metrics["verification"]
    else:
        rows.append(("metric", "model", ""))
        verification = metrics
        for key in ("mean_cosine_similarity_anchor_positive", "mean_cosine_similarity_anchor_negative"):
            rows.append((key, f"{metrics[key]:.4f}", ""))
    rows.append(("pair best_accuracy", f"{verification['best_accuracy']:.4f}", ""))
    rows.append(("pair roc_auc", f"{verification['roc_auc']:.4f}", ""))
    collapse = metrics.get("collapse")
    if collapse:
        raw = collapse["raw_pixels"]
        rows.append(("distinct embeddings", f"{collapse['distinct_fraction']:.4f}", f"{raw['distinct_fraction']:.4f}"))
        rows.append(("distance spread", f"{collapse['distance_spread']:.4f}", f"{raw['distance_spread']:.4f}"))
    if metrics.get("train_seconds") is not None:
        rows.append(("train seconds", f"{metrics['train_seconds']:.0f}", ""))
    width = max(len(row[0]) for row in rows)
    lines = [f"{name:<{width}}  {model_value:>8}  {baseline_value:>10}" for name, model_value, baseline_value in rows]
    if collapse and collapse["collapsed"]:
        lines.append(
            "COLLAPSED: the embeddings are far less spread than the raw pixels (every image maps to nearly one "
            "point): lower the learning rate or check the data."
        )
    return lines


def _float32(embeddings):
    """Embeddings as float32 numpy (a mixed-precision model outputs bfloat16 or float16)."""
    return np.asarray(keras.ops.convert_to_numpy(embeddings)).astype(np.float32)
