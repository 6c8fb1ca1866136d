"""SiameseModel: training, the Keras API (fit/evaluate/predict/save) and reproducibility."""

import keras
import numpy as np
import pytest

from siamese_k3.losses import TripletBatchAllLoss, TripletSemiHardLoss
from siamese_k3.models import MiningModel, SiameseModel

DIM = 16
NUM_CLASSES = 5


def clustered_triplets(seed, count):
    """(anchor, positive, negative) float32 arrays [count, DIM] drawn from 5 gaussian clusters."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(100).normal(scale=1.5, size=(NUM_CLASSES, DIM))
    anchor_class = rng.integers(0, NUM_CLASSES, size=count)
    negative_class = (anchor_class + rng.integers(1, NUM_CLASSES, size=count)) % NUM_CLASSES

    def draw(classes):
        return (centres[classes] + rng.normal(size=(count, DIM))).astype("float32")

    return draw(anchor_class), draw(anchor_class), draw(negative_class)


def dense_backbone(embedding_dim=8):
    return keras.Sequential(
        [
            keras.Input((DIM,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(embedding_dim),
        ],
        name="backbone",
    )


def compiled(model, **kwargs):
    """compile() with keras' own jit_compile: no torch.compile or CPU XLA warm-up in tiny runs."""
    model.compile(jit_compile="auto", **kwargs)
    return model


def numpy_distance(x, y):
    return np.linalg.norm(x.astype(np.float64) - y, axis=-1)


def numpy_triplet_losses(embeddings, margin=1.0):
    anchor, positive, negative = embeddings
    return np.maximum(
        numpy_distance(anchor, positive) - numpy_distance(anchor, negative) + margin, 0.0
    )


def embed(backbone, triplets):
    return [backbone.predict(part, verbose=0) for part in triplets]


class UnlabelledTriplets(keras.utils.PyDataset):
    """Items ((anchor, positive, negative),): the triplet alone, no labels."""

    def __init__(self, triplets, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.triplets, self.batch_size = triplets, batch_size

    def __len__(self):
        return -(-len(self.triplets[0]) // self.batch_size)

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return (tuple(part[rows] for part in self.triplets),)


@pytest.fixture(scope="module")
def train_triplets():
    return clustered_triplets(seed=1, count=2048)


@pytest.fixture(scope="module")
def held_out_triplets():
    return clustered_triplets(seed=2, count=256)


def test_training_halves_the_loss_and_separates_held_out_triplets(
    train_triplets, held_out_triplets
):
    model = SiameseModel(dense_backbone(), margin=1.0)
    compiled(model, optimizer=keras.optimizers.Adam(3e-3))
    before = model.evaluate(held_out_triplets, batch_size=256, verbose=0)
    model.fit(train_triplets, batch_size=64, epochs=3, verbose=0)
    after = model.evaluate(held_out_triplets, batch_size=256, verbose=0)
    assert after <= before / 2
    anchor, positive, negative = embed(model.backbone, held_out_triplets)
    assert numpy_distance(anchor, positive).mean() < numpy_distance(anchor, negative).mean()


def test_call_returns_the_backbone_embeddings(held_out_triplets):
    model = SiameseModel(dense_backbone())
    outputs = model(held_out_triplets)
    assert len(outputs) == 3
    for output, part in zip(outputs, held_out_triplets):
        expected = keras.ops.convert_to_numpy(model.backbone(part))
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(output), expected, rtol=1e-5, atol=1e-6
        )


def test_call_accepts_a_dict(held_out_triplets):
    model = SiameseModel(dense_backbone())
    by_name = dict(zip(("anchor", "positive", "negative"), held_out_triplets))
    for output, expected in zip(model(by_name), model(held_out_triplets)):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(output), keras.ops.convert_to_numpy(expected)
        )
    with pytest.raises(ValueError, match="lacks the key"):
        model({"anchor": held_out_triplets[0]})
    with pytest.raises(ValueError, match="expects \\(anchor, positive, negative\\)"):
        model(held_out_triplets[:2])


def test_fit_on_numpy_reports_loss_and_val_loss(train_triplets, held_out_triplets):
    model = SiameseModel(dense_backbone())
    compiled(model)
    history = model.fit(
        train_triplets, batch_size=128, epochs=2, validation_data=(held_out_triplets,), verbose=0
    )
    assert set(history.history) >= {"loss", "val_loss"}
    assert len(history.history["loss"]) == 2
    assert np.all(np.isfinite(history.history["val_loss"]))


def test_fit_on_a_pydataset(train_triplets, held_out_triplets):
    model = SiameseModel(dense_backbone())
    compiled(model)
    history = model.fit(
        UnlabelledTriplets(train_triplets, 128),
        validation_data=UnlabelledTriplets(held_out_triplets, 128),
        epochs=2,
        verbose=0,
    )
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.all(np.isfinite(history.history["val_loss"]))


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.data needs the tensorflow backend"
)
def test_fit_on_a_tf_data_dataset(train_triplets, held_out_triplets):
    import tensorflow as tf

    def dataset(triplets):
        return tf.data.Dataset.from_tensor_slices((tuple(triplets),)).batch(128)

    model = SiameseModel(dense_backbone())
    compiled(model)
    history = model.fit(
        dataset(train_triplets),
        validation_data=dataset(held_out_triplets),
        epochs=2,
        shuffle=False,
        verbose=0,
    )
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.all(np.isfinite(history.history["val_loss"]))


def test_evaluate_and_predict(held_out_triplets):
    model = SiameseModel(dense_backbone(), margin=0.5)
    compiled(model)
    predicted = model.predict(held_out_triplets, batch_size=100, verbose=0)
    assert len(predicted) == 3
    assert all(part.shape == (256, 8) for part in predicted)
    np.testing.assert_allclose(
        predicted[0], model.backbone.predict(held_out_triplets[0], verbose=0), rtol=1e-5, atol=1e-5
    )
    loss = model.evaluate(held_out_triplets, batch_size=256, verbose=0)
    np.testing.assert_allclose(loss, numpy_triplet_losses(predicted, margin=0.5).mean(), rtol=1e-4)


def test_sample_weight_weights_the_mean(held_out_triplets, rng):
    model = SiameseModel(dense_backbone())
    compiled(model)
    weights = rng.uniform(size=256).astype("float32")
    loss = model.evaluate(held_out_triplets, sample_weight=weights, batch_size=256, verbose=0)
    per_triplet = numpy_triplet_losses(embed(model.backbone, held_out_triplets))
    np.testing.assert_allclose(loss, np.sum(weights * per_triplet) / np.sum(weights), rtol=1e-4)


def test_zero_sample_weights_leave_the_weights_alone(train_triplets):
    model = SiameseModel(dense_backbone())
    compiled(model)
    model.build([part.shape for part in train_triplets])
    before = [np.array(weight) for weight in model.backbone.get_weights()]
    model.fit(
        train_triplets, sample_weight=np.zeros(2048, "float32"), batch_size=512, epochs=1, verbose=0
    )
    for old, new in zip(before, model.backbone.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_keras_file_round_trip(tmp_path, train_triplets, held_out_triplets):
    model = SiameseModel(dense_backbone(), margin=0.3, distance="cosine", soft=True)
    compiled(model)
    model.fit(train_triplets, batch_size=256, epochs=1, verbose=0)
    path = tmp_path / "siamese.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: the class is registered
    assert isinstance(loaded, SiameseModel)
    assert (loaded.margin, loaded.distance, loaded.soft) == (0.3, "cosine", True)
    for original, restored in zip(
        embed(model.backbone, held_out_triplets), embed(loaded.backbone, held_out_triplets)
    ):
        np.testing.assert_allclose(restored, original, rtol=1e-6, atol=1e-6)
    for original, restored in zip(
        model.predict(held_out_triplets, verbose=0), loaded.predict(held_out_triplets, verbose=0)
    ):
        np.testing.assert_allclose(restored, original, rtol=1e-6, atol=1e-6)


def test_same_seed_gives_the_same_loss_curve(train_triplets):
    def loss_curve():
        keras.utils.set_random_seed(7)
        model = SiameseModel(dense_backbone())
        compiled(model)
        return model.fit(train_triplets, batch_size=128, epochs=3, verbose=0).history["loss"]

    np.testing.assert_allclose(loss_curve(), loss_curve(), rtol=1e-6)


def test_compile_rejects_a_loss():
    model = SiameseModel(dense_backbone())
    with pytest.raises(ValueError, match="computes its own triplet loss"):
        model.compile(loss="mse")


def test_constructor_checks_its_arguments():
    with pytest.raises(TypeError, match="backbone must be a keras.Model"):
        SiameseModel(keras.layers.Dense(4))
    with pytest.raises(ValueError, match="distance='.*' is unknown"):
        SiameseModel(dense_backbone(), distance="manhattan")


@pytest.mark.parametrize("margin", [float("nan"), -1.0])
def test_a_bad_margin_is_refused(margin):
    with pytest.raises(ValueError, match=r"^margin=.* is not a valid margin"):
        SiameseModel(dense_backbone(), margin=margin)


@pytest.mark.parametrize("rate", [0.0, float("nan"), -1e-3])
def test_compile_refuses_a_bad_learning_rate(rate):
    with pytest.raises(ValueError, match=r"^optimizer learning_rate=.* is not a valid learning rate"):
        SiameseModel(dense_backbone()).compile(optimizer=keras.optimizers.Adam(rate))


def test_nan_embeddings_give_a_nan_loss(rng):
    """With the default (jit) settings too: XLA's relu(NaN) = 0 must not hide a NaN triplet."""
    model = SiameseModel(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))
    model.compile()
    anchor = rng.normal(size=(8, 4)).astype("float32")
    anchor[5] = np.nan
    assert np.isnan(model.evaluate((anchor, anchor + 1, anchor - 1), batch_size=8, verbose=0))


# --------------------------------------------------------------------------
# MiningModel: a backbone trained with an online-mining loss, on the fast path
# --------------------------------------------------------------------------


def labelled_clusters(seed, count=96, classes=4):
    """Points around one centre per class, labels int32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(classes, 6))
    labels = rng.integers(0, classes, count).astype("int32")
    return (centres[labels] + rng.normal(size=(count, 6))).astype("float32"), labels


def mining_backbone(seed=4):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(4)(hidden))


def test_mining_model_trains_as_the_plain_backbone_does_with_the_same_settings():
    """The reference is keras' own path: the backbone itself compiled with the settings MiningModel picks."""
    x, y = labelled_clusters(0)
    model = MiningModel(mining_backbone())
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=TripletSemiHardLoss(margin=0.5))
    keras.utils.set_random_seed(1)
    ours = model.fit(x, y, batch_size=32, epochs=3, verbose=0).history["loss"]
    plain = mining_backbone()
    plain.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=TripletSemiHardLoss(margin=0.5),
        jit_compile=model.jit_compile, steps_per_execution=model.steps_per_execution,
    )  # fmt: skip
    keras.utils.set_random_seed(1)
    reference = plain.fit(x, y, batch_size=32, epochs=3, verbose=0).history["loss"]
    np.testing.assert_allclose(ours, reference, rtol=1e-5)
    assert reference[-1] < reference[0]
    for mine, theirs in zip(model.backbone.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-5)


def test_mining_model_compile_picks_each_backends_fastest_settings():
    model = MiningModel(mining_backbone())
    model.compile()
    assert isinstance(model.loss, TripletSemiHardLoss)
    expected = {
        "jax": (True, 32),  # keras resolves "auto" to XLA on jax
        "tensorflow": (True, 32),
        "torch": (False, 1),
    }[keras.backend.backend()]
    assert (bool(model.jit_compile), model.steps_per_execution) == expected
    explicit = MiningModel(mining_backbone())
    explicit.compile(steps_per_execution=1, jit_compile=False)
    assert (explicit.jit_compile, explicit.steps_per_execution) == (False, 1)


def test_mining_model_call_is_the_backbone_and_round_trips(tmp_path):
    x, y = labelled_clusters(1, count=32)
    model = MiningModel(mining_backbone())
    model.compile(loss=TripletBatchAllLoss(margin=0.3))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x)), model.backbone.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )
    model.save(tmp_path / "mining.keras")
    loaded = keras.models.load_model(tmp_path / "mining.keras")
    assert isinstance(loaded, MiningModel) and isinstance(loaded.loss, TripletBatchAllLoss)
    assert loaded.loss.options["margin"] == 0.3
    np.testing.assert_allclose(
        loaded.backbone.predict(x, verbose=0), model.backbone.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("optimizer", ["Adam", "SGD", "AdamW"])
def test_the_saved_optimizer_names_its_public_class_so_any_backend_loads_it(optimizer):
    """keras saves torch's Adam as keras.src.backend.torch.optimizers.torch_adam, which a jax-only install
    cannot import; ours name keras.optimizers.<class> (loading it across venvs: tests/test_portability.py)."""
    model = MiningModel(mining_backbone())
    model.compile(optimizer=getattr(keras.optimizers, optimizer)(1e-3), loss=TripletBatchAllLoss())
    saved = model.get_compile_config()["optimizer"]
    assert saved["class_name"] == optimizer
    assert not saved["module"].startswith("keras.src.backend."), saved["module"]
    restored = keras.saving.deserialize_keras_object(saved)
    assert type(restored) is type(model.optimizer)
    assert restored.get_config() == model.optimizer.get_config()


def test_mining_model_needs_a_keras_model():
    with pytest.raises(TypeError, match="backbone must be a keras.Model"):
        MiningModel(keras.layers.Dense(4))


def test_models_module_names_no_backend():
    """models.py asks the fast-path seam (siamese_k3.backend.fast_path); it never names a backend itself."""
    import re

    import siamese_k3.models as models

    with open(models.__file__) as handle:
        source = handle.read()
    assert not re.findall(r"(?i)\b(torch|tensorflow|jax|tf|xla)\b", source)
    assert not re.findall(r"from siamese_k3\.backend\.(torch|tensorflow|jax)|backend import (torch|tensorflow|jax)", source)
