"""Data-parallel training on each backend's own engine, behind one interface.

`start(make_engine)` starts the running backend's engine (its
`siamese_k3.backend.base.Backend.engine`) from the launch environment and
makes it current; everything else in siamese_k3 asks this module, never an
engine by name:

- jax (`jax_engine`): `keras.distribution.DataParallel` over every device of
  every process; several processes join through `keras.distribution.initialize`
  (its ``KERAS_DISTRIBUTION_*`` variables), with gloo collectives on CPUs.
- tensorflow (`tf_engine`): `tf.distribute.MultiWorkerMirroredStrategy` when
  ``TF_CONFIG`` names a cluster, else `tf.distribute.MirroredStrategy` over the
  local GPUs (or the CPU).
- torch (`torch_engine`): `torch.distributed` as launched by ``torchrun``
  (gloo on CPU, nccl on GPU); gradients are averaged over the ranks before the
  optimizer step, as DistributedDataParallel does.

What the models and losses use, all no-ops when no engine is current:

- `gather(x)`: x of every replica, concatenated in replica order along axis
  0: the global batch. Its gradient returns to each replica the part of the
  summed upstream gradient that belongs to its own rows, so a loss of the
  gathered batch trains every replica's rows once (pytorch-metric-learning's
  `DistributedLossWrapper` semantics).
- `loss_scale()`: what a replica multiplies its loss by so that the engine's
  gradient reduction gives the gradient of one device on the global batch
  (1 / replicas on TensorFlow, which sums gradients; 1 elsewhere).
"""

import contextlib

import keras

from siamese_k3.backend.distributed.rendezvous import PeerTimeoutError  # noqa: F401 (raised by start)

_CURRENT = None


def start(make_engine, timeout_seconds=600):
    """Start data-parallel training with ``make_engine(timeout_seconds=...)`` and return the engine (also `current()`).

    `make_engine` is the running backend's `Backend.engine` (`siamese_k3.backend.registry.current()`); an
    engine already current on this backend is kept. Raises `PeerTimeoutError` when the other processes do
    not all arrive within `timeout_seconds`.
    """
    global _CURRENT
    if _CURRENT is None or _CURRENT.backend != keras.backend.backend():
        _CURRENT = make_engine(timeout_seconds=timeout_seconds)
    return _CURRENT


def current():
    """The engine `start` started, or None."""
    return _CURRENT


def stop():
    """Forget the current engine (torch leaves its process group); single-device training again."""
    global _CURRENT
    if _CURRENT is not None:
        _CURRENT.stop()
    _CURRENT = None


def gather(x):
    """Every replica's `x` concatenated along axis 0 (see the module); `x` itself without an engine."""
    return x if _CURRENT is None else _CURRENT.gather(x)


def gather_for_metrics(x):
    """`gather` where a metric's update may gather: not on tensorflow, where an all_gather inside
    a metric's update fails under MultiWorkerMirroredStrategy (keras 3.15) and keras averages
    each replica's metric over the replicas instead."""
    if _CURRENT is None or not _CURRENT.metrics_gather:
        return x
    return _CURRENT.gather(x)


def loss_scale():
    """The factor a replica's loss takes (see the module): 1 without an engine."""
    return 1.0 if _CURRENT is None else _CURRENT.loss_scale()


def replica_logs(logs):
    """A train or test step's logs as the engine's reduction of them wants them (see `tf_engine`)."""
    return logs if _CURRENT is None else _CURRENT.replica_logs(logs)


def max_steps_per_execution():
    """The most batches one compiled call may run under the current engine (a large number when free)."""
    return 1 << 30 if _CURRENT is None else _CURRENT.max_steps_per_execution


def input_signature():
    """The per-replica input spec of the engine's distributed datasets, or None (keras then reads a batch)."""
    return None if _CURRENT is None else _CURRENT.signature


def saving_is_collective():
    """Whether every process must take part when one saves (tf.distribute across workers)."""
    return _CURRENT is not None and _CURRENT.multi_worker


def local_scope():
    """A context in which this process alone may create variables (keras' saving does): the chief saving a checkpoint.

    On jax no distribution is in effect inside (a variable created under one is a
    collective of every process); elsewhere a no-op.
    """
    return contextlib.nullcontext() if _CURRENT is None else _CURRENT.local_scope()


def predict(model, images, batch_size):
    """``model.predict(images)`` as numpy, computed by this process alone from its copy of the weights.

    Under data-parallel training `predict` would be a collective computation
    (every process feeding its own rows); a per-epoch validation, or any other
    callback, computes locally instead, with `keras.Model.stateless_call`.
    """
    import numpy as np

    if _CURRENT is None:
        return np.asarray(model.predict(images, batch_size=batch_size, verbose=0))
    trainable = _CURRENT.local_values(model.trainable_variables)
    non_trainable = _CURRENT.local_values(model.non_trainable_variables)
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], "float32")
        output, _ = model.stateless_call(trainable, non_trainable, batch, training=False)
        outputs.append(np.asarray(keras.ops.convert_to_numpy(output)))
    return np.concatenate(outputs)
