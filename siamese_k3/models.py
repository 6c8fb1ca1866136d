"""The shared-backbone Siamese model, trained with a triplet loss on any backend."""

import keras
from keras import ops

from siamese_k3.distances import check_distance
from siamese_k3.losses import triplet_loss

TRIPLET_KEYS = ("anchor", "positive", "negative")


def split_triplet(inputs):
    """(anchor, positive, negative) from a tuple/list of three or a dict with those keys."""
    if isinstance(inputs, dict):
        missing = [key for key in TRIPLET_KEYS if key not in inputs]
        if missing:
            raise ValueError(f"Triplet dict lacks the key(s) {missing}; expected {list(TRIPLET_KEYS)}.")
        return tuple(inputs[key] for key in TRIPLET_KEYS)
    if isinstance(inputs, (tuple, list)) and len(inputs) == 3:
        return tuple(inputs)
    raise ValueError(
        "SiameseModel expects (anchor, positive, negative): a tuple of three "
        f"batches or a dict with those keys; got {type(inputs).__name__}"
        + (f" of length {len(inputs)}." if isinstance(inputs, (tuple, list)) else ".")
    )


@keras.saving.register_keras_serializable(package="siamese_k3")
class SiameseModel(keras.Model):
    """One backbone shared by the anchor, positive and negative branches.

    ``model((anchor, positive, negative))`` returns the three embeddings. The
    training loss is the mean over the batch of

        relu(d(f(a), f(p)) - d(f(a), f(n)) + margin)   (or softplus(...) if soft)

    (`siamese_k3.losses.triplet_loss`), computed in `compute_loss` with
    keras.ops, so the standard `compile()` / `fit()` / `evaluate()` /
    `predict()` work unchanged on TensorFlow, JAX and PyTorch. Data is the
    triplet alone, no labels: numpy arrays ``fit((a, p, n))``, a
    `keras.utils.PyDataset` whose items are ``((a, p, n),)``, or a `tf.data`
    dataset of such elements.

    The backbone runs once per step on the concatenated 3·B batch rather
    than three times (measured faster, see benchmarks/RESULTS.md). Hence a
    BatchNormalization layer in the backbone normalises anchors, positives
    and negatives with the statistics of the whole 3·B batch and updates its
    moving averages once per step, as a single forward pass of all the
    images would.

    `model.backbone` is the standalone embedding network: train here, then
    ``model.backbone.predict(images)``; no weight copying.

    Args:
        backbone: a `keras.Model` mapping one input batch to embeddings [B, D].
        margin: triplet margin (ignored when ``soft=True``).
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        soft: soft-margin triplet loss (Hermans et al. 2017).
    """

    def __init__(self, backbone, margin=1.0, distance="euclidean", soft=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(backbone, keras.Model):
            raise TypeError(f"backbone must be a keras.Model, got {type(backbone).__name__}.")
        self.backbone = backbone
        self.margin = float(margin)
        self.distance = check_distance(distance)
        self.soft = bool(soft)

    def build(self, input_shape=None):
        if not self.backbone.built and input_shape is not None:
            self.backbone.build(split_triplet(input_shape)[0])
        self.built = True

    def call(self, inputs, training=None):
        anchor, positive, negative = split_triplet(inputs)
        batch_size = ops.shape(anchor)[0]
        embeddings = self.backbone(
            ops.concatenate([anchor, positive, negative], axis=0), training=training
        )
        return (
            embeddings[:batch_size],
            embeddings[batch_size : 2 * batch_size],
            embeddings[2 * batch_size :],
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        per_triplet = triplet_loss(
            *y_pred, margin=self.margin, distance=self.distance, soft=self.soft
        )
        if sample_weight is not None:
            weights = ops.reshape(ops.cast(sample_weight, per_triplet.dtype), (-1,))
            loss = ops.sum(per_triplet * weights) / ops.maximum(ops.sum(weights), 1e-12)
        else:
            loss = ops.mean(per_triplet)
        for extra in self.losses:  # regularisers and add_loss() of the backbone
            loss = loss + ops.cast(ops.sum(extra), loss.dtype)
        return loss

    def compile(self, optimizer="adam", **kwargs):
        """`keras.Model.compile` with Adam as the default optimizer; the loss is built in."""
        if kwargs.get("loss") is not None:
            raise ValueError(
                "SiameseModel computes its own triplet loss: set margin/distance/soft "
                "on the model instead of passing loss= to compile()."
            )
        super().compile(optimizer=optimizer, **kwargs)

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "margin": self.margin,
            "distance": self.distance,
            "soft": self.soft,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"], custom_objects=custom_objects
        )
        return cls(**config)
