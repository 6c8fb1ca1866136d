"""siamese_k3.backend.kernels: keras' layers on torch without layout copies and per-op dispatch.

The reference is the layer's own `call` (keras' torch backend): outputs and the
gradients with respect to the input and every weight must be equal, bit for
bit, for every padding, stride, dilation and activation the kernels take; what
they do not take goes back to keras.
"""

import keras
import numpy as np
import pytest

from siamese_k3.backend import kernels

ON_TORCH = keras.backend.backend() == "torch"
pytestmark = pytest.mark.skipif(not ON_TORCH, reason="the kernels are torch-only")


def _outputs_and_gradients(layer, inputs, function):
    import torch

    x = torch.tensor(inputs, requires_grad=True)
    outputs = function(layer, x)
    weights = [variable.value for variable in layer.trainable_weights]
    gradients = torch.autograd.grad((outputs * torch.linspace(-1, 1, outputs.numel()).reshape(outputs.shape)).sum(), [x, *weights])
    return [outputs.detach().numpy(), *(gradient.numpy() for gradient in gradients)]


def _keras_call(layer, x):
    return layer.call(x)


CONVOLUTIONS = [
    dict(filters=5, kernel_size=3, padding="same"),
    dict(filters=5, kernel_size=3, padding="valid", use_bias=False),
    dict(filters=4, kernel_size=(3, 1), strides=2, padding="valid", activation="relu"),
    dict(filters=4, kernel_size=5, padding="same", dilation_rate=2),
    dict(filters=3, kernel_size=1, strides=2, padding="same"),  # total padding 0
]


@pytest.mark.parametrize("options", CONVOLUTIONS)
def test_conv2d_equals_keras_call_bit_for_bit(options):
    keras.utils.set_random_seed(0)
    layer = keras.layers.Conv2D(**options)
    inputs = np.random.default_rng(1).standard_normal((3, 11, 11, 6)).astype("float32")
    layer.build(inputs.shape)
    assert kernels.kernel(layer) is kernels.conv2d
    ours = _outputs_and_gradients(layer, inputs, kernels.conv2d)
    reference = _outputs_and_gradients(layer, inputs, _keras_call)
    for mine, theirs in zip(ours, reference):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize(
    "options", [dict(pool_size=2), dict(pool_size=3, strides=2), dict(pool_size=3, strides=1, padding="same")]
)
def test_max_pool2d_equals_keras_call(options):
    layer = keras.layers.MaxPooling2D(**options)
    inputs = np.random.default_rng(2).standard_normal((2, 9, 9, 4)).astype("float32")  # no ties
    assert kernels.kernel(layer) is kernels.max_pool2d
    ours = _outputs_and_gradients(layer, inputs, kernels.max_pool2d)
    reference = _outputs_and_gradients(layer, inputs, _keras_call)
    for mine, theirs in zip(ours, reference):
        np.testing.assert_array_equal(mine, theirs)


def test_asymmetric_same_padding_goes_back_to_keras():
    """'same' with stride 2 on an even size pads 1 pixel after only: keras pads explicitly, so its call runs."""
    keras.utils.set_random_seed(0)
    layer = keras.layers.Conv2D(2, 3, strides=2, padding="same")
    inputs = np.random.default_rng(3).standard_normal((1, 8, 8, 3)).astype("float32")
    layer.build(inputs.shape)
    np.testing.assert_array_equal(
        _outputs_and_gradients(layer, inputs, kernels.conv2d)[0], _outputs_and_gradients(layer, inputs, _keras_call)[0]
    )
    assert kernels._torch_padding((8, 8), (3, 3), (2, 2), (1, 1), "same") is None


@pytest.mark.parametrize(
    "options, shape", [(dict(units=7, activation="relu"), (5, 9)), (dict(units=4, use_bias=False), (2, 3, 9))]
)
def test_dense_equals_keras_call_bit_for_bit(options, shape):
    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(**options)
    inputs = np.random.default_rng(4).standard_normal(shape).astype("float32")
    layer.build(inputs.shape)
    assert kernels.kernel(layer) is kernels.dense
    for mine, theirs in zip(
        _outputs_and_gradients(layer, inputs, kernels.dense), _outputs_and_gradients(layer, inputs, _keras_call)
    ):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("name", ["relu", "linear"])
def test_activation_equals_keras_call_bit_for_bit(name):
    layer = keras.layers.Activation(name)
    inputs = np.random.default_rng(5).standard_normal((4, 6)).astype("float32")
    assert kernels.kernel(layer) is kernels.activation
    for mine, theirs in zip(
        _outputs_and_gradients(layer, inputs, kernels.activation), _outputs_and_gradients(layer, inputs, _keras_call)
    ):
        np.testing.assert_array_equal(mine, theirs)


def test_what_the_kernels_do_not_take():
    assert kernels.kernel(keras.layers.Conv2D(2, 3, data_format="channels_first")) is None
    assert kernels.kernel(keras.layers.Conv2D(4, 3, groups=2)) is None
    assert kernels.kernel(keras.layers.MaxPooling2D(2, data_format="channels_first")) is None
    assert kernels.kernel(keras.layers.AveragePooling2D(2)) is None
    assert kernels.kernel(keras.layers.Dense(3, activation="sigmoid")) is None
    assert kernels.kernel(keras.layers.Activation("gelu")) is None
    lora = keras.layers.Dense(3)
    lora.build((None, 4))
    lora.enable_lora(2)
    assert kernels.kernel(lora) is None
