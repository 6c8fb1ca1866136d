"""keras' torch train and test steps, with the per-step host work done more cheaply and the same results.

On torch every step of `fit` runs in Python, so what keras does around the
model also counts:

- the running loss mean: keras keeps it in a `keras.metrics.Mean` (total +=
  loss·B, count += B, result total / count), whose `update_state` and
  `result` dispatch a dozen keras ops per step; two in-place additions and
  one division give the same floats;
- Adam: keras' torch Adam, updated by the same torch ops without keras'
  `apply` bookkeeping around them, for the configurations known to be equal
  (`plain_adam`, an allow-list of the optimizer's configuration).

Metrics given to `compile` are updated and reported as keras does. Under
torch data-parallel training the gradients are averaged over the ranks here,
between the backward pass and the optimizer step (keras' own step cannot).
Nothing here imports torch at module level.
"""

import functools
import warnings
import weakref

import keras

from siamese_k3.backend import distributed
from siamese_k3.backend.torch import forward
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
    adam = _adam_tensors(model.optimizer, trainable_weights)
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


def apply_gradients(optimizer, gradients, variables, adam=None):
    """``optimizer.apply(gradients, variables)``; for keras' own torch Adam, its update without the bookkeeping.

    keras' `apply` spends more time in Python around the update than a small
    model's update takes (name scopes, gradient filtering, clipping and weight
    decay checks, and a dozen keras-op dispatches for the scalar step size).
    When none of that applies (`plain_adam`), the same torch ops keras' torch
    Adam runs are called directly, in its order, so the results are keras' bit
    for bit:

        α = lr · sqrt(1 − β₂ᵗ) / (1 − β₁ᵗ),   t = iterations + 1
        m ← β₁·m + (1 − β₁)·g,   v ← β₂·v + (1 − β₂)·g²
        w ← w − α·m / (sqrt(v) + ε)

    then iterations += 1. Every other optimizer, or an Adam with any option
    beyond these (weight decay, clipping, EMA, gradient accumulation, loss
    scaling, AMSGrad, variable constraints, or one `plain_adam` does not know),
    goes through keras' `apply`. `adam`: what `_adam_tensors` gives
    for these arguments, when the caller has read it already.
    """
    if adam is None:
        adam = _adam_tensors(optimizer, variables)
    if adam is None or not plain_adam(optimizer, gradients, variables):
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
    and list of variables (a read costs more than a small model's update of it): a keras torch
    variable keeps its tensor for life (`assign` copies into it), and building
    the optimizer again makes new slot lists, which invalidates the cache.
    """
    adam = _torch_adam_class()
    if adam is None or type(optimizer) is not adam or not optimizer.built or not variables:
        return None
    if not _plain_config(optimizer):  # e.g. gradient accumulation, whose `iterations` is no variable
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


# keras' Adam configuration (3.10 to 3.15) with the values under which its `apply` does
# nothing but the update: an exact match on every key, so an option that a later keras adds
# (a new key) or any of these options set takes keras' own `apply`. learning_rate and the
# Adam coefficients are read at each step (a schedule's value as keras computes it).
PLAIN_ADAM_CONFIG = {
    "weight_decay": None, "clipnorm": None, "global_clipnorm": None, "clipvalue": None, "use_ema": False,
    "loss_scale_factor": None, "gradient_accumulation_steps": None, "amsgrad": False,
}  # fmt: skip
_ADAM_FREE_KEYS = {"name", "learning_rate", "beta_1", "beta_2", "epsilon", "ema_momentum", "ema_overwrite_frequency"}


def plain_adam(optimizer, gradients, variables):
    """Whether keras' torch Adam (built for `variables`, `_adam_tensors`) has nothing but the update to do.

    Its configuration has exactly the keys of `PLAIN_ADAM_CONFIG` plus the free ones
    (name, learning rate, β₁, β₂, ε and the unused EMA settings), with those values; every
    gradient is present; no variable has a constraint or is overwritten with its gradient.
    """
    return _plain_config(optimizer) and all(
        gradient is not None and variable.constraint is None and not variable.overwrite_with_gradient
        for gradient, variable in zip(gradients, variables)
    )


def _plain_config(optimizer):
    """Whether the optimizer's configuration is exactly `PLAIN_ADAM_CONFIG` plus the free keys."""
    config = _adam_config(optimizer)
    if set(config) != set(PLAIN_ADAM_CONFIG) | _ADAM_FREE_KEYS:
        return False
    return all(config[key] == value for key, value in PLAIN_ADAM_CONFIG.items())


_config_cache = weakref.WeakKeyDictionary()


def _adam_config(optimizer):
    """``optimizer.get_config()``, read once per optimizer and its settings.

    The settings `plain_adam` checks are read from the optimizer each time to key the cache,
    so changing one (``optimizer.clipnorm = 1.0``) is seen at the next step.
    """
    key = tuple(getattr(optimizer, name, None) for name in PLAIN_ADAM_CONFIG)
    cached = _config_cache.get(optimizer)
    if cached is None or cached[0] != key:
        _config_cache[optimizer] = cached = (key, optimizer.get_config())
    return cached[1]


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

