"""siamese_k3.runs.training through the CLI, continued: a damaged checkpoint is refused in one line, --overwrite
checks everything before it touches the finished run and can never lose it (issues 24 and 31), and a failed run
says so. Kills use real processes. Split from tests/test_training.py so that pytest-xdist runs the two on both
cores; both read conftest.py's one `resume_reference`.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from siamese_k3 import cli
from siamese_k3.runs import training
from siamese_k3.errors import NonFiniteLossError

from test_training import COMMON, SMALL, assert_same_run, checkpoint_epoch, environment, interrupt_after, read_json

pytestmark = pytest.mark.backend_independent  # numpy, files and checks: one backend runs it (tests/README.md)


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
    # A copy of the shared finished run, in a folder of its own: other tests (on the other xdist worker) read
    # the original, and the check below lists the run's parent folder.
    finished = tmp_path / "runs" / "run"
    shutil.copytree(uninterrupted, finished, ignore=shutil.ignore_patterns(".lock"))
    before = {name: (finished / name).read_bytes() for name in os.listdir(finished) if name != ".lock"}
    argv = ["train", "--data-dir", str(data_dir), "--out", str(finished), *SMALL, "--overwrite", *bad]
    if code == 2:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    else:
        assert cli.main(argv) == 1
    assert capsys.readouterr().err.count("\n") == 1
    after = {name: (finished / name).read_bytes() for name in os.listdir(finished) if name != ".lock"}
    assert after == before
    assert sorted(os.listdir(finished.parent)) == [finished.name]  # no scratch sibling left behind


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
# messages (issue 31 #4)
# --------------------------------------------------------------------------


def diverge_in_the_first_epoch(monkeypatch):

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
