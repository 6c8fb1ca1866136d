"""The only place in siamese_k3 that knows about TensorFlow, JAX or PyTorch by name.

Nothing here imports a framework at module level: `default_backend` runs before
keras is imported, and the framework imports inside functions run only on that backend.
"""

import importlib.util
import json
import os

BACKENDS = ("jax", "tensorflow", "torch")


def installed_backends():
    """The Keras backends whose framework is importable, in preference order."""
    return [name for name in BACKENDS if importlib.util.find_spec(name)]


def default_backend():
    """The backend keras would use (KERAS_BACKEND, else keras.json, else tensorflow) if it is
    installed; otherwise the first installed of jax, tensorflow, torch; None when none is.

    Keras itself fails at import when its default (tensorflow) is missing, so an
    environment holding keras and only jax or torch needs this choice made for it.
    """
    configured = os.environ.get("KERAS_BACKEND")
    if configured is None:
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        try:
            with open(os.path.join(home, "keras.json")) as handle:
                configured = json.load(handle).get("backend")
        except (OSError, ValueError):
            configured = None
    configured = configured or "tensorflow"
    installed = installed_backends()
    if configured in installed or configured not in BACKENDS:
        return configured
    return installed[0] if installed else None


def flush_denormals():
    """Treat float32 denormals as zero on the CPU, as XLA (jax, tensorflow) already does.

    PyTorch computes denormals exactly, which is many times slower on x86 CPUs: late
    in training, Adam's second moments of tiny gradients fall into that range and
    a torch epoch can take several times as long as the first.
    """
    import keras

    if keras.backend.backend() == "torch":
        import torch

        torch.set_flush_denormal(True)
