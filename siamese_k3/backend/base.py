"""`Backend`: everything siamese_k3 asks of a Keras backend, in one object; this base is keras' own behaviour.

Each backend's package subclasses it (`siamese_k3.backend.jax.JaxBackend`,
`siamese_k3.backend.tensorflow.TensorFlowBackend`,
`siamese_k3.backend.torch.TorchBackend`), and `siamese_k3.backend.registry`
picks the running backend's, once. One object owns:

- the training fast path: the `siamese_k3.backend.fast_path.FastPath` methods
  (compile defaults, train and test steps, batches of arrays, callbacks);
- `engine(timeout_seconds)`: the backend's data-parallel engine
  (`siamese_k3.backend.distributed`), started from the launch environment;
- `cancellable()`: a block inside which another thread can cancel a running
  compiled function, so that a signal stops training (TensorFlow);
- `flush_denormals()`: float32 denormals as zero on the CPU (torch; XLA
  already does).

This base serves a backend siamese_k3 does not know: keras' own training path,
no data-parallel engine, and hooks that do nothing.

Imports: keras, `siamese_k3.backend.fast_path`, `siamese_k3.errors`.
"""

import contextlib

import keras

from siamese_k3.backend.fast_path import FastPath
from siamese_k3.errors import SiameseK3Error


class Backend(FastPath):
    """A Keras backend as siamese_k3 drives it (see the module); the base: keras' behaviour, no engine."""

    name = "keras"

    def engine(self, timeout_seconds=600):
        """A started data-parallel engine (`siamese_k3.backend.distributed.base.Engine`) of this backend.

        Raises `PeerTimeoutError` when the other processes do not all arrive within `timeout_seconds`.
        """
        raise SiameseK3Error(f"data-parallel training is not available on the {keras.backend.backend()} backend.")

    def needed_for_data_parallel(self):
        """Whether data-parallel training needs this backend's own train step even with the fast path off."""
        return False

    @contextlib.contextmanager
    def cancellable(self):
        """A block yielding `cancel()`, which fails the running compiled function from any thread; None where
        Python's signal handlers run between steps anyway (jax, torch)."""
        yield None

    def flush_denormals(self):
        """Treat float32 denormals as zero on the CPU where the backend computes them exactly (nothing here)."""
