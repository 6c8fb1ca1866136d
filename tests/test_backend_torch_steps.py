"""siamese_k3.backend.torch (steps, arrays, callbacks): fit() on torch gives what keras' own steps and array batches give.

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

from siamese_k3.backend.torch import arrays, callbacks, steps
from siamese_k3.losses import TripletSemiHardLoss
from siamese_k3.metrics import FractionPositiveTriplets
from siamese_k3.models import MiningModel, SiameseModel

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
    with mock.patch.object(steps, "can_step_directly", lambda model: False), mock.patch.object(
        arrays, "array_loader", lambda *args, **kwargs: None
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
    loaders, original = [], arrays.array_loader

    def recording_loader(*args, **kwargs):
        loaders.append(original(*args, **kwargs))
        return loaders[-1]

    with mock.patch.object(steps, "train_step", wraps=steps.train_step) as step, mock.patch.object(
        arrays, "array_loader", recording_loader
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
    ours = [batch for batch in arrays.array_loader(x, 16, True)]
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
    assert arrays.array_loader(x, 2, True) is None


@torch_only
def test_compiled_metrics_take_the_direct_step_jit_and_custom_metrics_do_not():
    assert steps.can_step_directly(_model())
    assert steps.can_step_directly(_model(metrics=[keras.metrics.Mean()]))
    assert not steps.can_step_directly(_model(jit_compile=True))

    class OwnMetrics(SiameseModel):
        def compute_metrics(self, x, y, y_pred, sample_weight=None):
            return super().compute_metrics(x, y, y_pred, sample_weight)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((20,))
    own = OwnMetrics(keras.Model(inputs, keras.layers.Dense(8)(inputs)))
    own.compile()
    assert not steps.can_step_directly(own)


def _mining_model(seed=5):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    hidden = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    hidden = keras.layers.BatchNormalization()(hidden)
    hidden = keras.layers.MaxPooling2D(2)(keras.layers.ReLU()(hidden))
    model = MiningModel(keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(hidden))))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=TripletSemiHardLoss(margin=0.5),
        metrics=[FractionPositiveTriplets(margin=0.5)],
    )  # fmt: skip
    return model


@torch_only
@pytest.mark.parametrize("shuffle", [True, "batch"])
def test_mining_fit_with_metrics_matches_keras_bit_for_bit(shuffle):
    """MiningModel on labelled arrays: loader, direct step, compiled metric and layout kernels vs keras' path."""
    rng = np.random.default_rng(2)
    images, labels = rng.random((70, 6, 6, 1), dtype=np.float32), rng.integers(0, 4, 70).astype("int32")

    def train(keras_path):
        model = _mining_model()
        with _keras_path() if keras_path else contextlib.nullcontext():
            history = model.fit(
                images, labels, batch_size=16, epochs=3, shuffle=shuffle, verbose=0,
                validation_data=(images[:20], labels[:20]),
            )  # fmt: skip
        return history.history, model.get_weights()

    (ours, our_weights), (reference, reference_weights) = train(False), train(True)
    assert set(ours) == {"loss", "fraction_positive_triplets", "val_loss", "val_fraction_positive_triplets"}
    assert ours == reference
    for weight, expected in zip(our_weights, reference_weights):
        np.testing.assert_array_equal(weight, expected)


@torch_only
@pytest.mark.parametrize("dtype", ["int32", "int64", "float32"])
def test_loader_batches_of_images_and_labels_are_keras_batches(dtype):
    from keras.src.trainers.epoch_iterator import EpochIterator

    rng = np.random.default_rng(1)
    images, labels = rng.random((37, 3), dtype=np.float32), np.arange(37).astype(dtype)
    keras.utils.set_random_seed(11)
    ours = list(arrays.array_loader(images, 8, True, y=labels))
    keras.utils.set_random_seed(11)
    reference = list(EpochIterator(x=images, y=labels, batch_size=8, shuffle=True).data_adapter.get_torch_dataloader())
    assert len(ours) == len(reference) == 5
    for (x, y), (x_ref, y_ref) in zip(ours, reference):
        assert y.dtype == y_ref.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(x_ref))
        np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))


@torch_only
def test_validation_split_and_sample_weight_keep_keras_adapter():
    model = _model()
    with mock.patch.object(arrays, "array_loader", wraps=arrays.array_loader) as loader:
        model.fit(_triplets(40), batch_size=8, epochs=1, verbose=0, validation_split=0.25)
        model.fit(_triplets(40), batch_size=8, epochs=1, verbose=0, sample_weight=np.ones(40, "float32"))
    assert loader.call_count == 0


@pytest.mark.skipif(ON_TORCH, reason="checks the other backends")
def test_other_backends_never_take_the_torch_path():
    model = _model()
    assert not steps.can_step_directly(model)
    assert arrays.array_loader(_triplets(8), 4, True) is None
    assert arrays.array_loader(np.zeros((8, 2), "float32"), 4, True, y=np.zeros(8, "int32")) is None


@torch_only
def test_training_after_assign_and_set_weights_still_matches_keras():
    """The cached tensors are the variables' own: assigning new values does not detach them."""
    data = _triplets(32)
    ours, reference = _model(dropout=0.0), _model(dropout=0.0)
    fresh = [np.full(weight.shape, 0.01, "float32") for weight in ours.get_weights()]
    for model, path in ((ours, contextlib.nullcontext), (reference, _keras_path)):
        with path():
            model.fit(data, batch_size=8, epochs=1, verbose=0, shuffle=False)
            model.set_weights(fresh)
            model.layers[-1].layers[1].kernel.assign(np.full((20, 16), -0.02, "float32"))
            model.fit(data, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for mine, theirs in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(mine, theirs)


class _Recorder(keras.callbacks.Callback):
    """Every batch hook's (name, batch, logs) and the thread it ran on."""

    def __init__(self):
        super().__init__()
        self.calls, self.threads = [], set()

    def _record(self, name, batch, logs):
        import threading

        self.threads.add(threading.current_thread().name)
        self.calls.append((name, batch, dict(logs or {})))

    def on_train_batch_begin(self, batch, logs=None):
        self._record("train_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._record("train_end", batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._record("test_end", batch, logs)


@torch_only
def test_batch_hooks_see_what_keras_gives_them_on_the_main_thread():
    import threading

    histories = []
    recorders = []
    for patched in (False, True):
        recorder = _Recorder()
        model = _model()
        keep = mock.patch.object(callbacks, "callback_list", lambda model, x, callbacks, *args: callbacks)
        with keep if patched else contextlib.nullcontext():
            history = model.fit(
                _triplets(40), batch_size=16, epochs=2, verbose=0, callbacks=[recorder],
                validation_data=(_triplets(10, 1),),
            )  # fmt: skip
        histories.append(history.history)
        recorders.append(recorder)
    ours, reference = recorders
    assert histories[0] == histories[1]
    assert ours.calls == reference.calls  # the same hooks, batches and float logs
    assert [call[0] for call in ours.calls[:3]] == ["train_begin", "train_end", "train_begin"]
    assert all(isinstance(value, float) for call in ours.calls for value in call[2].values())
    assert ours.threads == {threading.current_thread().name}  # synchronous on the CPU


@torch_only
def test_without_batch_hooks_no_batch_work_is_done():
    model = _model()
    with mock.patch.object(callbacks, "_python_logs", wraps=callbacks._python_logs) as python_logs:
        model.fit(_triplets(40), batch_size=8, epochs=1, verbose=0, callbacks=[keras.callbacks.History()])
    assert python_logs.call_count == 0
    with mock.patch.object(callbacks, "_python_logs", wraps=callbacks._python_logs) as python_logs:
        model.fit(_triplets(40), batch_size=8, epochs=1, verbose=0, callbacks=[_Recorder()])
    assert python_logs.call_count == 2 * 5  # begin and end of 5 batches


@torch_only
def test_progress_bar_knows_the_number_of_steps(capsys):
    model = _model()
    model.fit(_triplets(40), batch_size=8, epochs=1, verbose=1)
    assert "5/5" in capsys.readouterr().out


@torch_only
def test_callback_list_only_where_keras_would_know_the_steps():
    import torch

    model = _model()
    loader = torch.utils.data.DataLoader(list(range(10)), batch_size=4)
    made = callbacks.callback_list(model, loader, None, 0, 1, None)
    assert isinstance(made, keras.callbacks.CallbackList) and made.params["steps"] == 3
    assert callbacks.callback_list(model, iter([]), None, 0, 1, 7).params["steps"] == 7
    assert callbacks.callback_list(model, iter([]), None, 0, 1, None) is None  # a generator: keras' own list
    given = keras.callbacks.CallbackList([])
    assert callbacks.callback_list(model, loader, given, 0, 1, None) is given
    progbar = callbacks.callback_list(model, loader, [], 1, 2, None)
    assert [type(callback).__name__ for callback in progbar.callbacks] == ["History", "ProgbarLogger"]
