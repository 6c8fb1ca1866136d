"""Shared test setup: the backend comes from KERAS_BACKEND; randomness is fixed."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


def pytest_configure(config):
    config.addinivalue_line("markers", "portability: needs all three backends installed")
    config.addinivalue_line("markers", "slow: a short training run")
    config.addinivalue_line("markers", "distributed: launches data-parallel training processes (nox -s distributed)")
    config.addinivalue_line("markers", "bench_smoke: the benchmark entry points on tiny sizes (nox -s bench_smoke)")
    config.addinivalue_line("markers", "conformance: the fast path against keras' own path (also nox -s keras_floor, keras_newest)")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
