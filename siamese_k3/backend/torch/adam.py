"""keras' torch Adam, updated by the same torch ops without keras' `apply` bookkeeping around them.

keras' `Adam.apply` on torch spends most of a small model's step in Python:
checking, casting and looping over the variables before it calls the same
``torch._foreach_*`` kernels. `apply_gradients` calls those kernels directly,
on the optimizer's own slot variables, for the configurations known to give
the same floats (`plain_adam`: an allow-list of the optimizer's configuration);
any other optimizer or configuration is left to keras' `apply`. The update's
formula is in `apply_gradients`. Nothing here imports torch at module level.
"""

import functools
import weakref


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
    goes through keras' `apply`. `adam`: what `adam_tensors` gives
    for these arguments, when the caller has read it already.
    """
    if adam is None:
        adam = adam_tensors(optimizer, variables)
    if adam is None or not plain_adam(optimizer, gradients, variables):
        optimizer.apply(gradients, variables)
        return
    import torch

    with torch.no_grad():
        _adam_update(optimizer, gradients, *adam)


def _adam_update(optimizer, gradients, values, m_list, v_list, iterations):
    """keras' torch Adam update of `values` (see `apply_gradients`), on the tensors `adam_tensors` read."""
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


def adam_tensors(optimizer, variables):
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
    """Whether keras' torch Adam (built for `variables`, `adam_tensors`) has nothing but the update to do.

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
