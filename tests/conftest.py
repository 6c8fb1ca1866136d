"""Shared test setup: the backend comes from KERAS_BACKEND; randomness is fixed."""

import contextlib
import io
import os
import shutil
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


def pytest_configure(config):
    config.addinivalue_line("markers", "portability: needs all three backends installed")
    config.addinivalue_line("markers", "slow: a short training run")
    config.addinivalue_line("markers", "distributed: launches data-parallel training processes (pytest -m distributed, in each nox tests session)")
    config.addinivalue_line("markers", "bench_smoke: the benchmark entry points on tiny sizes (pytest -m bench_smoke, in each nox tests session)")
    config.addinivalue_line("markers", "conformance: the fast path against keras' own path (also nox -s keras_floor, and the newest keras in nox -s tests)")
    config.addinivalue_line(
        "markers",
        "timed: asserts a wall-clock bound or races real processes (signals, locks, kills); nox runs these "
        "after the parallel ones, one at a time, so their margins hold on a busy 2-core machine",
    )


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


class FinishedRun(NamedTuple):
    """A finished run folder: its data root (``root / "data"``), the folder, the toy arrays, what train printed."""

    root: Path
    out: Path
    arrays: dict
    printed: str


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """One finished 2-epoch run (`siamese-k3 train`, default recipe, toy 10-class data), made once per pytest call.

    Shared by every test that only reads a finished run (tests/README.md): a
    test that writes into a run takes `finished_run_copy` instead. Under
    pytest-xdist the workers share it: the first to need it trains it, under a
    lock, in the folder above the workers' own temporary folders.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _train_finished_run(tmp_path_factory.mktemp("finished"))
    import fcntl
    import json

    root = tmp_path_factory.getbasetemp().parent / "finished"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made = root / "made.json"
        if made.is_file():
            from toy import clustered_arrays

            return FinishedRun(root, root / "run", clustered_arrays(), json.loads(made.read_text())["printed"])
        run = _train_finished_run(root)
        made.write_text(json.dumps({"printed": run.printed}))
        return run


def _train_finished_run(root):
    from siamese_k3 import cli
    from toy import TINY, write_clustered_idx

    arrays = write_clustered_idx(root / "data")
    out = root / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["train", "--data-dir", str(root / "data"), "--out", str(out), "--seed", "3", *TINY])
    assert code == 0, printed.getvalue()
    return FinishedRun(root, out, arrays, printed.getvalue())


@pytest.fixture
def finished_run_copy(finished_run, tmp_path):
    """A copy of the session's finished run, this test's to write into (same data root)."""
    out = tmp_path / "run"
    shutil.copytree(finished_run.out, out, ignore=shutil.ignore_patterns(".lock"))
    return finished_run._replace(out=out)
