"""The only place in siamese_k3 that knows about TensorFlow, JAX or PyTorch by name.

Nothing here imports a framework at module level: `default_backend` and
`quiet_framework_logs` run before keras imports one, and the framework imports
inside functions run only on that backend.
"""

import importlib.util
import json
import os

BACKENDS = ("jax", "tensorflow", "torch")

# What keeps an installed TensorFlow quiet in a run on another backend (`quiet_framework_logs`).
BYSTANDER_TENSORFLOW = {
    # Its C++ runtime's INFO and WARNING lines; errors still print.
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # Its oneDNN kernels, whose notice ("oneDNN custom operations are on ...") TensorFlow 2.21
    # prints while loading, before it reads TF_CPP_MIN_LOG_LEVEL; such a run computes nothing
    # with TensorFlow's math kernels.
    "TF_ENABLE_ONEDNN_OPTS": "0",
}


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


def quiet_framework_logs(backend):
    """Keep an installed TensorFlow from printing its start-up notices in a run on `backend`; the variables set.

    keras imports TensorFlow whenever it is installed, whatever the backend:
    its serializer checks for TensorFlow types (`get_config`, saving), and
    its data adapters for tf.data. TensorFlow then prints "oneDNN custom
    operations are on ..." and "All log messages before absl::InitializeLog()
    ..." on stderr, in a jax or torch run that computes nothing with it.
    For "jax" and "torch" this sets `BYSTANDER_TENSORFLOW` in ``os.environ``,
    each variable only where the environment does not set it already; for
    "tensorflow" (the notices are the running backend's own) nothing. The
    variables act when TensorFlow is first imported: call this before (the
    CLI does as soon as it knows the backend, before any model is built).

    Example:
        >>> quiet_framework_logs("torch")
        {'TF_CPP_MIN_LOG_LEVEL': '2', 'TF_ENABLE_ONEDNN_OPTS': '0'}
    """
    if backend == "tensorflow":
        return {}
    chosen = {name: value for name, value in BYSTANDER_TENSORFLOW.items() if name not in os.environ}
    os.environ.update(chosen)
    return chosen

