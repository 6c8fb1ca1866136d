"""Keras callbacks for training embeddings: usable in any `fit` call, on every backend.

- `StopOnNonFiniteLoss`: raise at the first NaN or inf loss, before anything is saved.
- `RetrievalValidation`: precision@1, R-precision and MAP@R of a fixed held-out
  sample after each epoch, in the logs (so in `History`, the progress bar and
  any callback after it).
- `PairValidation`: ROC AUC of held-out (anchor, positive, negative) pairs after each epoch.
- `RunCheckpoint`: the per-epoch checkpoint a run resumes from, checked before it is trusted.
"""

import json
import math
import os
import tempfile
import time

import keras
import numpy as np

from siamese_k3.search import evaluation
from siamese_k3.search.kernel import paired_distance
from siamese_k3.backend import distributed
from siamese_k3.errors import NonFiniteLossError, RunFolderError, SiameseK3Error
from siamese_k3.files import atomic_path, write_json

LIKELY_CAUSES = (
    "a learning rate too high for this model (lower it), a margin that is not a small finite "
    "number, or NaN/inf values in the input data"
)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise `NonFiniteLossError` at the first NaN or inf loss, naming the epoch and step.

    Unlike `keras.callbacks.TerminateOnNaN`, which sets `stop_training` and lets
    `fit` return normally (so epoch-end callbacks such as `BackupAndRestore`
    would still save the diverged weights), this raises out of `fit`: put it
    first in the callback list and no later callback sees the bad epoch, so the
    last checkpoint stays the last good one. It checks the training loss after
    every batch it is shown and the validation loss at the end of each epoch.

    The message names the step (1-based) whose loss it saw; with
    ``steps_per_execution`` above 1 keras shows it only the end of each
    execution, and the message names the execution's steps ("steps 1-4"), the
    last one clipped to the epoch's steps (keras numbers the last execution of
    an epoch as if it ran whole).
    """

    def __init__(self, monitor=("loss", "val_loss")):
        super().__init__()
        self.monitor = tuple(monitor)
        self._epoch = 0
        self._first_step = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._first_step = batch

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, lambda: f"epoch {self._epoch + 1}, {self._steps(batch)}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, lambda: f"the end of epoch {epoch + 1}")

    def _steps(self, last):
        """The steps one execution ran, 1-based: "step N", or "steps M-N" for several; N at most the epoch's steps."""
        steps = (self.params or {}).get("steps")
        last = min(last, steps - 1) if steps else last
        return f"step {last + 1}" if last <= self._first_step else f"steps {self._first_step + 1}-{last + 1}"

    def _check(self, logs, where):
        for key in self.monitor:
            if key in (logs or {}):
                value = float(keras.ops.convert_to_numpy(logs[key]))
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"training stopped: {key} became {value} at {where()}. Likely causes: {LIKELY_CAUSES}."
                    )


class _EmbeddingValidation(keras.callbacks.Callback):
    """Embeds held-out images after each epoch and adds ``prefix + metric`` entries to the logs.

    The embedding network is `embedding_model`, else the trained model's
    ``backbone`` (a `SiameseModel` or `MiningModel`), else the trained model itself (a backbone
    compiled with a mining loss). Embeddings come from ``predict`` (inference
    mode: BatchNorm moving statistics, no dropout). Put it before any callback
    that should see the metrics (keras' History and progress bar come last).
    """

    def __init__(self, embedding_model=None, batch_size=256, prefix="val_"):
        super().__init__()
        self.embedding_model = embedding_model
        self.batch_size = batch_size
        self.prefix = prefix

    def embed(self, images):
        model = self.embedding_model or getattr(self.model, "backbone", self.model)
        return distributed.predict(model, images, self.batch_size)  # model.predict, or local under data parallelism

    def metrics(self):
        raise NotImplementedError

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update({self.prefix + key: value for key, value in self.metrics().items()})


class RetrievalValidation(_EmbeddingValidation):
    """Leave-one-out retrieval on a fixed held-out sample after each epoch.

    Logs ``val_precision_at_1``, ``val_r_precision`` and ``val_map_at_r``, the
    protocol of `siamese_k3.search.evaluation.retrieval_metrics` on `sample_size`
    images drawn once (without replacement, by `seed`) from `images`. NaN
    embeddings (a diverged model) give NaN metrics instead of an error.

    Example:
        >>> backbone.fit(batches, epochs=5, callbacks=[RetrievalValidation(x_test, y_test)])
    """

    KEYS = ("precision_at_1", "r_precision", "map_at_r")

    def __init__(self, images, labels, distance="euclidean", sample_size=3000, seed=0, **kwargs):
        super().__init__(**kwargs)
        labels = np.asarray(labels).reshape(-1)
        if len(images) != len(labels):
            raise SiameseK3Error(f"images has {len(images)} rows but labels has {len(labels)}: give one label per image.")
        count = min(int(sample_size), len(labels))
        rows = np.sort(np.random.default_rng(seed).choice(len(labels), count, replace=False))
        self.images, self.labels, self.distance = images[rows], labels[rows], distance

    def metrics(self):
        embeddings = self.embed(self.images)
        if not np.all(np.isfinite(embeddings)):
            return dict.fromkeys(self.KEYS, float("nan"))
        result = evaluation.retrieval_metrics(embeddings, self.labels, distance=self.distance)
        return {key: result[key] for key in self.KEYS}


class PairValidation(_EmbeddingValidation):
    """ROC AUC of held-out pairs after each epoch: ``val_pair_roc_auc``.

    Each anchor's positive is a same-pair, its negative a different-pair;
    the score is the `distance` between embeddings (smaller means same), as
    `siamese_k3.search.evaluation.verification_metrics` computes it.
    """

    def __init__(self, anchor, positive, negative, distance="euclidean", **kwargs):
        super().__init__(**kwargs)
        self.triplets, self.distance = (anchor, positive, negative), distance

    def metrics(self):
        anchor, positive, negative = (self.embed(images) for images in self.triplets)
        if not all(np.all(np.isfinite(part)) for part in (anchor, positive, negative)):
            return {"pair_roc_auc": float("nan")}
        distances = np.concatenate([
            paired_distance(anchor, positive, self.distance),
            paired_distance(anchor, negative, self.distance),
        ])
        is_same = np.arange(len(distances)) < len(anchor)
        return {"pair_roc_auc": evaluation.verification_metrics(distances, is_same)["roc_auc"]}


class RunCheckpoint(keras.callbacks.Callback):
    """A resumable checkpoint of a run in the folder `folder`, written after every epoch.

    After epoch N (1-based) it writes, each file atomically (`siamese_k3.files`):

    1. ``epoch-000N.weights.h5``: `model.save_weights`, which holds the model's
       variables, the optimizer's (its step count, hence the learning-rate
       schedule, and its moments) and every layer's random-generator state;
    2. ``training_metadata.json``: ``{"epoch": N, "batch": 0, "weights": NAME,
       "epochs": {"0": logs of epoch 1 with its "seconds", ...}}``;
    3. then removes the weights of earlier epochs.

    A kill at any moment leaves a metadata file naming a whole weights file of
    the epoch it counts. `read` checks that before anything trusts it, and
    `restore` loads it into a built model, returning the epoch to continue from
    (`fit(initial_epoch=...)`). Nothing is deleted at the end of training: the
    run deletes the folder once its results are written.

    With ``writer=False`` (a data-parallel process beside the chief) it writes
    nothing; under MultiWorkerMirroredStrategy, where saving is collective, it
    saves alongside the chief into a scratch folder (TensorFlow's own pattern).
    """

    METADATA = "training_metadata.json"

    def __init__(self, folder, writer=True):
        super().__init__()
        self.folder, self.writer = os.fspath(folder), writer
        self.epochs = {}
        self._started = None

    @property
    def seconds(self):
        """Training seconds over every epoch in the checkpoint and since."""
        return sum(entry.get("seconds", 0.0) for entry in self.epochs.values())

    def history(self):
        """{metric: [value per epoch]} over all epochs, as `History.history`."""
        ordered = [self.epochs[epoch] for epoch in sorted(self.epochs)]
        keys = [key for key in ordered[0] if key != "seconds"] if ordered else []
        return {key: [entry.get(key, float("nan")) for entry in ordered] for key in keys}

    @classmethod
    def read(cls, folder):
        """The checkpoint's metadata, checked whole; None when there is none; `RunFolderError` when damaged.

        Whole means: the metadata parses, its epoch count equals its logged
        epochs (0..N-1), and the weights file it names exists and is an HDF5 file.
        """
        path = os.path.join(folder, cls.METADATA)
        if not os.path.exists(path):
            if any(name.endswith(".weights.h5") for name in _listdir(folder)):
                raise _damaged(path, "is missing while weights are present")
            return None
        try:
            with open(path) as handle:
                metadata = json.load(handle)
            epoch = int(metadata["epoch"])
            epochs = {int(key): dict(value) for key, value in _legacy_epochs(folder, metadata).items()}
        except (OSError, ValueError, KeyError, TypeError) as error:
            detail = f"no {error.args[0]!r} entry" if isinstance(error, KeyError) else " ".join(str(error).split())
            raise _damaged(path, f"cannot be read ({detail})") from None
        if sorted(epochs) != list(range(epoch)):
            raise _damaged(path, f"counts {epoch} finished epochs but logs {len(epochs)}")
        weights = os.path.join(folder, metadata.get("weights", "latest.weights.h5"))  # keras' own name before 0.2
        if not os.path.isfile(weights):
            raise _damaged(weights, f"is missing (the checkpoint of epoch {epoch} names it)")
        with open(weights, "rb") as handle:
            if handle.read(8) != b"\x89HDF\r\n\x1a\n":
                raise _damaged(weights, "is not an HDF5 weights file")
        try:  # a truncated file starts like HDF5 too
            import h5py

            h5py.File(weights, "r").close()
        except OSError as error:
            raise _damaged(weights, f"cannot be loaded ({' '.join(str(error).split())[:200]})") from None
        return {"epoch": epoch, "weights": weights, "epochs": epochs}

    def restore(self, metadata):
        """Load `metadata` (from `read`) into the built, compiled model; the epoch to continue from."""
        if metadata is None:
            return 0
        model = self.model
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(metadata["weights"])
        except (OSError, ValueError, KeyError) as error:
            detail = " ".join(str(error).split())[:200]
            raise _damaged(metadata["weights"], f"cannot be loaded ({detail})") from None
        self.epochs = dict(metadata["epochs"])
        return metadata["epoch"]

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        entry = {key: float(value) for key, value in (logs or {}).items()}
        entry["seconds"] = time.perf_counter() - (self._started or time.perf_counter())
        self.epochs = {key: value for key, value in self.epochs.items() if key < epoch}
        self.epochs[epoch] = entry
        if not self.writer:
            if distributed.saving_is_collective():  # every worker takes part in the chief's save
                with tempfile.TemporaryDirectory() as scratch:
                    self.model.save_weights(os.path.join(scratch, "discarded.weights.h5"))
            return
        os.makedirs(self.folder, exist_ok=True)
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        with distributed.local_scope(), atomic_path(os.path.join(self.folder, name)) as temporary:
            self.model.save_weights(temporary)
        metadata = {"epoch": epoch + 1, "batch": 0, "weights": name, "epochs": self.epochs}
        write_json(os.path.join(self.folder, self.METADATA), metadata)
        for stale in _listdir(self.folder):
            if stale.endswith(".weights.h5") and stale != name:
                os.remove(os.path.join(self.folder, stale))


def _listdir(folder):
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []


def _legacy_epochs(folder, metadata):
    """The per-epoch logs: in the metadata, or (runs checkpointed before 0.2) in epochs.json beside it."""
    if "epochs" in metadata:
        return metadata["epochs"]
    path = os.path.join(folder, "epochs.json")
    if not os.path.exists(path):
        return {str(epoch): {} for epoch in range(int(metadata["epoch"]))}
    with open(path) as handle:
        return json.load(handle)


def _damaged(path, what):
    run = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    return RunFolderError(
        f"the checkpoint file {path} {what}: the unfinished run in {run} cannot resume; pass overwrite=True "
        "to train it again from the start."
    )
