"""tf.distribute on TensorFlow: MirroredStrategy on one host, MultiWorkerMirroredStrategy across hosts.

With ``TF_CONFIG`` naming a cluster, every worker process runs the same
command and `tf.distribute.MultiWorkerMirroredStrategy` all-reduces over them;
otherwise `tf.distribute.MirroredStrategy` mirrors over the local GPUs (the CPU
when there is none). Models and optimizers are built inside `scope()`. The
input is a `tf.distribute.DistributedDataset` made with
`distribute_datasets_from_function`: each input pipeline yields, per global
batch, the rows of each of its replicas, so the replicas' shares make up the
global batch. keras sums the replicas' gradients; a replica's loss is scaled by
1 / replicas (as keras scales its own losses), and `gather` is
`ReplicaContext.all_gather`, whose gradient is the all-reduced upstream
gradient of the replica's own rows.

Across workers, the startup first waits for every worker in Python
(`rendezvous.wait_for_peers`, on the first chief's or worker's port), so that a
worker whose peers never start gives up after ``timeout_seconds`` with one
line, and SIGINT or SIGTERM stop it meanwhile: TensorFlow's own wait holds the
GIL and ignores SIGTERM (its preemption notifier takes the signal). Once the
strategy is up, SIGTERM goes back to Python (`signals.reclaim_sigterm`).
"""

import json
import os

import keras

from siamese_k3.backend import signals
from siamese_k3.backend.distributed import rendezvous
from siamese_k3.backend.distributed.base import Engine

TF_CONFIG_HINT = (
    "Start every worker with the same TF_CONFIG cluster (each with its own task index), or wait longer "
    "with DataParallel(timeout_seconds=...) (siamese-k3 train --collective-timeout)."
)


class TensorFlowEngine(Engine):
    backend = "tensorflow"
    metrics_gather = False  # an all_gather inside a metric's update fails across workers (keras 3.15)

    def __init__(self, timeout_seconds=600):
        import tensorflow as tf

        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        cluster = config.get("cluster")
        if cluster:
            wait_for_workers(cluster, config.get("task") or {}, timeout_seconds)
            options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_seconds)
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
            signals.reclaim_sigterm()
            resolver = self.strategy.cluster_resolver
            self.rank = resolver.task_id if resolver.task_type in ("worker", "chief") else 0
            self.processes = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
        else:
            devices = [device.name for device in tf.config.list_logical_devices("GPU")] or None
            self.strategy = tf.distribute.MirroredStrategy(devices)
            self.rank, self.processes = 0, 1
        self.replicas = self.strategy.num_replicas_in_sync
        self.multi_worker = self.processes > 1
        # keras 3.15 runs several steps per call with a loop that fails across workers.
        self.max_steps_per_execution = 1 if self.multi_worker else 1 << 30

    def scope(self):
        return self.strategy.scope()

    def loss_scale(self):
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return 1.0
        return 1.0 / context.num_replicas_in_sync

    def gather(self, x):
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return x  # cross-replica context: keras' symbolic build, or no strategy
        return context.all_gather(x, axis=0)

    def barrier(self):
        if self.multi_worker:
            import tensorflow as tf

            self.strategy.reduce("SUM", self.strategy.run(lambda: tf.constant(1.0)), axis=None)

    def fit_inputs(self, batches, validation=None):
        """`fit` keyword arguments: each dataset distributed by replica, with its number of steps."""
        inputs = {"x": self.distributed(batches, repeat=True), "steps_per_epoch": len(batches)}
        if validation is not None:
            inputs["validation_data"] = self.distributed(validation, repeat=False)
            inputs["validation_steps"] = len(validation)
        return inputs

    def distributed(self, batches, repeat):
        """A DistributedDataset of `batches` (a PyDataset of global batches).

        Each element is one replica's rows of a global batch. With `repeat`,
        one iterator runs epoch after epoch, as fit's training iterator is kept
        across epochs; without, each iterator is one pass (evaluation).
        ``batches.on_epoch_end()`` is called when keras' own iteration of
        `batches` would call it, and no data is read ahead of its use and then
        dropped, so the replicas get the batches one process would.
        """
        import tensorflow as tf

        from siamese_k3.backend.distributed.base import split_rows

        replicas = self.replicas
        first = split_rows(batches[0], 0, replicas)
        self.signature = signature = keras.tree.map_structure(
            lambda array: tf.TensorSpec((None, *array.shape[1:]), tf.as_dtype(array.dtype)), first
        )
        passes = []

        def dataset(context):
            per_pipeline = replicas // context.num_input_pipelines
            own = range(context.input_pipeline_id * per_pipeline, (context.input_pipeline_id + 1) * per_pipeline)

            def one_pass():
                for index in range(len(batches)):
                    batch = batches[index]
                    for replica in own:
                        yield split_rows(batch, replica, replicas)

            def generate():
                # The epochs follow keras' own iteration of a PyDataset, which ends an epoch
                # (on_epoch_end) when fit or evaluate resets its iterator, and after each pass.
                if repeat:  # fit's training iterator: one reset, then epoch after epoch
                    batches.on_epoch_end()
                    while True:
                        yield from one_pass()
                        batches.on_epoch_end()
                # evaluation: a new iterator per pass, after a reset (and the previous pass's end)
                for _ in range(2 if passes else 1):
                    batches.on_epoch_end()
                passes.append(1)
                yield from one_pass()

            return tf.data.Dataset.from_generator(generate, output_signature=signature)

        return self.strategy.distribute_datasets_from_function(dataset)

    def replica_logs(self, logs):
        """Step logs as [1]-shaped tensors under MultiWorkerMirroredStrategy.

        keras 3.15 reduces a multi-worker step's logs with
        ``strategy.reduce("MEAN", value, axis=0)``, which fails on the scalars
        every step returns; a [1]-shaped value reduces to the scalar mean over
        the replicas, as keras does with one worker.
        """
        if not self.multi_worker:
            return logs
        import tensorflow as tf

        return {key: tf.reshape(value, [1]) for key, value in logs.items()}


def wait_for_workers(cluster, task, timeout_seconds):
    """`rendezvous.wait_for_peers` over the cluster's chiefs and workers, led by the first of them."""
    members = [(kind, index) for kind in ("chief", "worker") for index in range(len(cluster.get(kind, [])))]
    me = (task.get("type"), int(task.get("index", 0)))
    if me not in members:
        return  # an evaluator or parameter server: not part of the collectives
    addresses = [cluster[kind][index] for kind, index in members]
    rendezvous.wait_for_peers(addresses[0], members.index(me), len(members), timeout_seconds, TF_CONFIG_HINT)
