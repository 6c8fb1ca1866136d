"""Batches of in-memory numpy arrays on PyTorch, gathered directly, in keras' own order.

keras batches numpy arrays on torch through a DataLoader (sampler, fetcher,
collate, a profiler hook per batch) and converts every slice; drawing keras'
shuffled order once per epoch and gathering each batch with one `numpy.take`
per array gives the same batches for less.
"""

import functools

import keras
import numpy as np

from siamese_k3.backend.torch import forward

def array_loader(x, batch_size, shuffle, y=None, model=None):
    """A torch DataLoader yielding `x` (and `y`) in batches, as keras' array adapter would, or None.

    `x` is a numpy array, or a tuple, list or dict of them; `y` None or a numpy
    array. The batches are those keras' own adapter would give ``fit(x, y,
    batch_size=batch_size, shuffle=shuffle)``: the same order (keras'
    ``RandomSampler`` when ``shuffle`` is True, so the same permutation for the
    same torch seed; sequential when False; shuffled within each batch for
    ``"batch"``), a last partial batch included, packed as keras packs them
    (`keras.utils.pack_x_y_sample_weight`). None (use keras' adapter) unless
    every array is a float32 or integer numpy array (dtypes keras keeps) and
    all have the same length.

    Cheaper per batch than keras' loader: the epoch's order is drawn once, each batch is one
    `numpy.take` per array, and on the CPU the batch is handed over with
    ``torch.from_numpy`` rather than through a DataLoader's sampler, fetcher,
    collate and profiler hooks.
    """
    if not forward.eager_torch() or shuffle not in (True, False, "batch"):
        return None
    if isinstance(x, dict):
        keys, arrays = list(x), list(x.values())
    elif type(x) in (tuple, list):
        keys, arrays = None, list(x)
    elif y is not None:
        keys, arrays = None, [x]
    else:
        return None
    if not arrays or (y is not None and type(x) is not np.ndarray):
        return None
    labelled = arrays + ([y] if y is not None else [])
    if not all(type(array) is np.ndarray and _kept_dtype(array.dtype) and array.ndim >= 1 for array in labelled):
        return None
    count = len(labelled[0])
    if count == 0 or any(len(array) != count for array in labelled):
        return None

    def pack(parts):
        if y is not None:
            return keras.utils.pack_x_y_sample_weight(parts[0], parts[1])
        return keras.utils.pack_x_y_sample_weight(dict(zip(keys, parts)) if keys else type(x)(parts))

    return _loader_class()(labelled, pack, batch_size, shuffle)


def _kept_dtype(dtype):
    return dtype == np.float32 or np.issubdtype(dtype, np.integer)


def _device():
    """The torch device keras puts tensors on."""
    return keras.ops.convert_to_tensor(np.zeros((), np.float32)).device


def on_cpu():
    """Whether keras puts tensors on the CPU."""
    return _device().type == "cpu"


def _to_device():
    """numpy → torch tensor on keras' device: ``torch.from_numpy`` on the CPU (no copy)."""
    import torch

    device = _device()
    if device.type == "cpu":
        return torch.from_numpy
    return lambda array: torch.from_numpy(array).to(device)


@functools.cache
def _loader_class():
    import torch

    class ArrayBatches(torch.utils.data.DataLoader):
        """Batches of in-memory arrays, gathered directly (see `array_loader`).

        A DataLoader so that keras' torch trainer takes it as is (`len` is the
        number of batches, `batch_size` and the dataset's length give keras the
        partial batch); iterating it bypasses the sampler/fetcher machinery.
        """

        def __init__(self, arrays, pack, batch_size, shuffle):
            super().__init__(range(len(arrays[0])), batch_size=batch_size)
            self.arrays, self.pack, self.shuffle = arrays, pack, shuffle
            self.convert = _to_device()

        def __len__(self):
            return -(-len(self.arrays[0]) // self.batch_size)

        def __iter__(self):
            # torch's DataLoader draws its workers' base seed from the global generator when an
            # epoch's iterator is made, and the sampler draws its seed at the first batch: both
            # are drawn here at the same moments, so the same seed gives keras' own batches.
            torch.empty((), dtype=torch.int64).random_()
            return self._batches()

        def _batches(self):
            count = len(self.arrays[0])
            if self.shuffle is True:  # keras' sampler, hence the same permutation for the same seed
                order = np.fromiter(torch.utils.data.RandomSampler(range(count)), np.int64, count)
            else:
                order = np.arange(count)
            for start in range(0, count, self.batch_size):
                index = order[start : start + self.batch_size]
                if self.shuffle == "batch":  # keras' RandomBatchSampler
                    index = index[torch.randperm(len(index)).numpy()]
                yield self.pack([self.convert(np.take(array, index, axis=0)) for array in self.arrays])

    return ArrayBatches

