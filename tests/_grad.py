"""Gradients on whichever backend KERAS_BACKEND names, for the tests.

The framework is imported inside its own branch only: the jax test session
has neither tensorflow nor torch installed.
"""

import keras
import numpy as np
from keras import ops


def gradient(function, *inputs):
    """d sum(function(*inputs)) / d input, for each input, as float32 numpy arrays."""
    inputs = [np.asarray(value, dtype="float32") for value in inputs]
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def total(*tensors):
            return ops.sum(function(*tensors))

        grads = jax.grad(total, argnums=tuple(range(len(inputs))))(
            *map(ops.convert_to_tensor, inputs)
        )
    elif backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(value) for value in inputs]
        with tf.GradientTape() as tape:
            for tensor in tensors:
                tape.watch(tensor)
            total = ops.sum(function(*tensors))
        grads = tape.gradient(total, tensors)
    elif backend == "torch":
        import torch

        tensors = [ops.convert_to_tensor(value).detach().requires_grad_(True) for value in inputs]
        total = ops.sum(function(*tensors))
        grads = torch.autograd.grad(total, tensors, allow_unused=True)
    else:
        raise NotImplementedError(f"No gradient helper for the {backend!r} backend.")
    return [
        np.zeros_like(value) if grad is None else ops.convert_to_numpy(grad).astype("float32")
        for value, grad in zip(inputs, grads)
    ]
