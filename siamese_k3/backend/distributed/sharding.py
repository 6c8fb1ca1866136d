"""Each process's share of a stream of global batches (numpy only)."""

import keras
import numpy as np


def split_rows(batch, part, parts):
    """Rows [part·n/parts, (part+1)·n/parts) of every array in the (nested) batch."""

    def rows(array):
        count = len(array)
        if count % parts:
            raise ValueError(
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
