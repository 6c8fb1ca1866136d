"""Every keras internal siamese_k3 relies on, and every keras bug it works around, checked as this keras has them.

The fast path (`siamese_k3.backend`) reads some of keras' private names. Each
falls back to keras' own path when the name is missing, so a keras that
changes one would make training silently slower, or, had the fallback been
forgotten, silently different. These tests fail loudly instead, naming the
internal, so that whoever upgrades keras sees what to re-check.

The canaries at the end assert that a keras bug we work around is still
there: when keras fixes it, the canary fails, and the workaround can go.
"""

import importlib
import importlib.util
import inspect

import keras
import numpy as np
import pytest

from siamese_k3.backend import fast_path
from siamese_k3.metrics import FractionPositiveTriplets
from siamese_k3.models import MiningModel

BACKEND = keras.backend.backend()
torch_only = pytest.mark.skipif(BACKEND != "torch", reason="used by the torch fast path only")
tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="used by the tensorflow fast path only")


def _backbone():
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    hidden = keras.layers.Dropout(0.1)(hidden)
    return keras.Model(inputs, keras.layers.Dense(4)(hidden))


def _compiled():
    model = MiningModel(_backbone())
    model.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=[FractionPositiveTriplets()])
    model.fit(np.zeros((8, 6), "float32"), np.arange(8) % 2, batch_size=8, verbose=0)
    return model


# --------------------------------------------------------------------------
# Modules imported from keras.src
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, name",
    [
        ("keras.src.backend.common.masking", "get_keras_mask"),  # torch/forward.py
        ("keras.src.backend.common.variables", "get_autocast_scope"),  # torch/forward.py
        ("keras.src.trainers.data_adapters.array_data_adapter", "ArrayDataAdapter"),  # tensorflow/arrays.py
    ],
)
def test_private_import(module, name):
    assert hasattr(importlib.import_module(module), name), f"keras moved {module}.{name}"


def test_autocast_scope_is_none_outside_any_scope():
    """torch/forward.py: keras' autocast scope reads None when no mixed-precision call is running."""
    from keras.src.backend.common.variables import get_autocast_scope

    assert get_autocast_scope() is None


@torch_only
def test_torch_adam_class_is_what_adam_makes():
    from keras.src.backend.torch.optimizers.torch_adam import Adam  # torch/adam.py

    assert type(keras.optimizers.Adam()) is Adam


@tensorflow_only
def test_array_data_adapter_interface():
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    adapter = ArrayDataAdapter(np.zeros((10, 2), "float32"), np.zeros(10), batch_size=4, shuffle=True)
    assert adapter.num_batches == 3
    assert adapter.get_tf_dataset() is not None


# --------------------------------------------------------------------------
# Private attributes of keras objects
# --------------------------------------------------------------------------


def test_callback_default_marker():
    """fast_path.has_hook: keras marks Callback's do-nothing hooks with `_is_default` (keras.src.utils.python_utils)."""
    plain = keras.callbacks.Callback()
    assert getattr(plain.on_train_batch_end, "_is_default", False)
    assert getattr(plain.on_batch_end, "_is_default", False)
    lambda_callback = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: None)
    assert not getattr(lambda_callback.on_train_batch_end, "_is_default", False)
    assert fast_path.has_hook(lambda_callback, "on_train_batch_end")
    assert not fast_path.has_hook(plain, "on_train_batch_end")


def test_trainer_loss_tracker_and_compiled_metrics():
    """torch/steps.py: `_loss_tracker` (a float32 Mean), `_compile_metrics`, `_compute_loss`, `metrics` order."""
    model = _compiled()
    tracker = model._loss_tracker
    assert type(tracker) is keras.metrics.Mean and tracker.dtype == "float32"
    assert hasattr(tracker, "total") and hasattr(tracker, "count")
    assert model.metrics[0] is tracker and model.metrics[1] is model._compile_metrics
    parameters = inspect.signature(model._compute_loss).parameters
    assert {"x", "y", "y_pred", "sample_weight", "training"} <= set(parameters)


def test_functional_graph_internals():
    """torch/forward.py: `_nodes_by_depth`, node.operation / is_input / outputs / arguments.fill_in, Sequential._functional."""
    model = _backbone()
    nodes = model._nodes_by_depth
    assert isinstance(nodes, dict) and nodes
    node = next(node for depth in sorted(nodes, reverse=True) for node in nodes[depth] if not node.is_input)
    assert node.operation is not None and node.outputs
    args, kwargs = node.arguments.fill_in({id(tensor): "value" for tensor in keras.tree.flatten(node.arguments.args)})
    assert args and isinstance(kwargs, dict)
    sequential = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert type(sequential._functional).__name__ == "Functional"


@pytest.mark.parametrize("layer", [keras.layers.Dropout(0.5), keras.layers.BatchNormalization()])
def test_call_context_args_name_training(layer):
    """torch/forward.py: `_call_context_args` says which layers take ``training`` from the call context."""
    assert "training" in layer._call_context_args


def test_remat_mode_attribute():
    """torch/forward.py: a layer's `_remat_mode` (None unless rematerialisation is on)."""
    assert hasattr(keras.layers.Dense(2), "_remat_mode")
    assert not keras.layers.Dense(2)._remat_mode


def test_optimizer_slot_internals():
    """torch/adam.py `adam_tensors`: `_momentums`, `_velocities`, `_trainable_variables(_indices)`, `_var_key`, `_get_variable_index`."""
    model = _compiled()
    optimizer = model.optimizer
    variables = model.trainable_weights
    assert len(optimizer._momentums) == len(optimizer._velocities) == len(optimizer._trainable_variables)
    for variable in variables:
        assert optimizer._var_key(variable) in optimizer._trainable_variables_indices
        index = optimizer._get_variable_index(variable)
        assert optimizer._momentums[index].shape == variable.shape
    assert all(hasattr(variable, "overwrite_with_gradient") and hasattr(variable, "constraint") for variable in variables)


def test_flatten_layers():
    """tensorflow/__init__.py (XLA check) and export.py: `Model._flatten_layers` walks nested layers."""
    model = MiningModel(_backbone())
    names = {type(layer).__name__ for layer in model._flatten_layers()}
    assert {"Dense", "Dropout"} <= names


@tensorflow_only
def test_maybe_symbolic_build_signature():
    """models.py overrides `_maybe_symbolic_build(iterator=None, data_batch=None)` (keras' TensorFlow trainer) for data-parallel builds."""
    parameters = inspect.signature(keras.Model._maybe_symbolic_build).parameters
    assert list(parameters)[1:] == ["iterator", "data_batch"]


@pytest.mark.parametrize("model", ["MiningModel", "SiameseModel"])
@pytest.mark.parametrize("method", ["fit", "evaluate", "predict"])
def test_fit_evaluate_and_predict_take_keras_own_parameters(model, method):
    """models.py's `_FastModel` overrides fit, evaluate and predict with keras' parameters, by name, in order,
    with keras' defaults, and hands each one on by name: a keras that adds, renames or reorders one fails here."""

    def parameters(function):
        return [(name, parameter.kind, parameter.default)
                for name, parameter in inspect.signature(function).parameters.items()]

    from siamese_k3 import models

    assert parameters(getattr(getattr(models, model), method)) == parameters(getattr(keras.Model, method))


def test_direct_layer_names_exist():
    """torch/forward.py: every layer class the fast path calls directly is still one of keras' layers."""
    from siamese_k3.backend.torch import forward

    assert len(forward._DIRECT_LAYERS) == len(forward.DIRECT_LAYER_NAMES)


def test_kernel_config_keys_are_known():
    """torch/kernels.py: keras' configuration of each kernel's layer holds only keys the kernel knows."""
    from siamese_k3.backend.torch import kernels

    made = {
        "Conv2D": keras.layers.Conv2D(2, 3),
        "MaxPooling2D": keras.layers.MaxPooling2D(),
        "Dense": keras.layers.Dense(2),
        "Activation": keras.layers.Activation("relu"),
        "BatchNormalization": keras.layers.BatchNormalization(),
    }
    assert set(made) == set(kernels.KNOWN_CONFIG_KEYS)
    for name, layer in made.items():
        unknown = set(layer.get_config()) - kernels.KNOWN_CONFIG_KEYS[name]
        assert not unknown, f"keras' {name} has new configuration keys {unknown}: teach kernels.py or leave them"


def test_adam_config_keys_are_known():
    """torch/adam.py `plain_adam`: keras' Adam configuration holds exactly the keys it checks."""
    from siamese_k3.backend.torch import adam

    keys = set(keras.optimizers.Adam().get_config())
    assert keys == set(adam.PLAIN_ADAM_CONFIG) | adam._ADAM_FREE_KEYS


@torch_only
def test_torch_foreach_ops():
    """torch/adam.py `_adam_update`: torch's (private) multi-tensor `_foreach_*` ops."""
    import torch

    for name in ("_foreach_mul_", "_foreach_add_", "_foreach_mul", "_foreach_div", "_foreach_add", "_foreach_sqrt"):
        assert hasattr(torch, name), name


def test_installed_keras_is_in_the_tested_range():
    """The nox sessions install a keras the fast path is tested on; outside it the path turns itself off."""
    assert fast_path.keras_version_tested(keras.__version__), keras.__version__


def test_seed_generator_state_variable_name():
    """tensorflow/__init__.py `draws_random_numbers`: a layer's SeedGenerator shows as a variable of this name."""
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dropout(0.5)(inputs))
    assert [variable.name for variable in model.variables] == ["seed_generator_state"]


# --------------------------------------------------------------------------
# Canaries: keras bugs we work around. Each fails once keras fixes it.
# --------------------------------------------------------------------------


def test_canary_pack_drops_sample_weight_without_targets():
    """models._carrier_targets: keras' `pack_x_y_sample_weight` drops sample_weight when y is None."""
    x = (np.zeros((4, 2), "float32"),) * 3
    packed = keras.utils.pack_x_y_sample_weight(x, None, np.ones(4, "float32"))
    assert keras.utils.unpack_x_y_sample_weight(packed)[2] is None


def test_canary_compile_from_config_skips_custom_compile():
    """_FastModel.compile_from_config: keras does not recompile a loaded model whose class overrides compile."""

    class Custom(keras.Model):
        def compile(self, optimizer="adam", **kwargs):
            super().compile(optimizer=optimizer, **kwargs)

    inputs = keras.Input((2,))
    model = Custom(inputs, keras.layers.Dense(1)(inputs))
    with pytest.warns(UserWarning):
        keras.Model.compile_from_config(model, {"optimizer": "adam", "loss": "mse"})
    assert not model.compiled


@torch_only
def test_canary_keras_saves_torchs_adam_under_its_backend_module():
    """_FastModel.get_compile_config renames an optimizer module under keras.src.backend.: keras' own save
    still names torch's Adam there, a module no other backend's install can import."""
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    assert model.get_compile_config()["optimizer"]["module"].startswith("keras.src.backend.torch.")


@tensorflow_only
def test_canary_array_dataset_hides_its_cardinality():
    """tensorflow/arrays.py asserts the cardinality: keras' array tf.data pipeline does not state it."""
    import tensorflow as tf
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    adapter = ArrayDataAdapter(np.zeros((10, 2), "float32"), np.zeros(10), batch_size=4, shuffle=True)
    assert adapter.get_tf_dataset().cardinality() == tf.data.UNKNOWN_CARDINALITY
