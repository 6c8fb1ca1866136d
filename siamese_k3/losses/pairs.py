"""The pair and softmax families: every same-label pair of a batch is a positive, every other pair a negative.

pytorch-metric-learning's losses of the same names, with its defaults (its
default distance and reducer included), so a hyperparameter tuned there
carries over. Each function takes integer `labels` [B] and `embeddings`
[B, D] and returns a scalar; the pairs are those of the batch:

    P = {(i, j): y_i = y_j, i ≠ j}    (positives)      N = {(i, j): y_i ≠ y_j}    (negatives)
    P_i, N_i: the positives and negatives of anchor i.

s_ij = ⟨x̂_i, x̂_j⟩ is the cosine similarity of the L2-normalised embeddings,
d_ij the distance named by `distance` (`siamese_k3.distances`), relu(x) =
max(x, 0), softplus(x) = log(1 + exp(x)), LSE the log-sum-exp, and
sg(·) a stop-gradient (the value enters, no gradient flows through it).
"Mean of the non-zero" is PML's `AvgNonZeroReducer`: the mean over the terms
that are > 0, 0 when none is. Every loss computes in float32 (float64 stays
float64), in O(B²) memory, and is NaN when an embedding is.

- `contrastive_loss`: the classic Siamese pair loss (Hadsell et al. 2006).
- `multi_similarity_loss`: Wang et al. 2019, with its pair miner as an option.
- `circle_loss`: Sun et al. 2020.
- `ntxent_loss`: NT-Xent / InfoNCE (SimCLR, Chen et al. 2020) with labels.
- `supcon_loss`: supervised contrastive (Khosla et al. 2020).
"""

import math

import keras
from keras import ops

from siamese_k3.checks import check_labels, check_margin, check_positive_number
from siamese_k3.distances import check_distance, inner_products, l2_normalize, pairwise_distance, to_float32
from siamese_k3.losses.base import (
    LabelledLoss,
    at_least_one,
    avg_non_zero,
    keep_non_finite,
    largest_finite,
    masked_logsumexp,
    mean,
    pair_masks,
    witness,
)

__all__ = [
    "contrastive_loss",
    "multi_similarity_loss",
    "circle_loss",
    "ntxent_loss",
    "supcon_loss",
    "ContrastiveLoss",
    "MultiSimilarityLoss",
    "CircleLoss",
    "NTXentLoss",
    "SupConLoss",
]


def _similarities(labels, embeddings):
    """Cosine similarities [B, B] of the L2-normalised embeddings, and the positive and negative masks."""
    check_labels(labels, embeddings)
    embeddings = to_float32(embeddings)
    normalized = l2_normalize(embeddings)
    positive, negative = pair_masks(labels)
    return inner_products(normalized, normalized), positive, negative


def contrastive_loss(labels, embeddings, pos_margin=0.0, neg_margin=1.0, distance="euclidean", normalize=True):
    """The contrastive pair loss (PML `ContrastiveLoss`, its defaults: normalised embeddings, euclidean).

        L = mean of the non-zero { relu(d_ij - m_pos) : (i, j) ∈ P }
          + mean of the non-zero { relu(m_neg - d_ij) : (i, j) ∈ N }

    Positives closer than `pos_margin` and negatives farther than `neg_margin`
    cost nothing, and do not dilute the mean of the others. `normalize`
    L2-normalises the embeddings first, as PML's default `LpDistance` does.
    """
    check_margin(pos_margin, "pos_margin")
    check_margin(neg_margin, "neg_margin")
    check_distance(distance)
    check_labels(labels, embeddings)
    x = to_float32(embeddings)
    x = l2_normalize(x) if normalize else x
    distances = pairwise_distance(x, distance=distance)
    positive, negative = pair_masks(labels)
    loss = avg_non_zero(ops.relu(distances - pos_margin), positive) + avg_non_zero(
        ops.relu(neg_margin - distances), negative
    )
    return keep_non_finite(loss, witness(embeddings))


def multi_similarity_loss(labels, embeddings, alpha=2.0, beta=50.0, base=0.5, epsilon=None):
    """The multi-similarity loss (PML `MultiSimilarityLoss`: cosine similarity, the mean over anchors).

        L = 1/B Σ_i [ 1/α · log(1 + Σ_{j ∈ P_i} exp(-α (s_ij - λ)))
                    + 1/β · log(1 + Σ_{k ∈ N_i} exp( β (s_ik - λ))) ],    λ = base

    With `epsilon` (PML's `MultiSimilarityMiner`, 0.1 in the paper) only the
    informative pairs enter: a positive that is less similar than the anchor's
    most similar negative plus ε, s_ij - ε < max_{k ∈ N_i} s_ik, and a negative
    more similar than its least similar positive minus ε, s_ik + ε > min_{j ∈ P_i}
    s_ij (the comparison takes no gradient). None: every pair of the batch.
    """
    for value, name in ((alpha, "alpha"), (beta, "beta")):
        check_positive_number(value, name)
    check_margin(base, "base")
    similarities, positive, negative = _similarities(labels, embeddings)
    if epsilon is not None:
        check_margin(epsilon, "epsilon")
        positive, negative = _multi_similarity_pairs(similarities, positive, negative, epsilon)
    positive_term = masked_logsumexp(-alpha * (similarities - base), positive, add_one=True) / alpha
    negative_term = masked_logsumexp(beta * (similarities - base), negative, add_one=True) / beta
    return keep_non_finite(mean(positive_term + negative_term), witness(embeddings))


def _multi_similarity_pairs(similarities, positive, negative, epsilon):
    """The positive and negative masks that PML's `MultiSimilarityMiner(epsilon)` keeps (see the loss)."""
    fixed = ops.stop_gradient(similarities)
    large = largest_finite(fixed)
    hardest_negative = ops.max(ops.where(negative, fixed, -large), axis=1, keepdims=True)
    easiest_positive = ops.min(ops.where(positive, fixed, large), axis=1, keepdims=True)
    hard_positive = ops.logical_and(positive, fixed - epsilon < hardest_negative)
    hard_negative = ops.logical_and(negative, fixed + epsilon > easiest_positive)
    # PML's miner returns no pair at all when the batch has no positive or no negative pair
    both = ops.logical_and(ops.any(positive), ops.any(negative))
    return ops.logical_and(hard_positive, both), ops.logical_and(hard_negative, both)


def circle_loss(labels, embeddings, m=0.4, gamma=80.0):
    """The circle loss (PML `CircleLoss`, cosine similarity; the mean over the anchors with a positive and a negative).

        a_p = relu(1 + m - sg(s_ij)),  a_n = relu(sg(s_ik) + m),   Δ_p = 1 - m,  Δ_n = m
        L_i = softplus( LSE_{j ∈ P_i}(-γ a_p (s_ij - Δ_p)) + LSE_{k ∈ N_i}(γ a_n (s_ik - Δ_n)) )

    L is the mean of the non-zero L_i; an anchor without a positive or without
    a negative has none.
    """
    check_margin(m, "m")
    check_positive_number(gamma, "gamma")
    similarities, positive, negative = _similarities(labels, embeddings)
    fixed = ops.stop_gradient(similarities)
    positive_logits = -gamma * ops.relu(1.0 + m - fixed) * (similarities - (1.0 - m))
    negative_logits = gamma * ops.relu(fixed + m) * (similarities - m)
    losses = ops.softplus(
        masked_logsumexp(positive_logits, positive) + masked_logsumexp(negative_logits, negative)
    )
    anchored = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    return keep_non_finite(avg_non_zero(losses, anchored), witness(embeddings))


def ntxent_loss(labels, embeddings, temperature=0.07):
    """NT-Xent (InfoNCE) with labels (PML `NTXentLoss`: cosine similarity, the mean over the positive pairs).

        L = 1/|P| Σ_{(i, j) ∈ P} -log( exp(s_ij / τ) / (exp(s_ij / τ) + Σ_{k ∈ N_i} exp(s_ik / τ)) )
          = 1/|P| Σ_{(i, j) ∈ P} softplus( LSE_{k ∈ N_i}(s_ik / τ) - s_ij / τ )

    0 when the batch has no positive or no negative pair.
    """
    check_positive_number(temperature, "temperature")
    similarities, positive, negative = _similarities(labels, embeddings)
    scaled = similarities / temperature
    negatives = masked_logsumexp(scaled, negative, empty=-math.inf)  # -inf: softplus(-inf) = 0
    per_pair = ops.where(positive, ops.softplus(negatives - scaled), 0.0)
    count = ops.sum(ops.cast(positive, scaled.dtype))
    loss = ops.sum(per_pair) / at_least_one(count)
    loss = ops.where(ops.any(negative), loss, 0.0)
    return keep_non_finite(loss, witness(embeddings))


def supcon_loss(labels, embeddings, temperature=0.1):
    """Supervised contrastive loss (PML `SupConLoss`: cosine similarity, the mean of the non-zero anchors).

        L_i = -1/|P_i| Σ_{j ∈ P_i} ( s_ij / τ - LSE_{k ∈ P_i ∪ N_i}(s_ik / τ) )

    L is the mean of the non-zero L_i (anchors with a positive); 0 when the batch
    has no positive or no negative pair.
    """
    check_positive_number(temperature, "temperature")
    similarities, positive, negative = _similarities(labels, embeddings)
    scaled = similarities / temperature
    log_probabilities = scaled - masked_logsumexp(scaled, ops.logical_or(positive, negative))
    mask = ops.cast(positive, scaled.dtype)
    losses = -ops.sum(ops.where(positive, log_probabilities, 0.0), axis=1) / at_least_one(ops.sum(mask, axis=1))
    loss = avg_non_zero(losses, ops.any(positive, axis=1))
    loss = ops.where(ops.logical_and(ops.any(positive), ops.any(negative)), loss, 0.0)
    return keep_non_finite(loss, witness(embeddings))


# --------------------------------------------------------------------------
# Keras Loss classes: configuration only, the functions above do the work.
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="siamese_k3")
class ContrastiveLoss(LabelledLoss):
    """Keras `Loss` for `contrastive_loss` (PML `ContrastiveLoss`)."""

    loss_fn = staticmethod(contrastive_loss)

    def __init__(self, pos_margin=0.0, neg_margin=1.0, distance="euclidean", normalize=True,
                 name="contrastive_loss", **kwargs):
        super().__init__(name=name, pos_margin=pos_margin, neg_margin=neg_margin, distance=distance,
                         normalize=normalize, **kwargs)


@keras.saving.register_keras_serializable(package="siamese_k3")
class MultiSimilarityLoss(LabelledLoss):
    """Keras `Loss` for `multi_similarity_loss` (PML `MultiSimilarityLoss`; `epsilon`: its `MultiSimilarityMiner`)."""

    loss_fn = staticmethod(multi_similarity_loss)

    def __init__(self, alpha=2.0, beta=50.0, base=0.5, epsilon=None, name="multi_similarity_loss", **kwargs):
        super().__init__(name=name, alpha=alpha, beta=beta, base=base, epsilon=epsilon, **kwargs)


@keras.saving.register_keras_serializable(package="siamese_k3")
class CircleLoss(LabelledLoss):
    """Keras `Loss` for `circle_loss` (PML `CircleLoss`)."""

    loss_fn = staticmethod(circle_loss)

    def __init__(self, m=0.4, gamma=80.0, name="circle_loss", **kwargs):
        super().__init__(name=name, m=m, gamma=gamma, **kwargs)


@keras.saving.register_keras_serializable(package="siamese_k3")
class NTXentLoss(LabelledLoss):
    """Keras `Loss` for `ntxent_loss` (PML `NTXentLoss`)."""

    loss_fn = staticmethod(ntxent_loss)

    def __init__(self, temperature=0.07, name="ntxent_loss", **kwargs):
        super().__init__(name=name, temperature=temperature, **kwargs)


@keras.saving.register_keras_serializable(package="siamese_k3")
class SupConLoss(LabelledLoss):
    """Keras `Loss` for `supcon_loss` (PML `SupConLoss`)."""

    loss_fn = staticmethod(supcon_loss)

    def __init__(self, temperature=0.1, name="supcon_loss", **kwargs):
        super().__init__(name=name, temperature=temperature, **kwargs)
