"""The run folder: its format, its status, its lock, its resume checkpoint, and loading what it holds.

A run folder (``siamese-k3 train --out RUN``, ``siamese_k3.train(out=RUN)``) holds:

- ``config.json``: the folder's ``format`` (`FORMAT`: a folder of another
  format, or a status this version does not know, is refused in one line),
  the `TrainConfig` fields plus what the run found out (``backend``,
  ``input_shape``, ``class_names``, data-parallel layout);
- ``status.json``: ``{"state": "unfinished" | "failed" | "finished", "backend",
  "time", "message"?}``. A run is ``finished`` only once every file below is
  written; ``failed`` means training diverged; ``unfinished`` means stopped
  (killed, interrupted), and the same command resumes it;
- ``embedding.keras``: raw images in (0-255), embeddings out: the inference
  model alone, loadable by plain keras without siamese_k3;
- ``model.keras``: the trained model with its optimizer and loss (load it after
  ``import siamese_k3``), for fine-tuning;
- ``history.json`` (per-epoch logs), ``metrics.json`` (the evaluation),
  ``loss.png``, ``distances.png``, ``triplets.png``, ``embeddings_pca.png``;
- ``calibration.json`` and ``calibration.png``: the "same or not" distance
  threshold (`siamese_k3.search.calibration`), chosen on held-out data;
- ``index/``: a similarity index of a gallery (`siamese-k3 index`,
  `siamese_k3.search.SimilarityIndex`), tied to this run by a fingerprint;
- ``backup/``: the per-epoch checkpoint (`siamese_k3.callbacks.RunCheckpoint`),
  kept until ``metrics.json`` and ``status: finished`` are written, so an
  interruption anywhere resumes without retraining;
- ``.lock``: held by the process writing the folder (`siamese_k3.files.RunLock`).

``--overwrite`` never loses a finished run: the new run trains in a hidden
sibling, ``.RUN.overwrite``, under the lock of RUN, and replaces RUN only once
it holds the checkpoint of its first epoch (`RunFolder.replace_with`: RUN is
exchanged with the new run in one atomic step on Linux, else renamed to
``.RUN.replaced`` before the new run is renamed to RUN; then the old one is removed).
Every check of the new run (its data, its batches, its backbone) happens before
that. A kill at any moment leaves RUN holding the old finished run or the new
unfinished one, which the same command resumes (without the atomic exchange, a
kill between the two renames is completed by the next command that locks RUN,
`RunFolder.lock`).

Every file is written atomically (`siamese_k3.files`). Reading a damaged file
raises `RunFolderError` naming the file and what to do.
"""

import contextlib
import json
import os
import shutil
import time

from siamese_k3.errors import RunFailedError, RunFolderError
from siamese_k3.files import RunLock, atomic_path, exchange_paths, write_json

RUN_FILES = (
    "config.json", "status.json", "embedding.keras", "model.keras", "history.json", "metrics.json",
    "loss.png", "distances.png", "triplets.png", "embeddings_pca.png", "calibration.json", "calibration.png",
)
INDEX = "index"
CHECKPOINT = "backup"
UNFINISHED, FAILED, FINISHED = "unfinished", "failed", "finished"
STATES = (UNFINISHED, FAILED, FINISHED)
FORMAT = "siamese_k3.run/1"  # config.json "format"; runs written before it have none, and read as this one
SCRATCH, REPLACED = "overwrite", "replaced"  # the hidden siblings .RUN.overwrite and .RUN.replaced


class RunFolder:
    """One run folder on disk (it need not exist yet): paths, status, config and checkpoint.

    It reads and writes files only; training, evaluation and inference live in
    `siamese_k3.runs.training`, `siamese_k3.runs.evaluation` and `siamese_k3.runs.inference`.
    """

    def __init__(self, path):
        self.path = os.fspath(path)

    def __repr__(self):
        return f"RunFolder({self.path!r})"

    def file(self, name):
        """The path of `name` inside the folder."""
        return os.path.join(self.path, name)

    @property
    def checkpoint(self):
        """The checkpoint folder, ``RUN/backup``."""
        return self.file(CHECKPOINT)

    def sibling(self, kind):
        """The hidden sibling ``.RUN.<kind>`` (`SCRATCH`: a new run replacing this one; `REPLACED`: the old one)."""
        parent, name = os.path.split(os.path.normpath(os.path.abspath(self.path)))
        return os.path.join(parent, f".{name}.{kind}")

    @contextlib.contextmanager
    def lock(self, elsewhere=""):
        """`RunLock` on the folder (one writer at a time), after completing a replacement a kill cut short.

        `elsewhere` ends the message when the folder is in use (``", or choose another folder"``).
        """
        scratch, replaced = self.sibling(SCRATCH), self.sibling(REPLACED)
        if not os.path.exists(self.path) and os.path.isdir(replaced) and os.path.isdir(scratch):
            with RunLock(scratch):  # killed between the two renames of `replace_with`: finish it
                if not os.path.exists(self.path):
                    os.rename(scratch, self.path)
        with RunLock(self.path, elsewhere) as held:
            shutil.rmtree(replaced, ignore_errors=True)
            yield held

    # ------------------------------------------------------------------ reading

    def read_json(self, name, required=True):
        """The JSON file `name`; None when absent and not `required`; `RunFolderError` when unreadable."""
        path = self.file(name)
        if not os.path.isfile(path):
            if required:
                raise RunFolderError(f"{path} is missing: {self._unfinished() or self._not_whole()}")
            return None
        try:
            with open(path) as handle:
                return json.load(handle)
        except (OSError, ValueError) as error:
            raise RunFolderError(
                f"{path} is damaged ({' '.join(str(error).split())}): "
                f"{self._not_whole()}"
            ) from None

    def config(self):
        """config.json as a dict (`TrainConfig` fields plus the run's facts); `RunFolderError` if not a run."""
        if not os.path.isfile(self.file("config.json")):
            raise RunFolderError(
                f"{self.path} is not a run folder (no config.json): give a folder written by `siamese-k3 train`."
            )
        config = self.read_json("config.json")
        if not isinstance(config, dict):
            raise RunFolderError(f"{self.file('config.json')} is damaged (not a JSON object): {self._not_whole()}")
        _check_format(self.file("config.json"), config)
        return config

    def status(self):
        """status.json as a dict, or None for a folder that never had one."""
        status = self.read_json("status.json", required=False)
        if status is not None and not isinstance(status, dict):
            raise RunFolderError(f"{self.file('status.json')} is damaged (not a JSON object): {self._not_whole()}")
        if status is not None:
            _check_state(self.file("status.json"), status)
        return status

    def state(self):
        """``unfinished``, ``failed``, ``finished``, or None (no status.json)."""
        status = self.status()
        return status.get("state") if status else None

    def require_usable(self):
        """Raise `RunFolderError` unless the folder holds a run whose embedding model can be used.

        A failed run is refused; an unfinished one too (rerunning its train
        command finishes it); a folder without status.json (written by hand or
        by an older version) is accepted when its files are there.
        """
        self.config()
        status = self.status() or {}
        state = status.get("state")
        if state == FAILED:
            raise RunFolderError(
                f"{self.path} holds a failed run ({status.get('message', 'no reason recorded')}): "
                "train it again with overwrite=True."
            )
        if state == UNFINISHED:
            raise RunFolderError(
                f"{self.path} holds an unfinished run: train it again with the same options to resume and "
                "finish it (or pass overwrite=True to start over)."
            )
        if not os.path.isfile(self.file("embedding.keras")):
            raise RunFolderError(
                f"{self.file('embedding.keras')} is missing: the run did not finish; train it again into the same folder."
            )

    # ------------------------------------------------------------------ writing

    def write_json(self, name, value):
        write_json(self.file(name), value)

    def write_status(self, state, backend, message=None):
        status = {"state": state, "backend": backend, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        if message:
            status["message"] = message
        self.write_json("status.json", status)

    def save_model(self, model, name):
        """`model.save(RUN/name)` atomically: a kill mid-save leaves the previous file, never half of one."""
        save_model(model, self.file(name))

    @contextlib.contextmanager
    def prepare(self, config, overwrite):
        """Get ready to train `config` (a `TrainConfig`): ``with folder.prepare(...) as (work, metadata)``.

        Call it under `lock`, once everything else is checked (options, data).
        `work` is the `RunFolder` to train in, `metadata` the checked checkpoint
        to resume from (None to start). A finished run is refused unless
        `overwrite`; an unfinished run is resumed when its options are the same
        (its checkpoint checked whole, else `RunFolderError` naming the damaged
        file), and refused otherwise. With `overwrite`, a run that cannot be
        resumed is replaced: `work` is then the scratch sibling, to hand to
        `replace_with` once it holds a checkpoint; until then the old run is
        untouched, and the scratch is removed if training fails on bad input.
        """
        if not overwrite:
            self.check_version()
        state = self._state_quietly()  # an unfinished run resumes even when a kill left its metrics.json
        finished = state == FINISHED or (state is None and os.path.exists(self.file("metrics.json")))
        if finished and not overwrite:
            raise RunFolderError(
                f"{self.path} holds a finished run: pass overwrite=True to replace it, or choose another folder."
            )
        scratch = RunFolder(self.sibling(SCRATCH))
        if overwrite and self._holds_run() and not (state == UNFINISHED and self._resumable(config)):
            with RunLock(scratch.path):  # which becomes RUN/.lock when the scratch replaces RUN
                metadata = scratch._resumable(config) or None
                if metadata is None:
                    scratch.remove_run()
                else:  # a kill came after its first checkpoint, before it replaced the old run
                    self.replace_with(scratch)
                    metadata = _read_checkpoint(self.checkpoint)  # its paths, now in place
                try:
                    yield scratch, metadata
                except Exception as error:
                    if scratch.path != self.path and not isinstance(error, RunFailedError):
                        shutil.rmtree(scratch.path, ignore_errors=True)  # bad input: nothing of it is kept
                    raise
            return
        shutil.rmtree(scratch.path, ignore_errors=True)  # an --overwrite given up before its first epoch
        metadata = None
        if os.path.isdir(self.checkpoint) and not (overwrite and state != UNFINISHED):
            changed = config.differences(self.read_json("config.json", required=False) or {})
            if changed:
                raise RunFolderError(
                    f"{self.path} holds an unfinished run with other options ({', '.join(changed)}): "
                    "rerun with the same options to resume it, or pass overwrite=True to start over."
                )
            metadata = _read_checkpoint(self.checkpoint)
        os.makedirs(self.path, exist_ok=True)
        yield self, metadata

    def replace_with(self, work):
        """Put the run trained in `work` (the scratch sibling) in place of this folder's; `work` then points here.

        One atomic exchange where the system has one (Linux), else two renames
        (this folder to ``.RUN.replaced``, `work` to RUN; a kill between them is
        completed by `lock`); then the old run is removed.
        """
        if exchange_paths(work.path, self.path):
            old = work.path
        else:
            old = self.sibling(REPLACED)
            shutil.rmtree(old, ignore_errors=True)
            os.rename(self.path, old)
            os.rename(work.path, self.path)
        work.path = self.path
        shutil.rmtree(old, ignore_errors=True)

    def _holds_run(self):
        return any(os.path.exists(self.file(name)) for name in (*RUN_FILES, INDEX, CHECKPOINT))

    def _resumable(self, config):
        """The whole checkpoint of an unfinished run of `config` in this folder, else False."""
        if not os.path.isdir(self.checkpoint):
            return False
        try:
            if config.differences(self.read_json("config.json", required=False) or {}):
                return False
            return _read_checkpoint(self.checkpoint) or False
        except RunFolderError:
            return False

    def remove_run(self):
        """Remove every run file, the index and the checkpoint (the lock file stays)."""
        for name in RUN_FILES:
            if os.path.exists(self.file(name)):
                os.remove(self.file(name))
        shutil.rmtree(self.file(INDEX), ignore_errors=True)
        shutil.rmtree(self.checkpoint, ignore_errors=True)

    def fingerprint(self):
        """A digest of embedding.keras: an index or calibration built from another model does not match it."""
        import hashlib

        digest = hashlib.sha256()
        with open(self.file("embedding.keras"), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()[:16]

    def remove_checkpoint(self):
        shutil.rmtree(self.checkpoint, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    def _state_quietly(self):
        try:
            return self.state()
        except RunFolderError:
            return None

    def check_version(self):
        """`RunFolderError` for a run of another format or an unknown state (a damaged file is not refused here)."""
        for name, check in (("config.json", _check_format), ("status.json", _check_state)):
            try:
                value = self.read_json(name, required=False)
            except RunFolderError:
                continue
            if isinstance(value, dict):
                check(self.file(name), value)

    def _unfinished(self):
        """What to do with a run whose status is unfinished (its files come when it finishes), else None."""
        try:
            with open(self.file("status.json")) as handle:
                unfinished = json.load(handle).get("state") == UNFINISHED
        except (OSError, ValueError, AttributeError):
            return None
        if unfinished:
            return (
                f"the run in {self.path} is unfinished; train it again with the same options to resume "
                "and finish it."
            )
        return None

    def _not_whole(self):
        return (
            f"the run in {self.path} is not whole; train it again with overwrite=True "
            "(or restore the file from a copy)."
        )


def _check_format(path, config):
    version = config.get("format", FORMAT)
    if version != FORMAT:
        raise RunFolderError(
            f"{path} is of format {version!r}: this version of siamese_k3 reads run folders of format "
            f"{FORMAT!r}; use the siamese_k3 that wrote it (or a newer one)."
        )


def _check_state(path, status):
    if "state" in status and status["state"] not in STATES:
        raise RunFolderError(
            f"{path} has the state {status.get('state')!r}: this version of siamese_k3 reads "
            f"{', '.join(STATES)}; use the siamese_k3 that wrote it (or a newer one)."
        )


def _read_checkpoint(path):
    from siamese_k3.callbacks import RunCheckpoint  # keras, only when training

    return RunCheckpoint.read(path)


def save_model(model, path):
    """`model.save(path)` atomically: a kill mid-save leaves the previous file, never half of one."""
    with atomic_path(path) as temporary:
        model.save(temporary)


def load_model(path):
    """`keras.models.load_model(path)`, a damaged or missing file as one `RunFolderError` naming it."""
    import keras

    if not os.path.isfile(path):
        raise RunFolderError(f"{path} is missing: train the run again into the same folder to write it.")
    try:
        return keras.models.load_model(path)
    except Exception as error:  # zip, h5 and deserialization errors all mean: this file cannot be used
        detail = " ".join(str(error).split())[:200]
        raise RunFolderError(
            f"{path} cannot be loaded ({detail}): it is damaged or was written by "
            "other code; train the run again with overwrite=True to write it again."
        ) from None


def check_finite_weights(model, path):
    """`RunFolderError` naming the weights of `model` (read from `path`) that are NaN or inf: a diverged run."""
    import keras
    import numpy as np

    bad = [weight.path for weight in model.weights if not np.all(np.isfinite(keras.ops.convert_to_numpy(weight)))]
    if bad:
        raise RunFolderError(
            f"{path} has non-finite weights (NaN or inf) in {', '.join(bad[:3])}"
            f"{' and others' if len(bad) > 3 else ''}: the training diverged; train it again with "
            "overwrite=True and a lower learning rate."
        )
