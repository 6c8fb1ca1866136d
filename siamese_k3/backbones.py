"""Embedding networks (backbones), each a function returning a `keras.Model`.

`rescale` puts the input scaling inside the model (e.g. ``rescale=1/255`` so raw
0-255 pixels go in); the seeds scaled their arrays outside the model instead,
which is the default here (``rescale=None``).
"""

import keras
from keras import layers


def _input(input_shape, rescale, name):
    inputs = keras.Input(shape=tuple(input_shape), name=name)
    x = layers.Rescaling(rescale)(inputs) if rescale is not None else inputs
    return inputs, x


def fashion_mnist_dense(input_shape=(28, 28), rescale=None, name="fashion_mnist_dense"):
    """Seed 000: Flatten → Dense(128, relu) → Dense(128, relu); 128-d embeddings."""
    inputs, x = _input(input_shape, rescale, "image")
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dense(128, activation="relu")(x)
    return keras.Model(inputs, x, name=name)


def mnist_dense(input_shape=(784,), embedding_dim=64, rescale=None, name="mnist_dense"):
    """Seed 001: 784 → Dense(64, relu) → Dense(64, sigmoid)."""
    inputs, x = _input(input_shape, rescale, "image")
    if len(input_shape) > 1:
        x = layers.Flatten()(x)
    x = layers.Dense(embedding_dim, activation="relu")(x)
    x = layers.Dense(embedding_dim, activation="sigmoid")(x)
    return keras.Model(inputs, x, name=name)


def mnist_siamese_dense(input_shape=(28, 28), dropout=0.1, rescale=None, name="mnist_siamese_dense"):
    """Seed 002 / the Keras mnist_siamese example: 3 × Dense(128, relu) with Dropout(0.1) between."""
    inputs, x = _input(input_shape, rescale, "image")
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(128, activation="relu")(x)
    return keras.Model(inputs, x, name=name)


def small_cnn(
    input_shape=(28, 28), embedding_dim=64, filters=(32, 64, 128), rescale=None, name="small_cnn"
):
    """A small CNN for 28×28 grey images (or any H×W×C).

    Per block: Conv 3×3 → BatchNorm → ReLU → Conv 3×3 → BatchNorm → ReLU → MaxPool 2
    (no pool after the last block), then global average pooling → Dense(embedding_dim).
    A 2-D `input_shape` (H, W) gets a channel axis added inside the model.
    """
    inputs, x = _input(input_shape, rescale, "image")
    if len(input_shape) == 2:
        x = layers.Reshape((*input_shape, 1))(x)
    for index, width in enumerate(filters):
        for _ in range(2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
        if index < len(filters) - 1:
            x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(embedding_dim)(x)
    return keras.Model(inputs, x, name=name)


BACKBONES = {
    "fashion_mnist_dense": fashion_mnist_dense,
    "mnist_dense": mnist_dense,
    "mnist_siamese_dense": mnist_siamese_dense,
    "small_cnn": small_cnn,
}


def get(name, **kwargs):
    """A backbone by name (see `BACKBONES`), built with `kwargs`."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}: expected one of {', '.join(sorted(BACKBONES))}.")
    return BACKBONES[name](**kwargs)
