"""The training fast path against keras' own path: the same losses, weights, history and callback calls.

Every case trains the same tiny model twice from the same seed
(`keras.utils.set_random_seed` before building each model and before each
`fit`): once with the fast path on (``compile(fast_path=True)``) and once on
keras' own path (``compile(fast_path=False)``, which is exactly keras'
`Model.fit` with keras' defaults). It compares

- the loss of every training step and the running validation loss of every
  test step (``logs["loss"]`` in ``on_train_batch_end`` / ``on_test_batch_end``);
- the final weights of the model and of its optimizer;
- ``history.history`` and ``history.epoch``;
- the exact sequence of callback calls, (hook, batch or epoch index, sorted
  log keys), for every train/test hook of a `keras.callbacks.Callback`
  subclass (class-level hooks) and for the instance-level hooks of a
  `keras.callbacks.LambdaCallback`; and what keras' own callbacks leave behind
  (CSVLogger's file, ModelCheckpoint's weights, BackupAndRestore's directory).

Tolerances, per backend (`TOLERANCE`, `TORCH_BATCH_NORM`, `MIXED_BFLOAT16`):

- torch: bit for bit (`numpy.testing.assert_array_equal`, exact history and
  CSV text), except a backbone with BatchNormalization, which the fast path
  runs as torch's fused kernel (the statistics summed in another order):
  rtol=1e-5, atol=1e-6 after 2 epochs (measured: within 7e-7 relative).
- jax: the fast path changes only the compile defaults (32 steps per
  execution; a `fit` with batch hooks runs one step per execution): bit for
  bit, mixed precision and the fits with only epoch-level callbacks (32 steps
  per execution) included.
- tensorflow: the fast path compiles the step with XLA (``jit_compile=True``)
  where keras' default leaves it off on the CPU, so the floats round
  differently: rtol=5e-5, atol=5e-6 for losses, history, CSV values and
  weights alike. Measured on keras 3.15 / TF 2.21 (2-core x86 CPU), as
  |fast − keras| / (0.1 + |keras|): losses ≤ 1e-6, weights ≤ 3e-6 but for
  one weight of the siamese validation_split case at 2.5e-5 (rtol=3e-5,
  atol=3e-6 is the tightest that passes; the tolerance leaves a factor 2 for
  other CPUs). A mixed_bfloat16 backbone: rtol=1e-2, and atol 2⁻⁴ of the
  compared array's largest magnitude (at least 1e-3). XLA rounds the bfloat16
  intermediates differently, and bfloat16's own rounding step is 2⁻⁸ ≈ 4e-3
  relative, so an entry that is a sum of bfloat16 products (a gradient, Adam's
  moments) differs by a few steps of its terms' size, not of its own: on an
  AMD EPYC (2 cores) the worst entry differed by 0.040 of its array's largest
  magnitude (an Adam moment whose entries are near 0), 0.027 for a moment of
  a weight, 0.005 for the losses. The earlier atol=1e-3 held on an Intel Xeon
  (worst 3.7e-3 relative) and failed on the AMD EPYC (an Adam moment 1.5e-3 off).

The callback calls are compared exactly on every backend.

Every parameter of the models here has a true gradient (`_embedding`): a
triplet loss cannot see a bias that shifts every embedding equally, and Adam
scales the rounding noise of such a zero gradient up to steps of the learning
rate's size, which no tolerance could compare.

The matrix (`CASES`) runs for `SiameseModel` and `MiningModel` (class_weight
for `MiningModel` only) on torch: keras' callbacks, validation data and split,
sample and class weights, steps_per_epoch, initial_epoch, shuffling, each
input kind (numpy, `keras.utils.PyDataset`, tf.data when TensorFlow is
installed, a torch DataLoader on torch, a Python generator), optimizers, mixed
precision, frozen layers, Dropout and a custom layer that reads ``training``.
On jax and tensorflow every fit compiles (1–3 s each on a small CPU), so the
matrix runs there for `SiameseModel`, and for `MiningModel` too where the
model matters to the fast path (numpy arrays, which the fast path batches
itself on TensorFlow; validation data; class_weight); what the rest tests
(callbacks, optimizers, layers, other inputs) passes through keras the same
way for both models there.

Every layer class the torch fast path calls directly
(`siamese_k3.backend.torch.forward._DIRECT_LAYERS`) is trained in a small
`MiningModel` backbone (`test_direct_layer_conforms`), and the test checks that
the fast path did plan it as a direct call. That test runs on torch only: jax
and tensorflow never call layers directly (their fast path is compile defaults
and, on TensorFlow, keras' own array pipeline); the test that the
parametrization covers `_DIRECT_LAYERS` exactly runs on every backend.

Where a feature cannot be made equal, the fast path steps aside, and the
matrix shows it conforming:

- torch, Adam(gradient_accumulation_steps=2): keras' own `apply` (the
  direct Adam update declines any option beyond plain Adam);
- tensorflow, Dropout (any layer holding a `SeedGenerator`): XLA draws other
  random numbers than TensorFlow's kernels from the same seed, so such a
  model keeps keras' ``jit_compile="auto"`` (`test_random_layers_keep_keras_jit`).
"""

import csv
import importlib.util
import io
import os
import warnings

import keras
import numpy as np
import pytest

import siamese_k3
from siamese_k3.backend import fast_path, registry
from siamese_k3.backend.torch import forward

pytestmark = pytest.mark.conformance

BACKEND = keras.backend.backend()
HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None
SEED = 1234
ROWS, VALIDATION_ROWS, FEATURES, CLASSES, BATCH = 64, 32, 6, 4, 16

# (rtol, atol); None: bit for bit. See the module's docstring.
TOLERANCE = {"torch": None, "jax": None, "tensorflow": (5e-5, 5e-6)}[BACKEND]
TORCH_BATCH_NORM = (1e-5, 1e-6)  # torch, a backbone with BatchNormalization (the fused kernel)
# A mixed_bfloat16 backbone: (rtol, atol, atol as a fraction of the array's largest magnitude).
MIXED_BFLOAT16 = {"torch": None, "jax": None, "tensorflow": (1e-2, 1e-3, 2**-4)}[BACKEND]
# The fast path's default steps per execution, and what a fit with batch hooks runs.
DEFAULT_STEPS = {"torch": 1, "jax": 32, "tensorflow": 32}[BACKEND]

BOTH = ("siamese", "mining")
# MiningModels with the other loss families: a pair loss, and a proxy loss with the model's Proxies layer
NEW_LOSSES = ("pairs", "proxies")

torch_only = pytest.mark.skipif(BACKEND != "torch", reason="only torch calls layers directly")


# --------------------------------------------------------------------------
# Recording callbacks
# --------------------------------------------------------------------------


def _keys(logs):
    return tuple(sorted(logs or {}))


class Recorder(keras.callbacks.Callback):
    """Every train/test hook, overridden in the class: (hook, index, sorted log keys) and the losses."""

    def __init__(self):
        super().__init__()
        self.calls, self.losses, self.test_losses = [], [], []

    def _record(self, hook, index, logs):
        self.calls.append((hook, index, _keys(logs)))

    def on_train_begin(self, logs=None):
        self._record("on_train_begin", None, logs)

    def on_train_end(self, logs=None):
        self._record("on_train_end", None, logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._record("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._record("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._record("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._record("on_train_batch_end", batch, logs)
        self.losses.append(float(logs["loss"]))

    def on_test_begin(self, logs=None):
        self._record("on_test_begin", None, logs)

    def on_test_end(self, logs=None):
        self._record("on_test_end", None, logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._record("on_test_batch_begin", batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._record("on_test_batch_end", batch, logs)
        self.test_losses.append(float(logs["loss"]))


class EpochRecorder(keras.callbacks.Callback):
    """Epoch-level hooks only, and the model's steps per execution as each sees it."""

    def __init__(self):
        super().__init__()
        self.calls, self.steps_per_execution = [], []

    def on_train_begin(self, logs=None):
        self.steps_per_execution.append(self.model.steps_per_execution)

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("on_epoch_end", epoch, _keys(logs)))
        self.steps_per_execution.append(self.model.steps_per_execution)


def _lambda_recorder():
    """A LambdaCallback (instance-level hooks) and the list its calls go to."""
    calls = []
    callback = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: calls.append(("on_train_batch_end", batch, _keys(logs))),
        on_epoch_end=lambda epoch, logs: calls.append(("on_epoch_end", epoch, _keys(logs))),
    )
    return callback, calls


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def _arrays(kind, rows, seed, nan_row=None):
    """(x, y): triplets (a tuple of three arrays) and None for "siamese"; features and class ids for "mining"."""
    rng = np.random.default_rng(seed)
    if kind == "siamese":
        x = tuple(rng.normal(size=(rows, FEATURES)).astype("float32") for _ in range(3))
        if nan_row is not None:
            x[0][nan_row] = np.nan
        return x, None
    x = rng.normal(size=(rows, FEATURES)).astype("float32")
    if nan_row is not None:
        x[nan_row] = np.nan
    return x, (np.arange(rows) % CLASSES).astype("int32")


def _validation(kind):
    x, y = _arrays(kind, VALIDATION_ROWS, seed=1)
    return (x,) if y is None else (x, y)


def _batches(kind, x, y):
    """[((anchor, positive, negative),)] or [(features, labels)], BATCH rows each, in order."""
    rows = len(x[0]) if kind == "siamese" else len(x)
    out = []
    for start in range(0, rows, BATCH):
        part = slice(start, start + BATCH)
        out.append((tuple(a[part] for a in x),) if kind == "siamese" else (x[part], y[part]))
    return out


class Batches(keras.utils.PyDataset):
    """A `keras.utils.PyDataset` of ready batches."""

    def __init__(self, batches, **kwargs):
        super().__init__(**kwargs)
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def _generator(batches):
    while True:  # repeats: for steps_per_epoch
        yield from batches


def _tf_dataset(kind, x, y):
    import tensorflow as tf

    slices = (x,) if kind == "siamese" else (x, y)
    return tf.data.Dataset.from_tensor_slices(slices).batch(BATCH, drop_remainder=True)  # no remainder: static shapes


def _torch_loader(kind, x, y):
    import torch

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(x[0]) if kind == "siamese" else len(x)

        def __getitem__(self, index):
            if kind == "siamese":  # a dict: a tuple of three would read as (x, y, sample_weight)
                return dict(zip(("anchor", "positive", "negative"), (a[index] for a in x)))
            return x[index], y[index]

    return torch.utils.data.DataLoader(Rows(), batch_size=BATCH, shuffle=False)


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


class TrainingScale(keras.layers.Layer):
    """A custom layer whose `call` reads ``training``."""

    def call(self, inputs, training=None):
        return inputs * 0.5 + 0.1 if training else inputs


def _backbone(variant):
    """Input(6) → Dense(8, relu) → [the variant's layers] → `_embedding` (8)."""
    if variant == "mixed":
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        try:
            inputs = keras.Input((FEATURES,))
            hidden = keras.layers.Dense(8, activation="relu")(inputs)
            backbone = keras.Model(inputs, _embedding(hidden))
            assert backbone.output.dtype == "bfloat16"
            return backbone
        finally:
            keras.mixed_precision.set_dtype_policy("float32")
    inputs = keras.Input((FEATURES,))
    if variant == "linear":  # no relu, which maps NaN to 0 in TensorFlow's CPU kernels
        return keras.Model(inputs, _embedding(keras.layers.Dense(8, use_bias=False)(inputs)))
    if variant == "batchnorm":  # beta followed by a relu: see `_embedding`
        hidden = keras.layers.Dense(8, use_bias=False)(inputs)
        hidden = keras.layers.ReLU()(keras.layers.BatchNormalization()(hidden))
        return keras.Model(inputs, _embedding(hidden))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    if variant == "dropout":
        hidden = keras.layers.Dropout(0.3)(hidden)
    elif variant == "frozen":
        hidden = keras.layers.Dense(8, activation="relu", trainable=False)(hidden)
    elif variant == "custom":
        hidden = TrainingScale()(hidden)
    return keras.Model(inputs, _embedding(hidden))


def _embedding(hidden, units=8):
    """The last layer: a Dense without bias.

    A triplet loss sees only differences between embeddings, so a bias (or any
    parameter) that shifts every embedding equally has a gradient that is zero
    but for rounding, and Adam scales that noise up to steps of the learning
    rate's size: two paths that round differently (XLA, a fused kernel) would
    then end with unrelated biases. Every parameter here has a true gradient.
    """
    return keras.layers.Dense(units, use_bias=False)(hidden)


def _model(kind, variant):
    backbone = _backbone(variant)
    if kind == "siamese":
        return siamese_k3.SiameseModel(backbone, margin=0.5)
    if kind == "proxies":
        return siamese_k3.MiningModel(backbone, proxies=siamese_k3.Proxies(CLASSES))
    return siamese_k3.MiningModel(backbone)


def _compile(model, kind, fast, optimizer=None, **kwargs):
    optimizer = optimizer() if optimizer else keras.optimizers.Adam(1e-2)
    if kind == "mining":
        kwargs.setdefault("loss", siamese_k3.TripletBatchAllLoss(margin=0.2))
    elif kind == "pairs":
        kwargs.setdefault("loss", siamese_k3.MultiSimilarityLoss(epsilon=0.1))
    elif kind == "proxies":
        kwargs.setdefault("loss", siamese_k3.ArcFaceLoss(scale=16.0))
    model.compile(optimizer=optimizer, fast_path=fast, **kwargs)


# --------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------


def _numpy(kind, tmp, **extra):
    x, y = _arrays(kind, ROWS, seed=0)
    return dict(x=x, y=y, batch_size=BATCH, **extra)


def _weights_of(kind, tmp):
    return dict(_numpy(kind, tmp), sample_weight=np.linspace(0.2, 2.0, ROWS).astype("float32"))


def _class_weight(kind, tmp):
    return dict(_numpy(kind, tmp), class_weight={0: 1.0, 1: 2.0, 2: 0.5, 3: 1.5})


def _pydataset(kind, tmp, **extra):
    return dict(x=Batches(_batches(kind, *_arrays(kind, ROWS, seed=0))), **extra)


def _generator_input(kind, tmp):
    return dict(x=_generator(_batches(kind, *_arrays(kind, ROWS, seed=0))), steps_per_epoch=3, shuffle=False)


def _tf_data(kind, tmp):
    train, validation = _tf_dataset(kind, *_arrays(kind, ROWS, seed=0)), _tf_dataset(kind, *_validation_xy(kind))
    return dict(x=train, validation_data=validation, shuffle=False)  # keras ignores shuffle for a dataset


def _torch_data(kind, tmp):
    train, validation = _torch_loader(kind, *_arrays(kind, ROWS, seed=0)), _torch_loader(kind, *_validation_xy(kind))
    return dict(x=train, validation_data=validation, shuffle=False)  # keras ignores shuffle for a DataLoader


def _validation_xy(kind):
    return _arrays(kind, VALIDATION_ROWS, seed=1)


def _with_nan(kind, tmp):
    x, y = _arrays(kind, ROWS, seed=0, nan_row=37)  # in the third batch of the first epoch
    return dict(x=x, y=y, batch_size=BATCH, shuffle=False)


def _read_text(path):
    with open(path) as file:
        return file.read()


def _case(name, fit, *, kinds=("siamese", "mining"), compiled=("siamese",), backbone="plain", optimizer=None,
          epochs=2, callbacks=None, after=None, build=False, expect=None, marks=()):
    """One row of the matrix.

    `fit(kind, tmp)` → fit's arguments; `callbacks(tmp)` → more callbacks; `after(model, tmp)` → what the
    callbacks left behind (compared as the rest); `build`: build the model on one batch before `fit`;
    `expect(result)`: checks on keras' own run that the feature did what it is there for.
    `kinds` run on torch, `compiled` (those of them) on jax and tensorflow: see the module.
    """
    kinds = kinds if BACKEND == "torch" else tuple(kind for kind in kinds if kind in compiled)
    return dict(name=name, fit=fit, kinds=kinds, backbone=backbone, optimizer=optimizer, epochs=epochs,
                callbacks=callbacks, after=after, build=build, expect=expect, marks=marks)  # fmt: skip


def _steps(count):
    return lambda result: len(result["losses"]) == count


def _epochs(*epochs):
    return lambda result: result["epoch"] == list(epochs)


def _has(key):
    return lambda result: key in result["history"]


def _csv_after(model, tmp):
    return {"csv": _read_text(tmp / "log.csv")}


def _checkpoint_after(model, tmp):
    model.load_weights(tmp / "w.weights.h5")
    return {"checkpoint": [np.array(w) for w in model.get_weights()]}


def _backup_after(model, tmp):
    return {"backup": sorted(os.listdir(tmp)) if (tmp / "backup").exists() else None}


CASES = [
    _case("numpy", _numpy, compiled=BOTH),
    _case("shuffle_false", lambda kind, tmp: _numpy(kind, tmp, shuffle=False)),
    _case("shuffle_batch", lambda kind, tmp: _numpy(kind, tmp, shuffle="batch")),
    _case(
        "validation_data", lambda kind, tmp: _numpy(kind, tmp, validation_data=_validation(kind)), compiled=BOTH,
        expect=_has("val_loss"),
    ),  # fmt: skip
    _case(
        "validation_split", lambda kind, tmp: _numpy(kind, tmp, validation_split=0.25),
        expect=lambda result: _has("val_loss")(result) and _steps(2 * 3)(result),  # 48 rows to train on
    ),  # fmt: skip
    _case("sample_weight", _weights_of),
    _case("class_weight", _class_weight, kinds=("mining",), compiled=BOTH),
    _case("initial_epoch", lambda kind, tmp: _numpy(kind, tmp, initial_epoch=1), epochs=3, expect=_epochs(1, 2)),
    _case("verbose_2", lambda kind, tmp: _numpy(kind, tmp, verbose=2, validation_data=_validation(kind))),
    _case("pydataset", _pydataset),
    _case(
        "pydataset_validation",
        lambda kind, tmp: _pydataset(kind, tmp, validation_data=Batches(_batches(kind, *_validation_xy(kind)))),
    ),
    _case(  # 2 epochs × 2 steps of its 4 batches
        "pydataset_steps_per_epoch", lambda kind, tmp: _pydataset(kind, tmp, steps_per_epoch=2), expect=_steps(4),
    ),  # fmt: skip
    _case("generator_steps_per_epoch", _generator_input, expect=_steps(2 * 3)),
    _case(
        "tf_data", _tf_data,
        marks=pytest.mark.skipif(not HAS_TENSORFLOW, reason="tensorflow is not installed"),
    ),  # fmt: skip
    _case(
        "torch_dataloader", _torch_data,
        marks=pytest.mark.skipif(BACKEND != "torch", reason="a torch DataLoader is for the torch backend"),
    ),  # fmt: skip
    _case(
        "early_stopping", _numpy, epochs=3,
        callbacks=lambda tmp: [keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10)],
        expect=_epochs(0, 1),  # stopped before the third epoch
    ),  # fmt: skip
    _case(
        "reduce_lr_on_plateau", _numpy, epochs=3,
        callbacks=lambda tmp: [keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=0, min_delta=10)],
        expect=lambda result: result["history"]["learning_rate"][-1] < result["history"]["learning_rate"][0],
    ),  # fmt: skip
    _case(
        "model_checkpoint", _numpy,
        callbacks=lambda tmp: [keras.callbacks.ModelCheckpoint(tmp / "w.weights.h5", save_weights_only=True)],
        after=_checkpoint_after,
    ),  # fmt: skip
    _case(
        "csv_logger", lambda kind, tmp: _numpy(kind, tmp, validation_data=_validation(kind)),
        callbacks=lambda tmp: [keras.callbacks.CSVLogger(str(tmp / "log.csv"))], after=_csv_after,
        expect=lambda result: len(result["csv"].splitlines()) == 3,  # a header and two epochs
    ),  # fmt: skip
    _case("terminate_on_nan", _numpy, callbacks=lambda tmp: [keras.callbacks.TerminateOnNaN()]),
    _case(
        "terminate_on_nan_stops", _with_nan, backbone="linear",
        callbacks=lambda tmp: [keras.callbacks.TerminateOnNaN()],
        expect=lambda result: _steps(3)(result) and np.isnan(result["losses"][-1]),  # stopped at batch 2
    ),  # fmt: skip
    _case(
        "backup_and_restore", _numpy,
        callbacks=lambda tmp: [keras.callbacks.BackupAndRestore(str(tmp / "backup"))], after=_backup_after,
        build=True,  # BackupAndRestore wants a built model, which keras' TensorFlow fit has not built yet
    ),  # fmt: skip
    _case(
        "adam_exponential_decay", _numpy,
        optimizer=lambda: keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-2, 2, 0.5)),
    ),  # fmt: skip
    _case("adamw", _numpy, optimizer=lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.05)),
    _case("sgd_momentum", _numpy, optimizer=lambda: keras.optimizers.SGD(1e-2, momentum=0.9)),
    _case("adam_clipnorm", _numpy, optimizer=lambda: keras.optimizers.Adam(1e-2, clipnorm=1.0)),
    _case(
        "adam_gradient_accumulation", _numpy,
        optimizer=lambda: keras.optimizers.Adam(1e-2, gradient_accumulation_steps=2),
    ),  # fmt: skip
    _case("mixed_bfloat16", _numpy, backbone="mixed"),
    # the pair and proxy losses: plain arrays, validation, mixed precision, the mining model's fast path
    _case("numpy", _numpy, kinds=NEW_LOSSES, compiled=NEW_LOSSES),
    _case(
        "validation_data", lambda kind, tmp: _numpy(kind, tmp, validation_data=_validation(kind)), kinds=NEW_LOSSES,
        compiled=NEW_LOSSES, expect=_has("val_loss"),
    ),  # fmt: skip
    _case("mixed_bfloat16", _numpy, backbone="mixed", kinds=NEW_LOSSES, compiled=NEW_LOSSES),
    _case("frozen_layer", _numpy, backbone="frozen"),
    _case(
        "dropout", lambda kind, tmp: _numpy(kind, tmp, validation_data=_validation(kind)), backbone="dropout",
    ),  # fmt: skip
    _case("custom_layer", lambda kind, tmp: _numpy(kind, tmp, validation_data=_validation(kind)), backbone="custom"),
    _case(
        "batch_norm", lambda kind, tmp: _numpy(kind, tmp, validation_data=_validation(kind)), backbone="batchnorm",
    ),  # fmt: skip
]


def _params():
    for case in CASES:
        for kind in case["kinds"]:
            yield pytest.param(kind, case, id=f"{kind}-{case['name']}", marks=case["marks"])


# --------------------------------------------------------------------------
# Running and comparing
# --------------------------------------------------------------------------


def _train(kind, case, fast, tmp):
    tmp.mkdir()
    keras.utils.set_random_seed(SEED)
    model = _model(kind, case["backbone"])
    _compile(model, kind, fast, case["optimizer"])
    assert registry.path_of(model) is (registry.current() if fast else fast_path.KERAS)
    recorder = Recorder()
    lambda_callback, lambda_calls = _lambda_recorder()
    extra = case["callbacks"](tmp) if case["callbacks"] else []
    fit_kwargs = {"epochs": case["epochs"], "verbose": 0, **case["fit"](kind, tmp)}
    if case["build"]:
        model(_arrays(kind, 2, seed=2)[0], training=False)
    keras.utils.set_random_seed(SEED)
    history = model.fit(callbacks=[recorder, lambda_callback, *extra], **fit_kwargs)
    assert model.steps_per_execution == (DEFAULT_STEPS if fast else 1)
    result = _result(model, history, recorder, lambda_calls)
    if case["after"]:
        result.update(case["after"](model, tmp))
    return result


def _result(model, history, recorder, lambda_calls=()):
    """What a fit is compared by: callback calls, history, per-step losses, model and optimizer weights."""
    return {
        "calls": recorder.calls,
        "lambda_calls": list(lambda_calls),
        "epoch": history.epoch,
        "history": history.history,
        "losses": getattr(recorder, "losses", []),
        "test_losses": getattr(recorder, "test_losses", []),
        "weights": [np.array(w) for w in model.get_weights()],
        "optimizer": [keras.ops.convert_to_numpy(v.value) for v in model.optimizer.variables],
    }


def _assert_close(actual, expected, tolerance, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    if tolerance is None:
        np.testing.assert_array_equal(actual, expected, err_msg=what, strict=True)
    else:
        assert actual.shape == expected.shape, what
        rtol, atol, *of_largest = tolerance
        if of_largest and expected.size:
            atol = max(atol, of_largest[0] * float(np.max(np.abs(expected))))
        np.testing.assert_allclose(actual, expected, rtol, atol, err_msg=what)


def _assert_csv_same(actual, expected, tolerance):
    actual, expected = list(csv.reader(io.StringIO(actual))), list(csv.reader(io.StringIO(expected)))
    assert actual[0] == expected[0]
    if tolerance is None:
        assert actual == expected
        return
    assert len(actual) == len(expected)
    for row, reference in zip(actual[1:], expected[1:]):
        _assert_close([float(v) for v in row], [float(v) for v in reference], tolerance, "csv row")


def _assert_conforms(fast, reference, tolerance):
    assert fast["calls"] == reference["calls"]
    assert fast["lambda_calls"] == reference["lambda_calls"]
    assert fast["epoch"] == reference["epoch"]
    assert sorted(fast["history"]) == sorted(reference["history"])
    if tolerance is None and all(np.isfinite(v).all() for v in reference["history"].values()):
        assert fast["history"] == reference["history"]
    for key in reference["history"]:
        _assert_close(fast["history"][key], reference["history"][key], tolerance, f"history[{key!r}]")
    for what in ("losses", "test_losses"):
        _assert_close(fast[what], reference[what], tolerance, what)
    for what in ("weights", "optimizer", "checkpoint"):
        if what in reference:
            assert len(fast[what]) == len(reference[what])
            for index, (mine, theirs) in enumerate(zip(fast[what], reference[what])):
                _assert_close(mine, theirs, tolerance, f"{what}[{index}]")
    if "csv" in reference:
        _assert_csv_same(fast["csv"], reference["csv"], tolerance)
    if "backup" in reference:
        assert fast["backup"] == reference["backup"]


def _tolerance(backbone):
    if BACKEND == "torch" and backbone == "batchnorm":
        return TORCH_BATCH_NORM
    return MIXED_BFLOAT16 if backbone == "mixed" else TOLERANCE


@pytest.mark.parametrize("kind, case", list(_params()))
def test_fit_conforms(kind, case, tmp_path):
    fast = _train(kind, case, True, tmp_path / "fast")
    reference = _train(kind, case, False, tmp_path / "keras")
    assert reference["losses"], "the reference trained no step"
    if case["expect"]:
        assert case["expect"](reference), f"{case['name']}: keras' own run did not show the feature"
    _assert_conforms(fast, reference, _tolerance(case["backbone"]))


# --------------------------------------------------------------------------
# Every layer the torch fast path calls directly
# --------------------------------------------------------------------------

L = keras.layers
_MERGE = "merge"
WIDE = 48  # features, reshaped to (8, 6) for 1-D layers, (4, 4, 3) for 2-D, (2, 4, 2, 3) for 3-D
_1D, _2D, _3D = (8, 6), (4, 4, 3), (2, 4, 2, 3)

LAYER_CASES = [
    ("Activation-relu", lambda: L.Activation("relu"), (WIDE,)),  # a torch kernel
    ("Activation-tanh", lambda: L.Activation("tanh"), (WIDE,)),  # the layer's own call
    ("Add", L.Add, _MERGE),
    ("Average", L.Average, _MERGE),
    ("AveragePooling1D", lambda: L.AveragePooling1D(2), _1D),
    ("AveragePooling2D", lambda: L.AveragePooling2D(2), _2D),
    ("AveragePooling3D", lambda: L.AveragePooling3D(2), _3D),
    ("BatchNormalization-2d", L.BatchNormalization, (WIDE,)),  # the fused kernel
    ("BatchNormalization-4d", L.BatchNormalization, _2D),  # the fused kernel on channels_last
    ("BatchNormalization-3d", L.BatchNormalization, _1D),  # the layer's own call
    ("Concatenate", L.Concatenate, _MERGE),
    ("Conv1D", lambda: L.Conv1D(4, 3, activation="relu"), _1D),
    ("Conv2D-same", lambda: L.Conv2D(4, 3, padding="same", activation="relu"), _2D),  # a torch kernel
    ("Conv2D-strided", lambda: L.Conv2D(4, 2, strides=2), _2D),  # a torch kernel
    ("Conv2D-asymmetric-same", lambda: L.Conv2D(4, 2, padding="same"), _2D),  # the layer's own call
    ("Conv3D", lambda: L.Conv3D(2, 2), _3D),
    ("Conv1DTranspose", lambda: L.Conv1DTranspose(4, 3), _1D),
    ("Conv2DTranspose", lambda: L.Conv2DTranspose(4, 2, strides=2), _2D),
    ("Dense-relu", lambda: L.Dense(8, activation="relu"), (WIDE,)),  # a torch kernel
    ("Dense-tanh", lambda: L.Dense(8, activation="tanh"), (WIDE,)),  # the layer's own call
    ("Dense-3d", lambda: L.Dense(5), _1D),  # a torch kernel on a 3-D input
    ("DepthwiseConv2D", lambda: L.DepthwiseConv2D(2), _2D),
    ("Dropout", lambda: L.Dropout(0.3), (WIDE,)),
    ("ELU", L.ELU, (WIDE,)),
    ("Flatten", L.Flatten, _2D),
    ("GaussianNoise", lambda: L.GaussianNoise(0.1), (WIDE,)),
    ("GlobalAveragePooling1D", L.GlobalAveragePooling1D, _1D),
    ("GlobalAveragePooling2D", L.GlobalAveragePooling2D, _2D),
    ("GlobalMaxPooling1D", L.GlobalMaxPooling1D, _1D),
    ("GlobalMaxPooling2D", L.GlobalMaxPooling2D, _2D),
    ("Identity", L.Identity, (WIDE,)),
    ("LayerNormalization", L.LayerNormalization, (WIDE,)),
    ("LeakyReLU", L.LeakyReLU, (WIDE,)),
    ("MaxPooling1D", lambda: L.MaxPooling1D(2), _1D),
    ("MaxPooling2D", lambda: L.MaxPooling2D(2), _2D),  # a torch kernel
    ("MaxPooling2D-same", lambda: L.MaxPooling2D(3, strides=1, padding="same"), _2D),  # a torch kernel
    ("MaxPooling3D", lambda: L.MaxPooling3D(2), _3D),
    ("Maximum", L.Maximum, _MERGE),
    ("Minimum", L.Minimum, _MERGE),
    ("Multiply", L.Multiply, _MERGE),
    ("Permute", lambda: L.Permute((2, 1)), _1D),
    ("ReLU", L.ReLU, (WIDE,)),
    ("Rescaling", lambda: L.Rescaling(0.5, offset=0.1), (WIDE,)),
    ("Reshape", lambda: L.Reshape((6, 8)), (WIDE,)),
    ("SeparableConv2D", lambda: L.SeparableConv2D(4, 2), _2D),
    ("Softmax", L.Softmax, (WIDE,)),
    ("SpatialDropout1D", lambda: L.SpatialDropout1D(0.3), _1D),
    ("SpatialDropout2D", lambda: L.SpatialDropout2D(0.3), _2D),
    ("Subtract", L.Subtract, _MERGE),
    ("UnitNormalization", L.UnitNormalization, (WIDE,)),
    ("ZeroPadding1D", L.ZeroPadding1D, _1D),
    ("ZeroPadding2D", L.ZeroPadding2D, _2D),
]


def _layer_class(factory):
    return type(factory())


def test_layer_cases_cover_the_direct_layers_exactly():
    covered = {_layer_class(factory) for _, factory, _ in LAYER_CASES}
    assert covered == set(forward._DIRECT_LAYERS)


def _layer_backbone(factory, shape):
    inputs = keras.Input((WIDE,))
    if shape == _MERGE:  # two branches of the same input
        branches = [keras.layers.Dense(8, activation="relu")(inputs) for _ in range(2)]
        layer = factory()
        hidden = layer(branches)
    else:
        hidden = inputs if shape == (WIDE,) else keras.layers.Reshape(shape)(inputs)
        layer = factory()
        hidden = layer(hidden)
        if isinstance(layer, keras.layers.BatchNormalization):  # beta followed by a relu: see `_embedding`
            hidden = keras.layers.ReLU()(hidden)
    return keras.Model(inputs, _embedding(keras.layers.Flatten()(hidden), 4)), layer


def _train_layer(factory, shape, fast):
    keras.utils.set_random_seed(SEED)
    backbone, layer = _layer_backbone(factory, shape)
    model = siamese_k3.MiningModel(backbone)
    _compile(model, "mining", fast)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, WIDE)).astype("float32")
    y = (np.arange(48) % CLASSES).astype("int32")
    recorder = Recorder()
    lambda_callback, lambda_calls = _lambda_recorder()
    keras.utils.set_random_seed(SEED)
    history = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[recorder, lambda_callback])
    if fast:  # the fast path did call the layer directly
        plan = forward._plan(backbone)
        assert plan is not None and forward._vouched(plan)
        assert [kind for kind, operation, *_ in plan[3] if operation is layer] == [forward._DIRECT]
    return _result(model, history, recorder, lambda_calls)


@torch_only
@pytest.mark.parametrize("factory, shape", [pytest.param(f, s, id=name) for name, f, s in LAYER_CASES])
def test_direct_layer_conforms(factory, shape):
    fast = _train_layer(factory, shape, True)
    reference = _train_layer(factory, shape, False)
    batch_norm = _layer_class(factory) is keras.layers.BatchNormalization
    _assert_conforms(fast, reference, _tolerance("batchnorm" if batch_norm else "plain"))


# --------------------------------------------------------------------------
# Batch hooks see every batch; steps per execution otherwise stays the fast path's
# --------------------------------------------------------------------------


def _small_backbone():
    inputs = keras.Input((FEATURES,))
    return keras.Model(inputs, _embedding(keras.layers.Dense(8, activation="relu")(inputs)))


def test_the_issue_example_sees_every_batch(monkeypatch):
    monkeypatch.delenv(fast_path.ENVIRONMENT_VARIABLE, raising=False)  # the fast path on, by default
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, FEATURES)).astype("float32")
    y = np.arange(256) % 8
    backbone = _small_backbone()
    calls = []
    model = siamese_k3.MiningModel(backbone)
    model.compile(optimizer="adam", loss=siamese_k3.TripletBatchAllLoss(margin=0.2))
    model.fit(
        x, y, batch_size=64, epochs=1, verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: calls.append(b))],
    )  # fmt: skip
    assert calls == [0, 1, 2, 3]  # 256 rows
    assert model.steps_per_execution == DEFAULT_STEPS


@pytest.mark.parametrize("kind", ["siamese", "mining"])
def test_epoch_level_callbacks_keep_the_default_steps_per_execution(kind):
    """Only epoch-level callbacks: the fit runs the fast path's steps per execution (32 on jax/tensorflow).

    And the results still conform to keras' own path (one step per execution).
    """
    results = {}
    for fast in (True, False):
        keras.utils.set_random_seed(SEED)
        model = _model(kind, "plain")
        _compile(model, kind, fast)
        recorder = EpochRecorder()
        x, y = _arrays(kind, ROWS, seed=0)
        keras.utils.set_random_seed(SEED)
        history = model.fit(
            x, y, batch_size=BATCH, epochs=2, verbose=0, validation_data=_validation(kind), callbacks=[recorder]
        )
        expected = DEFAULT_STEPS if fast else 1
        assert recorder.steps_per_execution == [expected] * 3
        assert model.steps_per_execution == expected
        results[fast] = _result(model, history, recorder)
    _assert_conforms(results[True], results[False], TOLERANCE)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


def _resume(fast, tmp):
    keras.utils.set_random_seed(SEED)
    model = _model("siamese", "plain")
    _compile(model, "siamese", fast)
    x, _ = _arrays("siamese", ROWS, seed=0)
    model(_arrays("siamese", 2, seed=2)[0], training=False)  # BackupAndRestore wants a built model
    backup = keras.callbacks.BackupAndRestore(str(tmp / "backup"))
    keras.utils.set_random_seed(SEED)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, batch_size=BATCH, epochs=3, verbose=0, callbacks=[backup, _Interrupt()])
    assert model.steps_per_execution == (DEFAULT_STEPS if fast else 1)  # restored after the exception too
    recorder = Recorder()
    lambda_callback, lambda_calls = _lambda_recorder()
    keras.utils.set_random_seed(SEED)
    history = model.fit(x, batch_size=BATCH, epochs=3, verbose=0, callbacks=[backup, recorder, lambda_callback])
    return _result(model, history, recorder, lambda_calls)


def test_backup_and_restore_resumes_alike(tmp_path):
    """An interrupted fit resumed from BackupAndRestore's backup: the same resumed epochs, calls and results."""
    fast = _resume(True, tmp_path / "fast")
    reference = _resume(False, tmp_path / "keras")
    assert reference["epoch"] == [1, 2]
    _assert_conforms(fast, reference, TOLERANCE)


def test_batch_hooks_run_one_step_per_execution_and_the_default_comes_back():
    seen = []
    model = siamese_k3.MiningModel(_small_backbone())
    model.compile(loss=siamese_k3.TripletBatchAllLoss(margin=0.2), fast_path=True)
    assert model.steps_per_execution == DEFAULT_STEPS
    x, y = _arrays("mining", ROWS, seed=0)
    hook = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append((batch, model.steps_per_execution))
    )
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[hook])
    assert seen == [(batch, 1) for batch in range(ROWS // BATCH)]
    assert model.steps_per_execution == DEFAULT_STEPS
    # and again, with only epoch-level callbacks: the default runs
    epochs = EpochRecorder()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[epochs])
    assert epochs.steps_per_execution == [DEFAULT_STEPS] * 2


@pytest.mark.skipif(BACKEND == "torch", reason="keras on torch runs one step per execution")
def test_an_explicit_steps_per_execution_is_kept_with_batch_hooks():
    """A user's own steps_per_execution is not the fast path's to change: batch hooks then follow it, as in keras."""
    seen = []
    model = siamese_k3.MiningModel(_small_backbone())
    model.compile(loss=siamese_k3.TripletBatchAllLoss(margin=0.2), steps_per_execution=2, fast_path=True)
    x, y = _arrays("mining", ROWS, seed=0)
    hook = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(model.steps_per_execution))
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[hook])
    assert seen and set(seen) == {2}


# --------------------------------------------------------------------------
# The switch
# --------------------------------------------------------------------------


def test_the_environment_variable_turns_the_fast_path_off(monkeypatch):
    monkeypatch.setenv(fast_path.ENVIRONMENT_VARIABLE, "0")
    model = siamese_k3.MiningModel(_small_backbone())
    model.compile(loss=siamese_k3.TripletBatchAllLoss(margin=0.2))
    assert registry.path_of(model) is fast_path.KERAS
    assert model.steps_per_execution == 1
    monkeypatch.setenv(fast_path.ENVIRONMENT_VARIABLE, "1")
    model.compile(loss=siamese_k3.TripletBatchAllLoss(margin=0.2))  # read at each compile
    assert registry.path_of(model) is registry.current()
    assert model.steps_per_execution == DEFAULT_STEPS


@pytest.mark.skipif(BACKEND != "tensorflow", reason="only TensorFlow's fast path turns XLA on")
@pytest.mark.parametrize("variant", ["plain", "dropout"])
def test_random_layers_keep_keras_jit(variant):
    """XLA on, except for a model that draws random numbers: that one keeps keras' own choice (the step-aside)."""
    fast, own = _model("mining", variant), _model("mining", variant)
    _compile(fast, "mining", True)
    _compile(own, "mining", False)
    assert fast.jit_compile is (True if variant == "plain" else own.jit_compile)
    assert own.jit_compile is False  # keras' "auto" on the CPU


@pytest.mark.parametrize("kind", ["siamese", "mining"])
def test_fast_path_false_gives_keras_defaults(kind):
    model = _model(kind, "plain")
    _compile(model, kind, False)
    assert registry.path_of(model) is fast_path.KERAS
    plain = _small_backbone()
    plain.compile(optimizer="adam", loss="mse")
    assert model.steps_per_execution == 1 == plain.steps_per_execution
    assert model.jit_compile == plain.jit_compile


@pytest.mark.parametrize(
    "version, tested",
    [
        ("3.10.0", True),
        ("3.15.1", True),
        ("3.15.0rc1", True),
        ("3.12.0+local", True),
        ("3.9.2", False),
        ("3.16.0", False),
        ("3.16.0.dev20260101", False),
        ("4.0", False),
        ("2.15.0", False),
    ],
)
def test_keras_version_tested(version, tested):
    assert fast_path.keras_version_tested(version) is tested


def test_an_untested_keras_warns_once_and_turns_the_fast_path_off(monkeypatch):
    fast_path.keras_tested.cache_clear()
    try:
        monkeypatch.setattr(keras, "__version__", "3.99.0")
        model = siamese_k3.MiningModel(_small_backbone())
        with pytest.warns(UserWarning, match=r"keras 3\.99\.0 is installed"):
            model.compile(loss=siamese_k3.TripletBatchAllLoss(margin=0.2), fast_path=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert registry.path_of(model) is fast_path.KERAS
            model.compile(loss=siamese_k3.TripletBatchAllLoss(margin=0.2), fast_path=True)
        assert model.steps_per_execution == 1
    finally:
        fast_path.keras_tested.cache_clear()
    monkeypatch.undo()
    assert registry.path_of(model) is registry.current()
