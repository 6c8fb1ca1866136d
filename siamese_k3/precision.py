"""Mixed precision: layers compute in float16/bfloat16, variables stay float32.

Usage — set the policy BEFORE building the backbone and the model, because each
layer reads the global policy when it is created::

    set_precision("mixed_bfloat16")          # or "mixed_float16", or None
    model = SiameseModel(small_cnn((28, 28)))
    model.compile(optimizer=wrap_optimizer("adam", "mixed_bfloat16"))

What Keras 3 does (the same on TensorFlow, JAX and PyTorch):

- ``mixed_bfloat16``: bfloat16 has float32's exponent range, so gradients do not
  underflow and no loss scaling is needed.
- ``mixed_float16``: small float16 gradients underflow to zero, so the loss is
  multiplied by a dynamic scale before differentiation and the gradients divided
  by it (`keras.optimizers.LossScaleOptimizer`; steps with inf/NaN gradients are
  skipped and the scale lowered). Every backend's train step calls
  ``optimizer.scale_loss``, and ``Model.compile(auto_scale_loss=True)`` (the
  default) already wraps the optimizer when the model's own policy is
  mixed_float16; `wrap_optimizer` does it explicitly, e.g. for a model built
  before the policy was set or compiled with ``auto_scale_loss=False``.

The triplet losses and distances upcast the embeddings to float32, so the loss
itself is always computed in float32.
"""

import keras

from siamese_k3.checks import check_choice

MODES = (None, "float32", "mixed_bfloat16", "mixed_float16")


def check_mode(mode):
    """The keras policy name of `mode` (None is "float32"); `SiameseK3Error` for any other value."""
    check_choice(mode, MODES, "mode")
    return "float32" if mode is None else mode


def set_precision(mode):
    """Set the global Keras dtype policy: None/"float32", "mixed_bfloat16" or "mixed_float16".

    Returns the policy name now in force. Affects layers created afterwards.
    """
    policy = check_mode(mode)
    keras.mixed_precision.set_dtype_policy(policy)
    return policy


def wrap_optimizer(optimizer, mode):
    """`optimizer` wrapped in `keras.optimizers.LossScaleOptimizer` for "mixed_float16".

    `optimizer` may be a name ("adam") or an instance. Other modes, and an optimizer
    that is already loss-scaled, come back unchanged (a name is resolved with
    `keras.optimizers.get`).
    """
    policy = check_mode(mode)
    optimizer = keras.optimizers.get(optimizer)
    if policy == "mixed_float16" and not isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    ):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
