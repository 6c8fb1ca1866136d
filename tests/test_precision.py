"""siamese_k3.precision: mixed-precision training of a SiameseModel on the current backend."""

import keras
import numpy as np
import pytest

from siamese_k3.backbones import small_cnn
from siamese_k3.errors import SiameseK3Error
from siamese_k3.models import SiameseModel
from siamese_k3.precision import set_precision, wrap_optimizer

MIXED = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


@pytest.fixture(autouse=True)
def _float32_afterwards():
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def triplets(rng, count=32, shape=(16, 16)):
    anchor = rng.random((count, *shape)).astype("float32")
    positive = np.clip(anchor + 0.05 * rng.normal(size=anchor.shape), 0, 1).astype("float32")
    negative = rng.random((count, *shape)).astype("float32")
    return anchor, positive, negative


def weights_of(model):
    return [keras.ops.convert_to_numpy(weight).astype("float32") for weight in model.weights]


@pytest.mark.parametrize("mode", ["mixed_bfloat16", "mixed_float16"])
def test_trains_one_epoch_with_finite_loss(rng, mode):
    assert set_precision(mode) == mode
    backbone = small_cnn((16, 16), embedding_dim=8, filters=(8, 16))
    conv = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.compute_dtype == MIXED[mode] and conv.variable_dtype == "float32"
    model = SiameseModel(backbone, margin=0.5)
    model.compile(optimizer=wrap_optimizer(keras.optimizers.Adam(1e-3), mode))
    before = weights_of(backbone)
    history = model.fit(triplets(rng), batch_size=8, epochs=1, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss) and loss > 0.0
    after = weights_of(backbone)
    assert all(np.isfinite(weight).all() for weight in after)
    assert any(not np.array_equal(old, new) for old, new in zip(before, after))
    embeddings = backbone.predict(triplets(rng, count=4)[0], verbose=0)
    assert np.isfinite(np.asarray(embeddings, dtype="float32")).all()


def test_wrap_optimizer_only_for_float16():
    adam = keras.optimizers.Adam()
    wrapped = wrap_optimizer(adam, "mixed_float16")
    assert isinstance(wrapped, keras.optimizers.LossScaleOptimizer)
    assert wrapped.inner_optimizer is adam
    assert wrap_optimizer(wrapped, "mixed_float16") is wrapped
    assert wrap_optimizer(adam, "mixed_bfloat16") is adam
    assert wrap_optimizer(adam, None) is adam
    assert isinstance(wrap_optimizer("adam", "mixed_float16"), keras.optimizers.LossScaleOptimizer)


def test_keras_compile_wraps_float16_models_itself():
    """Documents the Keras 3 behaviour precision.py relies on (auto_scale_loss=True)."""
    set_precision("mixed_float16")
    model = SiameseModel(small_cnn((16, 16), embedding_dim=4, filters=(4,)))
    model.compile(optimizer="adam")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_set_precision_none_restores_float32():
    set_precision("mixed_bfloat16")
    assert set_precision(None) == "float32"
    assert keras.mixed_precision.dtype_policy().name == "float32"


def test_unknown_mode():
    with pytest.raises(SiameseK3Error, match="'float16'.*mixed_float16"):
        set_precision("float16")
    with pytest.raises(SiameseK3Error, match="mode='.*' is unknown: choose one of None, float32"):
        wrap_optimizer("adam", "half")
