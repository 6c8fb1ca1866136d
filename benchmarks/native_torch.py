"""Native PyTorch baseline: torch.nn modules (NCHW), torch.optim.Adam; eager and torch.compile."""

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import spec
from benchmarks.native_common import NativeLoop

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name():
    return torch.cuda.get_device_name() if DEVICE.type == "cuda" else None


def on_gpu():
    return DEVICE.type == "cuda"


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def sync_keras(model):
    sync()


# ---------------------------------------------------------------- backbone


def _same_padding(size, kernel, stride):
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SamePad(nn.Module):
    """TensorFlow-style "same" padding (the extra pixel at the bottom/right)."""

    def __init__(self, kernel, strides, value=0.0):
        super().__init__()
        self.kernel, self.strides, self.value = kernel, strides, value

    def forward(self, x):
        (top, bottom), (left, right) = (
            _same_padding(x.shape[2 + axis], self.kernel[axis], self.strides[axis]) for axis in (0, 1)
        )
        return F.pad(x, (left, right, top, bottom), value=self.value)


class ToChannelsFirst(nn.Module):
    """A keras Reshape to (H, W, C): reshape, then NHWC -> NCHW."""

    def __init__(self, target_shape):
        super().__init__()
        self.target_shape = target_shape

    def forward(self, x):
        x = x.reshape(x.shape[0], *self.target_shape)
        return x.permute(0, 3, 1, 2) if len(self.target_shape) == 3 else x


class Flatten(nn.Module):
    """keras Flatten order (NHWC) for 4-D tensors."""

    def forward(self, x):
        if x.ndim == 4:
            x = x.permute(0, 2, 3, 1)
        return x.reshape(x.shape[0], -1)


class Lambda(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, *inputs):
        return self.function(*inputs)


def _relu_or_identity(activation):
    return nn.ReLU() if activation == "relu" else nn.Identity()


def _tensor(array):
    return torch.as_tensor(array, dtype=torch.float32)


def _module(step, input_rank):
    kind, options, weights = step.kind, step.options, step.weights
    if kind == "identity":
        return nn.Identity()
    if kind == "dense":
        linear = nn.Linear(*weights[0].shape, bias=options["use_bias"])
        with torch.no_grad():
            linear.weight.copy_(_tensor(weights[0].T))
            if options["use_bias"]:
                linear.bias.copy_(_tensor(weights[1]))
        return nn.Sequential(linear, _relu_or_identity(options["activation"]))
    if kind == "conv2d":
        height, width, channels_in, channels_out = weights[0].shape
        symmetric = options["strides"] == (1, 1) and height % 2 == 1 and width % 2 == 1
        same = options["padding"] == "same"
        conv = nn.Conv2d(
            channels_in,
            channels_out,
            (height, width),
            stride=options["strides"],
            padding=(height // 2, width // 2) if same and symmetric else 0,
            bias=options["use_bias"],
        )
        with torch.no_grad():
            conv.weight.copy_(_tensor(weights[0].transpose(3, 2, 0, 1)))
            if options["use_bias"]:
                conv.bias.copy_(_tensor(weights[1]))
        pad = [SamePad((height, width), options["strides"])] if same and not symmetric else []
        return nn.Sequential(*pad, conv, _relu_or_identity(options["activation"]))
    if kind == "batch_norm":
        gamma, beta, mean, variance = weights
        # torch's momentum weighs the new batch; keras' weighs the old average.
        norm_class = nn.BatchNorm2d if input_rank == 4 else nn.BatchNorm1d
        norm = norm_class(len(gamma), eps=options["epsilon"], momentum=1 - options["momentum"])
        with torch.no_grad():
            for parameter, value in zip(
                (norm.weight, norm.bias, norm.running_mean, norm.running_var), weights
            ):
                parameter.copy_(_tensor(value))
        return norm
    if kind == "activation":
        return _relu_or_identity(options["activation"])
    if kind == "max_pool":
        pool = nn.MaxPool2d(options["pool_size"], options["strides"])
        if options["padding"] == "same":
            return nn.Sequential(SamePad(options["pool_size"], options["strides"], -float("inf")), pool)
        return pool
    if kind == "zero_pad":
        (top, bottom), (left, right) = options["padding"]
        return Lambda(lambda x: F.pad(x, (left, right, top, bottom)))
    if kind == "global_avg_pool":
        return Lambda(lambda x: x.mean(dim=(2, 3)))
    if kind == "flatten":
        return Flatten()
    if kind == "reshape":
        return ToChannelsFirst(options["target_shape"])
    if kind == "rescale":
        return Lambda(lambda x: x * options["scale"] + options["offset"])
    if kind == "add":
        return Lambda(lambda *inputs: sum(inputs[1:], inputs[0]))
    if kind == "l2_normalize":  # keras' UnitNormalization: x · min(rsqrt(Σx²), 1e12)
        return Lambda(lambda x: x * torch.rsqrt((x * x).sum(-1, keepdim=True)).clamp_max(1e12))
    raise NotImplementedError(kind)


class Backbone(nn.Module):
    """The plan as modules; a plain chain runs like nn.Sequential."""

    def __init__(self, plan, input_id, output_id, input_rank):
        super().__init__()
        ranks = _input_ranks(plan, input_id, input_rank)
        self.layers = nn.ModuleList(_module(step, rank) for step, rank in zip(plan, ranks))
        self.frozen = [layer for layer, step in zip(self.layers, plan) if not step.trainable]
        for layer in self.frozen:
            layer.requires_grad_(False)
        self.wiring = [(step.inputs, step.output) for step in plan]
        self.input_id, self.output_id = input_id, output_id

    def train(self, mode=True):
        super().train(mode)
        for layer in self.frozen:  # keras runs a frozen BatchNormalization in inference mode
            layer.eval()
        return self

    def forward(self, x):
        values = {self.input_id: x}
        for layer, (inputs, output) in zip(self.layers, self.wiring):
            values[output] = layer(*(values[i] for i in inputs))
        return values[self.output_id]


# ---------------------------------------------------------------- losses


def _safe_sqrt(squared):
    positive = squared > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, squared, 1.0)), 0.0)


def triplet_loss(embeddings, batch_size):
    anchor, positive, negative = embeddings.split(batch_size)
    d_positive = _safe_sqrt(((anchor - positive) ** 2).sum(-1))
    d_negative = _safe_sqrt(((anchor - negative) ** 2).sum(-1))
    return F.relu(d_positive - d_negative + spec.MARGIN).mean()


def _pairwise(embeddings, labels):
    """Euclidean distances [B, B] (diagonal 0), the positive-pair and negative masks."""
    squared_norms = (embeddings**2).sum(1, keepdim=True)
    squared = (squared_norms - 2 * embeddings @ embeddings.T + squared_norms.T).clamp_min(0.0)
    eye = torch.eye(len(embeddings), device=embeddings.device, dtype=torch.bool)
    distances = _safe_sqrt(squared.masked_fill(eye, 0.0))
    same = labels[:, None] == labels[None, :]
    return distances, same & ~eye, ~same


def _sorted_negatives(distances, negative):
    """Each anchor's negative distances in ascending order (+inf past them) and the sorting order."""
    masked = distances.detach().masked_fill(~negative, float("inf"))
    sorted_values, order = masked.sort(dim=1)
    return sorted_values, order


def semi_hard_loss(embeddings, labels, margin=spec.MARGIN):
    """TF Addons' semi-hard loss with sorted negatives and `torch.searchsorted` (O(B² log B), as siamese_k3's)."""
    distances, positive, negative = _pairwise(embeddings, labels)
    sorted_values, order = _sorted_negatives(distances, negative)
    num_negatives = negative.sum(1, keepdim=True)
    closer = torch.searchsorted(sorted_values, distances.detach().contiguous(), right=True)
    position = torch.where(closer < num_negatives, closer, num_negatives - 1).clamp_min(0)
    chosen = distances.gather(1, order.gather(1, position))
    valid = positive & (num_negatives > 0)
    per_pair = F.relu(distances - chosen + margin)
    return (per_pair * valid).sum() / valid.sum().clamp_min(1)


def batch_all_loss(embeddings, labels, margin=spec.MARGIN_BATCH_ALL):
    """Batch-all loss by prefix sums over sorted negatives (O(B² log B), as siamese_k3's)."""
    distances, positive, negative = _pairwise(embeddings, labels)
    sorted_values, order = _sorted_negatives(distances, negative)
    active = torch.searchsorted(sorted_values, (distances.detach() + margin).contiguous(), right=False)
    sorted_distances = distances.gather(1, order).masked_fill(torch.isinf(sorted_values), 0.0)
    prefix = sorted_distances.cumsum(1)
    taken = prefix.gather(1, (active - 1).clamp_min(0)).masked_fill(active == 0, 0.0)
    active = active.to(distances.dtype) * positive
    total = (active * (distances + margin) - taken * positive).sum()
    return total / active.sum().clamp_min(1)


def semi_hard_loss_cubic(embeddings, labels, margin=spec.MARGIN):
    """TF Addons' semi-hard loss as the textbook writes it, with a [B, B, B] mask (the loss table's reference)."""
    distances, positive, negative = _pairwise(embeddings, labels)
    farther = negative[:, None, :] & (distances[:, None, :] > distances[:, :, None])
    closest_farther = distances[:, None, :].masked_fill(~farther, float("inf")).amin(2)
    farthest = distances.masked_fill(~negative, -float("inf")).amax(1, keepdim=True)
    chosen = torch.where(farther.any(2), closest_farther, farthest)
    valid = positive & negative.any(1, keepdim=True)
    per_pair = F.relu(distances - chosen.masked_fill(~valid, 0.0) + margin)
    return (per_pair * valid).sum() / valid.sum().clamp_min(1)


def batch_all_loss_cubic(embeddings, labels, margin=spec.MARGIN_BATCH_ALL):
    """The usual batch-all loss: every (a, p, n) as a [B, B, B] tensor."""
    distances, positive, negative = _pairwise(embeddings, labels)
    losses = F.relu(distances[:, :, None] - distances[:, None, :] + margin)
    valid = positive[:, :, None] & negative[:, None, :]
    losses = losses * valid
    return losses.sum() / (losses > 0).sum().clamp_min(1)


LOSSES = {"semi_hard": semi_hard_loss, "batch_all": batch_all_loss}
CUBIC_LOSSES = {"semi_hard": semi_hard_loss_cubic, "batch_all": batch_all_loss_cubic}


# ---------------------------------------------------------------- loop


def _input_ranks(plan, input_id, input_rank):
    """The rank of each step's (first) input, which picks BatchNorm1d or BatchNorm2d."""
    ranks, result = {input_id: input_rank}, []
    for step in plan:
        rank = ranks[step.inputs[0]]
        result.append(rank)
        if step.kind == "reshape":
            rank = 1 + len(step.options["target_shape"])
        elif step.kind in ("flatten", "global_avg_pool"):
            rank = 2
        ranks[step.output] = rank
    return result


class TorchLoop(NativeLoop):
    """zero_grad / forward / backward / Adam step, eager or under torch.compile.

    Written as a torch user would for speed: channels-last memory for 4-D
    activations (what keras' NHWC layout is in torch's terms), the fused
    multi-tensor Adam (`fused=True`, on the CPU too), batches handed over
    with `torch.from_numpy` (no copy on the CPU), no tensors made per step.
    """

    def __init__(self, workload, data, plan, input_id, output_id, compiled):
        super().__init__(workload, data)
        self.impl = "native_compiled" if compiled else "native"
        self.settings = ("torch.compile(step), " if compiled else "eager, ") + "Adam(fused=True), channels_last"
        input_rank = next(array.ndim for key, array in data.items() if key != "labels")  # NHWC or NCHW: 4
        self.model = Backbone(plan, input_id, output_id, input_rank).to(DEVICE).train()
        self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=spec.LEARNING_RATE, betas=(spec.BETA_1, spec.BETA_2), eps=spec.EPSILON, fused=True,
        )  # fmt: skip
        self.triplet = workload.loss == "triplet"
        self.mining_loss = None if self.triplet else LOSSES[workload.loss]
        self._step = torch.compile(self._eager_step) if compiled else self._eager_step

    def _eager_step(self, batch):
        self.optimizer.zero_grad(set_to_none=True)
        if self.triplet:
            embeddings = self.model(torch.cat([batch["anchor"], batch["positive"], batch["negative"]]))
            loss = triplet_loss(embeddings, self.workload.batch_size)
        else:
            loss = self.mining_loss(self.model(batch["images"]), batch["labels"])
        loss.backward()
        self.optimizer.step()
        return loss

    def to_batch(self, arrays):
        batch = {}
        for key, array in arrays.items():
            tensor = torch.from_numpy(array).to(DEVICE, non_blocking=True)
            if key != "labels" and tensor.dtype != torch.float32:
                tensor = tensor.float()  # uint8 images, converted as keras converts its inputs
            if tensor.ndim == 4:  # NHWC memory seen as NCHW: torch's channels_last, no copy
                tensor = tensor.permute(0, 3, 1, 2)
            batch[key] = tensor
        return batch

    def step(self, batch):
        self.loss = self._step(batch)

    def sync(self):
        sync()


def implementations(workload, data, plan, input_id, output_id):
    return [
        TorchLoop(workload, data, plan, input_id, output_id, compiled=False),
        TorchLoop(workload, data, plan, input_id, output_id, compiled=True),
    ]
