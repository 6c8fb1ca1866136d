"""siamese_k3.training through the CLI: a run is what it says, or it says why not (issue 24).

Resume is exact, a damaged checkpoint is refused in one line, --overwrite checks
everything before it deletes, and an interruption anywhere (in training, in the
final evaluation, while finishing) resumes without retraining. Kills use real
processes.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from siamese_k3 import cli, run_evaluation, training
from siamese_k3.run_folder import RunFolder

from test_cli import write_clustered_idx

BACKEND = keras.backend.backend()
COMMON = ["--steps-per-epoch", "3", "--batch-size", "16", "--classes-per-batch", "4", "--embedding-dim", "8",
          "--validation-size", "40", "--quiet"]
SMALL = ["--epochs", "3", *COMMON]
# Every backend computes the same numbers from the same state in a fresh process, so a resumed
# run equals the uninterrupted one bit for bit (checked on torch, JAX and TensorFlow on CPU).
TOLERANCE = dict(rtol=0, atol=0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy") / "data"
    write_clustered_idx(folder, train=80, test=40)
    return folder


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    """A 3-epoch run trained in one go: the reference every resumed run must equal."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cli.main(["train", "--data-dir", str(data_dir), "--out", str(out), *SMALL]) == 0
    return out


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def embedding_weights(run):
    return [np.asarray(weight) for weight in keras.models.load_model(run / "embedding.keras").get_weights()]


def assert_same_run(run, reference):
    """Same history (every epoch's every metric), metrics and trained weights."""
    history, expected = read_json(run / "history.json"), read_json(reference / "history.json")
    assert sorted(history) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(history[key], expected[key], err_msg=key, **TOLERANCE)
    metrics, expected_metrics = read_json(run / "metrics.json"), read_json(reference / "metrics.json")
    for key in ("precision_at_1", "r_precision", "map_at_r"):
        np.testing.assert_allclose(metrics[key], expected_metrics[key], err_msg=key, **TOLERANCE)
    for weight, expected_weight in zip(embedding_weights(run), embedding_weights(reference)):
        np.testing.assert_allclose(weight, expected_weight, **TOLERANCE)
    assert read_json(run / "status.json")["state"] == "finished"
    assert not (run / "backup").exists()


def train_command(data_dir, out, epochs=3):
    return [sys.executable, "-m", "siamese_k3", "train", "--data-dir", str(data_dir), "--out", str(out),
            "--epochs", str(epochs), *COMMON]


def environment():
    return {**os.environ, "KERAS_BACKEND": BACKEND}


def wait_for(predicate, process, seconds=300):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert process.poll() is None, "the run ended before the moment the test waits for"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def checkpoint_epoch(out):
    try:
        return read_json(out / "backup" / "training_metadata.json")["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def interrupt_after(after_epoch, data_dir, out):
    """Trains the SMALL run into `out` with a Ctrl-C right after epoch `after_epoch` is checkpointed."""
    original = training.RunCheckpoint

    class StopAfter(original):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if epoch + 1 == after_epoch:
                raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "RunCheckpoint", StopAfter)
        assert cli.main(["train", "--data-dir", str(data_dir), "--out", str(out), *SMALL]) == 130


# --------------------------------------------------------------------------
# exact resume
# --------------------------------------------------------------------------


@pytest.mark.parametrize("after_epoch", [1, 2])
def test_a_run_interrupted_at_an_epoch_boundary_resumes_to_the_uninterrupted_run(
    after_epoch, data_dir, uninterrupted, tmp_path, capsys
):
    """Issue 24 #3: the sampler's epoch, the optimizer and the RNG state continue; history, metrics and
    weights equal the uninterrupted run's (bit for bit on torch)."""
    out = tmp_path / "run"
    interrupt_after(after_epoch, data_dir, out)
    assert read_json(out / "status.json")["state"] == "unfinished"
    assert checkpoint_epoch(out) == after_epoch
    capsys.readouterr()
    assert cli.main(["train", "--data-dir", str(data_dir), "--out", str(out), *SMALL]) == 0
    assert "Resuming the unfinished run" in capsys.readouterr().out
    assert_same_run(out, uninterrupted)  # every epoch's history, the metrics, the weights; backup/ gone


@pytest.mark.timed
def test_a_kill_9_in_training_then_the_same_command_gives_the_uninterrupted_run(data_dir, uninterrupted, tmp_path):
    """A real SIGKILL once epoch 1 is checkpointed (wherever epoch 2 then is), then the same command."""
    out = tmp_path / "run"
    process = subprocess.Popen(train_command(data_dir, out), env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        wait_for(lambda: checkpoint_epoch(out) >= 1, process)
    finally:
        process.kill()
        process.wait()
    if (out / "metrics.json").exists():
        pytest.skip("the run finished before the kill landed")
    completed = subprocess.run(train_command(data_dir, out), env=environment(), capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "Resuming the unfinished run" in completed.stdout
    assert_same_run(out, uninterrupted)


def test_an_interruption_in_the_final_evaluation_resumes_without_retraining(
    data_dir, uninterrupted, tmp_path, monkeypatch
):
    """Keras' own BackupAndRestore deleted the checkpoint before the evaluation: a Ctrl-C there lost the run."""
    out = tmp_path / "run"
    real_evaluate = run_evaluation.evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_evaluation, "evaluate", interrupted)
    assert cli.main(["train", "--data-dir", str(data_dir), "--out", str(out), *SMALL]) == 130
    assert checkpoint_epoch(out) == 3 and read_json(out / "status.json")["state"] == "unfinished"
    fits = []
    monkeypatch.setattr(run_evaluation, "evaluate", real_evaluate)
    monkeypatch.setattr(keras.Model, "fit", lambda *args, **kwargs: fits.append(1))
    assert cli.main(["train", "--data-dir", str(data_dir), "--out", str(out), *SMALL]) == 0
    assert fits == []  # nothing retrained: every epoch was in the checkpoint
    monkeypatch.undo()
    assert_same_run(out, uninterrupted)


def test_an_interruption_after_the_metrics_before_finished_resumes(data_dir, uninterrupted, tmp_path, monkeypatch):
    """A kill between metrics.json and status 'finished' used to read as a finished run."""
    out = tmp_path / "run"
    real = RunFolder.write_status

    def stop_at_finished(self, state, *args, **kwargs):
        if state == "finished":
            raise KeyboardInterrupt
        return real(self, state, *args, **kwargs)

    monkeypatch.setattr(RunFolder, "write_status", stop_at_finished)
    assert cli.main(["train", "--data-dir", str(data_dir), "--out", str(out), *SMALL]) == 130
    monkeypatch.undo()
    assert (out / "metrics.json").exists() and (out / "backup").exists()
    assert cli.main(["evaluate", str(out)]) == 1  # an unfinished run is not evaluated: no inconsistent state
    assert cli.main(["train", "--data-dir", str(data_dir), "--out", str(out), *SMALL]) == 0
    assert_same_run(out, uninterrupted)


# --------------------------------------------------------------------------
# a damaged checkpoint is refused, in one line
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted_after_first_epoch(data_dir, tmp_path_factory):
    """An unfinished run folder checkpointed after epoch 1 (each test damages its own copy)."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    interrupt_after(1, data_dir, out)
    return out


def damage_checkpoint(out, damage):
    """Damages the checkpoint of the unfinished run in `out` as named; returns the damaged file."""
    metadata = read_json(out / "backup" / "training_metadata.json")
    weights = out / "backup" / metadata["weights"]
    if damage == "missing_weights":
        weights.unlink()
        return weights
    if damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:4096])
        return weights
    damaged = out / "backup" / "training_metadata.json"
    if damage == "bad_metadata":
        damaged.write_text('{"epoch": 1, "weights"')
    else:  # inconsistent_epochs: the metadata claims an epoch the weights do not hold
        damaged.write_text(json.dumps({**metadata, "epoch": 2}))
    return damaged


@pytest.mark.parametrize("damage", ["missing_weights", "truncated_weights", "bad_metadata", "inconsistent_epochs"])
def test_a_damaged_checkpoint_stops_with_one_line_naming_the_file(
    damage, data_dir, interrupted_after_first_epoch, tmp_path, capsys
):
    """Issue 24 #1: with backup/latest.weights.h5 gone keras resumed an untrained model and called it finished."""
    out = tmp_path / "run"
    shutil.copytree(interrupted_after_first_epoch, out)
    damaged = damage_checkpoint(out, damage)
    capsys.readouterr()
    assert cli.main(["train", "--data-dir", str(data_dir), "--out", str(out), *SMALL]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert str(damaged) in error and "--overwrite" in error
    assert not (out / "metrics.json").exists() and read_json(out / "status.json")["state"] == "unfinished"


def test_overwrite_trains_afresh_over_a_damaged_checkpoint(data_dir, interrupted_after_first_epoch, uninterrupted, tmp_path):
    """The way out the error names: --overwrite gives the run trained in one go."""
    out = tmp_path / "run"
    shutil.copytree(interrupted_after_first_epoch, out)
    damage_checkpoint(out, "truncated_weights")
    assert cli.main(["train", "--data-dir", str(data_dir), "--out", str(out), *SMALL, "--overwrite"]) == 0
    assert_same_run(out, uninterrupted)


# --------------------------------------------------------------------------
# --overwrite checks everything before it deletes
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, code",
    [
        (["--dataset", "nonsense"], 1),
        (["--batch-size", "7", "--classes-per-batch", "4"], 1),
        (["--backbone", "vgg99"], 1),
        (["--seed", "-1"], 2),
        (["--data-dir", "EMPTY"], 1),
        # issue 31: checks that come once training starts (the sampler, the backbone, its weights file)
        (["--batch-size", "44", "--classes-per-batch", "11"], 1),
        (["--backbone", "resnet50"], 1),
        (["--backbone", "resnet50", "--weights", "nosuch.h5"], 1),
    ],
)
def test_overwrite_with_a_bad_option_leaves_the_finished_run_whole(bad, code, uninterrupted, data_dir, tmp_path, capsys):
    """Issue 24 #2: these used to fail only after every file of the finished run was gone."""
    (tmp_path / "EMPTY").mkdir()
    bad = [str(tmp_path / "EMPTY") if value == "EMPTY" else value for value in bad]
    before = {name: (uninterrupted / name).read_bytes() for name in os.listdir(uninterrupted) if name != ".lock"}
    argv = ["train", "--data-dir", str(data_dir), "--out", str(uninterrupted), *SMALL, "--overwrite", *bad]
    if code == 2:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    else:
        assert cli.main(argv) == 1
    assert capsys.readouterr().err.count("\n") == 1
    after = {name: (uninterrupted / name).read_bytes() for name in os.listdir(uninterrupted) if name != ".lock"}
    assert after == before
    assert sorted(os.listdir(uninterrupted.parent)) == [uninterrupted.name]  # no scratch sibling left behind


KILL_POINTS = ["first_epoch", "before_replace", "between_renames", "before_removal"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_9_anywhere_in_an_overwrite_leaves_the_old_run_or_a_resumable_new_one(
    point, data_dir, uninterrupted, tmp_path
):
    """Issue 31 #1: the new run trains beside the old one and replaces it after its first checkpoint; a
    SIGKILL at any moment leaves the old finished run whole or the new one unfinished, never neither, and
    the same command then finishes the new run (equal to one trained in one go)."""
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    before = {name: (out / name).read_bytes() for name in os.listdir(out) if name != ".lock"}
    argv = ["--data-dir", str(data_dir), *SMALL, "--overwrite"]
    worker = os.path.join(os.path.dirname(__file__), "overwrite_worker.py")
    process = subprocess.run(
        [sys.executable, worker, point, str(out), *argv], env=environment(), capture_output=True, text=True,
        timeout=300,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    if point in ("first_epoch", "before_replace"):  # the old run, untouched
        assert {name: (out / name).read_bytes() for name in os.listdir(out) if name != ".lock"} == before
    elif point == "between_renames":  # neither in place: the next command that locks the folder completes it
        assert not out.exists()
    else:  # the new run, unfinished, resumable
        assert read_json(out / "status.json")["state"] == "unfinished" and checkpoint_epoch(out) >= 1
    assert cli.main(["train", "--out", str(out), *argv]) == 0
    assert_same_run(out, uninterrupted)
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no scratch or replaced sibling left


# --------------------------------------------------------------------------
# signals, with real processes
# --------------------------------------------------------------------------


@pytest.mark.timed
@pytest.mark.parametrize("signal_number, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_in_training_stops_within_seconds_unfinished_and_the_same_command_resumes(
    signal_number, code, data_dir, tmp_path
):
    out = tmp_path / "run"
    process = subprocess.Popen(train_command(data_dir, out, epochs=400), env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: checkpoint_epoch(out) >= 1, process)
        sent = time.monotonic()
        process.send_signal(signal_number)
        process.wait(timeout=30)
        seconds = time.monotonic() - sent
    finally:
        process.kill()
    error = process.stderr.read()
    assert process.returncode == code, error[-2000:]
    assert seconds < 15, f"took {seconds:.1f} s to stop"
    assert "Traceback" not in error and "the same command resumes it" in error
    assert "The process may be terminated" not in error  # issue 31: TensorFlow's data iterator is released in time
    assert read_json(out / "status.json")["state"] == "unfinished"
    assert checkpoint_epoch(out) >= 1 and not (out / "metrics.json").exists()


# --------------------------------------------------------------------------
# messages (issue 31 #4)
# --------------------------------------------------------------------------


def diverge_in_the_first_epoch(monkeypatch):
    from siamese_k3.errors import NonFiniteLossError

    class Diverge(training.StopOnNonFiniteLoss):
        def on_epoch_end(self, epoch, logs=None):
            raise NonFiniteLossError("loss became nan at epoch 1, step 3.")

    monkeypatch.setattr(training, "StopOnNonFiniteLoss", Diverge)


def test_a_diverged_run_says_failed_not_unfinished(data_dir, tmp_path, capsys, monkeypatch):
    diverge_in_the_first_epoch(monkeypatch)
    out = tmp_path / "run"
    capsys.readouterr()
    assert cli.main(["train", "--data-dir", str(data_dir), "--out", str(out), "--epochs", "1", *COMMON]) == 1
    error = capsys.readouterr().err
    assert read_json(out / "status.json")["state"] == "failed"
    assert f"The run in {out} is marked failed." in error and "unfinished" not in error


def test_an_overwrite_that_diverges_in_its_first_epoch_keeps_the_old_run(data_dir, uninterrupted, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    before = {name: (out / name).read_bytes() for name in os.listdir(out) if name != ".lock"}
    diverge_in_the_first_epoch(monkeypatch)
    capsys.readouterr()
    assert cli.main(["train", "--data-dir", str(data_dir), "--out", str(out), *SMALL, "--overwrite"]) == 1
    error = capsys.readouterr().err
    assert f"The run it was to replace, in {out}, is kept as it was." in error and error.count("\n") == 1
    assert {name: (out / name).read_bytes() for name in os.listdir(out) if name != ".lock"} == before


def test_an_over_long_out_is_one_line_and_leaves_no_folders(data_dir, tmp_path, capsys):
    """Issue 31 #4: the run folder's parents were made before the too-long name failed, and left."""
    out = tmp_path.joinpath(*[f"level{depth}" for depth in range(20)], "x" * 300)
    capsys.readouterr()
    assert cli.main(["train", "--data-dir", str(data_dir), "--out", str(out), *SMALL]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "File name too long" in error and "OSError" not in error
    assert not (tmp_path / "level0").exists()
