"""ClassBalancedBatches: P classes × K items per batch, reproducible, numpy only."""

import keras
import numpy as np
import pytest

from siamese_k3.data import ClassBalancedBatches
from siamese_k3.errors import SiameseK3Error


@pytest.fixture
def dataset(rng):
    """10 classes of 3 to 12 items (label 100 + k), rows x[i] = [i, label] so a row names itself."""
    sizes = [3, 12, 8, 5, 9, 4, 11, 6, 10, 7]
    labels = np.repeat(100 + np.arange(10), sizes)
    rng.shuffle(labels)
    x = np.stack([np.arange(len(labels)), labels], axis=1).astype("float32")
    return x, labels


def test_batch_holds_p_classes_of_k_items(dataset):
    x, labels = dataset
    batches = ClassBalancedBatches(x, labels, classes_per_batch=4, samples_per_class=3, seed=0)
    assert len(batches) == len(x) // 12
    for index in range(len(batches)):
        x_batch, label_batch = batches[index]
        assert isinstance(x_batch, np.ndarray) and isinstance(label_batch, np.ndarray)
        assert x_batch.shape == (12, 2) and label_batch.shape == (12,)
        classes, counts = np.unique(label_batch, return_counts=True)
        assert len(classes) == 4
        assert np.all(counts == 3)
        np.testing.assert_array_equal(x_batch[:, 1], label_batch)  # rows match their labels
        np.testing.assert_array_equal(labels[x_batch[:, 0].astype(int)], label_batch)
        # Class by class: each block of K rows is one class.
        assert all(len(set(block)) == 1 for block in label_batch.reshape(4, 3))


def test_replacement_only_for_classes_smaller_than_k(dataset):
    x, labels = dataset
    batches = ClassBalancedBatches(
        x, labels, classes_per_batch=10, samples_per_class=5, steps_per_epoch=20, seed=1
    )
    small_class_repeated = False
    for epoch in range(2):
        for index in range(len(batches)):
            rows, label_batch = batches.batch_indices(index), batches[index][1]
            for label in np.unique(label_batch):
                items = rows[label_batch == label]
                class_size = np.sum(labels == label)
                if class_size >= 5:
                    assert (
                        len(set(items)) == 5
                    ), f"class of {class_size} items sampled with replacement"
                else:
                    assert len(set(items)) <= class_size
                    small_class_repeated |= len(set(items)) < 5
        batches.on_epoch_end()
    assert small_class_repeated


def test_every_item_of_a_class_can_be_drawn(dataset):
    x, labels = dataset
    batches = ClassBalancedBatches(
        x, labels, classes_per_batch=10, samples_per_class=3, steps_per_epoch=50, seed=2
    )
    seen = np.unique(
        np.concatenate([batches.batch_indices(index) for index in range(len(batches))])
    )
    np.testing.assert_array_equal(seen, np.arange(len(x)))


def test_same_seed_same_batches_in_any_order(dataset):
    x, labels = dataset
    first = ClassBalancedBatches(x, labels, 3, 4, seed=5)
    second = ClassBalancedBatches(x, labels, 3, 4, seed=5)
    forward = [first[index][0] for index in range(len(first))]
    backward = [second[index][0] for index in reversed(range(len(second)))][::-1]
    for one, other in zip(forward, backward):
        np.testing.assert_array_equal(one, other)
    np.testing.assert_array_equal(first[0][0], first[0][0])  # asking twice changes nothing


def test_epochs_and_seeds_differ(dataset):
    x, labels = dataset
    batches = ClassBalancedBatches(x, labels, 3, 4, seed=5)
    epoch_zero = batches.batch_indices(0)
    batches.on_epoch_end()
    assert batches.epoch == 1
    assert not np.array_equal(batches.batch_indices(0), epoch_zero)
    other_seed = ClassBalancedBatches(x, labels, 3, 4, seed=6)
    assert not np.array_equal(other_seed.batch_indices(0), epoch_zero)
    unseeded = ClassBalancedBatches(x, labels, 3, 4)
    np.testing.assert_array_equal(unseeded.batch_indices(1), unseeded.batch_indices(1))



def _epoch_batches(batches):
    return [batches.batch_indices(index) for index in range(len(batches))]


@pytest.mark.parametrize("epoch", [0, 1, 3])
def test_a_sampler_started_at_epoch_n_gives_the_uninterrupted_epoch_n(dataset, epoch):
    """Started at epoch n (argument or set_epoch), the batches of epoch n and after are the uninterrupted ones."""
    x, labels = dataset
    uninterrupted = ClassBalancedBatches(x, labels, 3, 4, seed=5)
    expected = []
    for _ in range(epoch + 2):
        expected.append(_epoch_batches(uninterrupted))
        uninterrupted.on_epoch_end()
    for started in (
        ClassBalancedBatches(x, labels, 3, 4, seed=5, initial_epoch=epoch),
        _set_epoch(ClassBalancedBatches(x, labels, 3, 4, seed=5), epoch),
    ):
        assert started.epoch == epoch
        for batches in expected[epoch:]:
            np.testing.assert_array_equal(_epoch_batches(started), batches)
            started.on_epoch_end()


def _set_epoch(batches, epoch):
    batches.set_epoch(epoch)
    return batches


class _Recorded(ClassBalancedBatches):
    """Records the rows of every batch `fit` reads, under the fit epoch `reading` names (None before the first)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reading, self.read = None, []

    def __getitem__(self, index):
        self.read.append((self.reading, index, self.batch_indices(index).tolist()))
        return super().__getitem__(index)


def _fit_reads(x, labels, initial_epoch, epochs):
    """What each epoch of a fit from `initial_epoch` to `epochs` reads, the sampler started at `initial_epoch`."""
    from siamese_k3 import MiningModel, TripletBatchAllLoss

    batches = _Recorded(x, labels, 3, 4, steps_per_epoch=3, seed=5, initial_epoch=initial_epoch)
    mark = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: setattr(batches, "reading", epoch))
    model = MiningModel(keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)]))
    model.compile(loss=TripletBatchAllLoss(margin=0.2))
    model.fit(batches, epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0, callbacks=[mark])
    return [entry for entry in batches.read if entry[0] is not None]


def test_a_resumed_fit_reads_the_uninterrupted_fits_batches(dataset):
    """keras ends an epoch of the data before the first one: the count must come out right in a resumed fit too."""
    x, labels = dataset
    uninterrupted = _fit_reads(x, labels, 0, 3)
    assert [epoch for epoch, _, _ in uninterrupted] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert _fit_reads(x, labels, 1, 3) == uninterrupted[3:]


def test_classes_are_drawn_uniformly(dataset):
    x, labels = dataset
    batches = ClassBalancedBatches(x, labels, 2, 2, steps_per_epoch=2000, seed=3)
    drawn = np.concatenate([batches[index][1][::2] for index in range(len(batches))])
    counts = np.unique(drawn, return_counts=True)[1]
    assert len(counts) == 10
    np.testing.assert_allclose(counts / counts.sum(), 0.1, atol=0.02)


def test_column_labels_and_steps_per_epoch(dataset):
    x, labels = dataset
    batches = ClassBalancedBatches(x, labels[:, None], 2, 2, steps_per_epoch=7, seed=0)
    assert len(batches) == 7
    assert batches[6][1].shape == (4,)
    with pytest.raises(IndexError):
        batches[7]
    tiny = ClassBalancedBatches(x[:5], np.array([0, 0, 1, 1, 2]), 3, 2, seed=0)
    assert len(tiny) == 1  # fewer items than one batch: still one batch per epoch


def test_pydataset_options_pass_through(dataset):
    x, labels = dataset
    batches = ClassBalancedBatches(
        x, labels, 2, 2, seed=0, workers=2, use_multiprocessing=False, max_queue_size=3
    )
    assert isinstance(batches, keras.utils.PyDataset)
    assert (batches.workers, batches.use_multiprocessing, batches.max_queue_size) == (2, False, 3)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"classes_per_batch": 11}, "classes_per_batch=11 exceeds the 10 distinct classes"),
        ({"classes_per_batch": 1}, "use classes_per_batch >= 2"),
        ({"samples_per_class": 1}, "use samples_per_class >= 2"),
        ({"labels": np.zeros(3)}, "x has 75 items but labels has 3: pass one label per item of x"),
        ({"labels": np.zeros((75, 2))}, "shape \\[N\\] or \\[N, 1\\]"),
        ({"steps_per_epoch": 0}, "steps_per_epoch=0 must be a positive integer"),
        ({"initial_epoch": -1}, "initial_epoch=-1 must be an integer >= 0"),
        ({"initial_epoch": 1.5}, "initial_epoch=1.5 must be an integer >= 0"),
    ],
)
def test_errors_say_what_to_do(dataset, arguments, message):
    x, labels = dataset
    options = {
        "x": x,
        "labels": labels,
        "classes_per_batch": 4,
        "samples_per_class": 2,
        **arguments,
    }
    with pytest.raises(SiameseK3Error, match=message):
        ClassBalancedBatches(**options)
