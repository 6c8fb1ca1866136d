"""P × K class-balanced batches for online triplet mining (numpy and keras.utils.PyDataset only).

Batch-hard, batch-all and semi-hard losses only learn from a batch that holds
several classes with several items each; uniformly random batches of a
dataset with many classes hold mostly singletons. `ClassBalancedBatches`
draws P classes and K items of each, like pytorch-metric-learning's
`MPerClassSampler` and the P × K batches of Hermans et al. (2017).
"""

import keras
import numpy as np

from siamese_k3.checks import check_integer, check_seed
from siamese_k3.errors import SiameseK3Error


class ClassBalancedBatches(keras.utils.PyDataset):
    """Batches of P classes × K items: ``(x_batch, label_batch)`` numpy arrays of P·K rows.

    Batch i of epoch e comes from its own generator seeded with (seed, e, i):

    - P classes drawn uniformly without replacement among the distinct labels;
    - for each, K of its items drawn without replacement, or with replacement
      when the class has fewer than K items (the only case with repeats);
    - rows ordered class by class (the K items of the first class first).

    So a batch depends only on (seed, e, i), never on the order batches are
    asked for: the same with `workers` > 1 or multiprocessing.

    The epoch e starts at `initial_epoch` (default 0) and each `on_epoch_end`
    adds one; `set_epoch` sets it. keras' `fit` calls `on_epoch_end` once
    before its first epoch (it reads a batch to build the model) and once after
    each epoch, on every backend (keras 3.10 to 3.15). So a `fit` started at
    ``initial_epoch=k`` on a sampler at epoch c reads, in its epoch k + j, the
    batches of epoch c + 1 + j: an uninterrupted fit (c = k = 0) reads epoch
    j + 1 in its epoch j, and a fit resumed at epoch k reads the same batches
    when its sampler starts at k (``initial_epoch=k``, or ``set_epoch(k)``
    before `fit`). Validation data given to `fit` is ended twice per
    evaluation (once before it, once after), so its epoch moves by 2 per
    evaluation: evaluated after every epoch, a resumed fit's validation
    sampler starts at 2k.

    Args:
        x: array [N, ...] (anything that `len` and numpy fancy indexing accept).
        labels: class labels, shape [N] or [N, 1].
        classes_per_batch: P, at least 2 (a triplet needs a negative class).
        samples_per_class: K, at least 2 (a triplet needs an anchor and a positive).
        steps_per_epoch: batches per epoch; default N // (P·K), at least 1.
        seed: int, or None for a fresh random seed drawn once here.
        initial_epoch: where the epoch counter starts (default 0): the batches
            are those a sampler started at 0 gives after `initial_epoch` calls of
            `on_epoch_end`. To resume a `fit` at epoch k, pass k.
        **pydataset_kwargs: ``workers``, ``use_multiprocessing``,
            ``max_queue_size``, passed to `keras.utils.PyDataset`.

    Raises:
        SiameseK3Error: mismatched `x` and `labels`, P or K below 2, P above
            the number of classes, `steps_per_epoch` below 1, or
            `initial_epoch` not an integer >= 0.

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
        initial_epoch=0,
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
        self.steps_per_epoch = check_integer(steps_per_epoch, "steps_per_epoch", minimum=1)
        self.seed = check_seed(seed)
        self.epoch = check_integer(initial_epoch, "initial_epoch")

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

    def set_epoch(self, epoch):
        """Make `epoch` (an int >= 0) the current epoch: the batches from now on are that epoch's."""
        self.epoch = check_integer(epoch, "epoch")

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
