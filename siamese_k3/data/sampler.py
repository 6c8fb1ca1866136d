"""P × K class-balanced batches for online triplet mining (numpy and keras.utils.PyDataset only).

Batch-hard, batch-all and semi-hard losses only learn from a batch that holds
several classes with several items each; uniformly random batches of a
dataset with many classes hold mostly singletons. `ClassBalancedBatches`
draws P classes and K items of each, like pytorch-metric-learning's
`MPerClassSampler` and the P × K batches of Hermans et al. (2017).
"""

import keras
import numpy as np

from siamese_k3.errors import SiameseK3Error


class ClassBalancedBatches(keras.utils.PyDataset):
    """Batches of P classes × K items: ``(x_batch, label_batch)`` numpy arrays of P·K rows.

    Batch i of epoch e comes from its own generator seeded with (seed, e, i):

    - P classes drawn uniformly without replacement among the distinct labels;
    - for each, K of its items drawn without replacement, or with replacement
      when the class has fewer than K items (the only case with repeats);
    - rows ordered class by class (the K items of the first class first).

    So a batch depends only on (seed, e, i), never on the order batches are
    asked for: the same with `workers` > 1 or multiprocessing. `on_epoch_end`
    (called by `fit`) moves to epoch e + 1.

    Args:
        x: array [N, ...] (anything that `len` and numpy fancy indexing accept).
        labels: class labels, shape [N] or [N, 1].
        classes_per_batch: P, at least 2 (a triplet needs a negative class).
        samples_per_class: K, at least 2 (a triplet needs an anchor and a positive).
        steps_per_epoch: batches per epoch; default N // (P·K), at least 1.
        seed: int, or None for a fresh random seed drawn once here.
        **pydataset_kwargs: ``workers``, ``use_multiprocessing``,
            ``max_queue_size``, passed to `keras.utils.PyDataset`.

    Raises:
        SiameseK3Error: mismatched `x` and `labels`, P or K below 2, P above
            the number of classes, or `steps_per_epoch` below 1.

    Example:
        >>> model.compile(loss=TripletSemiHardLoss())
        >>> model.fit(ClassBalancedBatches(images, labels, 8, 4, seed=0), epochs=10)
    """

    def __init__(
        self,
        x,
        labels,
        classes_per_batch,
        samples_per_class,
        steps_per_epoch=None,
        seed=None,
        **pydataset_kwargs,
    ):
        super().__init__(**pydataset_kwargs)
        self.x = x if hasattr(x, "shape") else np.asarray(x)
        self.labels = _flat_labels(labels, len(self.x))
        classes, class_of_item = np.unique(self.labels, return_inverse=True)
        _check_batch_shape(classes_per_batch, samples_per_class, len(classes))
        self.classes_per_batch = int(classes_per_batch)
        self.samples_per_class = int(samples_per_class)
        self.items_of_class = [np.flatnonzero(class_of_item == k) for k in range(len(classes))]
        batch_size = self.classes_per_batch * self.samples_per_class
        if steps_per_epoch is None:
            steps_per_epoch = max(1, len(self.x) // batch_size)
        if steps_per_epoch < 1:
            raise SiameseK3Error(
                f"steps_per_epoch={steps_per_epoch}: pass a positive number of batches, or None."
            )
        self.steps_per_epoch = int(steps_per_epoch)
        self.seed = int(np.random.SeedSequence().entropy) if seed is None else int(seed)
        self.epoch = 0

    def __len__(self):
        return self.steps_per_epoch

    def batch_indices(self, index):
        """Row indices (into `x`) of batch `index` of the current epoch, int64 [P·K]."""
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch {index} out of range: an epoch has {len(self)} batches.")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        chosen = rng.choice(len(self.items_of_class), size=self.classes_per_batch, replace=False)
        size = self.samples_per_class
        return np.concatenate(
            [
                rng.choice(items, size=size, replace=len(items) < size)
                for items in (self.items_of_class[k] for k in chosen)
            ]
        )

    def __getitem__(self, index):
        rows = self.batch_indices(index)
        return self.x[rows], self.labels[rows]

    def on_epoch_end(self):
        self.epoch += 1


def _flat_labels(labels, num_items):
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise SiameseK3Error(
            f"labels has shape {labels.shape}: pass one class label per item, shape [N] or [N, 1]."
        )
    if len(labels) != num_items:
        raise SiameseK3Error(
            f"x has {num_items} items but labels has {len(labels)}: pass one label per item of x."
        )
    return labels


def _check_batch_shape(classes_per_batch, samples_per_class, num_classes):
    if samples_per_class < 2:
        raise SiameseK3Error(
            f"samples_per_class={samples_per_class}: triplet mining needs an anchor and a positive "
            "of each class in the batch; use samples_per_class >= 2."
        )
    if classes_per_batch < 2:
        raise SiameseK3Error(
            f"classes_per_batch={classes_per_batch}: triplet mining needs negatives from another "
            "class in the batch; use classes_per_batch >= 2."
        )
    if classes_per_batch > num_classes:
        raise SiameseK3Error(
            f"classes_per_batch={classes_per_batch} exceeds the {num_classes} distinct classes in "
            f"labels; use classes_per_batch <= {num_classes}."
        )
