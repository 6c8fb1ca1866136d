"""What keras' `Model.export` needs on each backend, and what it writes differently there.

`siamese_k3.runs.export` asks here, so that the backends are named in `backend/` only.
"""

import keras

# What keras' Model.export needs besides the backend, as (module, pip package):
# SavedModel goes through TensorFlow (jax2tf on JAX, torch_xla's StableHLO on
# PyTorch); ONNX through tf2onnx, jax2onnx or torch.onnx, which all write with onnx.
EXPORT_REQUIREMENTS = {
    ("savedmodel", "jax"): (("tensorflow", "tensorflow-cpu"),),
    ("savedmodel", "tensorflow"): (),
    ("savedmodel", "torch"): (("tensorflow", "tensorflow-cpu"), ("torch_xla", "torch-xla")),
    ("onnx", "jax"): (("onnx", "onnx"), ("jax2onnx", "jax2onnx")),
    ("onnx", "tensorflow"): (("onnx", "onnx"), ("tf2onnx", "tf2onnx")),
    ("onnx", "torch"): (("onnx", "onnx"),),
}


def export_caveat(model, export_format, backend):
    """A warning for what `backend`'s exporter writes that common runtimes cannot run; None when nothing."""
    if export_format == "onnx" and backend == "jax" and _has_max_pooling(model):
        return (
            "on jax, ONNX export (jax2onnx) writes max pooling as a MaxPool over 4 spatial axes, which "
            "onnxruntime cannot run; for onnxruntime export on the tensorflow or torch backend "
            "(embedding.keras loads on any backend)."
        )
    return None


def _has_max_pooling(model):
    pooling = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D)
    return any(isinstance(layer, pooling) for layer in model._flatten_layers())
