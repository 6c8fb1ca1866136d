"""fit()'s per-step host work on PyTorch: the running loss mean, and batches of in-memory arrays.

On torch every step of `fit` runs in Python, so what keras does around the
model also counts. Two parts of it cost more than they need to for the
Siamese model, and both are done here with the same results:

- `train_step` / `test_step`: keras' torch steps keep the running loss in a
  `keras.metrics.Mean` (total += loss·B, count += B, result total / count),
  whose `update_state` and `result` take ~0.45 ms of keras-op dispatch per
  step; two in-place additions and one division take ~0.08 ms.
- `array_loader`: keras batches numpy arrays by converting each batch's index
  list once per array and wrapping every slice; gathering all arrays with one
  index array, in the same shuffled order, saves ~0.3 ms per step of three
  128 × 784 arrays.

Nothing here imports torch at module level: it is imported only when the
backend is torch.
"""

import warnings

import keras
import numpy as np

from siamese_k3.backend import eager


def can_step_directly(model):
    """Whether `train_step`/`test_step` compute what keras' own torch steps would for `model`.

    True on eager torch (no `jit_compile`, no distribution, no autocast scope)
    when the model is compiled with an optimizer and no metrics, so that its
    only metric is keras' loss tracker, a plain `keras.metrics.Mean`.
    """
    if not eager.eager_torch() or model.jit_compile or model.optimizer is None:
        return False
    tracker = getattr(model, "_loss_tracker", None)
    if type(tracker) is not keras.metrics.Mean or tracker.dtype != "float32":
        return False
    metrics = model.metrics
    return len(metrics) == 1 and metrics[0] is tracker


def train_step(model, data):
    """keras' `TorchTrainer.train_step` with the loss mean kept by in-place additions.

    Forward with ``training=True``, loss (`model.compute_loss`), backward,
    ``optimizer.apply(gradients, trainable_weights)``; the loss tracker
    accumulates total += loss·B and count += B, B the batch size, and the
    step returns ``{tracker.name: total / count}``, bit for bit keras' `Mean`.
    """
    import torch

    model.zero_grad()
    loss = _tracked_loss(model, data, training=True)
    trainable_weights = model.trainable_weights[:]
    if trainable_weights:
        model.optimizer.scale_loss(loss).backward()
        gradients = [variable.value.grad for variable in trainable_weights]
        with torch.no_grad():
            model.optimizer.apply(gradients, trainable_weights)
    else:  # as keras' own step does
        warnings.warn("The model does not have any trainable weights.")
    return _result(model._loss_tracker)


def test_step(model, data):
    """keras' `TorchTrainer.test_step` with the loss mean kept as in `train_step`."""
    _tracked_loss(model, data, training=False)
    return _result(model._loss_tracker)


def _tracked_loss(model, data, training):
    """The batch's loss (forward pass and `compute_loss`), added to the loss tracker."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred = model(x, training=training)
    loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
    _track(model._loss_tracker, loss, x)
    return loss


def _track(tracker, loss, x):
    """tracker.update_state(loss, sample_weight=B) of a `Mean`: total += loss·B, count += B."""
    import torch

    batch_size = next(tensor for tensor in keras.tree.flatten(x) if tensor is not None).shape[0]
    total, count = tracker.total.value, tracker.count.value
    with torch.no_grad():
        total.add_(loss.detach().to(total.dtype) * float(batch_size))
        count.add_(float(batch_size))


def _result(tracker):
    """{name: total / count}, 0 while count is 0 (keras' `divide_no_nan`)."""
    import torch

    total, count = tracker.total.value, tracker.count.value
    return {tracker.name: torch.where(count == 0, 0.0, total / count)}


# --------------------------------------------------------------------------
# Batches of in-memory arrays
# --------------------------------------------------------------------------


def array_loader(x, batch_size, shuffle):
    """A torch DataLoader yielding `x` (a tuple, list or dict of numpy arrays) in batches, or None.

    The batches are those keras' own array adapter would give `fit(x,
    batch_size=batch_size, shuffle=shuffle)`: the same sampler
    (``BatchSampler(RandomSampler(range(n)), batch_size)`` when ``shuffle`` is
    True, sequential when False, shuffled within each batch for
    ``"batch"``), hence the same order for the same torch seed, a last
    partial batch included, each batch packed as keras packs it
    (`keras.utils.pack_x_y_sample_weight`). None (use keras' adapter) unless
    every array is a float32 numpy array and they all have the same length.
    """
    if not eager.eager_torch() or not (isinstance(x, dict) or type(x) in (tuple, list)) or not x:
        return None
    import torch

    keys = list(x) if isinstance(x, dict) else None
    arrays = [x[key] for key in keys] if keys else list(x)
    if not all(type(array) is np.ndarray and array.dtype == np.float32 and array.ndim >= 1 for array in arrays):
        return None
    count = len(arrays[0])
    if count == 0 or any(len(array) != count for array in arrays) or shuffle not in (True, False, "batch"):
        return None
    if shuffle is True:
        order = torch.utils.data.RandomSampler(range(count))
    else:
        order = torch.utils.data.SequentialSampler(range(count))
    batches = torch.utils.data.BatchSampler(order, batch_size=batch_size, drop_last=False)
    if shuffle == "batch":
        batches = _ShuffledWithin(batches)

    class Arrays(torch.utils.data.Dataset):
        def __len__(self):
            return count

        def __getitems__(self, indices):
            # numpy's gather is the fastest here (torch's indexing of a CPU tensor is ~1.6x
            # slower); keras' conversion puts the batch on keras' device, as its adapter does.
            index = np.asarray(indices, dtype=np.int64)
            parts = [keras.ops.convert_to_tensor(np.take(array, index, axis=0)) for array in arrays]
            return keras.utils.pack_x_y_sample_weight(dict(zip(keys, parts)) if keys else type(x)(parts))

    return torch.utils.data.DataLoader(Arrays(), batch_sampler=batches, collate_fn=_as_is)


def _as_is(batch):
    return batch


class _ShuffledWithin:
    """keras' RandomBatchSampler: each batch of `batches` in a random order."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        import torch

        for batch in self.batches:
            yield [batch[i] for i in torch.randperm(len(batch))]

    def __len__(self):
        return len(self.batches)
