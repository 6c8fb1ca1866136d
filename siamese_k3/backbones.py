"""Embedding networks (backbones), each a function returning a `keras.Model`.

`rescale` puts the input scaling inside the model (e.g. ``rescale=1/255`` so raw
0-255 pixels go in); the seeds scaled their arrays outside the model instead,
which is the default here (``rescale=None``).
"""

import os
import warnings

import keras
import numpy as np
from keras import layers, ops

from siamese_k3.checks import check_choice
from siamese_k3.errors import SiameseK3Error


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


CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def caffe_preprocessing(data_format=None, name="resnet_preprocessing"):
    """`keras.applications.resnet.preprocess_input` as a standard Keras layer.

    RGB → BGR, minus the ImageNet channel means (103.939, 116.779, 123.68 in BGR
    order), no scaling: an affine map per pixel, y = W x + b with W the channel
    permutation and b = -mean, i.e. a frozen float32 1×1 `Conv2D`. Raw 0-255
    RGB images go in. Being one of keras' own layers, it saves to ``.keras`` and
    loads with plain `keras.models.load_model` on any backend, siamese_k3 not
    imported (products by 0 and 1 are exact, so float32 results match
    ``preprocess_input``'s).
    """
    data_format = data_format or keras.config.image_data_format()
    convolution = layers.Conv2D(3, 1, data_format=data_format, trainable=False, dtype="float32", name=name)
    convolution.build((None, None, None, 3) if data_format == "channels_last" else (None, 3, None, None))
    swap_channels = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)  # kernel[0, 0, in, out]
    convolution.set_weights([swap_channels, -np.asarray(CAFFE_MEAN_BGR, "float32")])
    return convolution


@keras.saving.register_keras_serializable(package="siamese_k3")
class CaffePreprocessing(layers.Layer):
    """The ops-based predecessor of `caffe_preprocessing`, kept so that ResNet50 runs
    saved before it still load (with siamese_k3 imported). New models use the Conv2D.
    """

    MEAN_BGR = CAFFE_MEAN_BGR

    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.data_format = data_format or keras.config.image_data_format()

    def call(self, images):
        axis = -1 if self.data_format == "channels_last" else -3
        mean_shape = (3,) if axis == -1 else (3, 1, 1)
        mean = ops.reshape(ops.convert_to_tensor(self.MEAN_BGR, self.compute_dtype), mean_shape)
        return ops.flip(ops.cast(images, self.compute_dtype), axis=axis) - mean

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}


def _resnet50_base(input_shape, weights):
    """`keras.applications.ResNet50` without its top; `weights` None, "imagenet" or a file."""
    from_file = weights not in (None, "imagenet")
    if from_file and not os.path.isfile(os.fspath(weights)):
        raise SiameseK3Error(
            f"ResNet50 weights file not found: {weights}. Pass weights=None (random), "
            '"imagenet" (downloads, needs internet) or the path of a ResNet50 '
            "include_top=False weights file (.weights.h5, or the legacy "
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5)."
        )
    try:
        base = keras.applications.ResNet50(
            include_top=False,
            weights=None if from_file else weights,
            input_shape=tuple(input_shape),
        )
    except ValueError as error:  # e.g. an input smaller than 32×32
        raise SiameseK3Error(
            f"Cannot build ResNet50 for input_shape={input_shape}: {error}"
        ) from error
    except Exception as error:  # noqa: BLE001 - the ImageNet download failed
        if weights != "imagenet":
            raise
        raise SiameseK3Error(
            f'weights="imagenet" could not be downloaded ({error}). Offline, copy '
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 (keras-applications "
            "release) to this machine and pass its path as weights=PATH."
        ) from error
    if from_file:
        # Keras warns once per unmatched layer before it raises: keep the warnings
        # only when the load succeeds.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                base.load_weights(os.fspath(weights))
            except (ValueError, OSError, KeyError) as error:
                reason = str(error).strip().splitlines()[0][:300]
                raise SiameseK3Error(
                    f"Cannot load ResNet50 weights from {weights}: {reason} The file must hold "
                    "the weights of keras.applications.ResNet50(include_top=False) "
                    "(.weights.h5, .keras or legacy .h5)."
                ) from error
        for warning in caught:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return base


def resnet50_embedding(
    input_shape=(200, 200, 3),
    weights=None,
    trainable_from="conv5_block1_out",
    embedding_dim=256,
    name="resnet50_embedding",
):
    """Seeds 003/004: a ResNet50 fine-tuned from `trainable_from`, with a dense head.

    Raw 0-255 RGB images → `caffe_preprocessing` (= `keras.applications.resnet.
    preprocess_input`, a frozen 1×1 Conv2D) → ResNet50 without top (the nested layer ``"resnet50"``) →
    Flatten → Dense(512, relu) → BatchNorm → Dense(256, relu) → BatchNorm →
    Dense(embedding_dim).

    Freezing as in the seeds: the ResNet layers before the one named
    `trainable_from` are frozen (their BatchNorm layers then run in inference
    mode), that layer and all after it train. ``trainable_from=None`` trains the
    whole ResNet. The head always trains.

    Args:
        input_shape: (H, W, 3), H and W at least 32 (the seeds use 200×200).
        weights: None (random init), "imagenet" (downloaded by Keras; needs
            internet), or the path of a weights file of
            ``keras.applications.ResNet50(include_top=False)``: a ``.weights.h5``
            saved from ``model.get_layer("resnet50")``, or the legacy
            ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` copied from a
            machine with internet.
        trainable_from: name of the first ResNet layer to train (see
            ``model.get_layer("resnet50").summary()``), or None.
        embedding_dim: size of the embedding.
    """
    base = _resnet50_base(input_shape, weights)
    if trainable_from is not None:
        names = [layer.name for layer in base.layers]
        if trainable_from not in names:
            raise SiameseK3Error(
                f"trainable_from={trainable_from!r} is not a ResNet50 layer; use a layer name "
                'such as "conv5_block1_out" or "conv4_block1_out" (or None to train it all).'
            )
        trainable = False
        for layer in base.layers:
            if layer.name == trainable_from:
                trainable = True
            layer.trainable = trainable
    inputs, x = _input(input_shape, None, "image")
    x = caffe_preprocessing()(x)
    x = base(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dense(embedding_dim)(x)
    return keras.Model(inputs, x, name=name)


def compact_cnn(
    input_shape=(28, 28),
    embedding_dim=64,
    filters=(32, 64),
    hidden=256,
    rescale=None,
    normalize=False,
    flip=False,
    shift=0.0,
    dropout=0.0,
    convs=1,
    erase=0.0,
    name="compact_cnn",
):
    """A fast CNN for 28×28 images, the CLI's default on Fashion-MNIST.

    Per block (one per entry of `filters`): `convs` × (Conv 3×3 → BatchNorm →
    ReLU), then MaxPool 2; `convs` is one count for every block or one per
    block (VGG-style stacks: two 3×3 convolutions see 5×5). Then Flatten →
    Dense(hidden, relu) → [Dropout(dropout) when `dropout` > 0] →
    Dense(embedding_dim), L2-normalised when `normalize` (``UnitNormalization``:
    every embedding on the unit sphere).

    Training-only augmentation inside the model, before the first block:
    `flip` adds ``RandomFlip("horizontal")``, `shift` > 0 adds
    ``RandomTranslation(shift, shift)`` (shifts up to that fraction of the
    height and width, zero fill), `erase` > 0 adds ``RandomErasing`` (with that
    probability per image, a random rectangle set to 0; Zhong et al. 2017).
    All are identities at inference
    (``predict``, ``training=False``) and standard Keras layers, so the saved
    model loads anywhere.
    """
    inputs, x = _input(input_shape, rescale, "image")
    if len(input_shape) == 2:
        x = layers.Reshape((*input_shape, 1))(x)
    if flip:
        x = layers.RandomFlip("horizontal")(x)
    if shift:
        x = layers.RandomTranslation(shift, shift, fill_mode="constant")(x)
    if erase:
        if not hasattr(layers, "RandomErasing"):
            raise SiameseK3Error(f"erase={erase} needs keras.layers.RandomErasing (keras >= 3.8): upgrade keras.")
        x = layers.RandomErasing(factor=(erase, erase), fill_value=0.0)(x)
    counts = [convs] * len(filters) if isinstance(convs, int) else list(convs)
    if len(counts) != len(filters) or min(counts, default=1) < 1:
        raise SiameseK3Error(f"convs={convs!r}: give one count >= 1, or one per block of filters={list(filters)}.")
    for width, count in zip(filters, counts):
        for _ in range(count):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(hidden, activation="relu")(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(embedding_dim)(x)
    if normalize:
        x = layers.UnitNormalization()(x)
    return keras.Model(inputs, x, name=name)


BACKBONES = {
    "fashion_mnist_dense": fashion_mnist_dense,
    "mnist_dense": mnist_dense,
    "mnist_siamese_dense": mnist_siamese_dense,
    "small_cnn": small_cnn,
    "compact_cnn": compact_cnn,
    "resnet50": resnet50_embedding,
}


def check_name(name):
    """`name` if it names one of `BACKBONES`; else `SiameseK3Error` listing them."""
    return check_choice(name, sorted(BACKBONES), "backbone")


def get(name, **kwargs):
    """A backbone by name (see `BACKBONES`), built with `kwargs`."""
    return BACKBONES[check_name(name)](**kwargs)
