"""Run-folder files: atomic writes and the one-writer lock. Plain Python, no keras.

A kill at any moment leaves each run file either as it was or complete: every
write goes to a temporary file in the same folder, which then replaces the
target with `os.replace` (atomic on POSIX and Windows). The lock is an OS-level
exclusive lock (`fcntl.flock`, `msvcrt.locking` on Windows) on ``RUN/.lock``,
held by the process that writes the folder and released by the OS when that
process ends, however it ends.
"""

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import time

import numpy as np

from siamese_k3.errors import RunFolderError, SiameseK3Error

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
    except OSError as error:  # name the file asked for, never the temporary one
        if temporary not in (error.filename, error.filename2):
            raise
        raise type(error)(error.errno, error.strerror, path) from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def make_folders(path):
    """`os.makedirs(path)`; the folders it created, outermost first. On failure (a name too long, a file in
    the way) it removes those it had created, so nothing is left behind, and raises the `OSError`."""
    missing, current = [], os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    created = []
    try:
        for folder in reversed(missing):
            try:
                os.mkdir(folder)
            except FileExistsError:
                if not os.path.isdir(folder):
                    raise
                continue
            created.append(folder)
    except OSError:
        remove_folders(created)
        raise
    return created


def remove_folders(created):
    """Remove the empty folders `make_folders` created, innermost first (those no longer empty stay)."""
    for folder in reversed(created):
        try:
            os.rmdir(folder)
        except OSError:
            pass


@contextlib.contextmanager
def atomic_folder(path, owned, what="index"):
    """Yield an empty temporary folder beside `path`; on success it replaces the folder `path` as a whole.

    Readers see the old folder or the new one, never files of both: the new
    folder is exchanged with the old in one step (`exchange_paths`), or, where
    the system cannot, the old is renamed away first (a kill between the two
    renames leaves no folder, never a mixed one). The old folder may hold only
    the files named in `owned` (anything else: `SiameseK3Error` naming `what`, nothing written).
    """
    path = os.path.normpath(os.fspath(path))
    others = sorted(set(os.listdir(path)) - set(owned)) if os.path.isdir(path) else []
    if others:
        raise SiameseK3Error(
            f"{path} holds other files than an {what} ({', '.join(others[:3])}): choose an empty or new folder."
        )
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.partial-{os.getpid()}")
    old = os.path.join(folder, f".{name}.old-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    try:
        yield temporary
        if not os.path.isdir(path):
            os.rename(temporary, path)
        elif exchange_paths(temporary, path):
            shutil.rmtree(temporary)
        else:
            os.rename(path, old)
            os.rename(temporary, path)
            shutil.rmtree(old)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def exchange_paths(first, second):
    """Swap two existing paths in one atomic step; False (nothing done) where the system cannot.

    Linux's ``renameat2(..., RENAME_EXCHANGE)``: at every moment each path
    holds one of the two. Elsewhere, or on a file system without it, the
    caller falls back to two renames.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc before 2.28, musl
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_current_directory, rename_exchange = -100, 2
    if renameat2(at_current_directory, os.fsencode(first), at_current_directory, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), first, None, second)


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
    written into the lock file) and what to do: wait, then `elsewhere` if given
    (", or choose another --out" for a command that has --out). A folder that
    cannot be made is one `RunFolderError` too, and leaves no folder behind.
    The OS drops the lock when the holder exits or is killed, so a crash never
    leaves the folder stuck.
    """

    def __init__(self, folder, elsewhere=""):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.elsewhere = elsewhere  # the other way out, for commands that have one: ", or choose another --out"
        self._handle = None

    def __enter__(self):
        created = []
        try:
            created = make_folders(self.folder)
            handle = open(self.path, "a+")
        except OSError as error:
            remove_folders(created)
            raise RunFolderError(
                f"cannot use {self.folder} as a run folder ({error.strerror or error}){self.elsewhere}."
            ) from None
        try:
            _lock_exclusively(handle)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderError(
                f"{self.folder} is in use by {holder}: wait for it to finish (or stop it){self.elsewhere}."
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
