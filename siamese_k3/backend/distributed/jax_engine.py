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

Before `keras.distribution.initialize`, every process waits for the others in
Python (`rendezvous.wait_for_peers`, on the coordinator's port), so that a
process whose peers never start gives up after ``timeout_seconds`` with one
line (jax's own wait aborts the process with a stack trace), and SIGINT or
SIGTERM stop it meanwhile. jax's preemption service, which would take SIGTERM
for its preemption notices, stays off.
"""

import contextlib
import os

import keras
import numpy as np

from siamese_k3.backend import signals
from siamese_k3.backend.distributed import rendezvous
from siamese_k3.backend.distributed.base import Engine

LAUNCH_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES")
LAUNCH_HINT = (
    "Start every process with the same KERAS_DISTRIBUTION_JOB_ADDRESSES and KERAS_DISTRIBUTION_NUM_PROCESSES "
    "(each with its own KERAS_DISTRIBUTION_PROCESS_ID), or wait longer with DataParallel(timeout_seconds=...) "
    "(siamese-k3 train --collective-timeout)."
)


class JaxEngine(Engine):
    backend = "jax"

    def __init__(self, timeout_seconds=600):
        import jax

        if all(os.environ.get(name) for name in LAUNCH_VARIABLES) and not jax.distributed.is_initialized():
            # CPU collectives through gloo (GPU/TPU ones are unaffected). Set before initialize,
            # and without asking for devices first: that would start the backend too early.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            try:
                jax.config.update("jax_enable_preemption_service", False)  # it would take SIGTERM
            except AttributeError:  # a jax without the option: reclaim_sigterm below undoes it
                pass
            wait_for_processes(timeout_seconds)
            keras.distribution.initialize()
            signals.reclaim_sigterm()
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


def wait_for_processes(timeout_seconds):
    """`rendezvous.wait_for_peers` over the processes that ``KERAS_DISTRIBUTION_*`` describes."""
    coordinator = os.environ["KERAS_DISTRIBUTION_JOB_ADDRESSES"].split(",")[0].strip()
    processes = int(os.environ["KERAS_DISTRIBUTION_NUM_PROCESSES"])
    rank = int(os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", 0))
    rendezvous.wait_for_peers(coordinator, rank, processes, timeout_seconds, LAUNCH_HINT)
