"""siamese_k3.backend.fit: fit() on torch gives what keras' own steps and array batches give.

The reference is keras' normal path, run from the same seed with this module
switched off (`can_step_directly` False, `array_loader` None): the loss
history, validation losses, `evaluate` and the trained weights must match
exactly, bit for bit. On jax and tensorflow the module is never used, which
the last test checks.
"""

import contextlib
from unittest import mock

import keras
import numpy as np
import pytest

from siamese_k3.backend import fit as torch_fit
from siamese_k3.models import SiameseModel

ON_TORCH = keras.backend.backend() == "torch"
torch_only = pytest.mark.skipif(not ON_TORCH, reason="the direct steps and loader are torch-only")


def _model(seed=3, dropout=0.2, batch_norm=False, **compile_kwargs):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((20,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    if batch_norm:
        hidden = keras.layers.BatchNormalization()(hidden)
    hidden = keras.layers.Dropout(dropout)(hidden)
    model = SiameseModel(keras.Model(inputs, keras.layers.Dense(8)(hidden)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), **compile_kwargs)
    return model


def _triplets(count, seed=0, as_dict=False):
    rng = np.random.default_rng(seed)
    parts = [rng.random((count, 20), dtype=np.float32) for _ in range(3)]
    return dict(zip(("anchor", "positive", "negative"), parts)) if as_dict else tuple(parts)


@contextlib.contextmanager
def _keras_path():
    """keras' own train/test steps and array adapter (the reference)."""
    with mock.patch.object(torch_fit, "can_step_directly", lambda model: False), mock.patch.object(
        torch_fit, "array_loader", lambda *args: None
    ):
        yield


def _train(keras_path, fit_kwargs, model_kwargs=None, as_dict=False):
    model = _model(**(model_kwargs or {}))
    train, validation = _triplets(100, 0, as_dict), _triplets(30, 1, as_dict)
    with _keras_path() if keras_path else contextlib.nullcontext():
        history = model.fit(train, epochs=3, verbose=0, validation_data=(validation,), **fit_kwargs)
        evaluated = model.evaluate(validation, batch_size=7, verbose=0)
    return history.history, [np.array(w) for w in model.get_weights()], evaluated


@torch_only
@pytest.mark.parametrize(
    "fit_kwargs, model_kwargs, as_dict",
    [
        ({"batch_size": 16}, None, False),  # 100 = 6·16 + 4: a last partial batch
        ({"batch_size": 16, "shuffle": False}, None, False),
        ({"batch_size": 16, "shuffle": "batch"}, None, False),
        ({"batch_size": 32, "validation_batch_size": 9}, {"batch_norm": True}, True),
        ({}, {"dropout": 0.0}, False),  # keras' default batch size, 32
    ],
)
def test_fit_matches_keras_bit_for_bit(fit_kwargs, model_kwargs, as_dict):
    ours = _train(False, fit_kwargs, model_kwargs, as_dict)
    reference = _train(True, fit_kwargs, model_kwargs, as_dict)
    assert ours[0] == reference[0]  # loss and val_loss per epoch, exact floats
    assert ours[2] == reference[2]
    for weight, expected in zip(ours[1], reference[1]):
        np.testing.assert_array_equal(weight, expected)


@torch_only
def test_fit_uses_the_direct_step_and_the_loader():
    model = _model()
    loaders, original = [], torch_fit.array_loader

    def recording_loader(*args):
        loaders.append(original(*args))
        return loaders[-1]

    with mock.patch.object(torch_fit, "train_step", wraps=torch_fit.train_step) as step, mock.patch.object(
        torch_fit, "array_loader", recording_loader
    ):
        model.fit(_triplets(64), batch_size=16, epochs=1, verbose=0)
    assert step.call_count == 4
    assert len(loaders) == 1 and len(loaders[0]) == 4


@torch_only
def test_loader_batches_are_keras_batches():
    """Same torch seed: the same shuffled batches as keras' own array adapter, in the same structure."""
    from keras.src.trainers.epoch_iterator import EpochIterator

    x = _triplets(50, as_dict=True)
    keras.utils.set_random_seed(7)
    ours = [batch for batch in torch_fit.array_loader(x, 16, True)]
    keras.utils.set_random_seed(7)
    adapter = EpochIterator(x=x, batch_size=16, shuffle=True).data_adapter.get_torch_dataloader()
    reference = [batch for batch in adapter]
    assert len(ours) == len(reference) == 4
    for mine, theirs in zip(ours, reference):
        assert set(mine) == set(theirs) == {"anchor", "positive", "negative"}
        for key in mine:
            np.testing.assert_array_equal(np.asarray(mine[key]), np.asarray(theirs[key]))


@torch_only
@pytest.mark.parametrize(
    "x",
    [
        tuple(np.zeros((4, 3), "float64") for _ in range(3)),  # keras casts float64 to float32
        (np.zeros((4, 3), "float32"), np.zeros((4, 3), "float32"), np.zeros((5, 3), "float32")),
        (np.zeros((0, 3), "float32"),) * 3,
        np.zeros((4, 3), "float32"),  # not a triplet structure
        [[0.0, 1.0]] * 3,  # python lists
    ],
)
def test_loader_declines_what_keras_converts_or_rejects(x):
    assert torch_fit.array_loader(x, 2, True) is None


@torch_only
def test_compiled_metrics_or_jit_use_keras_steps():
    assert torch_fit.can_step_directly(_model())
    assert not torch_fit.can_step_directly(_model(metrics=[keras.metrics.Mean()]))
    assert not torch_fit.can_step_directly(_model(jit_compile=True))


@torch_only
def test_validation_split_and_sample_weight_keep_keras_adapter():
    model = _model()
    with mock.patch.object(torch_fit, "array_loader", wraps=torch_fit.array_loader) as loader:
        model.fit(_triplets(40), batch_size=8, epochs=1, verbose=0, validation_split=0.25)
        model.fit(_triplets(40), batch_size=8, epochs=1, verbose=0, sample_weight=np.ones(40, "float32"))
    assert loader.call_count == 0


@pytest.mark.skipif(ON_TORCH, reason="checks the other backends")
def test_other_backends_never_take_the_torch_path():
    model = _model()
    assert not torch_fit.can_step_directly(model)
    assert torch_fit.array_loader(_triplets(8), 4, True) is None
