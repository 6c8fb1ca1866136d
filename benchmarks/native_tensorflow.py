"""Native TensorFlow baseline: tf.Variables, GradientTape, hand-written Adam, `tf.function(jit_compile=True)`.

No `tf.keras` (with Keras 3 installed that *is* keras): the network is
tf.nn ops on tf.Variables, and Adam is keras' update rule written out
(lr_t = lr·sqrt(1 - β₂ᵗ)/(1 - β₁ᵗ); w -= lr_t·m / (sqrt(v) + ε)).
"""

import functools

import tensorflow as tf

from benchmarks import spec
from benchmarks.native_common import NativeLoop


def _gpus():
    return tf.config.list_physical_devices("GPU")


def device_name():
    gpus = _gpus()
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)


def on_gpu():
    return bool(_gpus())


def sync():
    if _gpus():
        tf.test.experimental.sync_devices()


def sync_keras(model):
    sync()


# ---------------------------------------------------------------- backbone


def _activate(x, name):
    return tf.nn.relu(x) if name == "relu" else x


def _same_padding(size, kernel, stride):
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Backbone:
    """The plan on tf.Variables; `self.trainable` in plan order, BN statistics updated by assign."""

    def __init__(self, plan, input_id, output_id):
        self.plan, self.input_id, self.output_id = plan, input_id, output_id
        self.params, self.trainable = [], []
        for step in plan:
            learned = 2 if step.kind == "batch_norm" else len(step.weights)
            variables = [
                tf.Variable(w, trainable=step.trainable and index < learned)
                for index, w in enumerate(step.weights)
            ]
            self.params.append(variables)
            self.trainable += [v for v in variables if v.trainable]

    def __call__(self, x, training):
        values = {self.input_id: x}
        for step, params in zip(self.plan, self.params):
            values[step.output] = self._apply(step, params, [values[i] for i in step.inputs], training)
        return values[self.output_id]

    @staticmethod
    def _apply(step, params, inputs, training):
        kind, options = step.kind, step.options
        x = inputs[0]
        if kind == "identity":
            return x
        if kind == "dense":
            x = tf.matmul(x, params[0])
            if options["use_bias"]:
                x = x + params[1]
            return _activate(x, options["activation"])
        if kind == "conv2d":
            x = tf.nn.conv2d(x, params[0], options["strides"], options["padding"].upper())
            if options["use_bias"]:
                x = x + params[1]
            return _activate(x, options["activation"])
        if kind == "batch_norm":
            gamma, beta, moving_mean, moving_variance = params
            momentum, epsilon = options["momentum"], options["epsilon"]
            if training and step.trainable:  # keras runs a frozen BatchNormalization in inference mode
                mean, variance = tf.nn.moments(x, axes=list(range(x.shape.rank - 1)))
                moving_mean.assign(moving_mean * momentum + tf.stop_gradient(mean) * (1 - momentum))
                moving_variance.assign(
                    moving_variance * momentum + tf.stop_gradient(variance) * (1 - momentum)
                )
            else:
                mean, variance = moving_mean, moving_variance
            return tf.nn.batch_normalization(x, mean, variance, beta, gamma, epsilon)
        if kind == "activation":
            return _activate(x, options["activation"])
        if kind == "max_pool":
            return tf.nn.max_pool2d(x, options["pool_size"], options["strides"], options["padding"].upper())
        if kind == "zero_pad":
            return tf.pad(x, [(0, 0), *options["padding"], (0, 0)])
        if kind == "global_avg_pool":
            return tf.reduce_mean(x, axis=(1, 2))
        if kind == "flatten":
            return tf.reshape(x, (tf.shape(x)[0], -1))
        if kind == "reshape":
            return tf.reshape(x, (tf.shape(x)[0], *options["target_shape"]))
        if kind == "rescale":
            return x * options["scale"] + options["offset"]
        if kind == "add":
            return functools.reduce(tf.add, inputs)
        raise NotImplementedError(kind)


# ---------------------------------------------------------------- losses


def _safe_sqrt(squared):
    positive = squared > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, squared, tf.ones_like(squared))), 0.0)


def triplet_loss(embeddings, batch_size):
    anchor, positive, negative = tf.split(embeddings, 3)
    d_positive = _safe_sqrt(tf.reduce_sum(tf.square(anchor - positive), -1))
    d_negative = _safe_sqrt(tf.reduce_sum(tf.square(anchor - negative), -1))
    return tf.reduce_mean(tf.nn.relu(d_positive - d_negative + spec.MARGIN))


def semi_hard_loss(embeddings, labels):
    """TF Addons' semi-hard loss, written directly with a [B, B, B] mask."""
    squared_norms = tf.reduce_sum(tf.square(embeddings), 1, keepdims=True)
    squared = tf.maximum(
        squared_norms - 2 * tf.matmul(embeddings, embeddings, transpose_b=True) + tf.transpose(squared_norms),
        0.0,
    )
    eye = tf.eye(tf.shape(embeddings)[0])
    distances = _safe_sqrt(squared * (1 - eye))
    same = tf.equal(labels[:, None], labels[None, :])
    positive = same & tf.equal(eye, 0)
    negative = tf.logical_not(same)
    farther = negative[:, None, :] & (distances[:, None, :] > distances[:, :, None])
    closest_farther = tf.reduce_min(tf.where(farther, distances[:, None, :], float("inf")), 2)
    farthest = tf.reduce_max(tf.where(negative, distances, -float("inf")), 1, keepdims=True)
    chosen = tf.where(tf.reduce_any(farther, 2), closest_farther, farthest)
    valid = positive & tf.reduce_any(negative, 1, keepdims=True)
    per_pair = tf.nn.relu(distances - tf.where(valid, chosen, 0.0) + spec.MARGIN)
    valid_f = tf.cast(valid, tf.float32)
    return tf.reduce_sum(per_pair * valid_f) / tf.maximum(tf.reduce_sum(valid_f), 1.0)


# ---------------------------------------------------------------- loop


class TensorFlowLoop(NativeLoop):
    """GradientTape + Adam in one `tf.function(jit_compile=True)`."""

    settings = "tf.function(jit_compile=True), GradientTape + Adam"

    def __init__(self, workload, data, plan, input_id, output_id):
        super().__init__(workload, data)
        self.model = Backbone(plan, input_id, output_id)
        trainable = self.model.trainable
        self.moments = [(tf.Variable(tf.zeros_like(w)), tf.Variable(tf.zeros_like(w))) for w in trainable]
        self.iterations = tf.Variable(0.0)
        batch_size, triplet = workload.batch_size, workload.loss == "triplet"

        @tf.function(jit_compile=True)
        def train_step(batch):
            with tf.GradientTape() as tape:
                if triplet:
                    images = tf.concat([batch["anchor"], batch["positive"], batch["negative"]], 0)
                    loss = triplet_loss(self.model(images, training=True), batch_size)
                else:
                    loss = semi_hard_loss(self.model(batch["images"], training=True), batch["labels"])
            gradients = tape.gradient(loss, trainable)
            self.iterations.assign_add(1.0)
            t = self.iterations
            learning_rate = spec.LEARNING_RATE * tf.sqrt(1 - spec.BETA_2**t) / (1 - spec.BETA_1**t)
            for weight, gradient, (m, v) in zip(trainable, gradients, self.moments):
                m.assign_add((gradient - m) * (1 - spec.BETA_1))
                v.assign_add((tf.square(gradient) - v) * (1 - spec.BETA_2))
                weight.assign_sub(learning_rate * m / (tf.sqrt(v) + spec.EPSILON))
            return loss

        self._train_step = train_step

    def to_batch(self, arrays):
        return arrays

    def step(self, batch):
        self.loss = self._train_step(batch)

    def sync(self):
        sync()


def implementations(workload, data, plan, input_id, output_id):
    return [TensorFlowLoop(workload, data, plan, input_id, output_id)]
