"""Native JAX baseline: the same backbone and loss in jax.numpy, optax Adam, one `jax.jit` step."""

import functools

import jax
import jax.numpy as jnp
import optax

from benchmarks import spec
from benchmarks.native_common import NativeLoop


def device_name():
    device = jax.devices()[0]
    return device.device_kind if device.platform != "cpu" else None


def on_gpu():
    return jax.default_backend() == "gpu"


def sync_keras(model):
    jax.block_until_ready([variable.value for variable in model.variables])


# ---------------------------------------------------------------- backbone


def _activate(x, name):
    return jax.nn.relu(x) if name == "relu" else x


def _same_padding(size, kernel, stride):
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _padding(x, options, kernel):
    if options["padding"] == "valid":
        return [(0, 0), (0, 0)]
    return [_same_padding(x.shape[1 + axis], kernel[axis], options["strides"][axis]) for axis in (0, 1)]


def _apply(step, params, stats, inputs, training):
    """Output of one plan step and its new batch-norm statistics (or None)."""
    kind, options = step.kind, step.options
    x = inputs[0]
    if kind == "identity":
        return x, None
    if kind == "dense":
        x = x @ params[0] + (params[1] if options["use_bias"] else 0)
        return _activate(x, options["activation"]), None
    if kind == "conv2d":
        kernel = params[0]
        x = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=options["strides"],
            padding=_padding(x, options, kernel.shape[:2]),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if options["use_bias"]:
            x = x + params[1]
        return _activate(x, options["activation"]), None
    if kind == "batch_norm":
        gamma, beta = params
        moving_mean, moving_variance = stats
        momentum, epsilon = options["momentum"], options["epsilon"]
        if training and step.trainable:  # keras runs a frozen BatchNormalization in inference mode
            axes = tuple(range(x.ndim - 1))
            mean, variance = jnp.mean(x, axes), jnp.var(x, axes)
            stats = (
                moving_mean * momentum + jax.lax.stop_gradient(mean) * (1 - momentum),
                moving_variance * momentum + jax.lax.stop_gradient(variance) * (1 - momentum),
            )
        else:
            mean, variance = moving_mean, moving_variance
        return (x - mean) * jax.lax.rsqrt(variance + epsilon) * gamma + beta, stats
    if kind == "activation":
        return _activate(x, options["activation"]), None
    if kind == "max_pool":
        window = (1, *options["pool_size"], 1)
        strides = (1, *options["strides"], 1)
        padding = [(0, 0), *_padding(x, options, options["pool_size"]), (0, 0)]
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, padding), None
    if kind == "zero_pad":
        return jnp.pad(x, [(0, 0), *options["padding"], (0, 0)]), None
    if kind == "global_avg_pool":
        return jnp.mean(x, axis=(1, 2)), None
    if kind == "flatten":
        return x.reshape(x.shape[0], -1), None
    if kind == "reshape":
        return x.reshape(x.shape[0], *options["target_shape"]), None
    if kind == "rescale":
        return x * options["scale"] + options["offset"], None
    if kind == "add":
        return functools.reduce(jnp.add, inputs), None
    if kind == "l2_normalize":  # keras' UnitNormalization: x · min(rsqrt(Σx²), 1e12)
        return x * jnp.minimum(jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True)), 1e12), None
    raise NotImplementedError(kind)


def split_weights(plan):
    """(trainable params, frozen params, batch-norm statistics), one entry per plan step."""
    params, frozen, stats = [], [], []
    for step in plan:
        weights = [jnp.asarray(w) for w in step.weights]
        learned = weights[:2] if step.kind == "batch_norm" else weights
        params.append(learned if step.trainable else [])
        frozen.append([] if step.trainable else learned)
        stats.append(tuple(weights[2:]) if step.kind == "batch_norm" else None)
    return params, frozen, stats


def make_forward(plan, input_id, output_id):
    def forward(params, frozen, stats, x, training):
        values = {input_id: x}
        new_stats = []
        for step, step_params, step_frozen, step_stats in zip(plan, params, frozen, stats):
            weights = step_params if step.trainable else step_frozen
            out, updated = _apply(step, weights, step_stats, [values[i] for i in step.inputs], training)
            values[step.output] = out
            new_stats.append(updated if updated is not None else step_stats)
        return values[output_id], new_stats

    return forward


# ---------------------------------------------------------------- losses


def _safe_sqrt(squared):
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def triplet_loss(embeddings, batch_size):
    anchor, positive, negative = (embeddings[i * batch_size : (i + 1) * batch_size] for i in range(3))
    d_positive = _safe_sqrt(jnp.sum((anchor - positive) ** 2, axis=-1))
    d_negative = _safe_sqrt(jnp.sum((anchor - negative) ** 2, axis=-1))
    return jnp.mean(jax.nn.relu(d_positive - d_negative + spec.MARGIN))


def _pairwise(embeddings, labels):
    """Euclidean distances [B, B] (diagonal 0), the positive-pair and negative masks."""
    squared_norms = jnp.sum(embeddings**2, axis=1, keepdims=True)
    squared = jnp.maximum(squared_norms - 2 * embeddings @ embeddings.T + squared_norms.T, 0.0)
    eye = jnp.eye(embeddings.shape[0], dtype=bool)
    distances = _safe_sqrt(jnp.where(eye, 0.0, squared))
    same = labels[:, None] == labels[None, :]
    return distances, same & ~eye, ~same


def _sorted_negatives(distances, negative):
    masked = jnp.where(negative, jax.lax.stop_gradient(distances), jnp.inf)
    order = jnp.argsort(masked, axis=1)
    return jnp.take_along_axis(masked, order, axis=1), order


# searchsorted row by row (bisection, jax's default "scan" method)
_search_right = jax.vmap(functools.partial(jnp.searchsorted, side="right"))
_search_left = jax.vmap(functools.partial(jnp.searchsorted, side="left"))


def semi_hard_loss(embeddings, labels, margin=spec.MARGIN):
    """TF Addons' semi-hard loss with sorted negatives and searchsorted (O(B² log B), as siamese_k3's)."""
    distances, positive, negative = _pairwise(embeddings, labels)
    sorted_values, order = _sorted_negatives(distances, negative)
    num_negatives = jnp.sum(negative, axis=1, keepdims=True)
    closer = _search_right(sorted_values, jax.lax.stop_gradient(distances))
    position = jnp.maximum(jnp.where(closer < num_negatives, closer, num_negatives - 1), 0)
    chosen = jnp.take_along_axis(distances, jnp.take_along_axis(order, position, axis=1), axis=1)
    valid = positive & (num_negatives > 0)
    per_pair = jax.nn.relu(distances - chosen + margin)
    return jnp.sum(jnp.where(valid, per_pair, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def batch_all_loss(embeddings, labels, margin=spec.MARGIN_BATCH_ALL):
    """Batch-all loss by prefix sums over sorted negatives (O(B² log B), as siamese_k3's)."""
    distances, positive, negative = _pairwise(embeddings, labels)
    sorted_values, order = _sorted_negatives(distances, negative)
    active = _search_left(sorted_values, jax.lax.stop_gradient(distances) + margin)
    sorted_distances = jnp.where(jnp.isinf(sorted_values), 0.0, jnp.take_along_axis(distances, order, axis=1))
    prefix = jnp.cumsum(sorted_distances, axis=1)
    taken = jnp.where(active > 0, jnp.take_along_axis(prefix, jnp.maximum(active - 1, 0), axis=1), 0.0)
    active = jnp.where(positive, active, 0).astype(distances.dtype)
    total = jnp.sum(active * (distances + margin) - jnp.where(positive, taken, 0.0))
    return total / jnp.maximum(jnp.sum(active), 1.0)


def semi_hard_loss_cubic(embeddings, labels, margin=spec.MARGIN):
    """TF Addons' semi-hard loss as the textbook writes it, with a [B, B, B] mask (the loss table's reference)."""
    distances, positive, negative = _pairwise(embeddings, labels)
    farther = negative[:, None, :] & (distances[:, None, :] > distances[:, :, None])
    closest_farther = jnp.min(jnp.where(farther, distances[:, None, :], jnp.inf), axis=2)
    farthest = jnp.max(jnp.where(negative, distances, -jnp.inf), axis=1, keepdims=True)
    chosen = jnp.where(jnp.any(farther, axis=2), closest_farther, farthest)
    valid = positive & jnp.any(negative, axis=1, keepdims=True)
    per_pair = jax.nn.relu(distances - jnp.where(valid, chosen, 0.0) + margin)
    return jnp.sum(jnp.where(valid, per_pair, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def batch_all_loss_cubic(embeddings, labels, margin=spec.MARGIN_BATCH_ALL):
    """The usual batch-all loss: every (a, p, n) as a [B, B, B] tensor."""
    distances, positive, negative = _pairwise(embeddings, labels)
    losses = jax.nn.relu(distances[:, :, None] - distances[:, None, :] + margin)
    losses = jnp.where(positive[:, :, None] & negative[:, None, :], losses, 0.0)
    return jnp.sum(losses) / jnp.maximum(jnp.sum(losses > 0), 1)


LOSSES = {"semi_hard": semi_hard_loss, "batch_all": batch_all_loss}
CUBIC_LOSSES = {"semi_hard": semi_hard_loss_cubic, "batch_all": batch_all_loss_cubic}


# ---------------------------------------------------------------- loop


class JaxLoop(NativeLoop):
    """optax.adam + value_and_grad under one `jax.jit` (buffers donated, like keras)."""

    settings = "jax.jit(value_and_grad + optax.adam)"

    def __init__(self, workload, data, plan, input_id, output_id):
        super().__init__(workload, data)
        forward = make_forward(plan, input_id, output_id)
        optimizer = optax.adam(spec.LEARNING_RATE, b1=spec.BETA_1, b2=spec.BETA_2, eps=spec.EPSILON)
        batch_size = workload.batch_size
        triplet = workload.loss == "triplet"
        mining_loss = None if triplet else LOSSES[workload.loss]

        def loss_fn(params, frozen, stats, batch):
            if triplet:
                images = jnp.concatenate([batch["anchor"], batch["positive"], batch["negative"]])
            else:
                images = batch["images"].astype(jnp.float32)  # uint8 images, converted as keras converts them
            embeddings, new_stats = forward(params, frozen, stats, images, True)
            if triplet:
                return triplet_loss(embeddings, batch_size), new_stats
            return mining_loss(embeddings, batch["labels"]), new_stats

        @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
        def train_step(params, stats, opt_state, frozen, batch):
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, frozen, stats, batch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), stats, opt_state, loss

        self._train_step = train_step
        params, self.frozen, stats = split_weights(plan)
        self.state = (params, stats, optimizer.init(params))

    def to_batch(self, arrays):
        return arrays

    def step(self, batch):
        params, stats, opt_state, self.loss = self._train_step(*self.state, self.frozen, batch)
        self.state = (params, stats, opt_state)

    def sync(self):
        jax.block_until_ready(self.state)


def implementations(workload, data, plan, input_id, output_id):
    return [JaxLoop(workload, data, plan, input_id, output_id)]
