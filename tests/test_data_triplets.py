"""siamese_k3.data.triplets: seed 000's offline triplets and pairs, seed 001's random batches."""

import keras
import numpy as np
import pytest

from siamese_k3 import SiameseModel
from siamese_k3.data import (
    TripletBatches,
    offline_triplet_indices,
    offline_triplets,
    random_triplet_batch,
    random_triplet_indices,
    take,
    verification_pair_indices,
    verification_pairs,
)
from siamese_k3.errors import SiameseK3Error


@pytest.fixture
def labels():
    # 4 classes of uneven size, shuffled; class 7 has a single item.
    values = np.array([0] * 9 + [3] * 5 + [5] * 12 + [7])
    return np.random.default_rng(3).permutation(values)


def images_of(labels):
    """Image i is [i, label_i]: every row says which item it came from."""
    return np.stack([np.arange(len(labels)), labels], axis=1)


def expected_consecutive_pairs(labels):
    """(a_j, a_{j+1}) for each class in sorted order, each j, by explicit loops."""
    pairs = []
    for label in sorted(set(labels.tolist())):
        members = [index for index in range(len(labels)) if labels[index] == label]
        pairs.extend(zip(members[:-1], members[1:]))
    return np.array(pairs)


def test_offline_triplets_follow_seed_000(labels):
    triplets = offline_triplet_indices(labels, seed=0)
    assert triplets.shape == (len(labels) - 4, 3) and triplets.dtype == np.int64
    np.testing.assert_array_equal(triplets[:, :2], expected_consecutive_pairs(labels))
    anchor, positive, negative = labels[triplets].T
    np.testing.assert_array_equal(anchor, positive)
    assert np.all(negative != anchor)


def test_offline_triplets_reproducible(labels):
    np.testing.assert_array_equal(offline_triplet_indices(labels, seed=5), offline_triplet_indices(labels, seed=5))
    assert not np.array_equal(offline_triplet_indices(labels, seed=5), offline_triplet_indices(labels, seed=6))
    generator = np.random.default_rng(5)
    np.testing.assert_array_equal(offline_triplet_indices(labels, seed=generator), offline_triplet_indices(labels, 5))


def test_offline_negative_class_is_uniform_over_the_others():
    labels = np.repeat(np.arange(5), 2000)
    triplets = offline_triplet_indices(labels, seed=1)
    from_class_0 = labels[triplets[labels[triplets[:, 0]] == 0, 2]]
    counts = np.bincount(from_class_0, minlength=5)
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:] / counts.sum(), 0.25, atol=0.04)
    # the negative item is uniform within its class: n draws from 2000 items hit
    # 2000 (1 - (1 - 1/2000)^n) distinct ones on average
    drawn = triplets[labels[triplets[:, 2]] == 1, 2]
    expected_distinct = 2000 * (1 - (1 - 1 / 2000) ** len(drawn))
    assert abs(len(np.unique(drawn)) - expected_distinct) < 0.05 * expected_distinct


def test_offline_triplets_take_images(labels):
    images = images_of(labels)
    anchor, positive, negative = offline_triplets(images, labels, seed=2)
    triplets = offline_triplet_indices(labels, seed=2)
    for column, array in enumerate([anchor, positive, negative]):
        np.testing.assert_array_equal(array, images[triplets[:, column]])
    assert take(images, triplets)[2].shape == (len(triplets), 2)


def test_one_class_is_an_error():
    with pytest.raises(SiameseK3Error, match="two classes"):
        offline_triplet_indices(np.zeros(5, dtype=int))


def test_verification_pairs_follow_seed_000(labels):
    pairs, is_same = verification_pair_indices(labels, seed=0)
    assert pairs.shape == (2 * (len(labels) - 4), 2)
    np.testing.assert_array_equal(is_same, np.tile([1.0, 0.0], len(labels) - 4))
    np.testing.assert_array_equal(pairs[0::2], expected_consecutive_pairs(labels))
    np.testing.assert_array_equal(pairs[1::2, 0], pairs[0::2, 0])
    assert np.all(labels[pairs[1::2, 1]] != labels[pairs[1::2, 0]])
    left, right, flags = verification_pairs(images_of(labels), labels, seed=0)
    np.testing.assert_array_equal(left[:, 0], pairs[:, 0])
    np.testing.assert_array_equal(right[:, 0], pairs[:, 1])
    np.testing.assert_array_equal(flags, is_same)


def test_random_triplets_follow_seed_001(labels):
    triplets = random_triplet_indices(labels, 4000, seed=0)
    assert triplets.shape == (4000, 3)
    anchor, positive, negative = triplets.T
    assert np.all(anchor != positive)
    np.testing.assert_array_equal(labels[anchor], labels[positive])
    assert np.all(labels[negative] != labels[anchor])
    single = np.flatnonzero(labels == 7)[0]
    assert single not in anchor and single not in positive and single in negative
    # every other item of a class shows up as a positive; every other-class item as a negative
    for index in np.flatnonzero(labels == 3):
        others = set(positive[anchor == index].tolist())
        assert others == set(np.flatnonzero(labels == 3).tolist()) - {index}
    assert set(negative[labels[anchor] == 0].tolist()) == set(np.flatnonzero(labels != 0).tolist())


def test_random_triplet_batch(labels):
    images = images_of(labels)
    anchor, positive, negative = random_triplet_batch(images, labels, 16, np.random.default_rng(4))
    triplets = random_triplet_indices(labels, 16, seed=4)
    np.testing.assert_array_equal(anchor[:, 0], triplets[:, 0])
    np.testing.assert_array_equal(positive[:, 0], triplets[:, 1])
    np.testing.assert_array_equal(negative[:, 0], triplets[:, 2])


@pytest.mark.parametrize("batch_size", [0, -3, 2.5])
def test_bad_batch_size(labels, batch_size):
    with pytest.raises(SiameseK3Error, match="batch_size"):
        random_triplet_indices(labels, batch_size)


def test_no_class_with_two_items():
    with pytest.raises(SiameseK3Error, match="at least two items"):
        random_triplet_indices(np.arange(4), 3)


def test_triplet_batches_shapes_and_form(labels):
    images = images_of(labels).astype(np.float32)
    data = TripletBatches(images, labels, batch_size=5, seed=0)
    assert isinstance(data, keras.utils.PyDataset)
    assert len(data) == len(labels) // 5
    item = data[1]
    assert isinstance(item, tuple) and len(item) == 1 and len(item[0]) == 3
    anchor, positive, negative = item[0]
    for array in item[0]:
        assert array.shape == (5, 2) and array.dtype == np.float32
    np.testing.assert_array_equal(anchor[:, 1], positive[:, 1])
    assert np.all(anchor[:, 0] != positive[:, 0]) and np.all(anchor[:, 1] != negative[:, 1])
    assert len(TripletBatches(images, labels, batch_size=5, steps_per_epoch=7)) == 7


def test_triplet_batches_reproducible_per_seed_epoch_index(labels):
    images = images_of(labels)

    def batch(data, index):
        return np.stack(data[index][0])

    first, second = TripletBatches(images, labels, 4, seed=3), TripletBatches(images, labels, 4, seed=3)
    np.testing.assert_array_equal(batch(first, 2), batch(second, 2))
    np.testing.assert_array_equal(batch(first, 2), batch(first, 2))
    assert not np.array_equal(batch(first, 1), batch(first, 2))
    epoch_0 = batch(first, 2)
    first.on_epoch_end()
    assert first.epoch == 1 and not np.array_equal(batch(first, 2), epoch_0)
    second.set_epoch(1)
    np.testing.assert_array_equal(batch(first, 2), batch(second, 2))
    assert not np.array_equal(batch(TripletBatches(images, labels, 4, seed=4), 2), batch(second, 2))
    with pytest.raises(IndexError):
        first[len(first)]



@pytest.mark.parametrize("epoch", [1, 3])
def test_triplet_batches_started_at_epoch_n_give_the_uninterrupted_epoch_n(labels, epoch):
    images = images_of(labels)
    uninterrupted = TripletBatches(images, labels, 4, steps_per_epoch=3, seed=3)
    expected = []
    for _ in range(epoch + 2):
        expected.append([np.stack(uninterrupted[index][0]) for index in range(3)])
        uninterrupted.on_epoch_end()
    started = TripletBatches(images, labels, 4, steps_per_epoch=3, seed=3, initial_epoch=epoch)
    assert started.epoch == epoch
    for batches in expected[epoch:]:
        for index, batch in enumerate(batches):
            np.testing.assert_array_equal(np.stack(started[index][0]), batch)
        started.on_epoch_end()


@pytest.mark.parametrize("epoch", [-1, 0.5, "2", True])
def test_triplet_batches_epoch_is_a_counter(labels, epoch):
    with pytest.raises(SiameseK3Error, match="must be an integer >= 0"):
        TripletBatches(images_of(labels), labels, 4, initial_epoch=epoch)
    with pytest.raises(SiameseK3Error, match="epoch=.* must be an integer >= 0"):
        TripletBatches(images_of(labels), labels, 4).set_epoch(epoch)

def test_triplet_batches_length_mismatch(labels):
    with pytest.raises(SiameseK3Error, match="one label per image"):
        TripletBatches(np.zeros((3, 2)), labels)


def test_siamese_model_fits_triplet_batches(labels):
    images = np.random.default_rng(0).standard_normal((len(labels), 6)).astype(np.float32)
    backbone = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    model = SiameseModel(backbone, margin=0.5)
    model.compile(optimizer="sgd")
    history = model.fit(TripletBatches(images, labels, batch_size=4, steps_per_epoch=3, seed=0), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.all(np.isfinite(history.history["loss"]))
