"""siamese_k3.backend.torch.adam: keras' torch Adam update, without keras' bookkeeping, equal to keras' `apply`.

The reference is keras' own `optimizer.apply` from the same variables and gradients:
the variables and the step count must be equal, bit for bit, and any optimizer or
configuration `plain_adam` does not know goes through keras' `apply`.
"""

import keras
import numpy as np
import pytest

from siamese_k3.backend.torch import adam  # imports no torch at module level

torch_only = pytest.mark.skipif(keras.backend.backend() != "torch", reason="keras' torch Adam")


def _adam_steps(apply, optimizer, steps=4):
    """Variables after `steps` updates of three variables by `apply` (fixed pseudo-random gradients)."""
    import torch

    rng = np.random.default_rng(8)
    variables = [keras.Variable(rng.normal(size=shape).astype("float32")) for shape in [(5, 3), (3,), (2, 2)]]
    optimizer.build(variables)
    for _ in range(steps):
        gradients = [torch.tensor(rng.normal(size=variable.shape).astype("float32")) for variable in variables]
        with torch.no_grad():
            apply(optimizer, gradients, variables)
    return [np.array(variable.numpy()) for variable in variables], int(optimizer.iterations.numpy())


@torch_only
@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.Adam(1e-2),
        lambda: keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=5), beta_1=0.8),
        lambda: keras.optimizers.Adam(1e-2, weight_decay=0.1),  # keras' apply: not a plain Adam
        lambda: keras.optimizers.Adam(1e-2, clipnorm=0.5),
        lambda: keras.optimizers.SGD(1e-2, momentum=0.9),
    ],
)
def test_apply_gradients_is_keras_apply_bit_for_bit(make):
    ours = _adam_steps(adam.apply_gradients, make())
    reference = _adam_steps(lambda optimizer, gradients, variables: optimizer.apply(gradients, variables), make())
    assert ours[1] == reference[1] == 4
    for mine, theirs in zip(ours[0], reference[0]):
        np.testing.assert_array_equal(mine, theirs)


@torch_only
def test_apply_gradients_takes_the_direct_update_only_for_a_plain_adam():
    import torch

    variables = [keras.Variable(np.ones((2, 2), "float32"))]
    gradients = [torch.ones(2, 2)]

    def direct(optimizer, gradients):
        return adam.adam_tensors(optimizer, variables) is not None and adam.plain_adam(
            optimizer, gradients, variables
        )

    plain = keras.optimizers.Adam(1e-2)
    assert adam.adam_tensors(plain, variables) is None  # not built yet
    plain.build(variables)
    assert direct(plain, gradients)
    assert not direct(plain, [None])
    for other in [keras.optimizers.Adam(amsgrad=True), keras.optimizers.Adam(weight_decay=0.1), keras.optimizers.AdamW()]:
        other.build(variables)
        assert not direct(other, gradients)


@torch_only
def test_adam_tensors_are_read_again_when_the_optimizer_or_the_variables_change():
    variables = [keras.Variable(np.ones((2, 2), "float32")), keras.Variable(np.zeros(3, "float32"))]
    optimizer = keras.optimizers.Adam(1e-2)
    optimizer.build(variables)
    values, momentums, velocities, iterations = adam.adam_tensors(optimizer, variables)
    assert adam.adam_tensors(optimizer, variables)[0] is values  # cached
    assert [value is variable.value for value, variable in zip(values, variables)] == [True, True]
    assert momentums[1] is optimizer._momentums[1].value and velocities[0] is optimizer._velocities[0].value
    assert iterations is optimizer.iterations.value
    assert adam.adam_tensors(optimizer, variables[:1]) is None  # not the variables it was built for
    assert adam.adam_tensors(optimizer, variables[::-1])[0][0] is variables[1].value
    optimizer.build(variables)  # new slots
    assert adam.adam_tensors(optimizer, variables)[1][0] is optimizer._momentums[0].value
