"""siamese_k3.runs.interrupts: SIGINT and SIGTERM stop training within seconds, with `RunInterrupted`.

In-process checks of the block (handlers, the swallowed-interrupt fallbacks,
the thread rule), then real processes: `interrupts_worker.py` trains until a
signal arrives, on whichever backend KERAS_BACKEND names, and must exit with
130 or 143 within seconds. Tests marked ``distributed`` (``pytest -m
distributed``, in each ``nox -s tests`` session) start one process of a two-process job, whose peer never comes,
and two processes one of which stops answering in the middle of training.
"""

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import pytest

from siamese_k3.backend import fast_path
from siamese_k3.runs.interrupts import RunInterrupted, stop_on_signals

pytestmark = pytest.mark.timed  # every test here bounds how long a signal takes
BACKEND = keras.backend.backend()
TESTS = Path(__file__).resolve().parent
REPOSITORY = TESTS.parent
WORKER = TESTS / "interrupts_worker.py"
STARTUP = 600  # seconds a process may take to import its backend and compile (CI machines are slow)
STOP_SECONDS = 10  # what a signal may take to end training


def signal_soon(signum, seconds=0.2):
    threading.Timer(seconds, os.kill, (os.getpid(), signum)).start()


def wait_in_python(seconds=5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


# --------------------------------------------------------------------------
# The block, in this process
# --------------------------------------------------------------------------


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_run_interrupted_names_the_signal(signum, code):
    interrupted = RunInterrupted(signum)
    assert isinstance(interrupted, KeyboardInterrupt)
    assert interrupted.signal == signum and interrupted.exit_code == code
    assert interrupted.name == signum.name and str(interrupted) == f"stopped by {signum.name}"
    assert pickle.loads(pickle.dumps(interrupted)).exit_code == code


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_raises_inside_the_block_and_the_handlers_come_back(signum):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    with pytest.raises(RunInterrupted) as raised:
        with stop_on_signals():
            signal_soon(signum)
            wait_in_python()
    assert raised.value.signal == signum
    assert {s: signal.getsignal(s) for s in before} == before
    assert signal.set_wakeup_fd(wakeup) == wakeup


def test_a_swallowed_interrupt_raises_again_from_the_callback_and_at_the_end():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(RunInterrupted) as at_the_end:
        with stop_on_signals() as stop:
            stop.callback.set_model(model)
            try:  # as keras' pythonify_logs does: a bare except around the wait for a step
                signal_soon(signal.SIGTERM)
                wait_in_python()
            except:  # noqa: E722
                pass
            assert stop.received == signal.SIGTERM
            assert model.stop_training  # keras leaves fit after the running call
            for hook in (stop.callback.on_epoch_end, stop.callback.on_epoch_begin):
                with pytest.raises(RunInterrupted):
                    hook(0)
            with pytest.raises(RunInterrupted):
                stop.callback.on_test_begin()
    assert at_the_end.value.signal == signal.SIGTERM


def test_without_a_signal_the_block_and_the_callback_change_nothing():
    with stop_on_signals() as stop:
        stop.callback.on_epoch_end(0)
        result = 1 + 1
    assert result == 2 and stop.received is None


def test_an_error_after_the_signal_is_reported_as_the_interrupt():
    with pytest.raises(RunInterrupted) as raised:
        with stop_on_signals():
            try:
                signal_soon(signal.SIGINT)
                wait_in_python()
            except KeyboardInterrupt:
                raise ValueError("what a cancelled call raises instead") from None
    assert isinstance(raised.value.__cause__, ValueError)


def test_outside_the_main_thread_the_block_is_a_no_op():
    before = signal.getsignal(signal.SIGINT)
    seen = {}

    def enter():
        with stop_on_signals() as stop:
            seen["handler"] = signal.getsignal(signal.SIGINT)
            stop.callback.on_epoch_end(0)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert seen["handler"] is before


def test_the_callback_keeps_the_fast_path():
    # No batch hooks: keras dispatches batch callbacks as without it, and the fast path
    # keeps its steps per execution (one step per execution only for batch hooks).
    callback = stop_on_signals().callback
    assert not any(fast_path.has_hook(callback, hook) for hook in fast_path.BATCH_HOOKS)
    assert not fast_path._has_batch_hooks(callback)


def test_keras_still_swallows_an_interrupt_while_reading_the_logs():
    # Why the callback exists: keras' pythonify_logs reads each value in a bare except.
    # If this fails, keras stopped swallowing; the callback stays harmless.
    from keras.src.utils import python_utils

    class Interrupting:
        def __float__(self):
            raise KeyboardInterrupt

    assert "loss" in python_utils.pythonify_logs({"loss": Interrupting()})


@pytest.mark.skipif(BACKEND != "tensorflow", reason="cancelling a running function is TensorFlow's")
def test_tensorflow_cancellation_stops_a_running_function():
    import tensorflow as tf

    from siamese_k3.backend import registry

    @tf.function(jit_compile=False)
    def slow(x):
        for _ in tf.range(100_000):
            x = tf.tanh(tf.matmul(x, x))
        return x

    x = tf.ones((64, 64)) / 64
    with registry.current().cancellable() as cancel:
        threading.Timer(0.5, cancel).start()
        started = time.monotonic()
        with pytest.raises(tf.errors.CancelledError):
            slow(x).numpy()
    assert time.monotonic() - started < 30


# --------------------------------------------------------------------------
# Real processes
# --------------------------------------------------------------------------


def free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def environment(**extra):
    env = {key: value for key, value in os.environ.items() if key not in ("TF_CONFIG", "RANK", "WORLD_SIZE")}
    env.update(KERAS_BACKEND=BACKEND, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1",
               TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), str(TESTS), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Process:
    """A process whose stdout and stderr lines threads collect; `wait_for` a line that starts with a marker."""

    def __init__(self, command, env, **options):
        self.popen = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      **options)
        self.lines = []
        self.arrived = []  # when each line of self.lines arrived
        self.stderr = []
        self.readers = [threading.Thread(target=self._read, args=(self.popen.stdout, self.lines), daemon=True),
                        threading.Thread(target=self._read, args=(self.popen.stderr, self.stderr), daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, lines):
        for line in stream:
            if lines is self.lines:
                self.arrived.append(time.monotonic())
            lines.append(line)

    def seen(self, marker):
        """The monotonic time the first stdout line starting with `marker` arrived (its reader thread's clock)."""
        return next(self.arrived[index] for index, line in enumerate(self.lines) if line.startswith(marker))

    def wait_for(self, marker, count=1, timeout=STARTUP):
        deadline = time.monotonic() + timeout
        while sum(line.startswith(marker) for line in self.lines) < count:
            assert self.popen.poll() is None, f"exited {self.popen.returncode}: {self.error()}"
            assert time.monotonic() < deadline, f"no {marker!r} within {timeout} s: {self.error()}"
            time.sleep(0.05)

    def stop_time(self, signum, timeout=60):
        """Send `signum`; the seconds until the process exits."""
        sent = time.monotonic()
        self.popen.send_signal(signum)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"still running {timeout} s after {signum.name}: {self.error()}") from None
        return time.monotonic() - sent

    def finish(self, timeout=30):
        """The exit code, once the process has ended by itself within `timeout` seconds, or been killed."""
        try:
            self.popen.wait(timeout)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()
        for reader in self.readers:
            reader.join(5)
        return self.popen.returncode

    def error(self):
        if self.popen.poll() is not None:  # all of stderr, once the reader has it
            self.readers[1].join(1)
        return "".join(self.stderr)[-3000:]


def worker(*arguments, env=None):
    return Process([sys.executable, str(WORKER), *arguments], env or environment())


@pytest.mark.stop_bound
@pytest.mark.slow
@pytest.mark.parametrize("model, signum", [("mining", signal.SIGINT), ("mining", signal.SIGTERM),
                                           ("siamese", signal.SIGINT)])
def test_a_signal_stops_training_within_seconds(model, signum, record_property):
    process = worker(model)
    try:
        process.wait_for("TRAINING 3")  # compiled and in its steady state
        seconds = process.stop_time(signum)
    finally:
        process.finish()
    errors = process.error()
    assert process.popen.returncode == 128 + signum, errors
    assert f"INTERRUPTED stopped by {signum.name}" in errors
    record_property("seconds_of_bound", f"{seconds:.2f} of {STOP_SECONDS}")
    assert seconds < STOP_SECONDS, errors
    assert "FINISHED" not in "".join(process.lines)


@pytest.mark.stop_bound
@pytest.mark.slow
def test_a_burst_of_signals_is_one_request_to_stop(record_property):
    # Ctrl-C in a terminal reaches every process of the group, and torchrun forwards SIGTERM as well.
    process = worker("mining")
    try:
        process.wait_for("TRAINING 3")
        process.popen.send_signal(signal.SIGINT)
        seconds = process.stop_time(signal.SIGTERM)
    finally:
        process.finish()
    errors = process.error()
    assert process.popen.returncode == 130, errors
    assert "INTERRUPTED stopped by SIGINT" in errors and "without cleanup" not in errors
    record_property("seconds_of_bound", f"{seconds:.2f} of {STOP_SECONDS}")
    assert seconds < STOP_SECONDS


SWALLOWING = """
import os, signal, sys, time
from siamese_k3.runs.interrupts import stop_on_signals
with stop_on_signals(grace_seconds=float(sys.argv[1])):
    print("READY", flush=True)
    while True:
        try:
            time.sleep(0.01)
        except BaseException:  # swallows every interrupt, as keras' pythonify_logs does one
            print("SWALLOWED", flush=True)
"""


def our_lines(errors):
    """The lines of stderr that siamese_k3 or a traceback wrote (not the backend's own logging)."""
    return [line for line in errors.splitlines() if line.startswith("siamese_k3") or "Traceback" in line]


@pytest.mark.stop_bound
def test_a_second_signal_ends_a_process_that_swallowed_the_first(record_property):
    process = Process([sys.executable, "-c", SWALLOWING, "1000"], environment())
    try:
        process.wait_for("READY")
        process.popen.send_signal(signal.SIGTERM)
        process.wait_for("SWALLOWED")
        time.sleep(1.5)  # not part of the first one's burst
        seconds = process.stop_time(signal.SIGINT)
    finally:
        process.finish()
    errors = process.error()
    assert process.popen.returncode == 130, errors
    record_property("seconds_of_bound", f"{seconds:.2f} of {STOP_SECONDS}")
    assert seconds < STOP_SECONDS
    assert our_lines(errors) == [
        "siamese_k3: stopped by SIGINT (a second signal while stopping); exiting without cleanup."
    ]


@pytest.mark.stop_bound
def test_a_block_still_running_after_the_grace_period_ends_the_process(record_property):
    process = Process([sys.executable, "-c", SWALLOWING, "2"], environment())
    try:
        process.wait_for("READY")
        seconds = process.stop_time(signal.SIGTERM)
    finally:
        process.finish()
    errors = process.error()
    assert process.popen.returncode == 143, errors
    record_property("seconds_of_bound", f"{seconds:.2f} of {2 + STOP_SECONDS}")
    assert 2 <= seconds < 2 + STOP_SECONDS
    assert our_lines(errors) == [
        "siamese_k3: stopped by SIGTERM (still running 2 s after the signal); exiting without cleanup."
    ]


# --------------------------------------------------------------------------
# Data-parallel processes (pytest -m distributed)
# --------------------------------------------------------------------------

PEER_TIMEOUT = 8  # seconds a process waits for a peer that never comes


def one_of_two(rank, ports):
    """The launch environment of process `rank` of a two-process job on `ports` (torch: without torchrun)."""
    if BACKEND == "jax":
        return environment(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{ports[0]},localhost:{ports[1]}",
                           KERAS_DISTRIBUTION_NUM_PROCESSES="2", KERAS_DISTRIBUTION_PROCESS_ID=str(rank))
    if BACKEND == "tensorflow":
        cluster = {"worker": [f"localhost:{port}" for port in ports]}
        return environment(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": rank}}))
    return environment(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                       MASTER_ADDR="localhost", MASTER_PORT=str(ports[0]))


def first_to_end(processes, timeout):
    """The monotonic time each process was seen ended (polled every 50 ms, all at once); None for one still running."""
    ended = [None] * len(processes)
    deadline = time.monotonic() + timeout
    while None in ended and time.monotonic() < deadline:
        for index, process in enumerate(processes):
            if ended[index] is None and process.popen.poll() is not None:
                ended[index] = time.monotonic()
        time.sleep(0.05)
    return ended


@pytest.mark.distributed
def test_a_process_whose_peer_never_starts_gives_up_with_one_line(record_property):
    # Process 0 of one two-process job and process 1 of another, whose peers never start: side by side,
    # so that their waits overlap (each has its own ports).
    processes = [worker("mining", "--parallel", "--timeout", str(PEER_TIMEOUT),
                        env=one_of_two(rank, [free_port(), free_port()])) for rank in (0, 1)]
    try:
        for process in processes:
            process.wait_for("WAITING")
        ended = first_to_end(processes, PEER_TIMEOUT + STARTUP)
    finally:
        codes = [process.finish() for process in processes]
    for rank, process in enumerate(processes):
        errors = process.error()
        assert ended[rank] is not None and codes[rank] == 1, (rank, errors)
        lines = our_lines(errors)
        assert len(lines) == 1 and lines[0].startswith("siamese_k3: error: "), (rank, errors)
        assert "data-parallel" in lines[0] and "timeout" in lines[0], (rank, errors)
        record_property(f"seconds_of_bound_{rank}", f"{ended[rank] - process.seen('WAITING'):.2f} of {PEER_TIMEOUT + 60}")
        assert PEER_TIMEOUT - 1 <= ended[rank] - process.seen("WAITING") < PEER_TIMEOUT + 60, (rank, errors)


@pytest.mark.distributed
def test_a_signal_ends_a_process_waiting_for_its_peer(record_property):
    # SIGTERM to one process waiting for its peer, SIGINT to another (each of its own job), side by side.
    signals = (signal.SIGTERM, signal.SIGINT)
    processes = [worker("mining", "--parallel", "--grace", "3", env=one_of_two(1, [free_port(), free_port()]))
                 for _ in signals]
    try:
        for process in processes:
            process.wait_for("WAITING")
        time.sleep(3)  # inside the wait
        sent = []
        for process, signum in zip(processes, signals):
            sent.append(time.monotonic())
            process.popen.send_signal(signum)
        ended = first_to_end(processes, 60)
    finally:
        for process in processes:
            process.finish()
    for process, signum, at, end in zip(processes, signals, sent, ended):
        errors = process.error()
        assert end is not None, f"still running 60 s after {signum.name}: {errors}"
        assert process.popen.returncode == 128 + signum, errors
        assert f"stopped by {signum.name}" in errors  # RunInterrupted, or the one-line exit after the grace period
        record_property(f"seconds_of_bound_{signum.name}", f"{end - at:.2f} of {3 + 5}")
        assert end - at < 3 + 5, errors


@pytest.mark.distributed
def test_sigterm_stops_a_process_whose_peer_stops_answering_in_training(record_property):
    # Process 0 waits in a collective for process 1, frozen with SIGSTOP. SIGTERM stops it within the
    # grace period: TensorFlow cancels the collective (RunInterrupted), jax and torch, blocked in native
    # code, end with the one-line exit. (TensorFlow's own shutdown may then still wait for the frozen
    # peer's heartbeat timeout before the process is gone: its exit is only checked to come.)
    ports = [free_port(), free_port()]
    if BACKEND == "torch":
        launcher = Process([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                            str(ports[0]), str(WORKER), "mining", "--parallel", "--grace", "5"], environment(),
                           start_new_session=True)
        processes = [launcher]
    else:
        processes = [worker("mining", "--parallel", "--grace", "5", env=one_of_two(rank, ports)) for rank in (0, 1)]
    stopped = frozen = None
    try:
        for process in processes:
            process.wait_for("TRAINING 2", count=2 if BACKEND == "torch" else 1)
        if BACKEND == "torch":
            from test_parallel import rank_process

            victim, frozen = rank_process(launcher.popen.pid, 0), rank_process(launcher.popen.pid, 1)
        else:
            victim, frozen = processes[0].popen.pid, processes[1].popen.pid
        os.kill(frozen, signal.SIGSTOP)
        time.sleep(2)  # process 0 is now waiting for it
        sent = time.monotonic()
        os.kill(victim, signal.SIGTERM)
        while time.monotonic() - sent < 60 and stopped is None:
            if "stopped by SIGTERM" in "".join(processes[0].stderr):
                stopped = time.monotonic() - sent
            time.sleep(0.05)
        while _alive(victim) and time.monotonic() - sent < 120:
            time.sleep(0.1)
        exited = not _alive(victim)
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGKILL)  # torchrun's workers have their own process group
        for process in processes:
            if BACKEND == "torch":
                os.killpg(process.popen.pid, signal.SIGKILL)
            else:
                process.popen.kill()
            process.finish()
    errors = processes[0].error()
    record_property("seconds_of_bound", f"{'none' if stopped is None else f'{stopped:.2f}'} of {5 + 5}")
    assert stopped is not None and stopped < 5 + 5, errors
    assert exited, errors
    if BACKEND != "torch":
        assert processes[0].popen.returncode == 143, errors


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
