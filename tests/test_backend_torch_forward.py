"""siamese_k3.backend.torch.forward: the direct-call forward pass computes what keras' own call does.

The reference is keras' normal path, ``model(x, training=...)``, run from the
same variable state (weights, BatchNormalization statistics, dropout seeds):
outputs, updated state and gradients must match exactly. BatchNormalization runs
here through keras' own call (`_keras_batch_norm`): its fused kernel sums the
statistics in another order (tests/test_backend_torch_kernels.py checks it against the
formula, and `test_forward_with_fused_batch_norm` the whole model to rounding).
On jax and tensorflow `forward` is keras' call itself, so these tests check the
torch path.
"""

from unittest import mock

import keras
import numpy as np
import pytest
from _grad import gradient
from keras import layers, ops

from siamese_k3 import backbones
from siamese_k3.backend.torch import forward as eager, kernels
from siamese_k3.models import SiameseModel

ON_TORCH = keras.backend.backend() == "torch"

BACKBONES = {
    "mnist_siamese_dense": lambda: backbones.mnist_siamese_dense((28, 28), dropout=0.3),
    "compact_cnn": lambda: backbones.compact_cnn((28, 28), filters=(4, 8), hidden=16, embedding_dim=8),
    "small_cnn": lambda: backbones.small_cnn((28, 28, 1)),
}
if ON_TORCH:  # elsewhere `forward` is keras' call itself; ResNet50 in jax's eager mode is slow
    BACKBONES["resnet50_embedding"] = lambda: backbones.resnet50_embedding((32, 32, 3), embedding_dim=8)


_FUSED_NORM_SUPPORTED = kernels._norm_supported


@pytest.fixture(autouse=True)
def _keras_batch_norm():
    """BatchNormalization through keras' own call, so that the rest of the forward pass is compared bit for bit."""
    with mock.patch.object(kernels, "_norm_supported", lambda layer: False):
        yield


def _images(model, rng, batch=6):
    shape = tuple(model.inputs[0].shape[1:])
    return rng.uniform(0, 1, (batch, *shape)).astype("float32")


def _state(model):
    return [np.array(ops.convert_to_numpy(v.value)) for v in model.variables]


def _restore(model, values):
    """Back to the saved variables, and to the same global seed (torch's dropout draws from it)."""
    for variable, value in zip(model.variables, values):
        variable.assign(value)
    keras.utils.set_random_seed(99)


def _count_layer_calls(function):
    """(result, number of Layer.__call__ invocations while `function` ran)."""
    original = keras.layers.Layer.__call__
    calls = []

    def counting(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    with mock.patch.object(keras.layers.Layer, "__call__", counting):
        result = function()
    return result, calls


# On jax and tensorflow `forward` is keras' call itself (`model in calls` below): one backbone shows it.
@pytest.mark.parametrize("name", sorted(BACKBONES) if ON_TORCH else ["mnist_siamese_dense"])
@pytest.mark.parametrize("training", [True, False])
def test_forward_matches_keras_call(name, training, rng):
    model = BACKBONES[name]()
    x = ops.convert_to_tensor(_images(model, rng))
    model(x, training=training)  # both paths start from a built model
    before = _state(model)
    keras.utils.set_random_seed(99)
    expected = ops.convert_to_numpy(model(x, training=training))
    expected_state = _state(model)
    _restore(model, before)
    (got, calls) = _count_layer_calls(lambda: eager.forward(model, x, training))
    np.testing.assert_array_equal(ops.convert_to_numpy(got), expected)
    for after, reference in zip(_state(model), expected_state):  # BN statistics, dropout seeds
        np.testing.assert_array_equal(after, reference)
    if ON_TORCH:
        # Only layers outside keras' own classes (the Caffe preprocessing) go through __call__.
        assert all(type(layer).__module__.startswith("siamese_k3") for layer in calls), calls
    else:
        assert model in calls


@pytest.mark.parametrize("name", sorted(set(BACKBONES) & {"compact_cnn", "resnet50_embedding"}))
def test_gradients_match_keras_call(name, rng):
    model = BACKBONES[name]()
    images = _images(model, rng, batch=4)
    model(ops.convert_to_tensor(images), training=False)
    weights = ops.convert_to_tensor(rng.normal(size=(4, 8)).astype("float32"))
    before = _state(model)
    keras.utils.set_random_seed(99)
    expected = gradient(lambda x: model(x, training=True) * weights, images)[0]
    _restore(model, before)
    got = gradient(lambda x: eager.forward(model, x, True) * weights, images)[0]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.skipif(not ON_TORCH, reason="the fused BatchNormalization is torch-only")
def test_forward_with_fused_batch_norm(rng):
    """compact_cnn with `kernels.batch_norm` on: outputs, moving statistics and input gradients as keras' call, to rounding."""
    with mock.patch.object(kernels, "_norm_supported", _FUSED_NORM_SUPPORTED):
        model = backbones.compact_cnn((28, 28), filters=(4, 8), hidden=16, embedding_dim=8)
        images = _images(model, rng, batch=8)
        model(ops.convert_to_tensor(images), training=False)
        before = _state(model)
        expected = gradient(lambda x: model(x, training=True), images)
        expected_state = _state(model)
        _restore(model, before)
        got = gradient(lambda x: eager.forward(model, x, True), images)
        assert any(step[5] is kernels.batch_norm for step in eager._plan(model)[3])
        for mine, theirs in zip([*got, *_state(model)], [*expected, *expected_state]):
            np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-5 * (np.abs(theirs).max() + 1e-30))


class _AddsLoss(layers.Layer):
    def call(self, x):
        self.add_loss(ops.sum(x) * 0.0 + 1.5)
        return x * 2.0


def _dense_with(middle):
    inputs = keras.Input((5,))
    x = layers.Dense(4)(inputs)
    x = middle(x)
    return keras.Model(inputs, layers.Dense(3)(x))


@pytest.mark.parametrize(
    "middle",
    [
        lambda: _AddsLoss(),
        lambda: layers.Dense(4, activity_regularizer="l2"),
        lambda: layers.Dense(4, dtype="mixed_float16"),
        lambda: keras.Sequential([layers.Dense(4), layers.Dropout(0.5)]),
    ],
    ids=["custom-layer-add-loss", "activity-regularizer", "mixed-precision-layer", "nested-sequential"],
)
def test_layers_it_cannot_vouch_for_behave_as_in_keras(middle, rng):
    model = _dense_with(middle())
    wrapper = SiameseModel(model)
    x = ops.convert_to_tensor(rng.normal(size=(3, 5)).astype("float32"))
    triplet = (x, x + 1.0, x - 1.0)
    wrapper(triplet, training=True)
    before = _state(wrapper)
    keras.utils.set_random_seed(99)
    expected = [ops.convert_to_numpy(e) for e in wrapper(triplet, training=True)]
    expected_losses = [float(ops.convert_to_numpy(loss)) for loss in wrapper.losses]
    _restore(wrapper, before)
    got = [ops.convert_to_numpy(e) for e in wrapper.call(triplet, training=True)]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-3 if "float16" in str(model.layers[2].dtype_policy) else 0)
    assert [float(ops.convert_to_numpy(loss)) for loss in wrapper.losses] == pytest.approx(expected_losses)


def test_masked_and_other_dtype_inputs_take_keras_path(rng):
    model = _dense_with(layers.Activation("relu"))
    x = ops.convert_to_tensor(rng.normal(size=(3, 5)))  # float64: keras casts it to float32
    expected = ops.convert_to_numpy(model(x, training=False))
    got = ops.convert_to_numpy(eager.forward(model, x, False))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_siamese_call_goes_direct_only_with_an_explicit_training_flag(rng):
    model = SiameseModel(backbones.mnist_dense((12,), embedding_dim=4))
    x = ops.convert_to_tensor(rng.normal(size=(2, 12)).astype("float32"))
    model((x, x, x), training=False)
    assert eager.can_call_directly(model, (x, x, x), True) == ON_TORCH
    assert not eager.can_call_directly(model, (x, x, x), None)
    assert not eager.can_call_directly(model, (x, x, ops.cast(x, "float16")), True)
    symbolic = keras.Input((12,))
    assert not eager.can_call_directly(model, (symbolic, symbolic, symbolic), True)


def test_a_layer_changed_after_the_first_call_sends_the_whole_call_to_keras(rng):
    """No layer runs twice: batch statistics are updated once, as by keras' call."""
    model = BACKBONES["compact_cnn"]()
    x = ops.convert_to_tensor(_images(model, rng))
    eager.forward(model, x, True)  # plans the graph
    model.layers[-1].activity_regularizer = keras.regularizers.L2(0.1)
    before = _state(model)
    keras.utils.set_random_seed(99)
    expected = ops.convert_to_numpy(model(x, training=True))
    expected_state, expected_losses = _state(model), [ops.convert_to_numpy(loss) for loss in model.losses]
    _restore(model, before)
    got = ops.convert_to_numpy(eager.forward(model, x, True))
    np.testing.assert_array_equal(got, expected)
    for after, reference in zip(_state(model), expected_state):
        np.testing.assert_array_equal(after, reference)
    np.testing.assert_allclose([ops.convert_to_numpy(loss) for loss in model.losses], expected_losses)


def test_a_grown_sequential_is_planned_again(rng):
    model = keras.Sequential([keras.Input((5,)), layers.Dense(4)])
    x = ops.convert_to_tensor(rng.normal(size=(3, 5)).astype("float32"))
    eager.forward(model, x, False)
    model.add(layers.Dense(2))
    got = eager.forward(model, x, False)
    np.testing.assert_array_equal(ops.convert_to_numpy(got), ops.convert_to_numpy(model(x, training=False)))
    assert tuple(got.shape) == (3, 2)
