"""The running backend's `Backend`, chosen once, and the training path a model takes.

`current()` is the one object per Keras backend (`siamese_k3.backend.base`):
its fast path, its data-parallel engine, its signal and denormal hooks. Each
backend's package is imported on first use, on that backend only.

Imports: keras, each backend's package, `siamese_k3.backend.base` and
`siamese_k3.backend.fast_path`. No module of `siamese_k3.backend` imports this
one: the registry sits above the backends it chooses from.
"""

import functools

import keras

from siamese_k3.backend.base import Backend
from siamese_k3.backend.fast_path import KERAS, keras_tested


@functools.cache
def current():
    """The running backend's `Backend` (imported on first use); the base for a backend siamese_k3 does not know."""
    backend = keras.backend.backend()
    if backend == "torch":
        from siamese_k3.backend.torch import TorchBackend as Chosen
    elif backend == "tensorflow":
        from siamese_k3.backend.tensorflow import TensorFlowBackend as Chosen
    elif backend == "jax":
        from siamese_k3.backend.jax import JaxBackend as Chosen
    else:
        Chosen = Backend
    return Chosen()


def path_of(model):
    """The path `model` trains on: the running backend's, or keras' own (`fast_path.KERAS`) when the fast path is
    off for it, except under torch data-parallel training, whose gradient average lives in torch's own step."""
    backend = current()
    if getattr(model, "_fast_path", True) and keras_tested():
        return backend
    return backend if backend.needed_for_data_parallel() else KERAS
