"""Test sessions, one per Keras backend, each installing keras plus ONLY that backend.

    nox                      # the three test sessions, the portability check, the distributed runs
    nox -s "tests(backend='jax')"
    nox -s distributed       # 2-process data-parallel training on each backend's own engine (CPU)
    nox -s bench             # benchmarks, not run by default
"""

import nox

nox.options.sessions = ["tests", "portability", "distributed"]
nox.options.reuse_existing_virtualenvs = True

BACKENDS = ("jax", "tensorflow", "torch")
CONSTRAINTS = ("-c", "constraints.txt")


@nox.session
@nox.parametrize("backend", BACKENDS)
def tests(session, backend):
    """pytest on one backend; a stray `import tensorflow` fails the jax and torch sessions."""
    session.install(*CONSTRAINTS, "-e", f".[{backend},test,export]")
    others = [name for name in BACKENDS if name != backend]
    session.run(
        "python", "-c",
        "import importlib.util, sys; "
        f"present = [m for m in {others!r} if importlib.util.find_spec(m)]; "
        "sys.exit(f'other backends installed: {present}' if present else 0)",
    )
    session.run(
        "pytest", "-m", "not portability and not distributed", *session.posargs, env={"KERAS_BACKEND": backend}
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
def bench(session):
    """The training-core benchmark on every backend (see benchmarks/README)."""
    session.install(*CONSTRAINTS, "-e", ".[jax,tensorflow,torch,bench]")
    session.run("python", "-m", "benchmarks.train_core", *session.posargs)
