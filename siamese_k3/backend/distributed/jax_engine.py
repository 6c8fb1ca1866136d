"""keras.distribution on JAX: DataParallel over every device of every process.

One process: the local devices (GPUs, or CPU devices made with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``). Several processes:
launched with ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the coordinator's
host:port first), ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and
``KERAS_DISTRIBUTION_PROCESS_ID``, which `keras.distribution.initialize` passes
to `jax.distributed.initialize`; on CPUs the collectives go through gloo.
Each process feeds its own rows of every global batch (keras puts them together
with `jax.make_array_from_process_local_data`), and the jitted train step sees
the global, sharded batch: mining, the loss and BatchNorm's statistics are
those of the global batch without any gather.
"""

import contextlib
import os

import keras
import numpy as np

from siamese_k3.backend.distributed.base import Engine

LAUNCH_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES")


class JaxEngine(Engine):
    backend = "jax"

    def __init__(self, timeout_seconds=600):
        import jax

        if all(os.environ.get(name) for name in LAUNCH_VARIABLES) and not jax.distributed.is_initialized():
            # CPU collectives through gloo (GPU/TPU ones are unaffected). Set before initialize,
            # and without asking for devices first: that would start the backend too early.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            keras.distribution.initialize()
        self.rank, self.processes = jax.process_index(), jax.process_count()
        devices = keras.distribution.list_devices()
        self.replicas = len(devices)
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
        )

    def stop(self):
        keras.distribution.set_distribution(None)

    @contextlib.contextmanager
    def local_scope(self):
        distribution = keras.distribution.distribution()
        keras.distribution.set_distribution(None)
        try:
            yield
        finally:
            keras.distribution.set_distribution(distribution)

    def barrier(self):
        if self.processes > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("siamese_k3")

    def local_values(self, variables):
        """Each variable's value as numpy: this process's copy of the replicated array."""
        return [np.asarray(variable.value.addressable_data(0)) for variable in variables]

