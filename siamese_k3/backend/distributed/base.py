"""What every engine does unless it says otherwise, and each process's share of the global batches (numpy only)."""

import contextlib

import keras
import numpy as np

from siamese_k3.errors import SiameseK3Error


def split_rows(batch, part, parts):
    """Rows [part·n/parts, (part+1)·n/parts) of every array in the (nested) batch."""

    def rows(array):
        count = len(array)
        if count % parts:
            raise SiameseK3Error(
                f"a batch of {count} rows does not split evenly over {parts} replicas: "
                f"use a batch size that is a multiple of {parts}."
            )
        size = count // parts
        return array[part * size : (part + 1) * size]

    return keras.tree.map_structure(lambda array: rows(np.asarray(array)) if array is not None else None, batch)


class ShardedBatches(keras.utils.PyDataset):
    """Batch i is this process's rows of `batches[i]`; epochs and length follow `batches`.

    Every process builds the same `batches` (same data, same seed), so the
    processes' shares of batch i make up exactly the global batch i that one
    process would train on.
    """

    def __init__(self, batches, part, parts):
        super().__init__()
        self.batches, self.part, self.parts = batches, int(part), int(parts)

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return split_rows(self.batches[index], self.part, self.parts)

    def on_epoch_end(self):
        self.batches.on_epoch_end()


class Engine:
    """The defaults: one process per share of the batch, local variables, nothing to reduce by hand.

    Attributes every engine sets: ``backend``, ``rank``, ``processes``, ``replicas``.
    """

    backend = None
    multi_worker = False  # whether saving creates variables collectively (tf.distribute across workers)
    metrics_gather = True  # whether a metric's update may gather (see distributed.gather_for_metrics)
    max_steps_per_execution = 1 << 30
    signature = None  # the per-replica input spec, when the engine builds the datasets itself

    def stop(self):
        pass

    def scope(self):
        return contextlib.nullcontext()

    def local_scope(self):
        return contextlib.nullcontext()

    def loss_scale(self):
        return 1.0

    def replica_logs(self, logs):
        return logs

    def gather(self, x):
        return x

    def barrier(self):
        pass

    def shard(self, batches):
        """This process's rows of every batch of `batches` (a PyDataset of global batches)."""
        return ShardedBatches(batches, self.rank, self.processes) if self.processes > 1 else batches

    def fit_inputs(self, batches, validation=None):
        inputs = {"x": self.shard(batches)}
        if validation is not None:
            inputs["validation_data"] = self.shard(validation)
        return inputs

    def local_values(self, variables):
        """The variables' values as numpy arrays, read in this process alone."""
        return [np.asarray(keras.ops.convert_to_numpy(variable)) for variable in variables]
