"""The run folder: its format, its status, its lock, its resume checkpoint, and loading what it holds.

A run folder (``siamese-k3 train --out RUN``, ``siamese_k3.train(out=RUN)``) holds:

- ``config.json``: the `TrainConfig` fields plus what the run found out
  (``backend``, ``input_shape``, ``class_names``, data-parallel layout);
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
  threshold (`siamese_k3.calibration`), chosen on held-out data;
- ``index/``: a similarity index of a gallery (`siamese-k3 index`,
  `siamese_k3.index.SimilarityIndex`), tied to this run by a fingerprint;
- ``backup/``: the per-epoch checkpoint (`siamese_k3.callbacks.RunCheckpoint`),
  kept until ``metrics.json`` and ``status: finished`` are written, so an
  interruption anywhere resumes without retraining;
- ``.lock``: held by the process writing the folder (`siamese_k3.files.RunLock`).

Every file is written atomically (`siamese_k3.files`). Reading a damaged file
raises `RunFolderError` naming the file and what to do.
"""

import json
import os
import shutil
import time

from siamese_k3.errors import RunFolderError
from siamese_k3.files import RunLock, atomic_path, write_json

RUN_FILES = (
    "config.json", "status.json", "embedding.keras", "model.keras", "history.json", "metrics.json",
    "loss.png", "distances.png", "triplets.png", "embeddings_pca.png", "calibration.json", "calibration.png",
)
INDEX = "index"
CHECKPOINT = "backup"
UNFINISHED, FAILED, FINISHED = "unfinished", "failed", "finished"


class RunFolder:
    """One run folder on disk (it need not exist yet): paths, status, config and checkpoint.

    It reads and writes files only; training, evaluation and inference live in
    `siamese_k3.training`, `siamese_k3.run_evaluation` and `siamese_k3.inference`.
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

    def lock(self):
        """`RunLock` on the folder: one writer at a time."""
        return RunLock(self.path)

    # ------------------------------------------------------------------ reading

    def read_json(self, name, required=True):
        """The JSON file `name`; None when absent and not `required`; `RunFolderError` when unreadable."""
        path = self.file(name)
        if not os.path.isfile(path):
            if required:
                raise RunFolderError(f"{path} is missing: {self._not_whole()}")
            return None
        try:
            with open(path) as handle:
                return json.load(handle)
        except (OSError, ValueError) as error:
            raise RunFolderError(
                f"{path} is damaged ({type(error).__name__}: {' '.join(str(error).split())}): "
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
        return config

    def status(self):
        """status.json as a dict, or None for a folder that never had one."""
        status = self.read_json("status.json", required=False)
        if status is not None and not isinstance(status, dict):
            raise RunFolderError(f"{self.file('status.json')} is damaged (not a JSON object): {self._not_whole()}")
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
                "train it again with --overwrite."
            )
        if state == UNFINISHED:
            raise RunFolderError(
                f"{self.path} holds an unfinished run: rerun the same `siamese-k3 train` command to resume and "
                "finish it (or pass --overwrite to start over)."
            )
        if not os.path.isfile(self.file("embedding.keras")):
            raise RunFolderError(
                f"{self.file('embedding.keras')} is missing: the run did not finish; train it again with the same --out."
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

    def prepare(self, config, overwrite):
        """Get the folder ready to train `config` (a `TrainConfig`); the checked checkpoint when resuming.

        Call it only once everything else is checked (options, data): this is
        the first step that changes the folder. A finished run is refused unless
        `overwrite`, which then removes it; an unfinished run is resumed when
        its options are the same (its checkpoint checked whole, else
        `RunFolderError` naming the damaged file), and refused otherwise.
        """
        from siamese_k3.callbacks import RunCheckpoint

        state = self._state_quietly()  # an unfinished run resumes even when a kill left its metrics.json
        finished = state == FINISHED or (state is None and os.path.exists(self.file("metrics.json")))
        if finished and not overwrite:
            raise RunFolderError(
                f"{self.path} holds a finished run: pass --overwrite to replace it, or choose another --out."
            )
        if overwrite:
            self.remove_run()
        metadata = None
        if os.path.isdir(self.checkpoint):
            previous = self.read_json("config.json", required=False) or {}
            changed = config.differences(previous)
            if changed:
                raise RunFolderError(
                    f"{self.path} holds an unfinished run with other options ({', '.join(changed)}): "
                    "rerun with the same options to resume it, or pass --overwrite to start over."
                )
            metadata = RunCheckpoint.read(self.checkpoint)
        os.makedirs(self.path, exist_ok=True)
        return metadata

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

    def _not_whole(self):
        return (
            f"the run in {self.path} is not whole; rerun its `siamese-k3 train` command with --overwrite to "
            "train it again (or restore the file from a copy)."
        )


def save_model(model, path):
    """`model.save(path)` atomically: a kill mid-save leaves the previous file, never half of one."""
    with atomic_path(path) as temporary:
        model.save(temporary)


def load_model(path):
    """`keras.models.load_model(path)`, a damaged or missing file as one `RunFolderError` naming it."""
    import keras

    if not os.path.isfile(path):
        raise RunFolderError(f"{path} is missing: train the run again (same --out) to write it.")
    try:
        return keras.models.load_model(path)
    except Exception as error:  # zip, h5 and deserialization errors all mean: this file cannot be used
        detail = " ".join(str(error).split())[:200]
        raise RunFolderError(
            f"{path} cannot be loaded ({type(error).__name__}: {detail}): it is damaged or was written by "
            "other code; rerun the run's `siamese-k3 train` command with --overwrite to write it again."
        ) from None
