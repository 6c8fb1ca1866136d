"""Run-folder files: atomic writes and the one-writer lock. Plain Python, no keras.

A kill at any moment leaves each run file either as it was or complete: every
write goes to a temporary file in the same folder, which then replaces the
target with `os.replace` (atomic on POSIX and Windows). The lock is an OS-level
exclusive lock (`fcntl.flock`, `msvcrt.locking` on Windows) on ``RUN/.lock``,
held by the process that writes the folder and released by the OS when that
process ends, however it ends.
"""

import contextlib
import json
import os
import socket
import sys
import time

import numpy as np

from siamese_k3.errors import RunFolderError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The temporary name keeps the whole extension (keras' savers insist on
    ``.keras`` and ``.weights.h5``): ``DIR/.STEM.partial-PID.EXT`` for
    ``DIR/STEM.EXT``, where EXT is everything after the first dot.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    stem, dot, extension = name.partition(".")
    temporary = os.path.join(folder, f".{stem}.partial-{os.getpid()}{dot}{extension}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(path, value):
    """`value` as indented JSON at `path`, atomically (numpy scalars and arrays allowed)."""
    with atomic_path(path) as temporary, open(temporary, "w") as handle:
        json.dump(value, handle, indent=2, default=_json_default)
        handle.flush()
        os.fsync(handle.fileno())


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class RunLock:
    """Exclusive lock on a run folder, for one writer at a time (a context manager).

    ``with RunLock(out): ...`` creates `out` if needed and locks ``out/.lock``;
    a second process asking for the same folder gets a `RunFolderError` at once,
    naming the process that holds it (its pid, host, start time and command line,
    written into the lock file). The OS drops the lock when the holder exits or
    is killed, so a crash never leaves the folder stuck.
    """

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self._handle = None

    def __enter__(self):
        os.makedirs(self.folder, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            _lock_exclusively(handle)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderError(
                f"{self.folder} is in use by {holder}: wait for it to finish (or stop it), "
                "or choose another --out."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"pid {os.getpid()} on {socket.gethostname()}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({_command_line()})"
        )
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info):
        handle, self._handle = self._handle, None
        handle.seek(0)
        handle.truncate()
        handle.close()  # closing the descriptor releases the lock


def _command_line():
    """This process's command line, its program shortened: `siamese-k3 train ...`, `siamese_k3 train ...`."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    if program == "__main__.py":  # python -m PACKAGE
        program = os.path.basename(os.path.dirname(sys.argv[0]))
    return " ".join([program, *sys.argv[1:]])


def _lock_exclusively(handle):
    """Non-blocking exclusive lock on an open file; OSError when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
