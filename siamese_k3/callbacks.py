"""Keras callbacks for training embeddings: usable in any `fit` call, on every backend.

- `StopOnNonFiniteLoss`: raise at the first NaN or inf loss, before anything is saved.
- `RetrievalValidation`: precision@1, R-precision and MAP@R of a fixed held-out
  sample after each epoch, in the logs (so in `History`, the progress bar and
  any callback after it).
- `PairValidation`: ROC AUC of held-out (anchor, positive, negative) pairs after each epoch.
"""

import math

import keras
import numpy as np

from siamese_k3 import evaluation
from siamese_k3.backend import distributed
from siamese_k3.errors import NonFiniteLossError

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
    every batch it is shown (every `steps_per_execution` batches) and the
    validation loss at the end of each epoch.
    """

    def __init__(self, monitor=("loss", "val_loss")):
        super().__init__()
        self.monitor = tuple(monitor)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"epoch {self._epoch + 1}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"the end of epoch {epoch + 1}")

    def _check(self, logs, where):
        for key in self.monitor:
            if key in (logs or {}):
                value = float(keras.ops.convert_to_numpy(logs[key]))
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"training stopped: {key} became {value} at {where}. Likely causes: {LIKELY_CAUSES}."
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
    protocol of `siamese_k3.evaluation.retrieval_metrics` on `sample_size`
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
            raise ValueError(f"images has {len(images)} rows but labels has {len(labels)}: give one label per image.")
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
    `siamese_k3.evaluation.verification_metrics` computes it.
    """

    def __init__(self, anchor, positive, negative, distance="euclidean", **kwargs):
        super().__init__(**kwargs)
        self.triplets, self.distance = (anchor, positive, negative), distance

    def metrics(self):
        anchor, positive, negative = (self.embed(images) for images in self.triplets)
        if not all(np.all(np.isfinite(part)) for part in (anchor, positive, negative)):
            return {"pair_roc_auc": float("nan")}
        distances = np.concatenate([
            evaluation.paired_distances(anchor, positive, self.distance),
            evaluation.paired_distances(anchor, negative, self.distance),
        ])
        is_same = np.arange(len(distances)) < len(anchor)
        return {"pair_roc_auc": evaluation.verification_metrics(distances, is_same)["roc_auc"]}
