"""siamese_k3.backbones.resnet50_embedding: seeds 003/004's fine-tuned ResNet50 (32×32 here)."""

import keras
import numpy as np
import pytest

from siamese_k3 import backbones
from siamese_k3.backbones import CaffePreprocessing, caffe_preprocessing, resnet50_embedding
from siamese_k3.errors import SiameseK3Error

SHAPE = (32, 32, 3)
IMAGENET_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


@pytest.fixture(scope="module")
def model():
    return resnet50_embedding(SHAPE, embedding_dim=16)


@pytest.fixture
def images(rng):
    return rng.uniform(0.0, 255.0, size=(3, *SHAPE)).astype("float32")


def test_builds_small_input(model, images):
    assert model.input_shape == (None, *SHAPE)
    assert model.output_shape == (None, 16)
    assert backbones.get("resnet50", input_shape=SHAPE).output_shape == (None, 256)
    embeddings = model.predict(images, verbose=0)
    assert embeddings.shape == (3, 16) and np.isfinite(embeddings).all()


def test_head_matches_the_seeds(model):
    head = [layer for layer in model.layers if layer.name not in ("image", "resnet_preprocessing")]
    assert [type(layer).__name__ for layer in head] == [
        "Functional", "Flatten", "Dense", "BatchNormalization", "Dense", "BatchNormalization",
        "Dense",
    ]
    dense = [layer for layer in head if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [512, 256, 16]
    assert [layer.activation.__name__ for layer in dense] == ["relu", "relu", "linear"]


@pytest.mark.parametrize("trainable_from", ["conv5_block1_out", "conv4_block6_out"])
def test_frozen_until_trainable_from(trainable_from):
    model = resnet50_embedding(SHAPE, trainable_from=trainable_from, embedding_dim=8)
    base = model.get_layer("resnet50")
    names = [layer.name for layer in base.layers]
    first = names.index(trainable_from)
    for position, layer in enumerate(base.layers):
        assert layer.trainable == (position >= first), layer.name
    # the seeds' split: every conv/BN weight before the layer frozen, every one after trained
    frozen = {id(weight) for layer in base.layers[:first] for weight in layer.weights}
    trained = {id(weight) for layer in base.layers[first:] for weight in layer.weights}
    assert frozen and trained
    assert {id(weight) for weight in base.trainable_weights} == {
        id(weight) for layer in base.layers[first:] for weight in layer.trainable_weights
    }
    assert not frozen & {id(weight) for weight in model.trainable_weights}
    head = {id(weight) for layer in model.layers[3:] for weight in layer.trainable_weights}
    assert head <= {id(weight) for weight in model.trainable_weights}


def test_trainable_from_none_trains_the_whole_resnet():
    base = resnet50_embedding(SHAPE, trainable_from=None).get_layer("resnet50")
    assert all(layer.trainable for layer in base.layers)


def test_unknown_trainable_from():
    with pytest.raises(SiameseK3Error, match="'conv9_block1_out' is not a ResNet50 layer"):
        resnet50_embedding(SHAPE, trainable_from="conv9_block1_out")


def test_input_too_small():
    with pytest.raises(SiameseK3Error, match=r"input_shape=\(16, 16, 3\)"):
        resnet50_embedding((16, 16, 3))


@pytest.mark.parametrize("layer", [caffe_preprocessing, CaffePreprocessing])
def test_preprocessing_equals_keras_resnet_preprocess_input(images, layer):
    expected = keras.applications.resnet50.preprocess_input(images.copy())
    result = keras.ops.convert_to_numpy(layer()(images))
    np.testing.assert_allclose(result, expected, atol=1e-4)
    # independent of Keras: BGR order minus the ImageNet means
    np.testing.assert_allclose(result, images[..., ::-1] - IMAGENET_MEAN_BGR, atol=1e-4)


def test_preprocessing_of_whole_pixels_is_exact():
    """On raw 0-255 pixels the 1×1 convolution gives preprocess_input's float32 values exactly."""
    pixels = np.random.default_rng(1).integers(0, 256, (2, 7, 5, 3)).astype("float32")
    expected = keras.applications.resnet50.preprocess_input(pixels.copy())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(caffe_preprocessing()(pixels)), expected)


@pytest.mark.parametrize("layer", [caffe_preprocessing, CaffePreprocessing])
def test_preprocessing_channels_first(images, layer):
    if layer is caffe_preprocessing and keras.backend.backend() == "tensorflow":
        pytest.skip("TensorFlow's CPU Conv2D supports channels_last only")
    channels_first = np.transpose(images, (0, 3, 1, 2))
    result = keras.ops.convert_to_numpy(layer("channels_first")(channels_first))
    expected = np.transpose(images[..., ::-1] - IMAGENET_MEAN_BGR, (0, 3, 1, 2))
    np.testing.assert_allclose(result, expected, atol=1e-4)


def test_preprocessing_is_inside_the_model(model, images):
    """The model on raw pixels equals the bare ResNet + head on preprocess_input(pixels)."""
    preprocessed = keras.applications.resnet.preprocess_input(images.copy())
    features = model.get_layer("resnet50").predict(preprocessed, verbose=0)
    head = keras.Sequential(model.layers[3:])
    np.testing.assert_allclose(
        model.predict(images, verbose=0), head.predict(features, verbose=0), rtol=1e-4, atol=1e-4
    )


def test_weights_file_loads_into_a_new_model(model, images, tmp_path):
    path = str(tmp_path / "resnet50_notop.weights.h5")
    model.get_layer("resnet50").save_weights(path)
    loaded = resnet50_embedding(SHAPE, weights=path, embedding_dim=16)
    for expected, actual in zip(
        model.get_layer("resnet50").weights, loaded.get_layer("resnet50").weights
    ):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(expected), keras.ops.convert_to_numpy(actual)
        )
    fresh = resnet50_embedding(SHAPE, embedding_dim=16)
    assert not np.array_equal(
        keras.ops.convert_to_numpy(fresh.get_layer("resnet50").weights[0]),
        keras.ops.convert_to_numpy(model.get_layer("resnet50").weights[0]),
    )
    # the loaded model keeps the seeds' freezing
    assert not loaded.get_layer("resnet50").get_layer("conv4_block6_3_conv").trainable


def test_legacy_h5_weights_file_loads(tmp_path):
    """The offline route to ImageNet weights: the keras-applications notop .h5 file
    (Keras 2's legacy format, emulated here with random weights) passed as a path."""
    h5py = pytest.importorskip("h5py")
    legacy = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format")
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=SHAPE)
    path = str(tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    with h5py.File(path, "w") as handle:
        legacy.save_weights_to_hdf5_group(handle, base)
    loaded = resnet50_embedding(SHAPE, weights=path).get_layer("resnet50")
    for expected, actual in zip(base.weights, loaded.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(expected), keras.ops.convert_to_numpy(actual)
        )


def test_missing_weights_file(tmp_path):
    with pytest.raises(SiameseK3Error, match="weights file not found: .*missing.weights.h5"):
        resnet50_embedding(SHAPE, weights=str(tmp_path / "missing.weights.h5"))


def test_wrong_weights_file(tmp_path):
    path = str(tmp_path / "small.weights.h5")
    backbones.small_cnn((32, 32, 3)).save_weights(path)
    with pytest.raises(SiameseK3Error, match="Cannot load ResNet50 weights from .*small.weights"):
        resnet50_embedding(SHAPE, weights=path)


def test_keras_round_trip(model, images, tmp_path):
    path = tmp_path / "resnet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5, atol=1e-5
    )
    assert isinstance(loaded.get_layer("resnet_preprocessing"), keras.layers.Conv2D)
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
