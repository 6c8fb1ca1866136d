"""The triplet family: plain functions of tensors, and thin Keras `Loss` classes.

Offline triplets (the seeds' setting) use `triplet_loss` on explicit
(anchor, positive, negative) embeddings. Online mining (the TensorFlow Addons
successors) uses `batch_all_triplet_loss`, `batch_hard_triplet_loss` and
`semi_hard_triplet_loss` on a labelled batch of embeddings.

Notation: d is the distance named by `distance` (see `siamese_k3.distances`),
m the margin, relu(x) = max(x, 0), softplus(x) = log(1 + exp(x)).
Every loss computes in float32, whatever the input dtype, and keeps its
working memory O(B²) for a batch of B embeddings (no B × B × B tensor).
Every loss raises ValueError for a margin that is not a finite number >= 0, and
the mining losses for labels that are not one integer class id per embedding
(`siamese_k3.checks`: static shapes and dtypes only, so they still trace under jit).
"""

import math

import keras
from keras import ops

from siamese_k3.checks import check_labels, check_margin
from siamese_k3.distances import (
    check_distance,
    l2_normalize,
    paired_distance,
    pairwise_distance,
    to_float32,
)
from siamese_k3.losses.base import (
    ConfiguredLoss,
    LabelledLoss,
    keep_non_finite,
    masked_mean,
    pair_masks,
    witness,
)

__all__ = [
    "triplet_loss",
    "batch_all_triplet_loss",
    "batch_hard_triplet_loss",
    "semi_hard_triplet_loss",
    "fraction_positive_triplets",
    "TripletLoss",
    "TripletBatchAllLoss",
    "TripletHardLoss",
    "TripletSemiHardLoss",
]


def triplet_loss(anchor, positive, negative, margin=1.0, distance="euclidean", soft=False):
    """Per-sample triplet loss (Schroff et al. 2015; soft margin: Hermans et al. 2017).

        loss_i = relu(d(a_i, p_i) - d(a_i, n_i) + m)      (soft=False)
        loss_i = softplus(d(a_i, p_i) - d(a_i, n_i))      (soft=True, m unused)

    Args:
        anchor: embeddings [B, D] (a_i), any float dtype.
        positive: embeddings [B, D] (p_i), any float dtype.
        negative: embeddings [B, D] (n_i), any float dtype.
        margin: m, a float.
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        soft: use the soft margin.

    Returns:
        float32 tensor [B], one loss per triplet (not reduced).

    Example:
        >>> triplet_loss([[0.0, 0.0]], [[0.0, 1.0]], [[0.0, 1.5]], margin=1.0)
        [0.5]
    """
    check_margin(margin)
    difference = paired_distance(anchor, positive, distance) - paired_distance(
        anchor, negative, distance
    )
    if soft:
        return ops.softplus(difference)
    return keep_non_finite(ops.relu(difference + margin), difference)


# --------------------------------------------------------------------------
# Online mining
# --------------------------------------------------------------------------


def _batch_masks(labels, embeddings, margin, distance, normalize):
    """Distances [B, B] and the boolean masks of positive pairs and negatives.

    positive[a, p] = label(a) == label(p) and a != p; negative[a, n] = label(a) != label(n).
    Raises ValueError for a bad margin or distance, or labels that are not one
    integer class id per embedding (as far as static shapes and dtypes tell).
    """
    check_margin(margin)
    check_distance(distance)
    check_labels(labels, embeddings)
    embeddings = to_float32(embeddings)
    if normalize:
        embeddings = l2_normalize(embeddings)
    positive, negative = pair_masks(labels)
    return pairwise_distance(embeddings, distance=distance), positive, negative





def _count_sorted(sorted_rows, queries, strict):
    """Per row b: how many entries of sorted_rows[b] are < (strict) or <= queries[b, j].

    A vectorised bisection (numpy's searchsorted, one sorted row per query
    row) in O(B·M·log N) time and O(B·M) memory; exact comparisons, so ties
    are handled exactly. Not differentiable: it returns integer positions.
    With a static row length N the ⌈log₂(N + 1)⌉ steps are unrolled; with a
    dynamic one (a TensorFlow graph traced for any batch size, as keras' `fit`
    traces it) they run in one `while_loop` until every interval is closed,
    so the graph holds one step, not the 31 that 2³¹ entries would need.
    """
    length = sorted_rows.shape[1]
    low = ops.zeros(ops.shape(queries), "int32")
    high = low + ops.cast(ops.shape(sorted_rows)[1], "int32")
    last = high - 1

    def step(low, high):
        middle = (low + high) // 2
        probe = ops.take_along_axis(sorted_rows, ops.minimum(middle, last), axis=1)
        below = probe < queries if strict else probe <= queries
        open_ = low < high
        low = ops.where(ops.logical_and(open_, below), middle + 1, low)
        high = ops.where(ops.logical_and(open_, ops.logical_not(below)), middle, high)
        return low, high

    if length is None:
        low, _ = ops.while_loop(lambda low, high: ops.any(low < high), step, (low, high))
        return low
    for _ in range(max(1, math.ceil(math.log2(length + 1)))):
        low, high = step(low, high)
    return low


def _sorted_negatives(distances, negative):
    """Each anchor's negative distances in ascending order (non-negatives last).

    Returns (order, sorted_values): `order[a]` are column indices sorting row a,
    `sorted_values` the (gradient-free) distances in that order with +inf
    where the column is not a negative of a.
    """
    masked = ops.where(negative, ops.stop_gradient(distances), float("inf"))
    order = ops.argsort(masked, axis=1)
    return order, ops.take_along_axis(masked, order, axis=1)


def _batch_all_terms(labels, embeddings, margin, distance, normalize):
    """(sum of triplet losses, #triplets with loss > 0, #valid triplets)."""
    distances, positive, negative = _batch_masks(labels, embeddings, margin, distance, normalize)
    order, sorted_values = _sorted_negatives(distances, negative)
    # Triplet (a, p, n) has loss > 0 iff d(a, n) < d(a, p) + m: count such n per (a, p).
    threshold = ops.stop_gradient(distances) + margin
    active = _count_sorted(sorted_values, threshold, strict=True)
    # sum over those n of (d(a,p) + m - d(a,n)) = count * (d(a,p) + m) - prefix_sum(count).
    sorted_distances = ops.take_along_axis(distances, order, axis=1)
    sorted_distances = ops.where(ops.isfinite(sorted_values), sorted_distances, 0.0)
    prefix = ops.cumsum(sorted_distances, axis=1)
    taken = ops.take_along_axis(prefix, ops.maximum(active - 1, 0), axis=1)
    taken = ops.where(active > 0, taken, 0.0)
    active_f = ops.cast(active, "float32")
    pair_sums = active_f * (distances + margin) - taken
    positive_f = ops.cast(positive, "float32")
    num_negatives = ops.sum(ops.cast(negative, "float32"), axis=1, keepdims=True)
    return (
        ops.sum(pair_sums * positive_f),
        ops.sum(active_f * positive_f),
        ops.sum(num_negatives * positive_f),
    )


def batch_all_triplet_loss(labels, embeddings, margin=1.0, distance="euclidean", normalize=False):
    """Batch-all triplet loss over every valid triplet of a labelled batch.

    Valid triplets are all (a, p, n) with a != p, label(a) == label(p) != label(n).

        loss = sum_valid relu(d(a, p) - d(a, n) + m) / #{valid triplets with loss > 0}

    and 0.0 when no valid triplet has a positive loss (one class, all-distinct
    labels, or everything already separated by the margin).

    Args:
        labels: integer labels, shape [B] or [B, 1].
        embeddings: [B, D], any float dtype (computed in float32).
        margin: m.
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        normalize: L2-normalise the embeddings first.

    Returns:
        float32 scalar.
    """
    total, num_positive, _ = _batch_all_terms(labels, embeddings, margin, distance, normalize)
    return keep_non_finite(total / ops.maximum(num_positive, 1.0), witness(embeddings))


def fraction_positive_triplets(labels, embeddings, margin=1.0, distance="euclidean", normalize=False):
    """The fraction #{valid triplets with relu(d(a,p) - d(a,n) + m) > 0} / #{valid triplets}; 0.0 when none are valid."""
    _, num_positive, num_valid = _batch_all_terms(labels, embeddings, margin, distance, normalize)
    return keep_non_finite(num_positive / ops.maximum(num_valid, 1.0), witness(embeddings))


def batch_hard_triplet_loss(
    labels, embeddings, margin=1.0, distance="euclidean", soft=False, normalize=False
):
    """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss").

    For every anchor a with at least one positive and one negative:

        hardest_pos(a) = max_{p: label(p) == label(a), p != a} d(a, p)
        hardest_neg(a) = min_{n: label(n) != label(a)} d(a, n)
        loss(a) = relu(hardest_pos(a) - hardest_neg(a) + m)   (soft=False)
        loss(a) = softplus(hardest_pos(a) - hardest_neg(a))   (soft=True)

    averaged over those anchors; 0.0 when there are none.

    Args: as `batch_all_triplet_loss`, plus `soft` for the soft margin.

    Returns:
        float32 scalar.
    """
    distances, positive, negative = _batch_masks(labels, embeddings, margin, distance, normalize)
    # Distances are >= 0, so 0 is neutral for the max; the row max is neutral for the min.
    hardest_positive = ops.max(ops.where(positive, distances, 0.0), axis=1)
    row_max = ops.max(distances, axis=1, keepdims=True)
    hardest_negative = ops.min(ops.where(negative, distances, row_max), axis=1)
    difference = hardest_positive - hardest_negative
    per_anchor = ops.softplus(difference) if soft else ops.relu(difference + margin)
    valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    return keep_non_finite(masked_mean(per_anchor, valid), witness(embeddings))


def semi_hard_triplet_loss(labels, embeddings, margin=1.0, distance="euclidean", normalize=False):
    """Semi-hard triplet loss with TensorFlow Addons' semantics (Schroff et al. 2015, FaceNet).

    For every positive pair (a, p), a != p, label(a) == label(p), whose anchor
    has at least one negative:

        neg(a, p) = min {d(a, n) : label(n) != label(a), d(a, n) > d(a, p)}
                    or, if that set is empty, max {d(a, n) : label(n) != label(a)}
        loss(a, p) = relu(d(a, p) - neg(a, p) + m)

    averaged over those pairs; 0.0 when there are none.

    Each anchor's negatives are sorted once and d(a, p) is located among them
    by bisection, so memory is O(B²) (TF Addons built a B × B × B tensor).

    Args: as `batch_all_triplet_loss`.

    Returns:
        float32 scalar.
    """
    distances, positive, negative = _batch_masks(labels, embeddings, margin, distance, normalize)
    order, sorted_values = _sorted_negatives(distances, negative)
    num_negatives = ops.sum(ops.cast(negative, "int32"), axis=1, keepdims=True)
    closer = _count_sorted(sorted_values, ops.stop_gradient(distances), strict=False)
    # Position (in sorted order) of the first negative farther than the
    # positive, else of the farthest negative.
    position = ops.where(closer < num_negatives, closer, num_negatives - 1)
    position = ops.maximum(position, 0)
    chosen = ops.take_along_axis(order, position, axis=1)
    negative_distance = ops.take_along_axis(distances, chosen, axis=1)
    per_pair = ops.relu(distances - negative_distance + margin)
    valid = ops.logical_and(positive, num_negatives > 0)
    return keep_non_finite(masked_mean(per_pair, valid), witness(embeddings))


# --------------------------------------------------------------------------
# Keras Loss classes: configuration only, the functions above do the work.
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="siamese_k3")
class TripletLoss(ConfiguredLoss):
    """`triplet_loss` for a model whose output concatenates [anchor | positive | negative].

    `y_pred` has shape [B, 3·D] (seed 001's concatenated embeddings); `y_true`
    is ignored. Returns the mean of the per-triplet losses.
    """

    def __init__(self, margin=1.0, distance="euclidean", soft=False, name="triplet_loss", **kwargs):
        super().__init__(name=name, margin=margin, distance=distance, soft=soft, **kwargs)

    def call(self, y_true, y_pred):
        anchor, positive, negative = ops.split(y_pred, 3, axis=-1)
        return triplet_loss(anchor, positive, negative, **self.options)


@keras.saving.register_keras_serializable(package="siamese_k3")
class TripletBatchAllLoss(LabelledLoss):
    """Keras `Loss` for `batch_all_triplet_loss`."""

    loss_fn = staticmethod(batch_all_triplet_loss)

    def __init__(self, margin=1.0, distance="euclidean", normalize=False, name="triplet_batch_all_loss", **kwargs):
        super().__init__(name=name, margin=margin, distance=distance, normalize=normalize, **kwargs)


@keras.saving.register_keras_serializable(package="siamese_k3")
class TripletHardLoss(LabelledLoss):
    """Keras `Loss` for `batch_hard_triplet_loss` (TF Addons' `TripletHardLoss`)."""

    loss_fn = staticmethod(batch_hard_triplet_loss)

    def __init__(
        self, margin=1.0, distance="euclidean", soft=False, normalize=False, name="triplet_hard_loss", **kwargs
    ):
        super().__init__(name=name, margin=margin, distance=distance, soft=soft, normalize=normalize, **kwargs)


@keras.saving.register_keras_serializable(package="siamese_k3")
class TripletSemiHardLoss(LabelledLoss):
    """Keras `Loss` for `semi_hard_triplet_loss` (TF Addons' `TripletSemiHardLoss`)."""

    loss_fn = staticmethod(semi_hard_triplet_loss)

    def __init__(self, margin=1.0, distance="euclidean", normalize=False, name="triplet_semi_hard_loss", **kwargs):
        super().__init__(name=name, margin=margin, distance=distance, normalize=normalize, **kwargs)
