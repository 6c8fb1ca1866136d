"""Distance thresholds calibrated on held-out labelled pairs, and "same or not" answers at them. Numpy.

    calibration = calibrate(distances, is_same, target_precision=0.95)   # held-out pairs
    calibration = calibrate_embeddings(embeddings, labels, "cosine", target_precision=0.95)
    answer = match(index.search(queries, k=1).distances, calibration)    # answer.is_same, answer.expected_precision
    calibration.save("runs/fmnist/calibration.json"); calibration.plot("runs/fmnist/calibration.png")

A pair is predicted "same" iff its distance d <= t. Over the n pairs with flags same_i:

    TP(t) = #{i : same_i and d_i <= t}       FP(t) = #{i : not same_i and d_i <= t}
    precision(t) = TP / (TP + FP)            (1 when no pair has d <= t)
    recall(t)    = TP / #{i : same_i}
    F1(t)        = 2 TP / (2 TP + FP + FN) = 2 P R / (P + R)   (0 when TP = 0)

The candidate thresholds are the distinct distances. The chosen one:

- ``target_precision=p``: the largest t with precision(t) >= p. Recall only grows with t, so
  this is the threshold of highest recall at that precision.
- ``target_recall=r``: the smallest t with recall(t) >= r. FP only grows with t, so this is
  the threshold with the fewest false matches at that recall.
- neither: the t of highest F1 (the smallest of equals).

The precision and recall a `Calibration` reports are those measured on its pairs: the
expected ones on new pairs drawn like them, within sampling error (about
sqrt(p (1 - p) / (TP + FP)) for precision).
"""

import dataclasses
import json
import math
import numbers
import os
from typing import NamedTuple

import numpy as np

from siamese_k3.checks import check_choice, check_distance, check_integer
from siamese_k3.errors import SiameseK3Error
from siamese_k3.search.kernel import paired_distance
from siamese_k3.files import write_json
from siamese_k3.plots import plot_calibration

CURVE_POINTS = 1000
OBJECTIVES = ("precision", "recall", "f1")


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A chosen distance threshold, its precision, recall and F1 on the calibration pairs, and the curve.

    `thresholds`, `precisions`, `recalls`, `f1s`: the curve at up to `CURVE_POINTS` thresholds
    spread evenly over the ranks of the distinct distances (always including the first, the
    last and the chosen one). `objective`: "precision", "recall" or "f1"; `target`: the
    precision or recall asked for (None for "f1").
    """

    threshold: float
    precision: float
    recall: float
    f1: float
    objective: str
    target: float | None
    num_same: int
    num_different: int
    thresholds: np.ndarray
    precisions: np.ndarray
    recalls: np.ndarray
    f1s: np.ndarray
    distance: str | None = None
    fingerprint: str | None = None  # of the model whose distances chose it (a run's `RunFolder.fingerprint`)

    def to_dict(self):
        return {field.name: _plain(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values):
        values = dict(values)
        for name in ("thresholds", "precisions", "recalls", "f1s"):
            values[name] = np.asarray(values[name], dtype=np.float64)
        return cls(**values)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))

    def save(self, path):
        """The calibration as JSON at `path` (atomically); returns `path`."""
        path = os.fspath(path)
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path, fingerprint=None):
        """The calibration saved at `path`; with `fingerprint`, refuse one chosen with another model's distances.

        A calibration saved without a fingerprint (before 0.3) is accepted.
        """
        try:
            with open(path) as handle:
                calibration = cls.from_dict(json.load(handle))
        except FileNotFoundError:
            raise SiameseK3Error(f"No calibration at {path}: calibrate first (calibrate(...).save(path)).") from None
        except (OSError, ValueError, TypeError) as error:
            raise SiameseK3Error(f"Cannot read the calibration {path} ({error}): calibrate again.") from None
        if fingerprint is not None and calibration.fingerprint not in (None, fingerprint):
            raise SiameseK3Error(
                f"The calibration {path} was chosen with another model (fingerprint {calibration.fingerprint}, "
                f"not {fingerprint}): calibrate again with this model."
            )
        return calibration

    def plot(self, path, title=None):
        """Precision, recall and F1 against the threshold, the chosen one marked, as a PNG (`plots.plot_calibration`)."""
        return plot_calibration(self.thresholds, self.precisions, self.recalls, self.f1s, path,
                                threshold=self.threshold, title=title or _describe(self))  # fmt: skip

    def __post_init__(self):
        """Refuse fields no calibration has: `SiameseK3Error` for a bad value, TypeError for a non-number."""
        _check_real("threshold", self.threshold)
        for name in ("precision", "recall", "f1"):
            _check_real(name, getattr(self, name), 0.0, 1.0)
        check_choice(self.objective, OBJECTIVES, "objective")
        if self.target is not None:
            _check_real("target", self.target, 0.0, 1.0)
        for name in ("num_same", "num_different"):
            check_integer(getattr(self, name), name, minimum=0)
        if self.distance is not None:
            check_distance(self.distance)
        curve = {name: np.asarray(getattr(self, name), dtype=np.float64)
                 for name in ("thresholds", "precisions", "recalls", "f1s")}  # fmt: skip
        if len({values.shape for values in curve.values()}) != 1 or curve["thresholds"].ndim != 1:
            raise SiameseK3Error(
                "thresholds, precisions, recalls and f1s are one curve: give four 1-d arrays of one length; got "
                f"shapes {', '.join(str(values.shape) for values in curve.values())}."
            )
        for name, values in curve.items():
            object.__setattr__(self, name, values)


class Match(NamedTuple):
    """"Same or not" per distance, at `threshold`, with the calibration's precision and recall there."""

    is_same: np.ndarray
    threshold: float
    expected_precision: float
    expected_recall: float


def precision_recall_curve(distances, is_same):
    """(thresholds, precision, recall, f1) at every distinct distance t, as in the module docstring."""
    distances, same = _pairs(distances, is_same)
    order = np.argsort(distances, kind="stable")
    sorted_distances, sorted_same = distances[order], same[order]
    last_of_value = np.concatenate([np.flatnonzero(np.diff(sorted_distances) > 0), [len(sorted_distances) - 1]])
    true_positives = np.cumsum(sorted_same)[last_of_value].astype(np.float64)
    predicted = (last_of_value + 1).astype(np.float64)
    num_same = float(same.sum())
    precision = true_positives / predicted
    recall = true_positives / num_same
    f1 = 2.0 * true_positives / (predicted + num_same)  # 2TP / (2TP + FP + FN); TP + FP = predicted, TP + FN = num_same
    return sorted_distances[last_of_value], precision, recall, f1


def calibrate(distances, is_same, target_precision=None, target_recall=None, distance=None):
    """The threshold for `target_precision`, for `target_recall`, or of best F1 (module docstring): a `Calibration`.

    Args:
        distances: [n] distances of held-out pairs (not the pairs the model trained on).
        is_same: [n] flags, True where the pair shows the same class.
        target_precision: the precision to reach, in (0, 1]; not with `target_recall`.
        target_recall: the recall to reach, in (0, 1]; not with `target_precision`.
        distance: the name of the distance, kept with the calibration (a threshold means
            nothing in another one).

    Raises SiameseK3Error when no threshold reaches the target (the message gives the best
    reached) or when the pairs hold no "same" pair.
    """
    if target_precision is not None and target_recall is not None:
        raise SiameseK3Error("Give target_precision or target_recall, not both: one fixes the threshold.")
    objective, target = "f1", None
    for name, value in (("precision", target_precision), ("recall", target_recall)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 < value <= 1:
                raise SiameseK3Error(f"target_{name}={value!r} must be a number in (0, 1], such as 0.95.")
            objective, target = name, float(value)
    thresholds, precision, recall, f1 = precision_recall_curve(distances, is_same)
    if objective == "precision":
        reaching = np.flatnonzero(precision >= target)
        if not reaching.size:
            raise SiameseK3Error(
                f"No threshold reaches precision {target} on these pairs (the best is {precision.max():.4f}): "
                "lower target_precision, or improve the embedding."
            )
        chosen = int(reaching[-1])
    elif objective == "recall":
        chosen = int(np.flatnonzero(recall >= target)[0])  # recall reaches 1 at the largest distance
    else:
        chosen = int(np.argmax(f1))
    same = np.asarray(is_same).reshape(-1).astype(bool)
    keep = _curve_points(len(thresholds), chosen)
    return Calibration(
        threshold=float(thresholds[chosen]), precision=float(precision[chosen]), recall=float(recall[chosen]),
        f1=float(f1[chosen]), objective=objective, target=target, num_same=int(same.sum()),
        num_different=int((~same).sum()), thresholds=thresholds[keep], precisions=precision[keep],
        recalls=recall[keep], f1s=f1[keep], distance=distance,
    )  # fmt: skip


def labelled_pairs(embeddings, labels, distance="euclidean", max_pairs=1_000_000, seed=0):
    """(distances, is_same) of pairs of `embeddings`: every pair i < j, or `max_pairs` drawn at random.

    When N (N - 1) / 2 <= `max_pairs` every unordered pair is used once; otherwise `max_pairs`
    pairs (i, j), i != j, are drawn uniformly with replacement (`seed`), so the share of "same"
    pairs, and the precision measured on them, are those of all pairs.
    """
    embeddings = np.asarray(embeddings)
    labels = np.asarray(labels).reshape(-1)
    if embeddings.ndim != 2 or len(embeddings) != len(labels) or len(labels) < 2:
        raise SiameseK3Error(
            f"labelled_pairs needs embeddings [N, D] with N >= 2 and one label per row; got {embeddings.shape} "
            f"and {len(labels)} labels."
        )
    count = len(labels)
    if count * (count - 1) // 2 <= max_pairs:
        first, second = np.triu_indices(count, k=1)
    else:
        rng = np.random.default_rng(seed)
        first = rng.integers(0, count, int(max_pairs))
        second = (first + rng.integers(1, count, int(max_pairs))) % count  # any other item, uniformly
    return paired_distance(embeddings[first], embeddings[second], distance), labels[first] == labels[second]


def calibrate_embeddings(embeddings, labels, distance="euclidean", target_precision=None, target_recall=None,
                         max_pairs=1_000_000, seed=0):  # fmt: skip
    """`calibrate` on the `labelled_pairs` of held-out embeddings and their labels."""
    distances, is_same = labelled_pairs(embeddings, labels, distance, max_pairs, seed)
    return calibrate(distances, is_same, target_precision, target_recall, distance=distance)


def match(distances, calibration):
    """"Same or not" at the calibrated threshold: `Match(is_same, threshold, expected_precision, expected_recall)`.

    ``is_same = distances <= calibration.threshold``, elementwise, for any shape: the
    distances of pairs ([n]) or of queries' neighbours (`SearchResult.distances`, [Q, k];
    inf, nothing found, is never "same"). The expected precision and recall are the
    calibration's at its threshold.
    """
    distances = np.asarray(distances, dtype=np.float64)
    if np.any(np.isnan(distances)):
        raise SiameseK3Error("match: distances hold NaN; check the embeddings.")
    return Match(distances <= calibration.threshold, calibration.threshold, calibration.precision, calibration.recall)


def _pairs(distances, is_same):
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    same = np.asarray(is_same).reshape(-1)
    if distances.shape != same.shape or not distances.size:
        raise SiameseK3Error(
            f"{distances.size} distances and {same.size} is_same flags: give one flag per pair, at least one pair."
        )
    if not np.all(np.isfinite(distances)):
        raise SiameseK3Error("distances hold NaN or inf: check the embeddings.")
    same = same.astype(bool)
    if not same.any():
        raise SiameseK3Error("No pair is 'same': calibration needs pairs of the same class (and of different ones).")
    return distances, same


def _check_real(name, value, low=None, high=None):
    """`value` if it is a finite real number in [low, high]; TypeError for a non-number, else `SiameseK3Error`."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}.")
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = "" if low is None else f" in [{low:g}, {high:g}]"
        raise SiameseK3Error(f"{name}={value!r} must be a finite number{bounds}.")
    return value


def _curve_points(count, chosen):
    if count <= CURVE_POINTS:
        return np.arange(count)
    return np.unique(np.concatenate([np.linspace(0, count - 1, CURVE_POINTS).round().astype(int), [chosen]]))


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value


def _describe(calibration):
    if calibration.objective == "f1":
        goal = "best F1"
    else:
        goal = f"{calibration.objective} >= {calibration.target:g}"
    return (f"{goal}: threshold {calibration.threshold:.4g} (precision {calibration.precision:.3f}, "
            f"recall {calibration.recall:.3f})")  # fmt: skip
