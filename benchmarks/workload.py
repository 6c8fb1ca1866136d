"""What is trained: the backbone, the data, the loss settings, and the backbone as a plan.

Everything here is numpy or keras: the native baselines receive the same
arrays and the same initial weights (the keras backbone's, as numpy) and
rebuild the network in their own framework from `layer_plan`.
"""

import dataclasses

import keras
import numpy as np

from benchmarks.spec import CLASSES_PER_BATCH, MODELS, NUM_CLASSES, SEED
from siamese_k3 import backbones
from siamese_k3.data import ClassBalancedBatches


def build_backbone(model, image_size=0):
    """The keras backbone for `model`, with seeded weights (`image_size`: resnet50's input side)."""
    keras.utils.set_random_seed(SEED)
    if model == "mlp":
        inputs = keras.Input((784,), name="image")
        x = keras.layers.Dense(128, activation="relu")(inputs)
        x = keras.layers.Dense(128, activation="relu")(x)
        outputs = keras.layers.Dense(64)(x)
        return keras.Model(inputs, outputs, name="mlp")
    if model == "cnn":
        return backbones.small_cnn()
    if model == "compact":  # the main job's backbone, as `siamese-k3 train` builds it
        return backbones.compact_cnn(input_shape=(28, 28), rescale=1.0 / 255.0, normalize=True)
    if model == "resnet50":
        builder = backbones.resnet50_embedding
        return builder(input_shape=(image_size, image_size, 3)) if image_size else builder()
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")


def input_shape(backbone):
    return tuple(backbone.inputs[0].shape[1:])


def make_data(workload, shape):
    """Numpy arrays for `steps` batches: a dict of float32 inputs (+ int32 labels for the mining losses).

    Uniform in [0, 1), or [0, 255) for resnet50 (whose model does its own
    preprocessing); uint8 images in [0, 255] for compact (the main job's
    Fashion-MNIST batches, which its model rescales).

    triplet: {"anchor", "positive", "negative"}, each [steps·B, *shape].
    semi_hard, batch_all: {"images": [steps·B, *shape], "labels": [steps·B]}.
    """
    rng = np.random.default_rng(SEED)
    count = workload.steps * workload.batch_size
    if workload.model == "compact":
        images = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        return {"images": images, "labels": rng.integers(0, NUM_CLASSES, count).astype("int32")}
    scale = 255.0 if workload.model == "resnet50" else 1.0  # resnet50_embedding takes raw 0-255 RGB

    def images():
        return rng.random((count, *shape), dtype=np.float32) * np.float32(scale)

    if workload.loss == "triplet":
        return {"anchor": images(), "positive": images(), "negative": images()}
    return {"images": images(), "labels": rng.integers(0, NUM_CLASSES, count).astype("int32")}


def epoch_batches(workload, data, epoch):
    """Index arrays of one epoch's batches, the same for every implementation.

    A shuffled permutation cut into batches; for compact, the main job's
    class-balanced P×K batches (`class_balanced(workload, data)`, the
    sampler keras is given, at the same epoch).
    """
    if workload.model == "compact":
        sampler = class_balanced(workload, data)
        sampler.epoch = epoch
        return [sampler.batch_indices(index) for index in range(len(sampler))]
    count = len(next(iter(data.values())))
    order = np.random.default_rng(SEED + 1 + epoch).permutation(count)
    return [order[start : start + workload.batch_size] for start in range(0, count, workload.batch_size)]


def class_balanced(workload, data):
    """The main job's sampler: `ClassBalancedBatches` of P = 8 classes × K = B / 8 images, `steps` per epoch."""
    return ClassBalancedBatches(
        data["images"], data["labels"], CLASSES_PER_BATCH, workload.batch_size // CLASSES_PER_BATCH,
        steps_per_epoch=workload.steps, seed=SEED,
    )  # fmt: skip


# --------------------------------------------------------------------------
# The backbone as a plan the native baselines can rebuild.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Step:
    """One layer call: kind, options, numpy weights, input and output tensor ids, trainable."""

    kind: str
    options: dict
    weights: list
    inputs: list
    output: int
    trainable: bool = True


def _activation(name):
    if name not in ("relu", "linear"):
        raise NotImplementedError(f"activation {name!r}")
    return name


def _describe(layer):
    """(kind, options) of a keras layer, or NotImplementedError."""
    config = layer.get_config()
    name = type(layer).__name__
    if name == "Dense":
        return "dense", {"activation": _activation(config["activation"]), "use_bias": config["use_bias"]}
    if name == "Conv2D":
        if tuple(config["dilation_rate"]) != (1, 1) or config["groups"] != 1:
            raise NotImplementedError("dilated or grouped Conv2D")
        return "conv2d", {
            "strides": tuple(config["strides"]),
            "padding": config["padding"],
            "activation": _activation(config["activation"]),
            "use_bias": config["use_bias"],
        }
    if name == "BatchNormalization":
        axis = config["axis"]
        if not (config["center"] and config["scale"]) or axis not in (-1, 1, 3, [-1], [1], [3]):
            raise NotImplementedError("BatchNormalization without center/scale or not on the channel axis")
        # Keras runs a frozen BatchNormalization in inference mode.
        return "batch_norm", {"momentum": config["momentum"], "epsilon": config["epsilon"]}
    if name == "Activation":
        return "activation", {"activation": _activation(config["activation"])}
    if name == "ReLU":
        if config.get("max_value") is not None or config.get("negative_slope", 0) or config.get("threshold", 0):
            raise NotImplementedError("parametrised ReLU")
        return "activation", {"activation": "relu"}
    if name == "MaxPooling2D":
        return "max_pool", {
            "pool_size": tuple(config["pool_size"]),
            "strides": tuple(config["strides"] or config["pool_size"]),
            "padding": config["padding"],
        }
    if name == "ZeroPadding2D":
        return "zero_pad", {"padding": tuple(tuple(p) for p in config["padding"])}
    if name == "GlobalAveragePooling2D":
        if config.get("keepdims"):
            raise NotImplementedError("GlobalAveragePooling2D(keepdims=True)")
        return "global_avg_pool", {}
    if name == "Flatten":
        return "flatten", {}
    if name == "Reshape":
        return "reshape", {"target_shape": tuple(config["target_shape"])}
    if name == "Rescaling":
        return "rescale", {"scale": float(config["scale"]), "offset": float(config["offset"])}
    if name == "Add":
        return "add", {}
    if name == "UnitNormalization":
        if config["axis"] not in (-1, [-1]):
            raise NotImplementedError("UnitNormalization over another axis")
        return "l2_normalize", {}
    raise NotImplementedError(f"layer {name}")


def _plan_of(model, trainable, plan):
    """Append the steps of functional `model` to `plan`; nested functional models are inlined."""
    nodes_by_depth = model._nodes_by_depth
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            layer = node.operation
            inputs = [id(t) for t in node.input_tensors]
            output = id(node.output_tensors[0])
            if type(layer).__name__ == "InputLayer":
                continue
            if isinstance(layer, keras.Model):
                if len(layer.inputs) != 1 or len(layer.outputs) != 1:
                    raise NotImplementedError("nested models with several inputs or outputs")
                plan.append(Step("identity", {}, [], inputs, id(layer.inputs[0])))
                _plan_of(layer, trainable and layer.trainable, plan)
                plan.append(Step("identity", {}, [], [id(layer.outputs[0])], output))
                continue
            kind, options = _describe(layer)
            weights = [np.array(w) for w in layer.get_weights()]
            plan.append(Step(kind, options, weights, inputs, output, trainable and layer.trainable))
    return plan


def layer_plan(backbone):
    """The functional backbone as a topologically ordered list of `Step`s.

    Returns (steps, input_id, output_id). Weights are numpy copies in keras
    layout (Dense kernel [in, out], Conv2D kernel [h, w, in, out], BN
    gamma, beta, moving mean, moving variance). A step with
    ``trainable=False`` gets no gradient, and a frozen BatchNormalization
    runs in inference mode, as in keras. Raises NotImplementedError for a
    layer the native baselines do not rebuild.
    """
    if len(backbone.inputs) != 1 or len(backbone.outputs) != 1:
        raise NotImplementedError("backbones with several inputs or outputs")
    return _plan_of(backbone, backbone.trainable, []), id(backbone.inputs[0]), id(backbone.outputs[0])
