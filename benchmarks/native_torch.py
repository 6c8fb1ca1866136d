"""Native PyTorch baseline: torch.nn modules (NCHW), torch.optim.Adam; eager and torch.compile."""

import numpy as np
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
    return torch.where(positive, torch.sqrt(torch.where(positive, squared, torch.ones_like(squared))), 0.0)


def triplet_loss(embeddings, batch_size):
    anchor, positive, negative = embeddings.split(batch_size)
    d_positive = _safe_sqrt(((anchor - positive) ** 2).sum(-1))
    d_negative = _safe_sqrt(((anchor - negative) ** 2).sum(-1))
    return F.relu(d_positive - d_negative + spec.MARGIN).mean()


def semi_hard_loss(embeddings, labels):
    """TF Addons' semi-hard loss, written directly with a [B, B, B] mask."""
    squared_norms = (embeddings**2).sum(1, keepdim=True)
    squared = (squared_norms - 2 * embeddings @ embeddings.T + squared_norms.T).clamp_min(0.0)
    eye = torch.eye(len(embeddings), device=embeddings.device)
    distances = _safe_sqrt(squared * (1 - eye))
    same = labels[:, None] == labels[None, :]
    positive = same & (eye == 0)
    negative = ~same
    farther = negative[:, None, :] & (distances[:, None, :] > distances[:, :, None])
    inf = torch.tensor(float("inf"), device=embeddings.device)
    closest_farther = torch.where(farther, distances[:, None, :], inf).amin(2)
    farthest = torch.where(negative, distances, -inf).amax(1, keepdim=True)
    chosen = torch.where(farther.any(2), closest_farther, farthest)
    valid = positive & negative.any(1, keepdim=True)
    per_pair = F.relu(distances - torch.where(valid, chosen, 0.0) + spec.MARGIN)
    return torch.where(valid, per_pair, 0.0).sum() / valid.sum().clamp_min(1)


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
    """zero_grad / forward / backward / Adam step, eager or under torch.compile."""

    def __init__(self, workload, data, plan, input_id, output_id, compiled):
        # Images stored NCHW, as a torch user keeps them (same values as the keras NHWC arrays).
        data = {key: _channels_first(array) for key, array in data.items()}
        super().__init__(workload, data)
        self.impl = "native_compiled" if compiled else "native"
        self.settings = "torch.compile(step), torch.optim.Adam" if compiled else "eager, torch.optim.Adam"
        input_rank = next(array.ndim for key, array in data.items() if key != "labels")
        self.model = Backbone(plan, input_id, output_id, input_rank).to(DEVICE).train()
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad], lr=spec.LEARNING_RATE, betas=(spec.BETA_1, spec.BETA_2), eps=spec.EPSILON
        )
        self.triplet = workload.loss == "triplet"
        self._step = torch.compile(self._eager_step) if compiled else self._eager_step

    def _eager_step(self, batch):
        self.optimizer.zero_grad(set_to_none=True)
        if self.triplet:
            embeddings = self.model(torch.cat([batch["anchor"], batch["positive"], batch["negative"]]))
            loss = triplet_loss(embeddings, self.workload.batch_size)
        else:
            loss = semi_hard_loss(self.model(batch["images"]), batch["labels"])
        loss.backward()
        self.optimizer.step()
        return loss

    def to_batch(self, arrays):
        return {key: torch.from_numpy(array).to(DEVICE, non_blocking=True) for key, array in arrays.items()}

    def step(self, batch):
        self.loss = self._step(batch)

    def sync(self):
        sync()


def _channels_first(array):
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2)) if array.ndim == 4 else array


def implementations(workload, data, plan, input_id, output_id):
    return [
        TorchLoop(workload, data, plan, input_id, output_id, compiled=False),
        TorchLoop(workload, data, plan, input_id, output_id, compiled=True),
    ]
