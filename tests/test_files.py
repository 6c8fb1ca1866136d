"""siamese_k3.files: atomic writes and the run-folder lock."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from siamese_k3.errors import SiameseK3Error
from siamese_k3.files import RunLock, atomic_path, write_json

pytestmark = pytest.mark.backend_independent  # numpy, files and checks: one backend runs it (tests/README.md)

HOLD_LOCK = (
    "import sys, time\n"
    "from siamese_k3.files import RunLock\n"
    "lock = RunLock(sys.argv[1]).__enter__()\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)


def hold_lock_in_another_process(folder):
    """A child process holding RunLock(folder) (returned once it holds it)."""
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_write_json_writes_numpy_values(tmp_path):
    write_json(tmp_path / "a.json", {"x": np.float32(0.5), "y": np.arange(3)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 0.5, "y": [0, 1, 2]}
    assert os.listdir(tmp_path) == ["a.json"]


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"old": 1}')
    with pytest.raises(TypeError):
        write_json(path, {"new": object()})  # fails half-way through json.dump
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_atomic_path_keeps_the_extension_and_replaces_on_success(tmp_path):
    path = tmp_path / "embedding.keras"
    with atomic_path(path) as temporary:
        assert temporary.endswith(".keras") and os.path.dirname(temporary) == str(tmp_path)
        with open(temporary, "w") as handle:
            handle.write("new")
        assert not path.exists()  # nobody sees a half-written target
    assert path.read_text() == "new"


def test_a_second_lock_on_the_folder_is_refused_and_names_the_holder(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(SiameseK3Error, match=rf"run is in use by pid {os.getpid()} on .* started"):
            RunLock(tmp_path / "run").__enter__()
    with RunLock(tmp_path / "run"):  # released on exit
        pass


def test_the_lock_of_a_killed_process_is_released(tmp_path):
    child = hold_lock_in_another_process(tmp_path)
    with pytest.raises(SiameseK3Error, match=rf"in use by pid {child.pid} "):
        RunLock(tmp_path).__enter__()
    child.send_signal(signal.SIGKILL)
    child.wait()
    with RunLock(tmp_path):
        pass


def test_atomic_path_names_the_target_not_its_temporary_file(tmp_path):
    """Issue 31 #4: a failed write named .x.partial-PID.npy, a file the user never asked for."""
    target = tmp_path / "missing" / "x.npy"
    with pytest.raises(FileNotFoundError) as caught:
        with atomic_path(target) as temporary, open(temporary, "wb"):
            pass
    assert caught.value.filename == str(target) and ".partial-" not in str(caught.value)


def test_run_lock_on_a_name_too_long_removes_the_folders_it_made(tmp_path):
    from siamese_k3.errors import RunFolderError

    folder = tmp_path / "a" / "b" / ("x" * 300)
    with pytest.raises(RunFolderError, match=r"cannot use .* as a run folder \(File name too long\)\.$"):
        RunLock(folder).__enter__()
    assert sorted(os.listdir(tmp_path)) == []


def test_run_lock_on_a_file_is_one_line_offering_the_given_way_out(tmp_path):
    """Issue 31 #4: `--out FILE` printed `FileExistsError: [Errno 17] ...`."""
    from siamese_k3.errors import RunFolderError

    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError) as caught:
        RunLock(tmp_path / "file", ", or choose another folder").__enter__()
    assert str(caught.value) == f"cannot use {tmp_path / 'file'} as a run folder (File exists), or choose another folder."
