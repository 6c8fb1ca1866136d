"""siamese_k3.backend.fast_path: the seam's choice, its keras range, and keras' own test of a batch hook.

The behaviour of the paths themselves is checked against keras' own path in
tests/test_conformance.py; here, what the seam decides and declares.
"""

import os
import re
from unittest import mock

import keras
import numpy as np
import pytest

from siamese_k3.backend import fast_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(ROOT, name)) as handle:
        return handle.read()


def test_pyproject_declares_the_tested_range():
    """pyproject's keras requirement is exactly the range the fast path switches itself on for."""
    floor, ceiling = fast_path.TESTED_KERAS
    assert f'"keras>={floor.rsplit(".0", 1)[0]},<{ceiling}"' in _read("pyproject.toml")


def test_floor_constraints_pin_the_floor():
    assert f"keras=={fast_path.TESTED_KERAS[0]}" in _read("constraints-keras-floor.txt").split()


def test_default_constraints_pin_a_tested_keras():
    pinned = re.search(r"^keras==(\S+)", _read("constraints.txt"), re.M).group(1)
    assert fast_path.keras_version_tested(pinned)


@pytest.mark.parametrize(
    "version, tested",
    [("3.10.0", True), ("3.15.1", True), ("3.15.9.dev2026", True), ("3.9.2", False), ("3.16.0", False),
     ("3.16.0rc1", False), ("4.0.0", False), ("3.10", True)],
)  # fmt: skip
def test_keras_version_tested(version, tested):
    assert fast_path.keras_version_tested(version) is tested


class _ClassHook(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        pass


class _GenericHook(keras.callbacks.Callback):
    def on_batch_begin(self, batch, logs=None):  # keras' default on_train_batch_begin calls it
        pass


class _EpochOnly(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        pass


@pytest.mark.parametrize(
    "callback, hook, expected",
    [
        (_ClassHook(), "on_train_batch_end", True),
        (_ClassHook(), "on_test_batch_end", False),
        (_GenericHook(), "on_train_batch_begin", True),
        (_GenericHook(), "on_test_batch_begin", False),  # keras' test hooks do not call the generic ones
        (_EpochOnly(), "on_train_batch_end", False),
        (keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: None), "on_train_batch_end", True),
        (keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: None), "on_train_batch_end", False),
    ],
)
def test_has_hook_follows_keras(callback, hook, expected):
    """As keras' `CallbackList` decides what it must call: class overrides and instance attributes alike."""
    assert fast_path.has_hook(callback, hook) is expected


@pytest.mark.parametrize(
    "fit_kwargs",
    [{"validation_split": 0.2}, {"class_weight": {0: 1.0}}, {"steps_per_epoch": 3}, {"sample_weight": [1.0]}],
)
def test_adapt_arrays_leaves_to_keras_what_its_adapter_must_do(fit_kwargs):
    def never(*args, **kwargs):
        raise AssertionError("batches made for a fit keras must batch itself")

    assert fast_path.adapt_arrays(never, None, "x", "y", fit_kwargs) == ("x", "y", fit_kwargs)


def test_adapt_arrays_moves_batch_size_and_shuffle_into_the_batches():
    made = []

    def batches(x, batch_size, shuffle, y=None, model=None):
        made.append((batch_size, shuffle))
        return "batches"

    assert fast_path.adapt_arrays(batches, None, "x", "y", {"batch_size": 8, "shuffle": False}) == (
        "batches", None, {"batch_size": None, "shuffle": False, "validation_batch_size": 8},
    )
    assert made == [(8, False)]
    assert fast_path.adapt_arrays(lambda *a, **k: None, None, "x", "y", {}) == ("x", "y", {})


def test_keras_own_path_has_keras_defaults():
    assert fast_path.KERAS.compile_defaults(None, False) == (1, "auto")


def _mining_model():
    from siamese_k3 import MiningModel, TripletBatchAllLoss

    model = MiningModel(keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]))
    model.compile(optimizer="adam", loss=TripletBatchAllLoss(margin=0.2))
    return model


def _labelled():
    rng = np.random.default_rng(0)
    return rng.random((256, 8), dtype=np.float32), np.arange(256) % 4


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="torch runs one step per execution anyway")
def test_validation_inside_fit_keeps_the_compiled_train_function():
    """fit's own validation call hands `evaluate` keras' CallbackList: that must not reset the steps per execution."""
    model, (x, y) = _mining_model(), _labelled()
    made = []
    original = type(model).make_train_function

    def counting(self, force=False):
        made.append(self.train_function is None)
        return original(self, force)

    with mock.patch.object(type(model), "make_train_function", counting):
        model.fit(x, y, batch_size=64, epochs=3, verbose=0, validation_data=(x, y))
    assert sum(made) == 1 and model.steps_per_execution == 32


def test_evaluate_and_predict_hooks_see_every_batch():
    model, (x, y) = _mining_model(), _labelled()
    calls = []
    model.evaluate(x, y, batch_size=64, verbose=0,
                   callbacks=[keras.callbacks.LambdaCallback(on_test_batch_end=lambda b, logs: calls.append(b))])
    model.predict(x, batch_size=64, verbose=0,
                  callbacks=[keras.callbacks.LambdaCallback(on_predict_batch_end=lambda b, logs: calls.append(-b))])
    assert calls == [0, 1, 2, 3, 0, -1, -2, -3]
    assert model.steps_per_execution == (1 if keras.backend.backend() == "torch" else 32)


def _progress_bar_counts(**compile_kwargs):
    """(steps done, steps in the epoch) of every update of a 7-step epoch's progress bar, and the fit's history.

    The bar's own updates, not what it prints: it prints at most one update in 0.05 s.
    """
    model, (x, y) = _mining_model(), _labelled()
    if compile_kwargs:
        model.compile(optimizer="adam", loss=model.loss, **compile_kwargs)
    progbar = keras.utils.Progbar
    with mock.patch.object(progbar, "update", autospec=True, side_effect=progbar.update) as update:
        history = model.fit(x[:56], y[:56], batch_size=8, epochs=2, verbose=1)
    return [(call.args[1], call.args[0].target) for call in update.call_args_list], history


def test_the_progress_bar_counts_no_step_past_the_epoch():
    """7 steps at 32 per execution: keras' own bar would count 32/7 (and show a negative ETA)."""
    counts, history = _progress_bar_counts()
    assert counts and all(total == 7 and 1 <= done <= 7 for done, total in counts), counts
    assert len(history.history["loss"]) == 2  # keras' History still fills the History fit returns


def test_evaluate_and_predict_progress_bars_count_no_step_past_the_end():
    model, (x, y) = _mining_model(), _labelled()
    progbar = keras.utils.Progbar
    with mock.patch.object(progbar, "update", autospec=True, side_effect=progbar.update) as update:
        model.evaluate(x[:56], y[:56], batch_size=8, verbose=1)
        model.predict(x[:56], batch_size=8, verbose=1)
    counts = [(call.args[1], call.args[0].target) for call in update.call_args_list]
    assert counts and all(total == 7 and 1 <= done <= 7 for done, total in counts), counts


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="keras on torch runs one step per execution")
def test_a_chosen_steps_per_execution_keeps_keras_progress_bar():
    """steps_per_execution=4 is the user's: keras' own bar counts as on keras' own path (keras 3.15 counts
    the last execution whole, 8/7; keras 3.10 clips it).

    Compared as multisets: on JAX, keras 3.10 runs batch-end callbacks on a thread pool
    (`CallbackList._async_dispatch`), so the order of two updates within an epoch is keras' to choose.
    """
    counts, _ = _progress_bar_counts(steps_per_execution=4)
    own, _ = _progress_bar_counts(steps_per_execution=4, fast_path=False)
    assert own and sorted(counts) == sorted(own)


def test_progress_bar_callbacks_only_for_the_fast_paths_own_steps():
    model = _mining_model()
    user = [keras.callbacks.LambdaCallback()]
    listed = fast_path.progress_bar_callbacks(model, user, verbose="auto")
    if model.steps_per_execution == 1:  # torch: one step per execution, keras' own bar
        assert listed is user
        return
    assert [type(callback) for callback in listed] == [
        keras.callbacks.LambdaCallback, keras.callbacks.History, fast_path.EpochProgbarLogger
    ]  # keras' order
    assert listed[0] is user[0] and len(user) == 1
    evaluating = fast_path.progress_bar_callbacks(model, None, verbose=1, history=False)  # evaluate, predict
    assert [type(callback) for callback in evaluating] == [fast_path.EpochProgbarLogger]
    assert fast_path.progress_bar_callbacks(model, user, verbose=0) is user
    own_bar = [keras.callbacks.ProgbarLogger()]
    assert fast_path.progress_bar_callbacks(model, own_bar, verbose=1) is own_bar
    keras_list = keras.callbacks.CallbackList()
    assert fast_path.progress_bar_callbacks(model, keras_list, verbose=1) is keras_list
    model.compile(optimizer="adam", loss=model.loss, steps_per_execution=32)  # the user's choice
    assert fast_path.progress_bar_callbacks(model, user, verbose=1) is user
