"""keras' own layers on PyTorch, computed by the same torch ops without keras' per-call overhead.

Three kinds of waste in keras' torch backend (3.15) are skipped here; the first two with keras'
results bit for bit, the third to float32 rounding:

**Layout copies.** keras runs a channels-last ``Conv2D`` on an NHWC tensor as

    NHWC → permute to NCHW → copy contiguous (NCHW memory)
         → copy again into torch's channels_last memory format → conv2d → permute back,

and a ``MaxPooling2D`` as permute → contiguous NCHW copy → max_pool2d → permute back. Yet an
NHWC-contiguous tensor, permuted to NCHW, already *is* a channels_last tensor in torch's terms
(strides H·W·C, 1, W·C, C): the two copies produce exactly the memory the permutation gives for
free. On a small CPU those copies cost more than the pooling itself (benchmarks/RESULTS.md). `conv2d` hands ``F.conv2d`` the permuted view with
keras' own channels_last kernel, then adds keras' bias and activation: keras' values bit for bit.
`max_pool2d` hands ``F.max_pool2d`` the view: a maximum is exact, so the values are keras'; among
exactly equal values in a window the gradient may go to another one of them.

**Dispatch.** Each keras op on torch converts and checks its inputs and dtypes in Python
at every call, and ``Dense.kernel`` resolves quantisation modes on every access: a small Dense layer
spends more time there than in its matmul. `dense` and `activation` call the torch ops keras'
``Dense.call`` and ``Activation.call`` end in (``torch.matmul``, ``torch.add``, ``torch.relu``)
directly.

**Composed BatchNormalization.** keras computes the batch statistics and the normalisation with a
dozen separate ops and autograd records each, several times the time of torch's fused
``batch_norm``, which `batch_norm` uses. The sums run in another order, so the values are keras' to rounding; and where
keras' E[x²] − E[x]² cancels (a large mean over a small spread) the fused kernel is the accurate one.

Only for what keras would compute the same way: float32 inputs, channels-last 4-D inputs with
groups 1 and ``valid`` or symmetric ``same`` padding for the convolutions, no LoRA, no
quantisation, relu or linear activations for the dispatch-free calls. `kernel(layer)` returns
None otherwise, and the caller uses the layer's own `call`. torch is imported only when a kernel
runs.
"""

import keras
from keras import ops


# The configuration keys each kernel knows what to do with (keras 3.10 to 3.15): a layer
# whose configuration holds anything else, such as an option a later keras adds, runs its
# own `call`. Values that change the computation are checked by the `_*_supported` tests.
_BASE_KEYS = {"name", "trainable", "dtype"}
_CONV_KEYS = {"filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "groups",
              "activation", "use_bias", "kernel_initializer", "bias_initializer", "kernel_regularizer",
              "bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint"}
KNOWN_CONFIG_KEYS = {
    "Conv2D": frozenset(_BASE_KEYS | _CONV_KEYS),
    "MaxPooling2D": frozenset(_BASE_KEYS | {"pool_size", "strides", "padding", "data_format"}),
    "Dense": frozenset(_BASE_KEYS | {"units", "activation", "use_bias", "kernel_initializer", "bias_initializer",
                                     "kernel_regularizer", "bias_regularizer", "kernel_constraint",
                                     "bias_constraint", "quantization_config"}),
    "Activation": frozenset(_BASE_KEYS | {"activation"}),
    "BatchNormalization": frozenset(_BASE_KEYS | {"axis", "momentum", "epsilon", "center", "scale",
                                                  "beta_initializer", "gamma_initializer",
                                                  "moving_mean_initializer", "moving_variance_initializer",
                                                  "beta_regularizer", "gamma_regularizer", "beta_constraint",
                                                  "gamma_constraint", "synchronized", "renorm",
                                                  "renorm_clipping", "renorm_momentum"}),
}  # fmt: skip


def kernel(layer):
    """A function (layer, inputs, training) → outputs computing ``layer.call(inputs, training=training)`` faster, or None.

    Only for a layer of exactly one of keras' classes above, whose configuration keys are
    all known (`KNOWN_CONFIG_KEYS`) and whose values the kernel computes as keras does.
    """
    kind = type(layer)
    known = KNOWN_CONFIG_KEYS.get(kind.__name__)
    if known is None or getattr(keras.layers, kind.__name__, None) is not kind or not set(layer.get_config()) <= known:
        return None
    if kind is keras.layers.BatchNormalization and _norm_supported(layer):
        return batch_norm
    if kind is keras.layers.Conv2D and _conv_supported(layer):
        return conv2d
    if kind is keras.layers.MaxPooling2D and _pool_supported(layer):
        return max_pool2d
    if kind is keras.layers.Dense and _dense_supported(layer):
        return dense
    if kind is keras.layers.Activation and _activation_function(layer.activation) is not None:
        return activation
    return None


def _plain(layer):
    return (
        not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) is None
        and layer.get_config().get("quantization_config") is None
    )


def _dense_supported(layer):
    return _plain(layer) and _activation_function(layer.activation) is not None


def _activation_function(function):
    """The torch function keras' activation `function` ends in, for relu and linear; else None."""
    if function is keras.activations.relu:
        return "relu"
    if function is keras.activations.linear or function is None:
        return "linear"
    return None


def _activate(name, outputs):
    import torch

    return torch.relu(outputs) if name == "relu" else outputs


def dense(layer, inputs, training=None):
    """`keras.layers.Dense.call`: torch.matmul(x, kernel), + bias, relu or linear, as keras' ops compute them."""
    import torch

    if inputs.dtype != torch.float32:
        return layer.call(inputs)
    weights = layer.kernel
    outputs = torch.matmul(inputs, getattr(weights, "value", weights))
    if layer.bias is not None:
        outputs = torch.add(outputs, layer.bias.value)
    return _activate(_activation_function(layer.activation), outputs)


def activation(layer, inputs, training=None):
    """`keras.layers.Activation.call` for relu and linear."""
    return _activate(_activation_function(layer.activation), inputs)


def _conv_supported(layer):
    return (
        layer.data_format == "channels_last"
        and layer.groups == 1
        and layer.padding in ("valid", "same")
        and _plain(layer)
    )


def _pool_supported(layer):
    return layer.data_format == "channels_last" and layer.padding in ("valid", "same")


def conv2d(layer, inputs, training=None):
    """`keras.layers.Conv2D.call` (channels_last) with the input handed to torch as a view."""
    import torch
    import torch.nn.functional as F

    if inputs.ndim != 4:
        return layer.call(inputs)
    strides = tuple(layer.strides)
    dilation = tuple(layer.dilation_rate)
    padding = _torch_padding(inputs.shape[1:3], layer.kernel_size, strides, dilation, layer.padding)
    if padding is None:  # asymmetric "same": keras pads explicitly
        return layer.call(inputs)
    weights = ops.convert_to_tensor(layer.kernel).permute(3, 2, 0, 1)  # (kh, kw, in, out) → (out, in, kh, kw)
    weights = weights.contiguous(memory_format=torch.channels_last)  # as keras' _maybe_convert_to_channels_last
    outputs = F.conv2d(inputs.permute(0, 3, 1, 2), weights, stride=strides, padding=padding, dilation=dilation)
    outputs = outputs.permute(0, 2, 3, 1)
    if layer.use_bias:
        outputs = ops.add(outputs, ops.reshape(layer.bias, (1, 1, 1, layer.filters)))
    if layer.activation is not None:
        return layer.activation(outputs)
    return outputs


def max_pool2d(layer, inputs, training=None):
    """`keras.layers.MaxPooling2D.call` (channels_last) with the input handed to torch as a view."""
    import torch.nn.functional as F

    if inputs.ndim != 4:
        return layer.call(inputs)
    size, strides = tuple(layer.pool_size), tuple(layer.strides)
    padding = _torch_padding(inputs.shape[1:3], size, strides, (1, 1), layer.padding)
    if padding is None or any(2 * pad > width for pad, width in zip(padding, size)):
        return layer.call(inputs)
    outputs = F.max_pool2d(inputs.permute(0, 3, 1, 2), kernel_size=size, stride=strides, padding=padding)
    return outputs.permute(0, 2, 3, 1)


def _norm_supported(layer):
    return not getattr(layer, "renorm", False) and not layer.synchronized


def batch_norm(layer, inputs, training=None):
    """`keras.layers.BatchNormalization.call` over the last axis as one fused torch ``batch_norm``.

    keras' torch backend normalises with composed ops: mean = E[x] and
    var = E[x²] − E[x]² over every axis but the last, then
    (x − mean)·rsqrt(var + ε)·γ + β, and differentiates through each of them (a
    dozen passes over the tensor forward and backward). ``torch.batch_norm``
    computes the same normalisation, and its gradient, in one fused kernel each
    way, on the NHWC tensor's channels_last view. With ``training`` (and a
    trainable layer) it normalises by the batch's mean and biased variance and
    updates keras' moving statistics as keras does:

        moving_mean ← moving_mean·momentum + mean·(1 − momentum)
        moving_variance ← moving_variance·momentum + var·(1 − momentum)

    (torch hands the batch statistics out through scratch buffers with momentum 1;
    it keeps the unbiased variance there, so var = that·(n − 1)/n for n values
    per channel). Otherwise it normalises by the moving statistics. The results
    equal keras' to float32 rounding, not bit for bit: the statistics are summed
    in another order. Anything else (masks, 3-D or 5-D inputs, another axis, one
    value per channel) goes to the layer's own `call`.
    """
    import torch

    rank = inputs.ndim
    count = inputs.numel() // max(inputs.shape[-1], 1)
    if inputs.dtype != torch.float32 or rank not in (2, 4) or layer.axis not in (-1, rank - 1) or count < 2:
        return layer.call(inputs, training=training)
    x = inputs.permute(0, 3, 1, 2) if rank == 4 else inputs
    gamma = layer.gamma.value if layer.scale else None
    beta = layer.beta.value if layer.center else None
    moving_mean, moving_variance = layer.moving_mean.value, layer.moving_variance.value
    if training and layer.trainable:
        mean, variance = torch.zeros_like(moving_mean), torch.zeros_like(moving_variance)
        outputs = torch.batch_norm(x, gamma, beta, mean, variance, True, 1.0, layer.epsilon, False)
        momentum = layer.momentum
        with torch.no_grad():
            biased = variance * ((count - 1) / count)  # not in place: the backward pass keeps these buffers
            layer.moving_mean.assign(moving_mean * momentum + mean * (1.0 - momentum))
            layer.moving_variance.assign(moving_variance * momentum + biased * (1.0 - momentum))
    else:
        outputs = torch.batch_norm(x, gamma, beta, moving_mean, moving_variance, False, 0.0, layer.epsilon, False)
    return outputs.permute(0, 2, 3, 1) if rank == 4 else outputs


def _torch_padding(spatial, kernel_size, strides, dilation, padding):
    """Symmetric padding per spatial axis, as keras' torch backend computes it, or None if asymmetric.

    "same" pads size·⌈n/s⌉ − n rows in total, (total // 2) before and the rest after,
    the kernel's effective size being (k − 1)·d + 1 (TensorFlow's convention, kept by keras).
    """
    if padding == "valid":
        return (0, 0)
    pads = []
    for size, k, s, d in zip(spatial, kernel_size, strides, dilation):
        effective = (k - 1) * d + 1
        total = max((-(-size // s) - 1) * s + effective - size, 0)
        if total % 2:
            return None
        pads.append(total // 2)
    return tuple(pads)
