"""A short training run with each mining loss on P × K batches improves retrieval."""

import keras
import numpy as np
import pytest

from siamese_k3.data import ClassBalancedBatches
from siamese_k3.losses import TripletBatchAllLoss, TripletHardLoss, TripletSemiHardLoss

NUM_CLASSES, SIGNAL_DIMS, NOISE_DIMS = 8, 4, 28


def clusters(seed, per_class):
    """Classes apart in 4 dimensions, hidden by noise in 28 more: raw neighbours are mostly wrong."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(10).normal(scale=1.2, size=(NUM_CLASSES, SIGNAL_DIMS))
    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    signal = centres[labels] + 0.3 * rng.normal(size=(len(labels), SIGNAL_DIMS))
    noise = rng.normal(size=(len(labels), NOISE_DIMS))
    return np.concatenate([signal, noise], axis=1).astype("float32"), labels


def precision_at_1(embeddings, labels):
    """Fraction of items whose nearest other item (euclidean, brute force) shares its label."""
    embeddings = embeddings.astype(np.float64)
    distances = np.sum((embeddings[:, None, :] - embeddings[None, :, :]) ** 2, axis=-1)
    np.fill_diagonal(distances, np.inf)
    return float(np.mean(labels[np.argmin(distances, axis=1)] == labels))


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss",
    [
        TripletSemiHardLoss(margin=1.0),
        TripletHardLoss(margin=1.0),
        TripletHardLoss(soft=True),
        TripletBatchAllLoss(margin=1.0),
    ],
    ids=["semi_hard", "batch_hard", "batch_hard_soft", "batch_all"],
)
def test_mining_loss_improves_precision_at_1(loss):
    train_x, train_labels = clusters(seed=0, per_class=40)
    test_x, test_labels = clusters(seed=1, per_class=25)
    model = keras.Sequential(
        [
            keras.Input((SIGNAL_DIMS + NOISE_DIMS,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(8),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss)
    untrained = precision_at_1(model.predict(test_x, verbose=0), test_labels)
    batches = ClassBalancedBatches(
        train_x, train_labels, classes_per_batch=4, samples_per_class=8, steps_per_epoch=25, seed=0
    )
    history = model.fit(batches, epochs=8, verbose=0)
    trained = precision_at_1(model.predict(test_x, verbose=0), test_labels)
    assert np.all(np.isfinite(history.history["loss"]))
    assert trained >= untrained + 0.3, (untrained, trained)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["contrastive", "multi_similarity", "circle", "ntxent", "supcon"])
def test_pair_loss_improves_precision_at_1_by_cosine(name):
    """The pair losses (siamese_k3.losses.pairs) learn directions: the same clusters, ranked by cosine."""
    from siamese_k3 import losses

    train_x, train_labels = clusters(seed=0, per_class=40)
    test_x, test_labels = clusters(seed=1, per_class=25)
    model = keras.Sequential(
        [keras.Input((SIGNAL_DIMS + NOISE_DIMS,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(8)]
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=losses.get(name))

    def cosine_precision_at_1():
        embeddings = model.predict(test_x, verbose=0).astype(np.float64)
        return precision_at_1(embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True), test_labels)

    untrained = cosine_precision_at_1()
    batches = ClassBalancedBatches(
        train_x, train_labels, classes_per_batch=4, samples_per_class=8, steps_per_epoch=25, seed=0
    )
    history = model.fit(batches, epochs=8, verbose=0)
    trained = cosine_precision_at_1()
    assert np.all(np.isfinite(history.history["loss"]))
    assert trained >= untrained + 0.3, (untrained, trained)


def _cli_run(tmp_path, loss, options):
    """`siamese-k3 train --loss LOSS --loss-options OPTIONS` on toy data (toy.TINY, no plots): (config.json, folder)."""
    import json

    from siamese_k3 import cli
    from toy import TINY, write_clustered_idx

    write_clustered_idx(tmp_path / "data", train=80, test=40)
    out = tmp_path / loss
    code = cli.main(["train", "--data-dir", str(tmp_path / "data"), "--out", str(out), "--loss", loss,
                     "--loss-options", json.dumps(options), "--no-plots", *TINY])
    assert code == 0
    return json.loads((out / "config.json").read_text()), out


def test_a_pair_loss_trains_from_the_cli_and_ranks_by_cosine(tmp_path):
    """`train --loss supcon --loss-options JSON`: the run trains the loss with its options and evaluates by cosine."""
    import json

    config, out = _cli_run(tmp_path, "supcon", {"temperature": 0.2})
    assert (config["loss"], config["loss_options"], config["distance"]) == ("supcon", {"temperature": 0.2}, "cosine")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision_at_1"] > 0.5, metrics
    model = keras.saving.load_model(out / "model.keras")
    assert model.loss.get_config()["temperature"] == 0.2


def test_a_proxy_loss_trains_from_the_cli_with_its_proxies_in_model_keras_only(tmp_path):
    """`train --loss arcface`: one proxy per class, trained, saved in model.keras, not in embedding.keras."""
    config, out = _cli_run(tmp_path, "arcface", {"scale": 16, "proxy_lr_multiplier": 5})
    assert (config["loss"], config["distance"]) == ("arcface", "cosine")
    model = keras.saving.load_model(out / "model.keras")
    assert (model.proxies.num_classes, model.proxies.lr_multiplier) == (10, 5)
    assert tuple(model.proxies.proxies.shape) == (10, 8)  # TINY's --embedding-dim 8
    embedding = keras.saving.load_model(out / "embedding.keras")
    assert all(tuple(weight.shape) != (10, 8) for weight in embedding.weights)
