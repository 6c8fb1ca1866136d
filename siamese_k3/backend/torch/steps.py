"""keras' torch train and test steps, with the per-step host work done more cheaply and the same results.

On torch every step of `fit` runs in Python, so what keras does around the
model also counts:

- the running loss mean: keras keeps it in a `keras.metrics.Mean` (total +=
  loss·B, count += B, result total / count), whose `update_state` and
  `result` dispatch a dozen keras ops per step; two in-place additions and
  one division give the same floats;
- Adam: keras' torch Adam, updated by the same torch ops without keras'
  `apply` bookkeeping around them, for the configurations known to be equal
  (`siamese_k3.backend.torch.adam`).

Metrics given to `compile` are updated and reported as keras does. Under
torch data-parallel training the gradients are averaged over the ranks here,
between the backward pass and the optimizer step (keras' own step cannot).
Nothing here imports torch at module level.
"""

import warnings

import keras

from siamese_k3.backend import distributed
from siamese_k3.backend.torch import forward
from siamese_k3.backend.torch.adam import adam_tensors, apply_gradients
from siamese_k3.errors import SiameseK3Error


def can_step_directly(model):
    """Whether `train_step`/`test_step` compute what keras' own torch steps would for `model`.

    True on eager torch (no `jit_compile`, no distribution, no autocast scope)
    when the model is compiled with an optimizer, its loss tracker is a plain
    float32 `keras.metrics.Mean`, its other metrics (if any) are those given
    to `compile`, and it keeps keras' own `compute_metrics`. Under torch
    data-parallel training the model must take this step (`check_not_data_parallel`).
    """
    if not forward.eager_torch() or model.jit_compile or model.optimizer is None:
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
    adam = adam_tensors(model.optimizer, trainable_weights)
    if adam is None:
        model.zero_grad()
        values = [variable.value for variable in trainable_weights]
    else:  # what model.zero_grad() does to the weights the step updates, without walking the modules
        values = adam[0]
        for value in values:
            value.grad = None
    engine = data_parallel_engine()
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
    engine = data_parallel_engine()
    if engine is not None:
        loss = engine.average(loss, [], [])
    _track(model._loss_tracker, loss, x)
    return _logs(model, y, y_pred, sample_weight)


def check_not_data_parallel(model):
    """Raise when torch data-parallel training would take keras' own step, which does not average gradients."""
    if data_parallel_engine() is not None:
        raise SiameseK3Error(
            f"data-parallel training on torch averages the gradients in siamese_k3's own train step, which "
            f"{type(model).__name__} cannot take here (a custom compute_metrics, a non-float32 loss "
            "tracker, jit_compile or mixed precision): compile without them."
        )


def data_parallel_engine():
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

