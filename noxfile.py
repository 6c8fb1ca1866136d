"""Test sessions, one per Keras backend, each installing keras plus ONLY that backend.

    nox                      # the three test sessions, the portability check, the distributed runs
    nox -s "tests(backend='jax')"
    nox -s distributed       # 2-process data-parallel training on each backend's own engine (CPU)
    nox -s keras_floor       # the fast path's suite on the oldest keras pyproject allows
    nox -s keras_newest      # ... and on the newest release it allows
    nox -s bench_smoke       # every benchmark entry point on tiny sizes, native losses checked equal to keras'
    nox -s docs              # the API reference (mkdocs --strict) into site/, no keras needed
    nox -s bench             # benchmarks, not run by default
"""

import nox

nox.options.sessions = ["tests", "portability", "distributed", "keras_floor", "keras_newest", "bench_smoke", "docs"]
nox.options.reuse_existing_virtualenvs = True

BACKENDS = ("jax", "tensorflow", "torch")
CONSTRAINTS = ("-c", "constraints.txt")
# What the fast path's keras range is checked with: the conformance suite, the internals
# and canaries, the backend modules' own tests and the models'.
FAST_PATH_SUITE = (
    "tests/test_conformance.py", "tests/test_keras_internals.py", "tests/test_backend_fast_path.py",
    "tests/test_backend_torch_steps.py", "tests/test_backend_torch_forward.py", "tests/test_backend_torch_kernels.py",
    "tests/test_backend_tensorflow_arrays.py", "tests/test_models.py",
)


@nox.session
@nox.parametrize("backend", BACKENDS)
def tests(session, backend):
    """pytest on one backend; a stray `import tensorflow` fails the jax and torch sessions.

    FAISS (the `search` extra) is installed on every backend, as it is backend-independent:
    tests/test_index.py checks its engine and, with engine="numpy", the fallback without it.
    """
    session.install(*CONSTRAINTS, "-e", f".[{backend},test,export,search]")
    others = [name for name in BACKENDS if name != backend]
    session.run(
        "python", "-c",
        "import importlib.util, sys; "
        f"present = [m for m in {others!r} if importlib.util.find_spec(m)]; "
        "sys.exit(f'other backends installed: {present}' if present else 0)",
    )
    session.run(
        "pytest", "-m", "not portability and not distributed and not bench_smoke", *session.posargs,
        env={"KERAS_BACKEND": backend},
    )


@nox.session
@nox.parametrize("backend", BACKENDS)
def distributed(session, backend):
    """Data-parallel training launched as users launch it (torchrun, jax.distributed, TF_CONFIG), 2 processes on CPU."""
    session.install(*CONSTRAINTS, "-e", f".[{backend},test]")
    session.run("pytest", "-m", "distributed", *session.posargs, env={"KERAS_BACKEND": backend})


@nox.session
def portability(session):
    """Models saved on each backend load on the other two with the same embeddings."""
    session.install(*CONSTRAINTS, "-e", ".[jax,tensorflow,torch,test,export]")
    session.run("pytest", "-m", "portability", *session.posargs)


@nox.session
def docs(session):
    """The API reference into site/, warnings as errors; griffe reads the source, so no keras or backend."""
    session.install("mkdocs>=1.6,<2", "mkdocstrings[python]>=0.26,<2", "mkdocstrings-python>=1.11,<3")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)


@nox.session
@nox.parametrize("backend", BACKENDS)
def bench_smoke(session, backend):
    """Every benchmark entry point on tiny sizes on one backend; each native loop's first loss equals keras'."""
    extras = f"{backend},test,bench,search" + (",bench-jax" if backend == "jax" else "")
    session.install(*CONSTRAINTS, "-e", f".[{extras}]")
    # python -m pytest: the repository root (the benchmarks package) on sys.path, as the launchers need
    session.run("python", "-m", "pytest", "-m", "bench_smoke", "tests/test_benchmarks.py", *session.posargs,
                env={"KERAS_BACKEND": backend})


@nox.session
def bench(session):
    """The training-core benchmark on every backend (see benchmarks/README)."""
    session.install(*CONSTRAINTS, "-e", ".[jax,tensorflow,torch,bench,bench-jax]", "pytorch-metric-learning")
    session.run("python", "-m", "benchmarks.train_core", *session.posargs)


@nox.session
@nox.parametrize("backend", BACKENDS)
def keras_floor(session, backend):
    """The fast path's suite on the oldest keras pyproject declares (constraints-keras-floor.txt)."""
    session.install("-c", "constraints-keras-floor.txt", "-e", f".[{backend},test]")
    session.run("python", "-c", "import keras; print('keras', keras.__version__)", env={"KERAS_BACKEND": backend})
    session.run("pytest", *FAST_PATH_SUITE, *session.posargs, env={"KERAS_BACKEND": backend})


@nox.session
@nox.parametrize("backend", BACKENDS)
def keras_newest(session, backend):
    """The fast path's suite on the newest keras release pyproject allows (only torch pinned)."""
    session.install("-c", "constraints-torch.txt", "--upgrade", "--upgrade-strategy", "eager", "-e", f".[{backend},test]")
    session.run("python", "-c", "import keras; print('keras', keras.__version__)", env={"KERAS_BACKEND": backend})
    session.run("pytest", *FAST_PATH_SUITE, *session.posargs, env={"KERAS_BACKEND": backend})
