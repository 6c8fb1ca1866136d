"""fit()'s per-step host work on PyTorch: the running loss mean, and batches of in-memory arrays.

On torch every step of `fit` runs in Python, so what keras does around the
model also counts. Three parts of it cost more than they need to, and all are
done here with the same results:

- `train_step` / `test_step`: keras' torch steps keep the running loss in a
  `keras.metrics.Mean` (total += loss·B, count += B, result total / count),
  whose `update_state` and `result` take ~0.45 ms of keras-op dispatch per
  step; two in-place additions and one division take ~0.08 ms. Metrics given
  to `compile` are updated and reported as keras does.
- `apply_gradients`: keras' torch Adam, updated by the same torch ops
  without keras' `apply` bookkeeping around them (~0.1 ms per step).
- `array_loader`: keras batches numpy arrays through a torch DataLoader
  (sampler, fetcher, collate, a profiler hook per batch) and converts every
  slice; drawing the same shuffled order once per epoch and gathering each
  batch with one `numpy.take` per array saves ~0.15 ms per step of three
  128 × 784 arrays.
- `callback_list`: keras hands every batch's logs to a thread pool
  (`CallbackList`'s asynchronous dispatch, made for a GPU, where reading the
  loss waits for the device) even when no callback has a batch hook; on the
  CPU the loss is computed when the step returns and the hand-over only costs
  (~0.1 ms per step). Batch hooks are called only when a callback has one,
  and on the CPU synchronously.

Nothing here imports torch at module level: it is imported only when the
backend is torch.
"""

import functools
import warnings
import weakref

import keras
import numpy as np

from siamese_k3.backend import distributed, eager


def can_step_directly(model):
    """Whether `train_step`/`test_step` compute what keras' own torch steps would for `model`.

    True on eager torch (no `jit_compile`, no distribution, no autocast scope)
    when the model is compiled with an optimizer, its loss tracker is a plain
    float32 `keras.metrics.Mean`, its other metrics (if any) are those given
    to `compile`, and it keeps keras' own `compute_metrics`. Under torch
    data-parallel training the model must take this step (`check_not_data_parallel`).
    """
    if not eager.eager_torch() or model.jit_compile or model.optimizer is None:
        return False
    tracker = getattr(model, "_loss_tracker", None)
    if type(tracker) is not keras.metrics.Mean or tracker.dtype != "float32":
        return False
    if type(model).compute_metrics is not keras.Model.compute_metrics:
        return False
    compiled = getattr(model, "_compile_metrics", None)
    metrics = model.metrics
    return bool(metrics) and metrics[0] is tracker and all(metric is compiled for metric in metrics[1:])


def train_step(model, data):
    """keras' `TorchTrainer.train_step` with the loss mean kept by in-place additions.

    Forward with ``training=True``, loss (`model.compute_loss`), backward,
    ``optimizer.apply(gradients, trainable_weights)``, then the compiled
    metrics; the loss tracker accumulates total += loss·B and count += B, B
    the batch size, and reports ``total / count``, bit for bit keras' `Mean`.

    Under torch.distributed data-parallel training (`backend.distributed`),
    the gradients, the non-trainable float variables and the tracked loss are
    averaged over the ranks between the backward pass and the optimizer step.
    """
    import torch

    x, y, y_pred, sample_weight, loss = _loss(model, data, training=True)
    trainable_weights = model.trainable_weights[:]  # after the forward pass, as keras reads them
    adam = _adam_tensors(model.optimizer, trainable_weights)
    if adam is None:
        model.zero_grad()
        values = [variable.value for variable in trainable_weights]
    else:  # what model.zero_grad() does to the weights the step updates, without walking the modules
        values = adam[0]
        for value in values:
            value.grad = None
    engine = _engine()
    if trainable_weights:
        model.optimizer.scale_loss(loss).backward()
        gradients = [value.grad for value in values]
        if engine is not None:
            loss = engine.average(loss, gradients, _float_states(model))
        with torch.no_grad():
            apply_gradients(model.optimizer, gradients, trainable_weights, adam)
    else:  # as keras' own step does
        warnings.warn("The model does not have any trainable weights.")
    _track(model._loss_tracker, loss, x)
    return _logs(model, y, y_pred, sample_weight)


def test_step(model, data):
    """keras' `TorchTrainer.test_step` with the loss mean kept as in `train_step` (averaged over the ranks)."""
    x, y, y_pred, sample_weight, loss = _loss(model, data, training=False)
    engine = _engine()
    if engine is not None:
        loss = engine.average(loss, [], [])
    _track(model._loss_tracker, loss, x)
    return _logs(model, y, y_pred, sample_weight)


def apply_gradients(optimizer, gradients, variables, adam=None):
    """``optimizer.apply(gradients, variables)``; for keras' own torch Adam, its update without the bookkeeping.

    keras' `apply` spends more time in Python around the update than a small
    model's update takes (name scopes, gradient filtering, clipping and weight
    decay checks, and a dozen keras-op dispatches for the scalar step size).
    When none of that applies (`_plain_adam`), the same torch ops keras' torch
    Adam runs are called directly, in its order, so the results are keras' bit
    for bit:

        α = lr · sqrt(1 − β₂ᵗ) / (1 − β₁ᵗ),   t = iterations + 1
        m ← β₁·m + (1 − β₁)·g,   v ← β₂·v + (1 − β₂)·g²
        w ← w − α·m / (sqrt(v) + ε)

    then iterations += 1. Every other optimizer, or an Adam with weight decay,
    clipping, EMA, gradient accumulation, loss scaling, AMSGrad or variable
    constraints, goes through keras' `apply`. `adam`: what `_adam_tensors` gives
    for these arguments, when the caller has read it already.
    """
    if adam is None:
        adam = _adam_tensors(optimizer, variables)
    if adam is None or not _plain_adam(optimizer, gradients, variables):
        optimizer.apply(gradients, variables)
        return
    import torch

    with torch.no_grad():
        _adam_update(optimizer, gradients, *adam)


def _adam_update(optimizer, gradients, values, m_list, v_list, iterations):
    """keras' torch Adam update of `values` (see `apply_gradients`), on the tensors `_adam_tensors` read."""
    import torch

    dtype = values[0].dtype
    learning_rate = optimizer.learning_rate  # a schedule's value at this step, as keras computes it
    lr = getattr(learning_rate, "value", learning_rate)
    lr = lr.to(dtype) if torch.is_tensor(lr) else torch.tensor(lr, dtype=dtype)
    local_step = torch.add(iterations, 1).to(dtype)
    beta_1_power = torch.pow(torch.tensor(optimizer.beta_1, dtype=dtype), local_step)
    beta_2_power = torch.pow(torch.tensor(optimizer.beta_2, dtype=dtype), local_step)
    alpha = lr * torch.sqrt(1 - beta_2_power) / (1 - beta_1_power)
    torch._foreach_mul_(m_list, optimizer.beta_1)
    torch._foreach_add_(m_list, gradients, alpha=1 - optimizer.beta_1)
    torch._foreach_mul_(v_list, optimizer.beta_2)
    torch._foreach_add_(v_list, torch._foreach_mul(gradients, gradients), alpha=1 - optimizer.beta_2)
    torch._foreach_add_(
        values,
        torch._foreach_div(
            torch._foreach_mul(m_list, alpha), torch._foreach_add(torch._foreach_sqrt(v_list), optimizer.epsilon)
        ),
        alpha=-1,
    )
    iterations.add_(1)


_adam_cache = weakref.WeakKeyDictionary()


def _adam_tensors(optimizer, variables):
    """(values, momentums, velocities, iterations): the torch tensors keras' torch Adam updates for `variables`.

    None unless `optimizer` is keras' torch Adam, built for exactly
    `variables`. Read through ``Variable.value`` once per optimizer build
    and list of variables (~2 µs a read, some 20 reads a step): a keras torch
    variable keeps its tensor for life (`assign` copies into it), and building
    the optimizer again makes new slot lists, which invalidates the cache.
    """
    adam = _torch_adam_class()
    if adam is None or type(optimizer) is not adam or not optimizer.built or not variables:
        return None
    cached = _adam_cache.get(optimizer)
    if (
        cached is not None
        and cached[0] is optimizer._momentums
        and cached[1] is optimizer._velocities
        and len(cached[2]) == len(variables)
        and all(kept is variable for kept, variable in zip(cached[2], variables))
    ):
        return cached[3]
    if len(variables) != len(optimizer._trainable_variables) or not all(
        optimizer._var_key(variable) in optimizer._trainable_variables_indices for variable in variables
    ):
        return None
    indices = [optimizer._get_variable_index(variable) for variable in variables]
    tensors = (
        [variable.value for variable in variables],
        [optimizer._momentums[index].value for index in indices],
        [optimizer._velocities[index].value for index in indices],
        optimizer.iterations.value,
    )
    _adam_cache[optimizer] = (optimizer._momentums, optimizer._velocities, tuple(variables), tensors)
    return tensors


def _plain_adam(optimizer, gradients, variables):
    """Whether keras' torch Adam (built for `variables`, `_adam_tensors`) has nothing but the update to do."""
    if optimizer.amsgrad or optimizer.use_ema or optimizer.gradient_accumulation_steps:
        return False
    extras = (optimizer.weight_decay, optimizer.clipnorm, optimizer.clipvalue, optimizer.global_clipnorm,
              optimizer.loss_scale_factor)
    if any(extra is not None for extra in extras):
        return False
    return all(
        gradient is not None and variable.constraint is None and not variable.overwrite_with_gradient
        for gradient, variable in zip(gradients, variables)
    )


@functools.cache
def _torch_adam_class():
    """keras' torch Adam (what ``keras.optimizers.Adam()`` makes on torch), or None if keras moved it."""
    try:
        from keras.src.backend.torch.optimizers.torch_adam import Adam
    except ImportError:  # pragma: no cover - a keras that moved it
        return None
    return Adam


def check_not_data_parallel(model):
    """Raise when torch data-parallel training would take keras' own step, which does not average gradients."""
    if _engine() is not None:
        raise ValueError(
            f"data-parallel training on torch averages the gradients in siamese_k3's own train step, which "
            f"{type(model).__name__} cannot take here (a custom compute_metrics, a non-float32 loss "
            "tracker, jit_compile or mixed precision): compile without them."
        )


def _engine():
    """The torch.distributed engine when more than one rank trains, else None."""
    engine = distributed.current()
    return engine if engine is not None and engine.backend == "torch" and engine.replicas > 1 else None


def _float_states(model):
    return [
        variable.value.data for variable in model.non_trainable_weights
        if keras.backend.is_float_dtype(variable.dtype)
    ]


def _loss(model, data, training):
    """(x, y, y_pred, sample_weight, loss) of the batch: the forward pass and `compute_loss`."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred = model(x, training=training)
    loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
    return x, y, y_pred, sample_weight, loss


def _logs(model, y, y_pred, sample_weight):
    """keras' `compute_metrics`: update the compiled metrics, then the loss tracker's and their results.

    `can_step_directly` has checked that ``model.metrics`` is exactly the loss
    tracker followed by the compiled metrics (if any), so they are read directly
    rather than through that property, which walks every layer.
    """
    logs = _result(model._loss_tracker)
    compiled = model._compile_metrics
    if compiled is not None:
        compiled.update_state(y, y_pred, sample_weight)
        result = compiled.result()
        logs.update(result if isinstance(result, dict) else {compiled.name: result})
    return logs


def _track(tracker, loss, x):
    """tracker.update_state(loss, sample_weight=B) of a `Mean`: total += loss·B, count += B."""
    import torch

    batch_size = _batch_size(x)
    total, count = tracker.total.value, tracker.count.value
    with torch.no_grad():
        total.add_(loss.detach().to(total.dtype) * float(batch_size))
        count.add_(float(batch_size))


def _batch_size(x):
    """Rows of the first tensor in `x` (keras flattens the structure; a tuple, list or dict is read directly)."""
    first = x
    if isinstance(x, (tuple, list)) and x:
        first = x[0]
    elif isinstance(x, dict) and x:
        first = next(iter(x.values()))
    if first is None or isinstance(first, (tuple, list, dict)):
        first = next(tensor for tensor in keras.tree.flatten(x) if tensor is not None)
    return first.shape[0]


def _result(tracker):
    """{name: total / count}, 0 while count is 0 (keras' `divide_no_nan`)."""
    import torch

    total, count = tracker.total.value, tracker.count.value
    return {tracker.name: torch.where(count == 0, 0.0, total / count)}


# --------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------


def callback_list(model, x, callbacks, verbose, epochs, steps_per_epoch):
    """The `keras.callbacks.CallbackList` keras' torch `fit` would make, with batch hooks called only when needed.

    The list holds the same callbacks (`callbacks`, a `History`, and a
    `ProgbarLogger` unless ``verbose=0``) with the same parameters. Its batch
    hooks skip the per-batch work when no callback has that hook (keras' own
    list still converts the logs to Python floats and, on torch, hands them to
    a thread pool), and call the callbacks synchronously on the CPU. On a GPU,
    a list with a batch hook dispatches it as keras does (asynchronously).

    `callbacks` unchanged (keras makes its own list) unless training is eager
    torch, `callbacks` is None or a list of callbacks, and the number of
    batches per epoch is known here as keras would know it: ``steps_per_epoch``,
    the length of a `torch.utils.data.DataLoader` over a sized dataset, or a
    `keras.utils.PyDataset`'s ``num_batches``.
    """
    if not eager.eager_torch() or not (callbacks is None or type(callbacks) in (list, tuple)):
        return callbacks
    steps = steps_per_epoch or _num_batches(x)
    if steps is None:
        return callbacks
    return _callback_list_class()(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=steps,
        model=model,
        synchronous=_on_cpu(),
    )


def _num_batches(x):
    """Batches per epoch of a sized DataLoader or a PyDataset, else None (not known before iterating)."""
    import torch

    if isinstance(x, torch.utils.data.DataLoader):
        return len(x) if hasattr(x.dataset, "__len__") else None
    if isinstance(x, keras.utils.PyDataset):
        try:
            return x.num_batches
        except NotImplementedError:
            return None
    return None


def _has_hook(callback, hook):
    """Whether `callback` does something in `hook` (keras' default `on_train_batch_end` calls `on_batch_end`)."""
    base = keras.callbacks.Callback
    kind = type(callback)
    generic = "on_batch_begin" if hook.endswith("_begin") else "on_batch_end"
    if getattr(kind, hook) is not getattr(base, hook):
        return True
    return hook.startswith("on_train_") and getattr(kind, generic) is not getattr(base, generic)


def _python_logs(logs):
    """The logs flattened, each value a Python float where it converts (keras' `pythonify_logs`)."""
    result = {}
    for key, value in sorted((logs or {}).items()):
        if isinstance(value, dict):
            result.update(_python_logs(value))
            continue
        try:
            value = float(keras.ops.convert_to_numpy(value) if keras.ops.is_tensor(value) else value)
        except (TypeError, ValueError):
            pass
        result[key] = value
    return result


@functools.cache
def _callback_list_class():
    class CallbackList(keras.callbacks.CallbackList):
        """keras' list; batch hooks only for callbacks that have them, synchronously on the CPU (`callback_list`)."""

        def __init__(self, callbacks=None, synchronous=True, **kwargs):
            self.synchronous = synchronous
            super().__init__(callbacks, **kwargs)

        def _batch_hook(self, hook, batch, logs):
            callbacks = [callback for callback in self.callbacks if _has_hook(callback, hook)]
            if not callbacks:
                return
            if not self.synchronous:
                getattr(super(), hook)(batch, logs)
                return
            logs = _python_logs(logs)
            for callback in callbacks:
                getattr(callback, hook)(batch, logs=logs)

        def on_train_batch_begin(self, batch, logs=None):
            self._batch_hook("on_train_batch_begin", batch, logs)

        def on_train_batch_end(self, batch, logs=None):
            self._batch_hook("on_train_batch_end", batch, logs)

        def on_test_batch_begin(self, batch, logs=None):
            self._batch_hook("on_test_batch_begin", batch, logs)

        def on_test_batch_end(self, batch, logs=None):
            self._batch_hook("on_test_batch_end", batch, logs)

    return CallbackList


# --------------------------------------------------------------------------
# Batches of in-memory arrays
# --------------------------------------------------------------------------


def array_loader(x, batch_size, shuffle, y=None):
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

    Cheaper per batch than keras' loader (~0.27 → ~0.14 ms for three 128 × 784
    arrays on a 2-core CPU): the epoch's order is drawn once, each batch is one
    `numpy.take` per array, and on the CPU the batch is handed over with
    ``torch.from_numpy`` rather than through a DataLoader's sampler, fetcher,
    collate and profiler hooks.
    """
    if not eager.eager_torch() or shuffle not in (True, False, "batch"):
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


def _on_cpu():
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
