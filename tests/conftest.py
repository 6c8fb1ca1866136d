"""Shared test setup: the backend comes from KERAS_BACKEND; randomness is fixed."""

import contextlib
import io
import os
import shutil
import time
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
        "backend_independent: what it checks does not depend on the Keras backend (numpy, files, argument "
        "checks, messages): nox runs it in the torch session only (tests/README.md)",
    )
    config.addinivalue_line(
        "markers",
        "timed: asserts a wall-clock bound or races real processes (signals, locks, kills); nox runs these "
        "after the unit tests, beside the distributed runs (on TensorFlow, those marked stop_bound first, one "
        "at a time), and each records "
        "what it measured against its bound (junit property seconds_of_bound)",
    )
    config.addinivalue_line(
        "markers",
        "stop_bound: bounds how long a signal takes to end training in one process; on TensorFlow nox runs "
        "these one at a time (TIMED_ALONE in noxfile.py)",
    )


# The modules with the longest tests (worker-seconds in CI's junit reports, tests/slowest.py),
# longest first: collected first, so the xdist workers start them first and end on the many short tests
# rather than one waiting while the other finishes a long module. Every other module keeps its place after them.
LONGEST_FIRST = (
    "test_benchmarks", "test_training", "test_image_training", "test_cli_contract", "test_conformance",
    "test_backbones_resnet", "test_training_overwrite", "test_embedding_artifact", "test_cli",
    "test_backend_tensorflow_arrays", "test_api", "test_models", "test_losses", "test_recipes",
)


def pytest_collection_modifyitems(config, items):
    rank = {module: index for index, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_module(item), len(rank)))  # stable: each module's own order is kept


def _module(item):
    return item.module.__name__ if item.module is not None else ""


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """The xdist worker and the wall-clock start of each test (before its fixtures), as junit properties: how the
    workers shared a pytest call, and which test ended it alone, can be read from CI's reports
    (``python tests/slowest.py --workers REPORT``)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    item.user_properties += [("worker", worker), ("started", f"{time.time():.1f}")]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


class FinishedRun(NamedTuple):
    """A finished run folder: its data root (``root / "data"``), the folder, the toy arrays, what train printed."""

    root: Path
    out: Path
    arrays: dict
    printed: str


def made_once(tmp_path_factory, name, make):
    """A folder `make(folder)` filled once, and shared; the folder.

    Shared by the pytest-xdist workers of a pytest call and, where
    ``SIAMESE_K3_TEST_SHARED`` names a folder (each ``nox -s tests`` session
    names a fresh one), by every pytest call of the session: the first to ask
    makes it, under a lock, and the others wait for it and reuse it. Without
    either, a pytest call makes its own.
    """
    shared = os.environ.get("SIAMESE_K3_TEST_SHARED")
    if shared:
        shared = Path(shared)
        shared.mkdir(parents=True, exist_ok=True)
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent  # the folder above the workers' own temporary folders
    else:
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    import fcntl

    folder, made = shared / name, shared / f"{name}.made"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not made.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a process that failed to make it left
            folder.mkdir()
            make(folder)
            made.write_text("")
    return folder


def _cli_train(*argv):
    """`siamese-k3 train ARGV` in this process; what it printed (the run must finish)."""
    from siamese_k3 import cli

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["train", *map(str, argv)])
    assert code == 0, printed.getvalue()
    return printed.getvalue()


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """One finished 2-epoch run (`siamese-k3 train`, default recipe, toy 10-class data), made once (`made_once`).

    Shared by every test that only reads a finished run (tests/README.md): a
    test that writes into a run takes `finished_run_copy` instead.
    """
    from toy import TINY, clustered_arrays, write_clustered_idx

    def make(root):
        write_clustered_idx(root / "data")
        printed = _cli_train("--data-dir", root / "data", "--out", root / "run", "--seed", "3", *TINY)
        (root / "printed.txt").write_text(printed)

    root = made_once(tmp_path_factory, "finished", make)
    return FinishedRun(root, root / "run", clustered_arrays(), (root / "printed.txt").read_text())


class ResumeReference(NamedTuple):
    """The data every resume and overwrite test trains on, and the run trained on it in one go."""

    data_dir: Path
    run: Path


@pytest.fixture(scope="session")
def resume_reference(tmp_path_factory):
    """`toy.SMALL` (3 epochs of 3 steps) trained in one go on 80 toy images: what every resumed run must equal.

    Only read: a test that trains over it copies it first.
    """
    from toy import SMALL, write_clustered_idx

    def make(root):
        write_clustered_idx(root / "data", train=80, test=40)
        (root / "reference").mkdir()
        _cli_train("--data-dir", root / "data", "--out", root / "reference" / "run", *SMALL)

    root = made_once(tmp_path_factory, "resume", make)
    return ResumeReference(root / "data", root / "reference" / "run")


@pytest.fixture(scope="session")
def data_dir(resume_reference):
    """The resume tests' 80 toy images (`resume_reference`); a module may define its own."""
    return resume_reference.data_dir


@pytest.fixture(scope="session")
def uninterrupted(resume_reference):
    """The SMALL run trained in one go: what every resumed run and every --overwrite must give (only read)."""
    return resume_reference.run


@pytest.fixture
def finished_run_copy(finished_run, tmp_path):
    """A copy of the session's finished run, this test's to write into (same data root)."""
    out = tmp_path / "run"
    shutil.copytree(finished_run.out, out, ignore=shutil.ignore_patterns(".lock"))
    return finished_run._replace(out=out)
