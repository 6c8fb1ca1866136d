"""siamese_k3.backend.tensorflow.arrays: on TensorFlow, fit() on arrays trains on keras' own batches, autotuning off.

The reference is keras' own array adapter, used when `array_dataset` is
switched off: the loss history and the trained weights must be equal, bit for
bit, from the same seed. On jax and torch the module is never used.
"""

import contextlib
from unittest import mock

import keras
import numpy as np
import pytest

from siamese_k3.backend.tensorflow import arrays as tf_input
from siamese_k3.losses import TripletSemiHardLoss
from siamese_k3.models import MiningModel, SiameseModel

ON_TF = keras.backend.backend() == "tensorflow"
tf_only = pytest.mark.skipif(not ON_TF, reason="the tf.data pipeline is TensorFlow's")


def _backbone(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(6)(hidden))


def _labelled(count=90, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((count, 12), dtype=np.float32), np.repeat(np.arange(9), count // 9).astype("int32")


def _train(keras_path, kind, **fit_kwargs):
    """(loss history, weights) of two epochs of `kind` training, seed 5."""
    with mock.patch.object(tf_input, "array_dataset", lambda *a, **k: None) if keras_path else contextlib.nullcontext():
        if kind == "mining":
            model = MiningModel(_backbone(5))
            model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=TripletSemiHardLoss())
            x, y = _labelled()
            history = model.fit(x, y, epochs=2, verbose=0, **fit_kwargs)
        else:
            model = SiameseModel(_backbone(5))
            model.compile(optimizer=keras.optimizers.Adam(1e-2))
            rng = np.random.default_rng(1)
            triplets = tuple(rng.random((50, 12), dtype=np.float32) for _ in range(3))
            history = model.fit(triplets, epochs=2, verbose=0, **fit_kwargs)
    return history.history, [np.array(weight) for weight in model.get_weights()]


@tf_only
@pytest.mark.parametrize(
    "kind, fit_kwargs",
    [
        ("mining", {"batch_size": 16}),  # 90 = 5·16 + 10: a last partial batch
        ("mining", {"batch_size": 16, "shuffle": False}),
        ("siamese", {"batch_size": 8}),
        ("siamese", {"batch_size": 8, "shuffle": "batch"}),
    ],
)
def test_fit_matches_keras_adapter_bit_for_bit(kind, fit_kwargs):
    ours = _train(False, kind, **fit_kwargs)
    reference = _train(True, kind, **fit_kwargs)
    assert ours[0] == reference[0]
    for weight, expected in zip(ours[1], reference[1]):
        np.testing.assert_array_equal(weight, expected)


@tf_only
def test_the_fit_takes_the_dataset():
    model = MiningModel(_backbone(0))
    model.compile(loss=TripletSemiHardLoss())
    x, y = _labelled()
    with mock.patch.object(tf_input, "array_dataset", wraps=tf_input.array_dataset) as made:
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, validation_split=0.2)  # keras splits: its own path
    assert made.call_count == 1


@tf_only
def test_dataset_options_cardinality_and_batches():
    x, y = _labelled(90)
    dataset = tf_input.array_dataset(x, 16, True, y=y)
    options = dataset.options()
    assert options.autotune.enabled is False
    assert options.threading.private_threadpool_size == 1
    assert int(dataset.cardinality()) == 6  # ceil(90 / 16), known to keras before the first epoch
    for _ in range(2):  # every epoch: each row once, reshuffled, the last batch partial
        batches = list(dataset)
        assert [len(batch[0]) for batch in batches] == [16] * 5 + [10]
        rows = np.concatenate([batch[0].numpy() for batch in batches])
        assert not np.array_equal(rows, x)
        np.testing.assert_array_equal(np.sort(rows, axis=0), np.sort(x, axis=0))
    ordered = np.concatenate([batch[0].numpy() for batch in tf_input.array_dataset(x, 16, False, y=y)])
    np.testing.assert_array_equal(ordered, x)


@tf_only
def test_declines_what_keras_should_handle():
    import tensorflow as tf

    x, y = _labelled(18)
    assert tf_input.array_dataset(x, 4, True, y=y) is not None
    assert tf_input.array_dataset(list(x), 4, True, y=y) is None  # not numpy arrays
    assert tf_input.array_dataset(x, 4, True, y=y[:10]) is None  # lengths differ
    assert tf_input.array_dataset(x[:0], 4, True) is None
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        assert tf_input.array_dataset(x, 4, True, y=y) is None
        model = MiningModel(_backbone(0))
    assert tf_input.array_dataset(x, 4, True, y=y, model=model) is None  # built in a strategy's scope
    assert tf_input.array_dataset(x, 4, True, y=y, model=MiningModel(_backbone(0))) is not None


@pytest.mark.skipif(ON_TF, reason="checks the other backends")
def test_other_backends_never_take_it():
    x, y = _labelled(18)
    assert tf_input.array_dataset(x, 4, True, y=y) is None
