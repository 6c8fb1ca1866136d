"""Data-parallel training on each backend's own engine, in real processes (`siamese_k3.parallel`).

Marked ``distributed``: each ``nox -s tests`` session (one per backend, each
installing only that backend) runs them as their own pytest call, after the unit
tests (``pytest -m distributed``). Each test
launches training as a user would, on CPU:

- torch: ``torchrun --nproc-per-node 2`` (torch.distributed, gloo);
- jax: two processes joined by ``KERAS_DISTRIBUTION_*`` (jax.distributed, gloo CPU collectives);
- tensorflow: two processes with ``TF_CONFIG`` (MultiWorkerMirroredStrategy),
  and one process mirrored over 2 logical CPUs (MirroredStrategy);
- jax also in one process over 2 XLA CPU devices (keras.distribution alone);

and compares the run with one process on one device fed the same global
batches: the losses step by step within 1e-5 relative and the final weights
(plain SGD, no BatchNorm, so both compute exactly the global batch's loss).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from test_cli import write_clustered_idx

pytestmark = pytest.mark.distributed

BACKEND = keras.backend.backend()
TESTS = Path(__file__).resolve().parent
REPOSITORY = TESTS.parent
WORKER = TESTS / "parallel_worker.py"
RTOL = 1e-5
TIMEOUT = 600


def free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def environment(**extra):
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    env.update(KERAS_BACKEND=BACKEND, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), str(TESTS), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def launch(arguments, processes=2, cwd=None, timeout=TIMEOUT, env=None):
    """Run `arguments` (a python module or script and its arguments) in `processes` processes, as the backend's launcher would.

    Returns the list of (return code, stdout, stderr), one per process (torchrun: one for all).
    """
    if processes == 1:
        commands = [([sys.executable, *arguments], environment(**(env or {})))]
    elif BACKEND == "torch":
        commands = [([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                      "--master-port", str(free_port()), *arguments], environment())]
    elif BACKEND == "jax":
        address = f"localhost:{free_port()}"
        commands = [
            ([sys.executable, *arguments], environment(
                KERAS_DISTRIBUTION_JOB_ADDRESSES=",".join([address] * processes),
                KERAS_DISTRIBUTION_NUM_PROCESSES=str(processes), KERAS_DISTRIBUTION_PROCESS_ID=str(rank)))
            for rank in range(processes)
        ]
    else:
        workers = [f"localhost:{free_port()}" for _ in range(processes)]
        commands = [
            ([sys.executable, *arguments], environment(
                TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}})))
            for rank in range(processes)
        ]
    running = [
        subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command, env in commands
    ]
    results = []
    for process in running:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in running:
                other.kill()
            raise
        results.append((process.returncode, out, err))
    return results


def assert_ok(results):
    for code, _, err in results:
        assert code == 0, err[-4000:]


def worker_report(tmp_path, loss, mode, processes, *extra, env=None):
    out = tmp_path / f"{mode}-{processes}-{len(extra)}-{bool(env)}.json"
    assert_ok(launch([str(WORKER), str(out), loss, mode, *extra], processes=processes, env=env))
    return json.loads(out.read_text())


def assert_same_training(single, parallel):
    assert single["replicas"] == 1
    np.testing.assert_allclose(parallel["losses"], single["losses"], rtol=RTOL, atol=1e-7)
    np.testing.assert_allclose(parallel["logged"], single["logged"], rtol=RTOL, atol=1e-7)
    for got, expected in zip(parallel["weights"], single["weights"]):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


# semi_hard: global mining over the gathered batch (every loss on a labelled batch gathers the same way);
# cosface: a proxy loss, whose proxies are model weights kept equal on every replica
@pytest.mark.parametrize("loss", ["semi_hard", "triplet", "cosface"])
def test_two_processes_train_like_one(tmp_path, loss):
    single = worker_report(tmp_path, loss, "single", 1)
    parallel = worker_report(tmp_path, loss, "parallel", 2)
    assert parallel["processes"] == 2 and parallel["replicas"] == 2
    assert_same_training(single, parallel)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="MirroredStrategy over logical CPUs is tensorflow's")
def test_mirrored_over_two_logical_cpus_trains_like_one_device(tmp_path):
    single = worker_report(tmp_path, "semi_hard", "single", 1)
    parallel = worker_report(tmp_path, "semi_hard", "parallel", 1, "--logical-cpus", "2")
    assert parallel["processes"] == 1 and parallel["replicas"] == 2
    assert_same_training(single, parallel)


@pytest.mark.skipif(BACKEND != "jax", reason="XLA host devices are jax's")
def test_one_process_over_two_cpu_devices_trains_like_one_device(tmp_path):
    single = worker_report(tmp_path, "semi_hard", "single", 1)
    devices = {"XLA_FLAGS": " ".join(filter(None, [os.environ.get("XLA_FLAGS"),
                                                   "--xla_force_host_platform_device_count=2"]))}
    parallel = worker_report(tmp_path, "semi_hard", "parallel", 1, env=devices)
    assert parallel["processes"] == 1 and parallel["replicas"] == 2
    assert_same_training(single, parallel)


def global_and_per_half_loss():
    """Semi-hard loss of one batch, and the mean loss of its halves mined apart (numpy reference)."""
    from siamese_k3 import losses

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 4)
    embeddings = rng.normal(size=(16, 8)).astype("float32")
    whole = float(losses.semi_hard_triplet_loss(labels, embeddings, margin=0.5))
    halves = [float(losses.semi_hard_triplet_loss(labels[part], embeddings[part], margin=0.5))
              for part in (slice(0, 8), slice(8, 16))]
    return whole, float(np.mean(halves))


def test_mining_apart_would_differ():
    # The equality above has power: each replica mining only its own rows gives another loss.
    whole, per_half = global_and_per_half_loss()
    assert abs(whole - per_half) > 100 * RTOL * abs(whole)


# --------------------------------------------------------------------------
# The CLI: siamese-k3 train --data-parallel
# --------------------------------------------------------------------------

CLI = ["-m", "siamese_k3", "train", "--epochs", "2", "--steps-per-epoch", "3", "--embedding-dim", "8",
       "--batch-size", "16", "--classes-per-batch", "4", "--validation-size", "40", "--backbone", "mnist_dense",
       "--quiet", "--no-plots", "--collective-timeout", "120"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("parallel") / "data"
    write_clustered_idx(directory, train=80, test=41)
    return directory


def test_cli_two_processes(tmp_path, data_dir, request):
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    if BACKEND == "tensorflow":  # only its history's keys are compared (below): the session's one-process CLI run
        single = request.getfixturevalue("uninterrupted")
    else:
        assert_ok(launch([*CLI, "--data-dir", str(data_dir), "--out", str(single)], processes=1))
    results = launch([*CLI, "--data-dir", str(data_dir), "--out", str(parallel), "--data-parallel"])
    assert_ok(results)
    config = json.loads((parallel / "config.json").read_text())
    assert config["data_parallel_devices"] == 2 and config["data_parallel_processes"] == 2
    assert json.loads((parallel / "status.json").read_text())["state"] == "finished"
    assert not (parallel / "backup").exists()
    # Only the chief prints the results table.
    assert sum("Run folder:" in out for _, out, _ in results) == 1
    history = {name: json.loads((folder / "history.json").read_text()) for name, folder in
               (("single", single), ("parallel", parallel))}
    # Adam turns rounding-level differences into step-sized ones after the first step: the
    # first epoch's mean loss agrees closely, and the run trains as well as one process.
    # (On tensorflow the one-process CLI run takes its batches through keras' own PyDataset
    # pipeline, whose worker threads change their order: only the worker tests above compare there.)
    if BACKEND != "tensorflow":
        np.testing.assert_allclose(history["parallel"]["loss"][0], history["single"]["loss"][0], rtol=1e-4)
    assert set(history["parallel"]) == set(history["single"])
    metrics = json.loads((parallel / "metrics.json").read_text())
    assert metrics["precision_at_1"] > 0.5


def test_cli_uneven_batch_is_refused(tmp_path, data_dir):
    results = launch([*CLI, "--data-dir", str(data_dir), "--out", str(tmp_path / "run"), "--data-parallel",
                      "--batch-size", "15", "--classes-per-batch", "5"])
    errors = "".join(err for _, _, err in results)
    assert all(code == 1 for code, _, _ in results) or (BACKEND == "torch" and results[0][0] != 0)
    assert "siamese-k3: error: --data-parallel" in errors
    assert "15" in errors and "multiple of 2" in errors
    if BACKEND != "torch":  # torchrun itself prints a traceback for any worker that exits non-zero
        assert "Traceback" not in errors


@pytest.mark.skipif(BACKEND != "torch", reason="one backend is enough for the worker-death test: torchrun's")
def test_a_dead_worker_ends_the_run_and_the_same_command_resumes(tmp_path, data_dir):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), *CLI, "--data-dir", str(data_dir), "--out", str(out), "--data-parallel",
               "--epochs", "4", "--steps-per-epoch", "40"]
    process = subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    checkpoint = out / "backup" / "training_metadata.json"
    deadline = time.monotonic() + TIMEOUT
    while not checkpoint.exists():  # the first epoch is saved
        assert process.poll() is None, process.communicate()[1][-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    victim = rank_process(process.pid, rank=1)
    os.kill(victim, signal.SIGKILL)
    _, err = process.communicate(timeout=300)  # the survivors end: no hang
    assert process.returncode != 0
    assert "siamese_k3" in err and ("SIGKILL" in err or "Signal 9" in err or "failed" in err.lower())
    assert json.loads((out / "status.json").read_text())["state"] == "unfinished"
    finished = json.loads(checkpoint.read_text())["epochs"]
    assert 1 <= len(finished) < 4
    # The same command again resumes from the last checkpoint and finishes.
    command[command.index("--master-port") + 1] = str(free_port())
    again = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "Resuming the unfinished run" in again.stdout
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 4
    assert json.loads((out / "status.json").read_text())["state"] == "finished"


def rank_process(launcher, rank):
    """The pid of the torchrun worker with RANK=`rank` among `launcher`'s descendants."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ and descends_from(int(entry.name), launcher):
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank} under process {launcher}")


def descends_from(pid, ancestor):
    while pid > 1:
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
    return False
