"""The small backbones: the layers their docstrings name, output shapes, the rescale option."""

import keras
import numpy as np
import pytest
from keras import layers

from siamese_k3 import backbones

SMALL_BACKBONES = ["fashion_mnist_dense", "mnist_dense", "mnist_siamese_dense", "small_cnn"]


def of_type(model, layer_type):
    return [layer for layer in model.layers if isinstance(layer, layer_type)]


def dense_layout(model):
    """[(units, activation name)] of the model's Dense layers, in order."""
    return [(layer.units, layer.activation.__name__) for layer in of_type(model, layers.Dense)]


def test_fashion_mnist_dense_is_seed_000():
    model = backbones.fashion_mnist_dense()
    assert isinstance(model.layers[1], layers.Flatten)
    assert dense_layout(model) == [(128, "relu"), (128, "relu")]
    assert model.output_shape == (None, 128)


def test_mnist_dense_is_seed_001():
    model = backbones.mnist_dense()
    assert not of_type(model, layers.Flatten)  # flat 784-d input
    assert dense_layout(model) == [(64, "relu"), (64, "sigmoid")]
    assert model.output_shape == (None, 64)
    images = backbones.mnist_dense(input_shape=(28, 28), embedding_dim=16)
    assert of_type(images, layers.Flatten)
    assert dense_layout(images) == [(16, "relu"), (16, "sigmoid")]


def test_mnist_siamese_dense_is_seed_002():
    model = backbones.mnist_siamese_dense()
    assert dense_layout(model) == [(128, "relu")] * 3
    assert [layer.rate for layer in of_type(model, layers.Dropout)] == [0.1, 0.1]
    kinds = [type(layer).__name__ for layer in model.layers[1:]]
    assert kinds == ["Flatten", "Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert [
        layer.rate for layer in of_type(backbones.mnist_siamese_dense(dropout=0.3), layers.Dropout)
    ] == [0.3, 0.3]


def test_small_cnn_layers():
    model = backbones.small_cnn(filters=(4, 8, 8), embedding_dim=24)
    convolutions = of_type(model, layers.Conv2D)
    assert [layer.filters for layer in convolutions] == [4, 4, 8, 8, 8, 8]
    assert all(layer.kernel_size == (3, 3) and not layer.use_bias for layer in convolutions)
    assert len(of_type(model, layers.BatchNormalization)) == 6
    assert len(of_type(model, layers.MaxPooling2D)) == 2  # none after the last block
    assert len(of_type(model, layers.GlobalAveragePooling2D)) == 1
    assert isinstance(model.layers[-1], layers.Dense) and model.layers[-1].units == 24
    assert model.layers[-1].activation.__name__ == "linear"


@pytest.mark.parametrize(
    ("name", "options", "input_shape", "embedding_dim"),
    [
        ("fashion_mnist_dense", {}, (28, 28), 128),
        ("mnist_dense", {}, (784,), 64),
        ("mnist_siamese_dense", {}, (28, 28), 128),
        ("small_cnn", {"filters": (4, 8)}, (28, 28), 64),
        (
            "small_cnn",
            {"filters": (4, 8), "input_shape": (12, 12, 3), "embedding_dim": 5},
            (12, 12, 3),
            5,
        ),
    ],
)
def test_output_shapes(name, options, input_shape, embedding_dim, rng):
    model = backbones.get(name, **options)
    images = rng.uniform(size=(3, *input_shape)).astype("float32")
    embeddings = keras.ops.convert_to_numpy(model(images))
    assert embeddings.shape == (3, embedding_dim)
    assert model.predict(images, verbose=0).shape == (3, embedding_dim)
    assert np.all(np.isfinite(embeddings))


@pytest.mark.parametrize("name", SMALL_BACKBONES)
def test_rescale_happens_inside_the_model(name, rng):
    input_shape = (784,) if name == "mnist_dense" else (28, 28)
    options = {"filters": (4, 8)} if name == "small_cnn" else {}
    plain = backbones.get(name, input_shape=input_shape, **options)
    rescaled = backbones.get(name, input_shape=input_shape, rescale=1 / 255, **options)
    assert not of_type(plain, layers.Rescaling)
    assert isinstance(rescaled.layers[1], layers.Rescaling)
    rescaled.set_weights(plain.get_weights())
    pixels = rng.integers(0, 256, size=(2, *input_shape)).astype("float32")
    np.testing.assert_allclose(
        rescaled.predict(pixels, verbose=0),
        plain.predict(pixels / 255, verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )


def test_get_by_name():
    assert [
        layer.units
        for layer in of_type(backbones.get("mnist_dense", embedding_dim=8), layers.Dense)
    ] == [8, 8]
    with pytest.raises(ValueError, match="backbone='vgg' is unknown: choose one of"):
        backbones.get("vgg")


def test_augmentation_is_training_only(rng):
    """compact_cnn(flip=True, shift=0.1, erase=0.5) predicts what the same weights without augmentation predict."""
    images = rng.uniform(0, 255, (6, 28, 28)).astype("float32")
    augmented = backbones.compact_cnn(
        filters=(8, 16), hidden=16, embedding_dim=4, rescale=1 / 255, flip=True, shift=0.1, erase=0.5
    )
    plain = backbones.compact_cnn(filters=(8, 16), hidden=16, embedding_dim=4, rescale=1 / 255)
    plain.set_weights(augmented.get_weights())
    kinds = [type(layer) for layer in augmented.layers]
    assert layers.RandomFlip in kinds and layers.RandomTranslation in kinds and layers.RandomErasing in kinds
    np.testing.assert_allclose(augmented.predict(images, verbose=0), plain.predict(images, verbose=0), rtol=1e-6, atol=1e-6)
    trained = keras.ops.convert_to_numpy(augmented(images, training=True))
    assert not np.allclose(trained, keras.ops.convert_to_numpy(plain(images, training=True)), atol=1e-4)


def test_compact_cnn_blocks_and_dropout():
    model = backbones.compact_cnn(filters=(4, 8, 8), convs=(1, 2, 2), hidden=16, embedding_dim=6, dropout=0.25)
    assert [layer.filters for layer in of_type(model, layers.Conv2D)] == [4, 8, 8, 8, 8]
    assert len(of_type(model, layers.BatchNormalization)) == 5
    assert len(of_type(model, layers.MaxPooling2D)) == 3  # one per block
    assert [layer.rate for layer in of_type(model, layers.Dropout)] == [0.25]
    assert [layer.filters for layer in of_type(backbones.compact_cnn(filters=(4, 8), convs=2), layers.Conv2D)] == [4, 4, 8, 8]
    assert not of_type(backbones.compact_cnn(filters=(4, 8)), layers.Dropout)
    with pytest.raises(ValueError, match="one per block"):
        backbones.compact_cnn(filters=(4, 8), convs=(1, 2, 2))
