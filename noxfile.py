"""Test sessions, one virtualenv per Keras backend, each installing keras plus ONLY that backend.

    nox                                   # everything CI runs (the default sessions below), then a timing table
    nox -s "tests(backend='jax')"         # one backend: unit tests, distributed runs, benchmark smoke, keras range
    nox -s "tests(backend='jax')" -- tests/test_losses.py -x   # with arguments: only that pytest call
    nox -s keras_floor                    # the fast path's suite on the oldest keras pyproject allows, own venvs
    nox -s portability                    # models saved on each backend load on the other two (after `tests`)
    nox -s docs                           # the API reference (mkdocs --strict) into site/, no keras needed
    nox -s bench                          # benchmarks, not run by default

`tests(backend)` makes one virtualenv and runs, as separate pytest calls in it:

1. the unit tests (`pytest -m "not portability and not distributed and not bench_smoke"`) but
   those marked ``timed``, with the benchmark smoke (``-m bench_smoke``: every benchmark entry
   point on tiny sizes, each native loop's first loss equal to keras'), on `WORKERS` pytest-xdist
   workers (one per core); those marked ``backend_independent`` (numpy, files, argument checks)
   in the torch session only;
2. the unit tests marked ``timed`` (wall-clock bounds, races of real processes) and the
   distributed runs (``-m distributed``: 2-process data-parallel training launched as users
   launch it, torchrun, jax.distributed, TF_CONFIG, on CPU), test by test on the xdist workers;
   on TensorFlow (`TIMED_ALONE`) those marked ``stop_bound`` first, one at a time, with nothing else running;
3. the fast path's suite (`FAST_PATH_SUITE`) on the newest keras release pyproject allows, skipped
   (saying so) when that release is the one `constraints.txt` pins, which step 1 already ran;
4. on jax and torch, the same suite on the oldest keras pyproject allows (`constraints-keras-floor.txt`),
   with keras downgraded in this venv, then back to the pins.

`keras_floor(backend)` runs that suite in its own virtualenv; the default `nox` runs it for
TensorFlow only, whose floor also needs an older TensorFlow (2.20).

CI's budget is 35 minutes on a 2-core machine (tests/README.md); the `timings` session, last in the
default list, prints one row per session with its wall time.
"""

import functools
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nox

# The keras floor of jax and torch needs only keras itself downgraded: their `tests` sessions run it in
# place (FLOOR_IN_PLACE); TensorFlow's also needs TensorFlow 2.20, in its own venv.
FLOOR_IN_PLACE = ("jax", "torch")
nox.options.sessions = ["tests", "keras_floor(backend='tensorflow')", "portability", "docs", "timings"]
nox.options.reuse_existing_virtualenvs = True
# uv (`pip install "nox[uv]"`, as .ci/run does) makes each venv and installs the same pins into it in
# seconds, where pip takes about a minute per venv: five venvs and four keras swaps in CI. Without uv,
# nox falls back to virtualenv and pip, with the same result.
nox.options.default_venv_backend = "uv|virtualenv"

BACKENDS = ("jax", "tensorflow", "torch")
CONSTRAINTS = ("-c", "constraints.txt")
UNIT = "not portability and not distributed and not bench_smoke"
# Tests whose property does not depend on the backend (numpy, files, argument checks) run in one session.
ONE_BACKEND = "torch"
# Most of a test's time is one core busy tracing, compiling or starting a process, so two workers
# on the 2-core CI machine finish the untimed tests in about half the time (tests/README.md).
WORKERS = os.environ.get("SIAMESE_K3_TEST_WORKERS", "2")
# --dist load: test by test, whichever worker is free. Runs that many tests share are made once per session,
# for all its pytest calls and both workers (`shared_runs`, conftest.py's `made_once`). Keeping each module on
# one worker (--dist loadgroup) was slower: jax's unit tests 356 s against 302-318 s, TensorFlow's 635 s
# against 560-602 s (AMD EPYC, 2 cores, CI runs): a worker then ends on a long module while the other has
# nothing left.
PARALLEL = ("-n", WORKERS, "--dist", "load")
# Backends whose `stop_bound` tests (how long a signal takes to end training in one process) run one at a
# time. On jax and torch they share the two workers with the other `timed` tests and the distributed runs,
# and every measured stop stayed far inside its bound (at most 2.3 s of 10, AMD EPYC, 2 cores, in two CI
# runs and the trials before them; each test records its own as the junit property seconds_of_bound). On
# TensorFlow, once in three such runs, a SIGTERM sent while two other TensorFlow processes were busy ended
# training only through the 10 s grace period (11.8 s of the 15 allowed): those tests keep the machine to
# themselves there. Two at a time (one training process per core) saved only 16 s of 122 in a CI run, and
# a stop then took 7.6 s of its 15.
TIMED_ALONE = ("tensorflow",)
# What the fast path's keras range is checked with: the conformance suite, the internals
# and canaries, the backend modules' own tests and the models'.
FAST_PATH_SUITE = (
    "tests/test_conformance.py", "tests/test_keras_internals.py", "tests/test_backend_fast_path.py",
    "tests/test_backend_torch_steps.py", "tests/test_backend_torch_adam.py", "tests/test_backend_torch_forward.py",
    "tests/test_backend_torch_kernels.py",
    "tests/test_backend_tensorflow_arrays.py", "tests/test_models.py",
)
DURATIONS = ("--durations", "15")  # the slowest tests of each pytest call, printed at its end
# One file per `nox` call (sessions run inside the nox process), read by the `timings` session.
TIMINGS = Path(".nox") / f"session-timings-{os.getpid()}.json"
BUDGET_MINUTES = 35


def timed(function):
    """Record the session's wall time and result in .nox/session-timings.json, for the `timings` table."""
    def session_function(session, **parameters):
        start, result = time.perf_counter(), "failed"
        try:
            function(session, **parameters)
            result = "passed"
        except BaseException as error:  # a failed command, session.error() and session.skip() all raise
            result = "skipped" if type(error).__name__ == "_SessionSkip" else "failed"
            raise
        finally:
            _record(session.name, time.perf_counter() - start, result)

    session_function.__name__ = function.__name__
    session_function.__doc__ = function.__doc__
    session_function.__signature__ = inspect.signature(function)
    return session_function


def _record(name, seconds, result):
    TIMINGS.parent.mkdir(exist_ok=True)
    timings = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {}
    timings[name] = {"seconds": round(seconds, 1), "result": result}
    TIMINGS.write_text(json.dumps(timings, indent=1))


def _pip_find_links():
    """Where pip looks for local wheels (PIP_FIND_LINKS, else pip's own configuration); None if nowhere.

    uv reads neither, and this is where the pinned CPU build of torch may lie (README: an unpinned
    or CUDA `torch` is several GB): uv is told through UV_FIND_LINKS, so both install the same wheel.
    """
    if os.environ.get("PIP_FIND_LINKS"):
        return os.environ["PIP_FIND_LINKS"]
    try:
        listing = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60,
        ).stdout
    except Exception:  # no pip here: nothing to pass on
        return None
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith(".find-links"):
            return value.strip().strip("'\"")
    return None


if "UV_FIND_LINKS" not in os.environ and (_FIND_LINKS := _pip_find_links()):
    os.environ["UV_FIND_LINKS"] = _FIND_LINKS
# pip compiles every installed module to bytecode; uv does not unless asked. Where the environment sets
# PYTHONDONTWRITEBYTECODE (this CI machine does), no process would ever cache its imports, and every
# process a test starts would compile keras and its backend from source again: the jax session's
# process-starting tests took 40% longer that way.
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")


def install_isolated(session, backend, constraints):
    """keras, siamese_k3 and ONLY `backend`; a stray other backend in the venv fails the session."""
    extras = f"{backend},test,export,search,bench" + {"jax": ",bench-jax", "torch": ",test-torch"}.get(backend, "")
    session.install(*constraints, "-e", f".[{extras}]")
    others = [name for name in BACKENDS if name != backend]
    session.run(
        "python", "-c",
        "import importlib.util, sys; "
        f"present = [m for m in {others!r} if importlib.util.find_spec(m)]; "
        "sys.exit(f'other backends installed: {present}' if present else 0)",
    )


def pytest(session, backend, *arguments, env=None):
    # python -m pytest: the repository root (the benchmarks package) on sys.path, as the launchers need
    env = {"KERAS_BACKEND": backend, **compilation_cache(session.virtualenv.location), **compute_threads(backend),
           **quick_compiles(backend), **(env or {})}
    _CALLS[session.name] = _CALLS.get(session.name, 0) + 1  # every test's time, for a closer look than DURATIONS
    report = os.path.join(session.virtualenv.location, f"pytest-{_CALLS[session.name]}.xml")
    session.run("python", "-m", "pytest", *DURATIONS, f"--junitxml={report}", *arguments, env=env)


_CALLS = {}


def shared_runs(session):
    """Environment naming an empty folder in which tests/conftest.py's `made_once` makes the finished runs that
    many tests only read (`finished_run`, `resume_reference`), once for all of this session's pytest calls at
    the pinned keras, instead of once per call: each is a toy training of 15-20 s on TensorFlow. The keras
    range's calls (another keras) make their own."""
    folder = Path(session.virtualenv.location, "shared-runs")
    shutil.rmtree(folder, ignore_errors=True)  # a run of an earlier session, or of other code: never reused
    return {"SIAMESE_K3_TEST_SHARED": str(folder.resolve())}


def compute_threads(backend, workers=WORKERS):
    """Environment giving each torch test process its share of the cores: cores ÷ workers OpenMP threads.

    The tests' processes run side by side: two pytest-xdist workers, the processes they start, the
    two ranks of a distributed run. torch's OpenMP pool has one thread per core, and its threads spin
    while they wait for work, so on the 2-core CI machine two torch processes keep four threads busy.
    The torch unit tests took 122 s with one thread each instead of 236 s (AMD EPYC, 2 cores; torchrun
    sets OMP_NUM_THREADS=1 in its processes for the same reason). jax and TensorFlow, whose pools
    sleep when idle, gained nothing (jax 345 s with their defaults, 377 s with one thread; TensorFlow
    391 s and 392 s), so they keep their defaults. What the tests compute is the same; benchmark
    figures are measured with each framework's default threads, outside the tests. A thread count
    already in the environment is kept.
    """
    if backend != "torch":
        return {}
    threads = str(max(1, (os.cpu_count() or 1) // max(1, int(workers))))
    return {name: os.environ.get(name, threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def quick_compiles(backend):
    """Environment in which XLA compiles the jax tests' programs with LLVM's optimizations off.

    Most of a jax test's time is XLA compiling tiny programs, whose run time is nothing; with
    ``--xla_backend_optimization_level=0`` tests/test_losses.py and tests/test_backbones.py took 63 s
    instead of 92 s (AMD EPYC, 2 cores). It changes how XLA generates machine code, not the program
    (the same HLO, and XLA's CPU backend does no fast-math reassociation at any level), and both sides of
    every comparison in the tests run under it. TensorFlow's XLA was slower with it (test_conformance.py:
    101 s against 87 s), so TensorFlow keeps the default. Users' runs and the benchmarks use XLA's
    default. An XLA_FLAGS that already sets the level is kept.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if backend != "jax" or "xla_backend_optimization_level" in flags:
        return {}
    return {"XLA_FLAGS": " ".join(filter(None, [flags, "--xla_backend_optimization_level=0"]))}


def compilation_cache(venv):
    """Environment for the compilers' own persistent caches, in the session's venv (so per keras version).

    Tests build the same tiny models again and again, in-process and in the processes they start, and
    each `fit` compiles its step anew. JAX's persistent compilation cache and XLA's device compilation
    cache (TensorFlow's `jit_compile=True`) key an executable on the program itself, so an identical
    program is compiled once and every later `fit` runs the same executable: what runs is unchanged,
    only the compiling is not repeated.
    """
    folder = os.path.join(venv, "compilation-cache")
    return {
        # torch inductor's (torch.compile's) cache, else /tmp/torchinductor_<user>, which outlives the clone: a
        # second CI run on the same machine then timed warm compiles (check_native's three torch.compile checks
        # took 5 s each instead of 30-45 s), where CI's fresh machine compiles cold
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(folder, "torchinductor"),
        "JAX_COMPILATION_CACHE_DIR": os.path.join(folder, "jax"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "TF_XLA_FLAGS": f"--tf_xla_persistent_cache_directory={os.path.join(folder, 'xla')}",
    }


def keras_version(session, backend):
    """Print the keras and backend releases installed (their metadata: importing them took 6-9 s; pytest does next)."""
    names = ["keras", {"tensorflow": "tensorflow-cpu"}.get(backend, backend)]
    session.run("python", "-c", "import importlib.metadata as m; "
                f"print(*(f'{{n}} {{m.version(n)}}' for n in {names!r}), sep=', ')")


@functools.cache  # asked once per `nox` call, not once per backend
def newest_keras():
    """The newest keras release pyproject allows, from the package index; None when the index can't be read."""
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        listing = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", "keras"], capture_output=True, text=True, timeout=120,
        ).stdout
        versions = [Version(v.strip()) for v in listing.split("Available versions:")[1].splitlines()[0].split(",")]
    except Exception:  # no index, an old pip, or no packaging: then the session runs rather than skips
        return None
    allowed = SpecifierSet(_pyproject_keras_range())
    return str(max(v for v in versions if v in allowed and not v.is_prerelease))


def _pyproject_keras_range():
    text = Path("pyproject.toml").read_text()
    line = next(line for line in text.splitlines() if line.strip().startswith('"keras'))
    return line.split('"')[1].removeprefix("keras")


def pinned(name, constraints="constraints.txt"):
    for line in Path(constraints).read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==")[1].strip()
    return None


@nox.session
@nox.parametrize("backend", BACKENDS)
@timed
def tests(session, backend):
    """Everything one backend checks, in one venv: unit tests, distributed runs, benchmark smoke, newest keras.

    A stray `import tensorflow` fails the jax and torch sessions, since only the session's backend is
    installed. FAISS (the `search` extra) is installed on every backend, as it is backend-independent:
    tests/test_index.py checks its engine and, with engine="numpy", the fallback without it. With
    arguments (`nox -s "tests(backend='jax')" -- ARGS`), only the unit pytest call runs, with ARGS.
    """
    install_isolated(session, backend, CONSTRAINTS)
    unit = UNIT if backend == ONE_BACKEND else f"{UNIT} and not backend_independent"
    if session.posargs:
        pytest(session, backend, "-m", unit, *session.posargs)
        return
    shared = shared_runs(session)  # the runs many tests read, made once for the three calls at the pins
    # the unit tests and the benchmark smoke, on the xdist workers (one collection, no idle worker between them)
    pytest(session, backend, "-m", f"(({unit}) or bench_smoke) and not timed", *PARALLEL, env=shared)
    processes = f"(({unit}) and timed) or distributed"
    if backend in TIMED_ALONE:  # a signal's stop time, one test at a time; then the rest, as elsewhere
        pytest(session, backend, "-m", f"({unit}) and stop_bound", "-p", "no:xdist", env=shared)
        processes = f"({processes}) and not stop_bound"
    pytest(session, backend, "-m", processes, *PARALLEL, env=shared)  # on the xdist workers, test by test
    newest, pin = newest_keras(), pinned("keras")
    if newest is not None and newest == pin:
        session.log(f"keras newest: skipped, the newest keras pyproject allows is {newest}, the pinned one (step 1 ran it)")
    else:
        session.log(f"keras newest: {newest or 'unknown (no index)'} instead of the pinned {pin}")
        session.install("-c", "constraints-torch.txt", "--upgrade", "--upgrade-strategy", "eager", "-e", f".[{backend},test]")
        keras_version(session, backend)
        pytest(session, backend, *FAST_PATH_SUITE, *PARALLEL)
        session.install(*CONSTRAINTS, "-e", f".[{backend}]")  # back to the pins, for the portability session
    if backend in FLOOR_IN_PLACE:
        keras_floor_suite(session, backend)
        session.install(*CONSTRAINTS, "-e", f".[{backend}]")  # back to the pins, for the portability session


@nox.session
@nox.parametrize("backend", BACKENDS)
@timed
def keras_floor(session, backend):
    """The fast path's suite on the oldest keras pyproject declares (constraints-keras-floor.txt), in its own venv.

    The default `nox` runs it for TensorFlow only, whose floor also needs an older TensorFlow; the
    `tests` sessions of the other backends run the same suite in their own venv with keras downgraded.
    """
    keras_floor_suite(session, backend)


def keras_floor_suite(session, backend):
    session.install("-c", "constraints-keras-floor.txt", "-e", f".[{backend},test]")
    keras_version(session, backend)
    pytest(session, backend, *FAST_PATH_SUITE, *(session.posargs or PARALLEL))


@nox.session
@timed
def portability(session):
    """Models saved on each backend load on the other two with the same embeddings; all three backends in one venv.

    The save and load workers each run in their backend's `tests` virtualenv (keras and only that
    backend), as for a user who has one backend installed: so the `tests` sessions run first (the
    default `nox` runs them first). This session's own venv has all three backends, for the tests
    of a user who has several (a jax or torch run with TensorFlow installed, `tests/test_backend.py`).
    """
    pythons = {backend: Path(".nox", f"tests-backend-{backend}", "bin", "python") for backend in BACKENDS}
    missing = [f"tests(backend='{backend}')" for backend, python in pythons.items() if not python.is_file()]
    if missing:
        session.error(f"portability's workers run in the tests sessions' virtualenvs: run nox -s {' '.join(missing)} first")
    session.install(*CONSTRAINTS, "-e", ".[jax,tensorflow,torch]", "pytest")
    workers = {f"SIAMESE_K3_PYTHON_{backend.upper()}": os.path.abspath(python) for backend, python in pythons.items()}
    # one process: the save and load workers already run three at once (on two xdist workers beside the
    # tests of a user with several backends, the session took as long: 158 s against 147 s)
    session.run("python", "-m", "pytest", *DURATIONS, "-m", "portability", *session.posargs,
                env={**workers, **compilation_cache(session.virtualenv.location), **compute_threads("torch"),
                     **quick_compiles("jax")})


@nox.session
@timed
def docs(session):
    """The API reference into site/, warnings as errors; griffe reads the source, so no keras or backend."""
    session.install("mkdocs>=1.6,<2", "mkdocstrings[python]>=0.26,<2", "mkdocstrings-python>=1.11,<3")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)


@nox.session(venv_backend="none")
def timings(session):
    """One row per session of this `nox` call: its wall time and result, against CI's 35-minute budget."""
    if not TIMINGS.is_file():
        session.skip("no session of this nox call recorded its time")
    rows = json.loads(TIMINGS.read_text())
    width = max(len(name) for name in rows)
    lines = [f"{'session'.ljust(width)}  {'wall':>9}  result", f"{'-' * width}  {'-' * 9}  ------"]
    total = 0.0
    for name, row in rows.items():
        total += row["seconds"]
        lines.append(f"{name.ljust(width)}  {_minutes(row['seconds']):>9}  {row['result']}")
    lines.append(f"{'total'.ljust(width)}  {_minutes(total):>9}  (budget {BUDGET_MINUTES} min on 2 cores)")
    print("\n".join(lines), flush=True)


def _minutes(seconds):
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


@nox.session
def bench(session):
    """The training-core benchmark on every backend (see benchmarks/README)."""
    session.install(*CONSTRAINTS, "-e", ".[jax,tensorflow,torch,bench,bench-jax]", "pytorch-metric-learning")
    session.run("python", "-m", "benchmarks.train_core", *session.posargs)
