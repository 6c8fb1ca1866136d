"""siamese_k3/backend/registry.py and base.py: one `Backend` per Keras backend, chosen once, owning every hook."""

import keras
import pytest

from siamese_k3.backend import base, distributed, fast_path, registry
from siamese_k3.errors import SiameseK3Error

BACKEND = keras.backend.backend()


def test_current_is_the_running_backends_one_object():
    backend = registry.current()
    assert backend.name == BACKEND
    assert isinstance(backend, base.Backend) and isinstance(backend, fast_path.FastPath)
    assert registry.current() is backend  # chosen once


def test_the_base_is_keras_own_behaviour_without_an_engine():
    plain = base.Backend()
    assert plain.compile_defaults(None, False) == (1, "auto")
    assert plain.needed_for_data_parallel() is False
    with plain.cancellable() as cancel:
        assert cancel is None
    assert plain.flush_denormals() is None
    with pytest.raises(SiameseK3Error, match=f"not available on the {BACKEND} backend"):
        plain.engine(timeout_seconds=1)


def test_only_tensorflow_cancels_a_running_function():
    with registry.current().cancellable() as cancel:
        assert callable(cancel) if BACKEND == "tensorflow" else cancel is None


def test_distributed_start_keeps_the_current_engine_of_this_backend():
    made = []

    class Engine:
        backend = BACKEND

        def stop(self):
            made.append("stopped")

    def make_engine(timeout_seconds):
        made.append(timeout_seconds)
        return Engine()

    try:
        first = distributed.start(make_engine, timeout_seconds=7)
        assert distributed.start(make_engine, timeout_seconds=9) is first is distributed.current()
        assert made == [7]
    finally:
        distributed.stop()
    assert made == [7, "stopped"] and distributed.current() is None


@pytest.mark.skipif(BACKEND != "torch", reason="torch's engine: torch.distributed under torchrun")
def test_torch_outside_torchrun_is_told_how_to_launch(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SiameseK3Error, match="torchrun --nproc-per-node"):
        registry.current().engine(timeout_seconds=5)


@pytest.mark.skipif(BACKEND != "torch", reason="torch computes float32 denormals exactly unless told")
def test_torch_flushes_denormals_to_zero():
    import torch

    registry.current().flush_denormals()
    assert torch.tensor([1e-44], dtype=torch.float32).item() == 0.0
