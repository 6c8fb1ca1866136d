"""A leaner eager forward pass through a functional keras model, for PyTorch.

On torch every training step runs in Python, and keras' `Layer.__call__`
(argument binding, dtype conversion, masks, call context, name and autocast
scopes) costs as much per layer and call as the matmul of a small Dense
layer.
On jax and tensorflow the step is traced once, so this cost does not recur.

`forward(model, inputs, training)` runs the same graph as
``model(inputs, training=training)`` but calls `layer.call` directly for
keras' own stateless-wrapper layers (Dense, Conv2D, BatchNormalization,
pooling, ...), which then run exactly the same ops. It goes back to keras'
normal call, for the whole model, whenever it cannot vouch for that: a
model that is not built, not purely functional or not single-input and
single-output, a mask on the input, an input rank the model would adjust
(an integer or other float input is converted to float32 first, as keras'
Functional call converts it), a distribution, or a layer with an activity regulariser, a dtype
policy other than float32 (mixed precision, quantisation) or rematerialisation.
Layers of other classes (custom or subclassed ones included) inside the
graph are called through `__call__` as usual. Conv2D, MaxPooling2D, Dense and
Activation layers run through `siamese_k3.backend.torch.kernels`: the same torch ops
without keras' layout copies and per-op dispatch; BatchNormalization through
torch's fused kernel (equal to rounding).
"""

import inspect
import weakref

import keras

from siamese_k3.backend.torch import kernels

try:  # keras internals this module relies on; without them keras' normal call is always used
    from keras.src.backend.common.masking import get_keras_mask
    from keras.src.backend.common.variables import get_autocast_scope
except ImportError:  # pragma: no cover - a keras that moved them
    get_keras_mask = get_autocast_scope = None

# keras' layers whose `call` computes what `__call__` would around it, for the float32, unmasked,
# regulariser-free calls `_direct_ok` admits; tests/test_conformance.py trains each one both ways.
DIRECT_LAYER_NAMES = (
    "Activation", "Add", "Average", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "BatchNormalization", "Concatenate", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
    "Conv2DTranspose", "Dense", "DepthwiseConv2D", "Dropout", "ELU", "Flatten",
    "GaussianNoise", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "Identity", "LayerNormalization", "LeakyReLU", "MaxPooling1D",
    "MaxPooling2D", "MaxPooling3D", "Maximum", "Minimum", "Multiply", "Permute", "ReLU",
    "Rescaling", "Reshape", "SeparableConv2D", "Softmax", "SpatialDropout1D",
    "SpatialDropout2D", "Subtract", "UnitNormalization", "ZeroPadding1D", "ZeroPadding2D",
)  # fmt: skip
_DIRECT_LAYERS = tuple(getattr(keras.layers, name) for name in DIRECT_LAYER_NAMES if hasattr(keras.layers, name))

_DIRECT, _NESTED, _KERAS = "direct", "nested", "keras"
_plans = weakref.WeakKeyDictionary()


def forward(model, inputs, training=None):
    """``model(inputs, training=training)``, bypassing per-layer call overhead where it is safe."""
    plan = _plan(model) if eager_torch() else None
    if plan is not None:
        inputs = _as_input_dtype(inputs)
    if plan is None or not _accepts(plan, inputs) or not _vouched(plan):
        return model(inputs, training=training)
    return _run(plan, inputs, training)


def _as_input_dtype(inputs):
    """An integer or non-float32 float tensor as float32, the conversion keras' Functional call makes.

    (`Functional._convert_inputs_to_tensors`: ``ops.convert_to_tensor(x, dtype=input.dtype)``, a
    plain ``tensor.to(float32)`` on torch.) Batches of uint8 images, as `ClassBalancedBatches`
    yields them, then take the planned graph too. Anything else is returned as it is.
    """
    if not keras.ops.is_tensor(inputs) or isinstance(inputs, keras.KerasTensor) or get_keras_mask(inputs) is not None:
        return inputs
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    if dtype == "float32" or not (keras.backend.is_float_dtype(dtype) or keras.backend.is_int_dtype(dtype)):
        return inputs
    return keras.ops.convert_to_tensor(inputs, dtype="float32")


def can_call_directly(layer, inputs, training):
    """Whether ``layer.call(inputs, training=training)`` computes what ``layer(inputs, training=training)`` does.

    True on torch for a built float32 layer without an activity regulariser,
    called with an explicit ``training`` flag on float32 tensors that carry no
    mask, outside any autocast scope and distribution.
    """
    if not isinstance(training, bool) or not layer.built or not eager_torch():
        return False
    if not _direct_ok(layer):
        return False
    if isinstance(inputs, dict):
        inputs = list(inputs.values())
    elif not isinstance(inputs, (tuple, list)):
        inputs = [inputs]
    return all(_plain_float32(tensor) for tensor in inputs)


def eager_torch():
    """Whether keras runs on torch, eagerly: no autocast scope, no distribution, not inside torch.compile.

    Under ``jit_compile=True`` (torch.compile) keras' own calls are traced as they are:
    the shortcuts here save Python time, which a compiled step does not spend.
    """
    return (
        keras.backend.backend() == "torch"
        and get_autocast_scope is not None
        and get_autocast_scope() is None
        and keras.distribution.distribution() is None
        and not _compiling()
    )


def _compiling():
    import torch

    return torch.compiler.is_compiling()


def _plain_float32(tensor):
    return (
        keras.ops.is_tensor(tensor)
        and not isinstance(tensor, keras.KerasTensor)
        and get_keras_mask(tensor) is None
        and keras.backend.standardize_dtype(tensor.dtype) == "float32"
    )


def _plan(model):
    """The graph that runs `model` as (input id, input rank, output id, steps), or None; cached per graph.

    A step is (kind, operation, arguments, output ids, passes training, fast kernel or None).
    """
    graph = _functional(model)
    if graph is None:
        return None
    try:
        return _plans[graph]
    except KeyError:
        plan = _plans[graph] = _build_plan(graph)
        return plan


def _functional(model):
    """The Functional graph that runs `model`, or None when it is anything else."""
    if type(model) is keras.Sequential:
        model = getattr(model, "_functional", None)
    if model is None or type(model).__name__ != "Functional" or not model.built:
        return None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return None
    return model


def _build_plan(graph):
    spec = graph.inputs[0]
    if spec.dtype != "float32":  # keras would cast every input
        return None
    try:
        nodes_by_depth = graph._nodes_by_depth
        steps = []
        for depth in sorted(nodes_by_depth, reverse=True):
            for node in nodes_by_depth[depth]:
                operation = node.operation
                if not operation or node.is_input:
                    continue
                if _plan(operation) is not None:
                    kind = _NESTED
                elif type(operation) in _DIRECT_LAYERS and operation.built:
                    kind = _DIRECT
                else:
                    kind = _KERAS
                context = operation._call_context_args  # keras >= 3.10; without it, keras' own call
                passes_training = (
                    "training" in inspect.signature(operation.call).parameters
                    if kind == _DIRECT
                    else "training" in context
                )
                outputs = [id(tensor) for tensor in keras.tree.flatten(node.outputs)]
                fast = kernels.kernel(operation) if kind == _DIRECT else None
                steps.append((kind, operation, node.arguments, outputs, passes_training, fast))
        return (id(spec), len(spec.shape), id(graph.outputs[0]), steps)
    except (AttributeError, TypeError, ValueError):  # a keras whose internals differ
        return None


def _accepts(plan, inputs):
    """Whether keras' call would pass `inputs` to the planned graph unchanged."""
    return _plain_float32(inputs) and len(inputs.shape) == plan[1]


def _vouched(plan):
    """Whether every directly called layer, nested ones included, is still fit for it (checked before running)."""
    for kind, operation, *_ in plan[3]:
        if kind == _DIRECT and not _direct_ok(operation):
            return False
        if kind == _NESTED and _direct_ok(operation):
            nested = _plan(operation)
            if nested is None or not _vouched(nested):
                return False
    return True


def _direct_ok(layer):
    return (
        layer.activity_regularizer is None
        and layer.dtype_policy.name == "float32"
        and not getattr(layer, "_remat_mode", None)
    )


def _training_only(kwargs):
    """Whether a call's keyword arguments are at most ``training`` and an absent ``mask`` (what the kernels take)."""
    return all(key == "training" or (key == "mask" and value is None) for key, value in kwargs.items())


def _run(plan, inputs, training):
    """The graph's output, each layer of `_DIRECT_LAYERS` run through its `call`."""
    input_id, _, output_id, steps = plan
    values = {input_id: inputs}
    for kind, operation, arguments, outputs, passes_training, fast in steps:
        args, kwargs = arguments.fill_in(values)
        if passes_training and training is not None:
            kwargs["training"] = training
        nested = _plan(operation) if kind == _NESTED and len(args) == 1 and _direct_ok(operation) else None
        if fast is not None and len(args) == 1 and _training_only(kwargs):
            result = fast(operation, args[0], kwargs.get("training"))
        elif kind == _DIRECT:
            result = operation.call(*args, **kwargs)
        elif nested is not None and _accepts(nested, args[0]):
            result = _run(nested, args[0], kwargs.get("training"))
        else:
            result = operation(*args, **kwargs)
        for key, value in zip(outputs, keras.tree.flatten(result)):
            values[key] = value
    return values[output_id]
