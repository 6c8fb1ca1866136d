"""The proxy family: one learned vector per class (a proxy), and each embedding against every proxy.

pytorch-metric-learning's losses of the same names, with its defaults. Each
function takes integer `labels` [B], `embeddings` [B, D] and `proxies`
[C, D] (the class weights, one row per class; PML's `W` transposed for
ArcFace and CosFace, its `proxies` for Proxy-Anchor) and returns a scalar:

    s_ic = ⟨x̂_i, ŵ_c⟩   the cosine similarity of embedding i and proxy c (both L2-normalised),
    θ_i = arccos(s_{i, y_i})   the angle to its own class's proxy.

Memory is O(B·C): no pair of embeddings is formed. Every loss computes in
float32 (float64 stays float64) and is NaN when an embedding is. The proxies
are trained like any weight: they live in the training model, never in a
Keras `Loss` (which holds no variables).

- `arcface_loss`: additive angular margin (Deng et al. 2019).
- `cosface_loss`: additive cosine margin (Wang et al. 2018).
- `proxy_anchor_loss`: Kim et al. 2020.

Training them: the `Proxies` layer holds the weights in the training model
(``MiningModel(backbone, proxies=Proxies(num_classes))``, whose optimizer trains
them and whose ``model.keras`` saves them; ``embedding.keras`` never holds them),
and the `Loss` classes (`ArcFaceLoss`, `CosFaceLoss`, `ProxyAnchorLoss`) read
them from the model they are compiled into.
"""

import math

import keras
from keras import ops

from siamese_k3.checks import check_integer, check_labels, check_margin, check_positive_number
from siamese_k3.distances import inner_products, l2_normalize, to_float32
from siamese_k3.errors import SiameseK3Error
from siamese_k3.losses.base import LabelledLoss, at_least_one, keep_non_finite, masked_logsumexp, mean, witness

__all__ = [
    "arcface_loss",
    "cosface_loss",
    "proxy_anchor_loss",
    "Proxies",
    "ArcFaceLoss",
    "CosFaceLoss",
    "ProxyAnchorLoss",
]


def _cosines(labels, embeddings, proxies):
    """Cosine similarities [B, C] of embeddings and proxies, and the one-hot mask of each row's own class."""
    check_labels(labels, embeddings)
    embeddings, proxies = to_float32(embeddings), to_float32(proxies)
    cosines = inner_products(l2_normalize(embeddings), l2_normalize(proxies))
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    own = ops.cast(ops.one_hot(labels, ops.shape(proxies)[0]), "bool")
    return cosines, own


def _cross_entropy(logits, own):
    """Mean over rows of -log softmax(logits)_own = LSE_c(logits) - logits_own."""
    everything = ops.ones_like(own)
    target = ops.sum(ops.where(own, logits, 0.0), axis=1)
    return mean(masked_logsumexp(logits, everything) - target)


def arcface_loss(labels, embeddings, proxies, margin=28.6, scale=64.0):
    """ArcFace (PML `ArcFaceLoss`; `margin` in degrees, m = radians(margin)): softmax cross-entropy on

        logit_ic = scale · s_ic                      for c ≠ y_i
        logit_iy = scale · cos(θ_i + m)              if θ_i ≤ π - m
                   scale · (s_iy - m · sin(m))       otherwise (keeps the logit decreasing in θ)

    L = 1/B Σ_i -log softmax(logit_i)_{y_i}.
    """
    check_margin(margin)
    check_positive_number(scale, "scale")
    cosines, own = _cosines(labels, embeddings, proxies)
    m = math.radians(margin)
    target = ops.sum(ops.where(own, cosines, 0.0), axis=1, keepdims=True)
    angles = ops.arccos(ops.clip(target, -1.0, 1.0))
    modified = ops.where(angles <= math.pi - m, ops.cos(angles + m), target - m * math.sin(m))
    logits = scale * ops.where(own, modified, cosines)
    return keep_non_finite(_cross_entropy(logits, own), witness(embeddings))


def cosface_loss(labels, embeddings, proxies, margin=0.35, scale=64.0):
    """CosFace (PML `CosFaceLoss`): softmax cross-entropy on logit_ic = scale · (s_ic - m·[c = y_i]),

    L = 1/B Σ_i -log softmax(logit_i)_{y_i},   m = margin.
    """
    check_margin(margin)
    check_positive_number(scale, "scale")
    cosines, own = _cosines(labels, embeddings, proxies)
    logits = scale * ops.where(own, cosines - margin, cosines)
    return keep_non_finite(_cross_entropy(logits, own), witness(embeddings))


def proxy_anchor_loss(labels, embeddings, proxies, margin=0.1, alpha=32.0):
    """Proxy-Anchor (PML `ProxyAnchorLoss`): each proxy is an anchor over the batch,

        L = 1/|C⁺| Σ_{c ∈ C⁺} log(1 + Σ_{i: y_i = c} exp(-α (s_ic - δ)))
          + 1/C   Σ_c        log(1 + Σ_{i: y_i ≠ c} exp( α (s_ic + δ)))

    with δ = margin, α = alpha, C⁺ the classes present in the batch and C the
    number of proxies.
    """
    check_margin(margin)
    check_positive_number(alpha, "alpha")
    cosines, own = _cosines(labels, embeddings, proxies)
    by_class, members = ops.transpose(cosines), ops.transpose(own)  # [C, B]: each proxy a row
    positive = masked_logsumexp(-alpha * (by_class - margin), members, add_one=True)
    negative = masked_logsumexp(alpha * (by_class + margin), ops.logical_not(members), add_one=True)
    present = ops.sum(ops.cast(ops.any(members, axis=1), positive.dtype))
    loss = ops.sum(positive) / at_least_one(present) + mean(negative)
    return keep_non_finite(loss, witness(embeddings))


# --------------------------------------------------------------------------
# The proxies as weights of the training model, and the Loss classes that read them
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="siamese_k3")
class Proxies(keras.layers.Layer):
    """One trainable vector per class, [num_classes, D], for the proxy losses (D: the embedding size, at build).

    `lr_multiplier` k makes the proxies learn k times as fast as the backbone
    under Adam-type optimizers (PML's proxy learning-rate multiplier): the
    layer stores w / k and the losses read k · (w / k), so Adam's
    scale-free step on the stored weight is a k-times larger step on the
    proxies (k² under plain SGD). The initial proxies do not depend on k:
    standard normal draws (PML's default for ArcFace and CosFace).
    """

    def __init__(self, num_classes, lr_multiplier=1.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = check_integer(num_classes, "num_classes", minimum=2)
        self.lr_multiplier = check_positive_number(lr_multiplier, "lr_multiplier")

    def build(self, embedding_shape):
        scale = 1.0 / self.lr_multiplier
        self.stored = self.add_weight(
            shape=(self.num_classes, int(embedding_shape[-1])), name="proxies",
            initializer=keras.initializers.RandomNormal(stddev=scale),
        )
        self.built = True

    @property
    def proxies(self):
        """The proxies [num_classes, D] as the losses read them: k · the stored weight."""
        value = ops.convert_to_tensor(self.stored)
        return value if self.lr_multiplier == 1.0 else value * self.lr_multiplier

    def call(self, embeddings):
        return embeddings

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "lr_multiplier": self.lr_multiplier}


class ProxyLoss(LabelledLoss):
    """y_true = labels [B], y_pred = embeddings [B, D]; the proxies are those of the model it is compiled into.

    `siamese_k3.MiningModel` with `proxies=` binds them at `compile` (`bind`); the
    loss itself holds no variable and saves only its options.
    """

    _proxies = None

    def bind(self, proxies):
        """Read the proxies of this `Proxies` layer (the model's) from now on; None: `SiameseK3Error`."""
        self._proxies = proxies
        self._bound()

    def call(self, y_true, y_pred):
        labels, embeddings = self.gather(y_true, y_pred)
        return self.scaled(type(self).loss_fn(labels, embeddings, self._bound().proxies, **self.options))

    def _bound(self):
        """The bound `Proxies` layer; `SiameseK3Error` when there is none (the loss was not compiled into a model
        with proxies)."""
        if self._proxies is None:
            raise SiameseK3Error(
                f"{type(self).__name__} trains one proxy per class, which live in the model: compile it into "
                "siamese_k3.MiningModel(backbone, proxies=siamese_k3.Proxies(num_classes))."
            )
        return self._proxies


@keras.saving.register_keras_serializable(package="siamese_k3")
class ArcFaceLoss(ProxyLoss):
    """Keras `Loss` for `arcface_loss` (PML `ArcFaceLoss`; `margin` in degrees)."""

    loss_fn = staticmethod(arcface_loss)

    def __init__(self, margin=28.6, scale=64.0, name="arcface_loss", **kwargs):
        super().__init__(name=name, margin=margin, scale=scale, **kwargs)


@keras.saving.register_keras_serializable(package="siamese_k3")
class CosFaceLoss(ProxyLoss):
    """Keras `Loss` for `cosface_loss` (PML `CosFaceLoss`)."""

    loss_fn = staticmethod(cosface_loss)

    def __init__(self, margin=0.35, scale=64.0, name="cosface_loss", **kwargs):
        super().__init__(name=name, margin=margin, scale=scale, **kwargs)


@keras.saving.register_keras_serializable(package="siamese_k3")
class ProxyAnchorLoss(ProxyLoss):
    """Keras `Loss` for `proxy_anchor_loss` (PML `ProxyAnchorLoss`)."""

    loss_fn = staticmethod(proxy_anchor_loss)

    def __init__(self, margin=0.1, alpha=32.0, name="proxy_anchor_loss", **kwargs):
        super().__init__(name=name, margin=margin, alpha=alpha, **kwargs)
