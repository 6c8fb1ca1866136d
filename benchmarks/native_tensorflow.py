"""Native TensorFlow baseline: tf.Variables, GradientTape, hand-written Adam, `tf.function(jit_compile=True)`.

No `tf.keras` (with Keras 3 installed that *is* keras): the network is
tf.nn ops on tf.Variables, and Adam is keras' update rule written out
(lr_t = lr·sqrt(1 - β₂ᵗ)/(1 - β₁ᵗ); w -= lr_t·m / (sqrt(v) + ε)).
"""

import functools

import numpy as np
import tensorflow as tf

from benchmarks import spec
from benchmarks.native_common import NativeLoop
from benchmarks.workload import epoch_batches


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
        if kind == "l2_normalize":  # keras' UnitNormalization: x · min(rsqrt(Σx²), 1e12)
            return x * tf.minimum(tf.math.rsqrt(tf.reduce_sum(x * x, -1, keepdims=True)), 1e12)
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


def _pairwise(embeddings, labels):
    """Euclidean distances [B, B] (diagonal 0), the positive-pair and negative masks."""
    squared_norms = tf.reduce_sum(tf.square(embeddings), 1, keepdims=True)
    product = tf.matmul(embeddings, embeddings, transpose_b=True)
    squared = tf.maximum(squared_norms - 2 * product + tf.transpose(squared_norms), 0.0)
    eye = tf.eye(tf.shape(embeddings)[0], dtype=tf.bool)
    distances = _safe_sqrt(tf.where(eye, 0.0, squared))
    same = tf.equal(labels[:, None], labels[None, :])
    return distances, same & tf.logical_not(eye), tf.logical_not(same)


def _sorted_negatives(distances, negative):
    masked = tf.where(negative, tf.stop_gradient(distances), float("inf"))
    order = tf.argsort(masked, axis=1)
    return tf.gather(masked, order, batch_dims=1), order


def semi_hard_loss(embeddings, labels, margin=spec.MARGIN):
    """TF Addons' semi-hard loss with sorted negatives and `tf.searchsorted` (O(B² log B), as siamese_k3's)."""
    distances, positive, negative = _pairwise(embeddings, labels)
    sorted_values, order = _sorted_negatives(distances, negative)
    num_negatives = tf.reduce_sum(tf.cast(negative, tf.int32), 1, keepdims=True)
    closer = tf.searchsorted(sorted_values, tf.stop_gradient(distances), side="right", out_type=tf.int32)
    position = tf.maximum(tf.where(closer < num_negatives, closer, num_negatives - 1), 0)
    chosen = tf.gather(distances, tf.gather(order, position, batch_dims=1), batch_dims=1)
    valid = tf.cast(positive & (num_negatives > 0), tf.float32)
    per_pair = tf.nn.relu(distances - chosen + margin)
    return tf.reduce_sum(per_pair * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)


def batch_all_loss(embeddings, labels, margin=spec.MARGIN_BATCH_ALL):
    """Batch-all loss by prefix sums over sorted negatives (O(B² log B), as siamese_k3's)."""
    distances, positive, negative = _pairwise(embeddings, labels)
    sorted_values, order = _sorted_negatives(distances, negative)
    active = tf.searchsorted(sorted_values, tf.stop_gradient(distances) + margin, side="left", out_type=tf.int32)
    sorted_distances = tf.where(tf.math.is_inf(sorted_values), 0.0, tf.gather(distances, order, batch_dims=1))
    prefix = tf.cumsum(sorted_distances, axis=1)
    taken = tf.where(active > 0, tf.gather(prefix, tf.maximum(active - 1, 0), batch_dims=1), 0.0)
    positive_f = tf.cast(positive, tf.float32)
    active = tf.cast(active, tf.float32) * positive_f
    total = tf.reduce_sum(active * (distances + margin) - taken * positive_f)
    return total / tf.maximum(tf.reduce_sum(active), 1.0)


def semi_hard_loss_cubic(embeddings, labels, margin=spec.MARGIN):
    """TF Addons' semi-hard loss as the textbook writes it, with a [B, B, B] mask (the loss table's reference)."""
    distances, positive, negative = _pairwise(embeddings, labels)
    farther = negative[:, None, :] & (distances[:, None, :] > distances[:, :, None])
    closest_farther = tf.reduce_min(tf.where(farther, distances[:, None, :], float("inf")), 2)
    farthest = tf.reduce_max(tf.where(negative, distances, -float("inf")), 1, keepdims=True)
    chosen = tf.where(tf.reduce_any(farther, 2), closest_farther, farthest)
    valid = positive & tf.reduce_any(negative, 1, keepdims=True)
    per_pair = tf.nn.relu(distances - tf.where(valid, chosen, 0.0) + margin)
    valid_f = tf.cast(valid, tf.float32)
    return tf.reduce_sum(per_pair * valid_f) / tf.maximum(tf.reduce_sum(valid_f), 1.0)


def batch_all_loss_cubic(embeddings, labels, margin=spec.MARGIN_BATCH_ALL):
    """The usual batch-all loss: every (a, p, n) as a [B, B, B] tensor."""
    distances, positive, negative = _pairwise(embeddings, labels)
    losses = tf.nn.relu(distances[:, :, None] - distances[:, None, :] + margin)
    losses = tf.where(positive[:, :, None] & negative[:, None, :], losses, 0.0)
    return tf.reduce_sum(losses) / tf.maximum(tf.reduce_sum(tf.cast(losses > 0, tf.float32)), 1.0)


LOSSES = {"semi_hard": semi_hard_loss, "batch_all": batch_all_loss}
CUBIC_LOSSES = {"semi_hard": semi_hard_loss_cubic, "batch_all": batch_all_loss_cubic}


# ---------------------------------------------------------------- loop


class TensorFlowLoop(NativeLoop):
    """GradientTape + Adam in one `tf.function(jit_compile=True)` step, fed as keras feeds its own.

    keras' TensorFlow `fit` (with the library's defaults) runs 32 XLA-compiled
    steps per call of a (non-XLA) `tf.function` loop that pulls each batch from
    a prefetching tf.data iterator. This loop does the same: the epoch's
    batches (the same indices as every implementation) are gathered by a
    tf.data pipeline with the options keras' fast path gives its own (tf.data's
    autotuning off, one private thread), and one `tf.function` call runs up to
    32 steps.
    """

    settings = "tf.function(jit_compile=True) step, 32 per tf.function loop over tf.data, GradientTape + Adam"
    steps_per_call = 32

    def __init__(self, workload, data, plan, input_id, output_id):
        super().__init__(workload, data)
        self.model = Backbone(plan, input_id, output_id)
        trainable = self.model.trainable
        self.moments = [(tf.Variable(tf.zeros_like(w)), tf.Variable(tf.zeros_like(w))) for w in trainable]
        self.iterations = tf.Variable(0.0)
        batch_size, triplet = workload.batch_size, workload.loss == "triplet"
        mining_loss = None if triplet else LOSSES[workload.loss]
        self.tensors = {key: tf.constant(array) for key, array in data.items()}

        @tf.function(jit_compile=True)
        def train_step(batch):
            with tf.GradientTape() as tape:
                if triplet:
                    images = tf.concat([batch["anchor"], batch["positive"], batch["negative"]], 0)
                    loss = triplet_loss(self.model(images, training=True), batch_size)
                else:
                    images = tf.cast(batch["images"], tf.float32)  # uint8 images, converted as keras does
                    loss = mining_loss(self.model(images, training=True), batch["labels"])
            gradients = tape.gradient(loss, trainable)
            self.iterations.assign_add(1.0)
            t = self.iterations
            learning_rate = spec.LEARNING_RATE * tf.sqrt(1 - spec.BETA_2**t) / (1 - spec.BETA_1**t)
            for weight, gradient, (m, v) in zip(trainable, gradients, self.moments):
                m.assign_add((gradient - m) * (1 - spec.BETA_1))
                v.assign_add((tf.square(gradient) - v) * (1 - spec.BETA_2))
                weight.assign_sub(learning_rate * m / (tf.sqrt(v) + spec.EPSILON))
            return loss

        @tf.function
        def multi_step(iterator, count):
            loss = tf.constant(0.0)
            for _ in tf.range(count):
                loss = train_step(next(iterator))
            return loss

        self._train_step, self._multi_step = train_step, multi_step

    def run_epoch(self, epoch):
        """The epoch's batches through tf.data, `steps_per_call` steps per `tf.function` call."""
        indices = np.stack(epoch_batches(self.workload, self.data, epoch))
        tensors = self.tensors
        dataset = tf.data.Dataset.from_tensor_slices(indices).map(
            lambda index: {key: tf.gather(value, index) for key, value in tensors.items()}
        )
        options = tf.data.Options()  # as keras' fast path feeds in-memory arrays (backend/tensorflow/arrays.py)
        options.autotune.enabled = False
        options.threading.private_threadpool_size = 1
        iterator = iter(dataset.prefetch(tf.data.AUTOTUNE).with_options(options))
        for start in range(0, len(indices), self.steps_per_call):
            self.loss = self._multi_step(iterator, tf.constant(min(self.steps_per_call, len(indices) - start)))

    def to_batch(self, arrays):
        return arrays

    def step(self, batch):
        self.loss = self._train_step(batch)

    def sync(self):
        sync()


def implementations(workload, data, plan, input_id, output_id):
    return [TensorFlowLoop(workload, data, plan, input_id, output_id)]
