"""siamese_k3.backend.torch.kernels: keras' layers on torch without layout copies and per-op dispatch.

The reference is the layer's own `call` (keras' torch backend): outputs and the
gradients with respect to the input and every weight must be equal, bit for
bit, for every padding, stride, dilation and activation the kernels take; what
they do not take goes back to keras. BatchNormalization is the exception: its
fused kernel sums the statistics in another order, so it is checked against a
float64 numpy reference of the formula (and against keras to float32 rounding).
"""

import inspect
import keras
import numpy as np
import pytest

from siamese_k3.backend.torch import kernels

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


# ---------------------------------------------------------------- BatchNormalization


def _batch_norm_reference(x, gamma, beta, moving_mean, moving_variance, momentum, epsilon, training):
    """keras' BatchNormalization formula in float64 numpy: (output, new moving mean, new moving variance)."""
    x = x.astype(np.float64)
    axes = tuple(range(x.ndim - 1))
    if training:
        mean, variance = x.mean(axis=axes), x.var(axis=axes)  # biased, as keras' moments
        moving_mean = moving_mean * momentum + mean * (1 - momentum)
        moving_variance = moving_variance * momentum + variance * (1 - momentum)
    else:
        mean, variance = moving_mean, moving_variance
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta, moving_mean, moving_variance


def _batch_norm_layer(channels, shape, **options):
    layer = keras.layers.BatchNormalization(**options)
    layer.build(shape)
    rng = np.random.default_rng(3)
    for variable, value in [
        (layer.gamma, rng.uniform(0.5, 1.5, channels)), (layer.beta, rng.normal(size=channels)),
        (layer.moving_mean, rng.normal(size=channels)), (layer.moving_variance, rng.uniform(0.5, 2.0, channels)),
    ]:
        variable.assign(value.astype("float32"))
    return layer


@pytest.mark.parametrize("shape", [(8, 5, 5, 6), (16, 6)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_equals_the_formula(shape, training):
    import torch

    layer = _batch_norm_layer(shape[-1], shape, momentum=0.9, epsilon=1e-3)
    assert kernels.kernel(layer) is kernels.batch_norm
    x = np.random.default_rng(4).normal(2.0, 3.0, shape).astype("float32")
    before = [np.array(variable.numpy(), np.float64) for variable in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)]
    expected, expected_mean, expected_variance = _batch_norm_reference(x, *before, 0.9, 1e-3, training)
    outputs = kernels.batch_norm(layer, torch.tensor(x), training)
    np.testing.assert_allclose(outputs.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), expected_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), expected_variance, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradients_match_keras_call(training):
    shape = (8, 5, 5, 6)
    inputs = np.random.default_rng(5).normal(1.0, 2.0, shape).astype("float32")
    ours = _outputs_and_gradients(_batch_norm_layer(6, shape), inputs, lambda layer, x: kernels.batch_norm(layer, x, training))
    reference = _outputs_and_gradients(_batch_norm_layer(6, shape), inputs, lambda layer, x: layer.call(x, training=training))
    for mine, theirs in zip(ours, reference):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


def test_batch_norm_keeps_precision_where_keras_moments_cancel():
    """A channel whose mean is large against its spread (as deep in a ResNet on a few images):
    keras' var = E[x²] − E[x]² loses the variance in float32; the fused kernel keeps it."""
    import torch

    shape = (6, 1, 1, 4)
    x = (9.69 + 2e-3 * np.random.default_rng(6).standard_normal(shape)).astype("float32")
    layer = _batch_norm_layer(4, shape, epsilon=1e-5)
    gamma, beta, mean, variance = (np.array(v.numpy(), np.float64) for v in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance))
    expected = _batch_norm_reference(x, gamma, beta, mean, variance, 0.99, 1e-5, True)[0]
    ours = kernels.batch_norm(layer, torch.tensor(x), True).detach().numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-3)


def test_batch_norm_goes_back_to_keras_for_what_it_does_not_take():
    import torch

    if "renorm" in inspect.signature(keras.layers.BatchNormalization).parameters:  # keras >= 3.11
        assert kernels.kernel(keras.layers.BatchNormalization(renorm=True)) is None
    layer = _batch_norm_layer(3, (2, 4, 3))  # 3-D input: keras' own call
    x = torch.tensor(np.random.default_rng(7).normal(size=(2, 4, 3)).astype("float32"))
    np.testing.assert_array_equal(kernels.batch_norm(layer, x, False).detach().numpy(), layer.call(x, training=False).detach().numpy())
