"""siamese_k3.backend: which backend is picked when none is configured."""

import json

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
