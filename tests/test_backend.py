"""siamese_k3.backend: which backend is picked when none is configured."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from siamese_k3 import backend


@pytest.fixture
def no_config(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    return tmp_path


def test_environment_variable_wins(no_config, monkeypatch):
    monkeypatch.setattr(backend, "installed_backends", lambda: ["jax", "torch"])
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert backend.default_backend() == "torch"


def test_keras_json_is_respected(no_config, monkeypatch):
    monkeypatch.setattr(backend, "installed_backends", lambda: ["jax", "torch"])
    (no_config / "keras.json").write_text(json.dumps({"backend": "torch"}))
    assert backend.default_backend() == "torch"


def test_missing_tensorflow_falls_back_to_an_installed_backend(no_config, monkeypatch):
    monkeypatch.setattr(backend, "installed_backends", lambda: ["torch"])
    assert backend.default_backend() == "torch"


def test_tensorflow_stays_the_default_when_installed(no_config, monkeypatch):
    monkeypatch.setattr(backend, "installed_backends", lambda: ["jax", "tensorflow"])
    assert backend.default_backend() == "tensorflow"


def test_nothing_installed(no_config, monkeypatch):
    monkeypatch.setattr(backend, "installed_backends", lambda: [])
    assert backend.default_backend() is None


def test_installed_backends_sees_the_running_one():
    import keras

    assert keras.backend.backend() in backend.installed_backends()


@pytest.fixture
def unset_tensorflow_logging(monkeypatch):
    for name in backend.BYSTANDER_TENSORFLOW:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("running", ["jax", "torch"])
def test_quiet_framework_logs_quiets_tensorflow_beside_another_backend(unset_tensorflow_logging, running):
    assert backend.quiet_framework_logs(running) == {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2" and os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"


def test_quiet_framework_logs_keeps_what_the_environment_sets(unset_tensorflow_logging, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    assert backend.quiet_framework_logs("torch") == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_quiet_framework_logs_leaves_tensorflows_own_run_alone(unset_tensorflow_logging):
    assert backend.quiet_framework_logs("tensorflow") == {}
    assert not set(backend.BYSTANDER_TENSORFLOW) & set(os.environ)


QUIET_RUN = """
import sys
from siamese_k3.backend import quiet_framework_logs
quiet_framework_logs(sys.argv[1])
import keras
import numpy as np
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
model.compile(optimizer="sgd", loss="mse")
model.fit(np.ones((8, 4), "float32"), np.ones((8, 2), "float32"), batch_size=4, epochs=1, verbose=0)
model.get_config()  # keras' serializer imports TensorFlow when it is installed
print("tensorflow imported:", "tensorflow" in sys.modules)
"""


@pytest.mark.portability
@pytest.mark.skipif(not importlib.util.find_spec("tensorflow"), reason="TensorFlow is not installed")
@pytest.mark.parametrize("running", ["jax", "torch"])
def test_a_jax_or_torch_run_prints_nothing_of_tensorflow(running, tmp_path):
    """keras imports an installed TensorFlow in any run; quieted, it prints no notice on stderr."""
    if not importlib.util.find_spec(running):
        pytest.skip(f"{running} is not installed")
    environment = {name: value for name, value in os.environ.items() if name not in backend.BYSTANDER_TENSORFLOW}
    environment.update(KERAS_BACKEND=running, KERAS_HOME=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", QUIET_RUN, running], env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "tensorflow imported: True" in result.stdout  # else the check below would prove nothing
    words = ("oneDNN", "absl", "tensorflow")
    noise = [line for line in result.stderr.splitlines() if any(word in line for word in words)]
    assert not noise, result.stderr
