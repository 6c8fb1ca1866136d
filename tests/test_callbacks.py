"""siamese_k3.callbacks: stopping at a non-finite loss, and per-epoch retrieval and pair validation."""

import keras
import numpy as np
import pytest

from siamese_k3 import TripletSemiHardLoss, backbones
from siamese_k3.callbacks import PairValidation, RetrievalValidation, StopOnNonFiniteLoss
from siamese_k3.errors import NonFiniteLossError


def _mining_fit(images, validation=None, callbacks=()):
    """Two epochs of a linear embedding (no relu, which maps NaN to 0 in TensorFlow's CPU kernels)."""
    labels = np.arange(len(images)) % 4
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    model.compile(optimizer="adam", loss=TripletSemiHardLoss(margin=0.2))
    return model.fit(
        images, labels, batch_size=8, epochs=2, shuffle=False, verbose=0,
        validation_data=validation, callbacks=[StopOnNonFiniteLoss(), *callbacks],
    )


def test_nan_input_stops_at_its_step(rng):
    images = rng.normal(size=(32, 6)).astype("float32")
    images[17] = np.nan  # in the third batch of 8
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1, step 3\. Likely causes: .*learning rate"):
        _mining_fit(images)



def test_the_step_of_a_longer_execution_is_clipped_to_the_epoch():
    """keras numbers an execution of 32 steps 0-31 even in a 4-step epoch: the message names steps 1-4."""
    callback = StopOnNonFiniteLoss()
    callback.set_params({"verbose": 0, "epochs": 2, "steps": 4})
    callback.on_epoch_begin(1)
    callback.on_train_batch_begin(0)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 2, steps 1-4\. "):
        callback.on_train_batch_end(31, {"loss": float("nan")})
    callback.on_train_batch_begin(32)  # an epoch of unknown length: the execution's own steps
    callback.set_params({"verbose": 0, "epochs": 2, "steps": None})
    with pytest.raises(NonFiniteLossError, match=r"at epoch 2, steps 33-64\. "):
        callback.on_train_batch_end(63, {"loss": float("inf")})
    callback.on_train_batch_begin(2)
    with pytest.raises(NonFiniteLossError, match=r"at epoch 2, step 3\. "):
        callback.on_train_batch_end(2, {"loss": float("nan")})


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="keras on torch runs one step per execution")
def test_nan_in_a_four_step_epoch_at_32_steps_per_execution(rng):
    images = rng.normal(size=(32, 6)).astype("float32")
    images[17] = np.nan  # in the third batch of 8: keras shows the loss once, after the epoch's 4 steps
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    model.compile(optimizer="adam", loss=TripletSemiHardLoss(margin=0.2), steps_per_execution=32)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1, steps 1-4\. "):
        model.fit(images, np.arange(32) % 4, batch_size=8, epochs=2, shuffle=False, verbose=0,
                  callbacks=[StopOnNonFiniteLoss()])

def test_nothing_after_it_sees_the_bad_step(rng):
    images = rng.normal(size=(32, 6)).astype("float32")
    images[30] = np.inf
    seen = []
    later = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(batch))
    with pytest.raises(NonFiniteLossError, match="step 4"):
        _mining_fit(images, callbacks=[later])
    assert seen == [0, 1, 2]


def test_a_non_finite_validation_loss_stops_at_the_epoch_end(rng):
    images = rng.normal(size=(32, 6)).astype("float32")
    held_out = rng.normal(size=(16, 6)).astype("float32")
    held_out[0] = np.nan
    with pytest.raises(NonFiniteLossError, match="val_loss became nan at the end of epoch 1"):
        _mining_fit(images, validation=(held_out, np.arange(16) % 4))


def test_finite_training_is_left_alone(rng):
    history = _mining_fit(rng.normal(size=(32, 6)).astype("float32"))
    assert len(history.history["loss"]) == 2


# --------------------------------------------------------------------------
# Per-epoch quality: retrieval and pair validation, against brute force
# --------------------------------------------------------------------------


def _clustered(rng, count, classes=4, features=6):
    labels = np.arange(count) % classes
    centres = rng.normal(size=(classes, features)) * 3
    return (centres[labels] + rng.normal(size=(count, features))).astype("float32"), labels


def test_retrieval_validation_logs_its_samples_metrics_every_epoch(rng):
    from test_evaluation import brute_force_retrieval

    images, labels = _clustered(rng, 64)
    held_out, held_out_labels = _clustered(rng, 40)
    validation = RetrievalValidation(held_out, held_out_labels, sample_size=30, seed=5)
    model = backbones.mnist_dense((6,), embedding_dim=4)
    model.compile(optimizer="adam", loss=TripletSemiHardLoss(margin=0.2))
    history = model.fit(images, labels, batch_size=16, epochs=2, verbose=0, callbacks=[validation])
    assert len(validation.images) == 30 and len(np.unique(validation.images, axis=0)) == 30
    embeddings = np.asarray(model.predict(validation.images, verbose=0), np.float64)
    expected = brute_force_retrieval(embeddings, validation.labels, "euclidean", ks=(1,))
    for key in ("precision_at_1", "r_precision", "map_at_r"):
        assert len(history.history[f"val_{key}"]) == 2
        assert history.history[f"val_{key}"][-1] == pytest.approx(expected[key], abs=1e-6), key


def test_retrieval_validation_uses_a_siamese_models_backbone(rng):
    from siamese_k3 import SiameseModel

    images, labels = _clustered(rng, 24)
    model = SiameseModel(backbones.mnist_dense((6,), embedding_dim=4))
    model.compile(optimizer="adam")
    validation = RetrievalValidation(images, labels, sample_size=100)
    history = model.fit((images, images[::-1], np.roll(images, 1, 0)), epochs=1,
                        batch_size=8, verbose=0, callbacks=[validation])
    assert 0.0 <= history.history["val_map_at_r"][0] <= 1.0
    assert len(validation.images) == 24  # the whole set when it is smaller than the sample


def test_pair_validation_logs_the_roc_auc_of_its_pairs(rng):
    from test_evaluation import brute_force_auc

    anchor, positive, negative = (rng.uniform(0, 1, (12, 6)).astype("float32") for _ in range(3))
    positive = anchor + 0.1 * positive
    model = backbones.mnist_dense((6,), embedding_dim=4)
    validation = PairValidation(anchor, positive, negative, distance="cosine", embedding_model=model)
    logs = {}
    validation.on_epoch_end(0, logs)
    embedded = [np.asarray(model.predict(part, verbose=0), np.float64) for part in (anchor, positive, negative)]
    cosine = lambda x, y: 1 - (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)  # noqa: E731
    distances = np.concatenate([cosine(embedded[0], embedded[1]), cosine(embedded[0], embedded[2])])
    is_same = np.arange(24) < 12
    assert logs["val_pair_roc_auc"] == pytest.approx(brute_force_auc(-distances, is_same), abs=1e-6)
