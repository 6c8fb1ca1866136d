"""siamese_k3.runs.training through the CLI: a run is what it says, or it says why not (issue 24).

Resume is exact, and an interruption anywhere (in training, in the final
evaluation, while finishing, by a signal) resumes without retraining. Kills use
real processes. A damaged checkpoint, --overwrite and the messages of a failed
run: tests/test_training_overwrite.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from siamese_k3 import cli
from siamese_k3.runs import evaluation as run_evaluation, training
from siamese_k3.runs.folder import RUN_FILES, RunFolder

from toy import COMMON, SMALL  # noqa: F401 (test_training_overwrite imports them from here)

BACKEND = keras.backend.backend()
# Every backend computes the same numbers from the same state in a fresh process, so a resumed
# run equals the uninterrupted one bit for bit (checked on torch, JAX and TensorFlow on CPU).
TOLERANCE = dict(rtol=0, atol=0)


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


def test_a_run_interrupted_at_each_epoch_boundary_resumes_to_the_uninterrupted_run(
    data_dir, uninterrupted, tmp_path, capsys
):
    """Issue 24 #3: the sampler's epoch, the optimizer and the RNG state continue; history, metrics and
    weights equal the uninterrupted run's (bit for bit on torch). Both boundaries of the 3-epoch run in
    one chain: interrupted after epoch 1, resumed and interrupted again after epoch 2 (a resumed run's
    own checkpoint), resumed to the end."""
    out = tmp_path / "run"
    interrupt_after(1, data_dir, out)
    assert read_json(out / "status.json")["state"] == "unfinished"
    assert checkpoint_epoch(out) == 1
    capsys.readouterr()
    interrupt_after(2, data_dir, out)
    assert "Resuming the unfinished run" in capsys.readouterr().out
    assert read_json(out / "status.json")["state"] == "unfinished"
    assert checkpoint_epoch(out) == 2
    assert cli.main(["train", "--data-dir", str(data_dir), "--out", str(out), *SMALL]) == 0
    assert "Resuming the unfinished run" in capsys.readouterr().out
    assert_same_run(out, uninterrupted)  # every epoch's history, the metrics, the weights; backup/ gone


def test_a_run_with_no_plots_writes_every_file_but_the_pngs(uninterrupted):
    """toy.SMALL trains with --no-plots: the run is finished and complete (calibration.json included), no PNG drawn."""
    expected = {name for name in RUN_FILES if not name.endswith(".png")}
    assert {name for name in RUN_FILES if (uninterrupted / name).exists()} == expected
    assert read_json(uninterrupted / "config.json")["plots"] is False


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
# signals, with real processes
# --------------------------------------------------------------------------


@pytest.mark.timed
@pytest.mark.stop_bound
@pytest.mark.parametrize("signal_number, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_in_training_stops_within_seconds_unfinished_and_the_same_command_resumes(
    signal_number, code, data_dir, tmp_path, record_property
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
    record_property("seconds_of_bound", f"{seconds:.2f} of 15")
    assert seconds < 15, f"took {seconds:.1f} s to stop"
    assert "Traceback" not in error and "the same command resumes it" in error
    assert "The process may be terminated" not in error  # issue 31: TensorFlow's data iterator is released in time
    assert read_json(out / "status.json")["state"] == "unfinished"
    assert checkpoint_epoch(out) >= 1 and not (out / "metrics.json").exists()
