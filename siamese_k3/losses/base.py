"""What every loss family shares: the batch's pair masks, masked reductions, and the thin `Loss` bases.

- `pair_masks(labels)`: positive[i, j] = (y_i = y_j and i ≠ j), negative[i, j] = (y_i ≠ y_j), [B, B] booleans.
- `masked_mean(v, mask)`: Σ_mask v / |mask|, 0 for an empty mask.
- `avg_non_zero(v, mask)`: the mean of the entries of v under `mask` that are > 0, 0 when none is
  (pytorch-metric-learning's `AvgNonZeroReducer`).
- `masked_logsumexp(x, mask, add_one=False)`: per row i, log(Σ_{j: mask_ij} exp(x_ij) [+ 1]), computed
  stably; a row whose mask is empty gives `empty` (0).
- `keep_non_finite(value, witness(embeddings))`: value + 0·Σ embeddings, so a NaN or inf embedding makes the
  loss NaN on every backend (XLA's max and min drop NaNs).
- `ConfiguredLoss`: a Keras `Loss` that stores its keyword options (`get_config`) and hands them to its
  family's function; `LabelledLoss`: one whose y_true is the labels [B] and y_pred the embeddings [B, D],
  gathered over the replicas under data parallelism.

Imports: keras, `siamese_k3.checks`, `siamese_k3.distances` and `siamese_k3.backend.distributed`.
"""

import keras
from keras import ops

from siamese_k3.backend import distributed
from siamese_k3.checks import check_distance, check_labels, check_margin, check_positive_number
from siamese_k3.distances import to_float32


def pair_masks(labels):
    """(positive, negative) boolean masks [B, B] of a batch's labels [B] or [B, 1] (see the module)."""
    labels = ops.reshape(labels, (-1,))
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    not_self = ops.logical_not(ops.cast(ops.eye(ops.shape(labels)[0]), "bool"))
    return ops.logical_and(same, not_self), ops.logical_not(same)


def at_least_one(count):
    """max(count, 1) in count's own dtype (keras' torch `maximum` gives float32 for float64)."""
    return ops.where(count < 1.0, 1.0, count)


def mean(values):
    """The mean of all entries, in their dtype (keras' torch `ops.mean` computes a float64 mean in float32)."""
    return ops.sum(values) / ops.cast(ops.size(values), ops.dtype(values))


def masked_mean(values, mask):
    """sum(values over mask) / count(mask); 0.0 when the mask is empty."""
    mask = ops.cast(mask, values.dtype)
    return ops.sum(values * mask) / at_least_one(ops.sum(mask))


def avg_non_zero(values, mask):
    """The mean of the entries of `values` under `mask` that are > 0; 0.0 when there is none (PML's reducer)."""
    return masked_mean(values, ops.logical_and(mask, values > 0))


def largest_finite(x):
    """A finite number near the largest of `x`'s dtype (float32 or float64): the value masked-out entries take."""
    return ops.cast(3.0e38 if ops.dtype(x) == "float32" else 1.0e308, ops.dtype(x))


def masked_logsumexp(x, mask, add_one=False, empty=0.0):
    """Per row i: log(Σ_{j: mask_ij} exp(x_ij)), plus 1 inside the log with `add_one`; `empty` where row i
    keeps nothing. Stable: the row's largest kept value (and 0 with `add_one`) is taken out first, without
    gradient (the result does not depend on it)."""
    any_kept = ops.any(mask, axis=1)
    shift = ops.stop_gradient(ops.max(ops.where(mask, x, -largest_finite(x)), axis=1))
    shift = ops.where(any_kept, shift, 0.0)
    if add_one:
        shift = ops.relu(shift)
    shifted = ops.where(mask, x, ops.expand_dims(shift, 1)) - ops.expand_dims(shift, 1)
    total = ops.sum(ops.where(mask, ops.exp(shifted), 0.0), axis=1)
    if add_one:
        total = total + ops.exp(-shift)
    result = shift + ops.log(ops.where(any_kept, total, 1.0))
    return ops.where(any_kept, result, empty)


def witness(embeddings):
    """Σ of all entries in float32: NaN or inf as soon as one embedding is (a witness for `keep_non_finite`)."""
    return ops.sum(to_float32(embeddings))


def keep_non_finite(value, witness):
    """value + 0·witness: equal to `value` (and its gradient unchanged) unless the witness is NaN or inf.

    Under jit on the CPU, XLA's max and min drop NaNs (relu(NaN) = 0), so a NaN
    embedding, or a diverged model, would otherwise give a finite loss (often
    exactly the margin) on JAX and TensorFlow; with this term the loss is NaN on
    every backend and `siamese_k3.callbacks.StopOnNonFiniteLoss` sees it.
    """
    return value + 0.0 * witness


# How a loss option is checked, by its name (every family's): a distance's name, a margin (a finite
# number >= 0), or a scale (a finite number > 0). None (multi-similarity's epsilon: no miner) is not checked.
OPTION_CHECKS = {
    "distance": check_distance,
    **dict.fromkeys(("margin", "pos_margin", "neg_margin", "base", "m", "epsilon"), check_margin),
    **dict.fromkeys(("alpha", "beta", "gamma", "scale", "temperature"), check_positive_number),
}


class ConfiguredLoss(keras.losses.Loss):
    """Stores keyword options (`get_config`) and forwards them to `self.loss_fn`; checks each by `OPTION_CHECKS`
    when the loss is made, so a bad hyperparameter fails there, naming the option."""

    loss_fn = None

    def __init__(self, name, reduction="sum_over_batch_size", dtype=None, **options):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        for option, value in options.items():
            if option in OPTION_CHECKS and value is not None:
                OPTION_CHECKS[option](value, option)
        self.options = options

    def get_config(self):
        return {**super().get_config(), **self.options}


class LabelledLoss(ConfiguredLoss):
    """y_true = labels [B] or [B, 1]; y_pred = embeddings [B, D].

    Under data-parallel training (`siamese_k3.parallel.DataParallel`) each
    replica holds its rows of the global batch: the loss gathers every
    replica's labels and embeddings first, so mining sees the global batch, and
    the gradient reaches each replica's own embeddings once
    (`siamese_k3.backend.distributed.gather`). The loss is then that of one
    device on the global batch, times the engine's `loss_scale`.
    """

    def __call__(self, y_true, y_pred, sample_weight=None):
        check_labels(y_true, y_pred)  # before keras casts the labels to float32
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)

    def call(self, y_true, y_pred):
        labels, embeddings = self.gather(y_true, y_pred)
        return self.scaled(type(self).loss_fn(labels, embeddings, **self.options))

    @staticmethod
    def gather(y_true, y_pred):
        """Every replica's labels and embeddings (the global batch); this replica's without an engine."""
        return distributed.gather(y_true), distributed.gather(y_pred)

    @staticmethod
    def scaled(loss):
        """The loss times the engine's `loss_scale` (1 without an engine)."""
        scale = distributed.loss_scale()
        return loss if scale == 1.0 else loss * scale
