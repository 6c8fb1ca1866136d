"""siamese_k3.data.image_folders: paired left/right folders → triplet batches."""

import os
import warnings

import numpy as np
import pytest
from paired_folders import make_paired_folders, pair_ids, pair_name, sides
from PIL import Image

from siamese_k3.data import PairedImageFolders, load_image
from siamese_k3.data.image_folders import find_pairs
from siamese_k3.errors import SiameseK3Error

SHAPE = (16, 20)


@pytest.fixture
def folders(tmp_path):
    return make_paired_folders(tmp_path / "tll", count=24)


def dataset(directory, **kwargs):
    options = {"target_shape": SHAPE, "batch_size": 5, "seed": 7}
    return PairedImageFolders(directory, **{**options, **kwargs})


def test_batch_shapes_and_dtypes(folders):
    data = dataset(folders)
    assert len(data) == 24 // 5
    item = data[0]
    assert isinstance(item, tuple) and len(item) == 1
    assert len(item[0]) == 3
    for images in item[0]:
        assert images.shape == (5, *SHAPE, 3)
        assert images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 255.0 and images.max() > 1.0


def test_anchor_left_positive_right_same_name(folders):
    data = dataset(folders)
    for index in range(len(data)):
        anchor, positive, _ = data[index][0]
        np.testing.assert_array_equal(pair_ids(anchor), pair_ids(positive))
        assert set(sides(anchor)) == {"left"} and set(sides(positive)) == {"right"}
        anchors, positives, _ = data.triplet_paths(index)
        assert [os.path.basename(path) for path in anchors] == [
            os.path.basename(path) for path in positives
        ]


def test_negatives_avoid_the_batch_pairs_and_use_both_folders(folders):
    data = dataset(folders)
    negative_sides = set()
    for epoch in range(3):
        for index in range(len(data)):
            anchor, _, negative = data[index][0]
            assert not set(pair_ids(negative)) & set(pair_ids(anchor))
            negative_sides.update(sides(negative))
        data.on_epoch_end()
    assert negative_sides == {"left", "right"}


def test_reproducible_per_seed_epoch_and_index(folders):
    first, second = dataset(folders), dataset(folders)
    for left, right in zip(first[2][0], second[2][0]):
        np.testing.assert_array_equal(left, right)
    epoch_zero = first.triplet_paths(1)
    first.on_epoch_end()
    assert first.triplet_paths(1) != epoch_zero  # reshuffled
    assert first.triplet_paths(1) == second.triplet_paths(1, epoch=1)
    assert dataset(folders, seed=8).triplet_paths(1) != epoch_zero
    # batch order does not matter: an item depends on its index only
    assert first.triplet_paths(0) == first.triplet_paths(0)


def test_negative_index_counts_from_the_end(folders):
    data = dataset(folders)
    for left, right in zip(data[-1][0], data[len(data) - 1][0]):
        np.testing.assert_array_equal(left, right)


def test_no_shuffle_keeps_name_order(folders):
    data = dataset(folders, shuffle=False)
    anchors, _, _ = data.triplet_paths(0)
    assert [os.path.basename(path) for path in anchors] == data.pair_names[:5]
    data.on_epoch_end()
    assert data.triplet_paths(0)[0] == anchors


def test_each_epoch_visits_distinct_pairs(folders):
    data = dataset(folders)
    names = [
        os.path.basename(path) for index in range(len(data)) for path in data.triplet_paths(index)[0]
    ]
    assert len(names) == len(set(names)) == len(data) * 5


def test_seed_none_works(folders):
    data = dataset(folders, seed=None)
    anchor, positive, _ = data[0][0]
    np.testing.assert_array_equal(pair_ids(anchor), pair_ids(positive))


def test_validation_split_is_disjoint_and_deterministic(folders):
    training = dataset(folders, validation_split=0.25, subset="training", batch_size=4)
    validation = dataset(folders, validation_split=0.25, subset="validation", batch_size=4)
    assert len(validation.pair_names) == 6 and len(training.pair_names) == 18
    assert not set(training.pair_names) & set(validation.pair_names)
    assert sorted(training.pair_names + validation.pair_names) == [
        pair_name(index, "jpg" if index % 4 == 3 else "png") for index in range(24)
    ]
    again = dataset(folders, validation_split=0.25, subset="validation", batch_size=4)
    assert again.pair_names == validation.pair_names
    # negatives stay inside the subset
    for index in range(len(validation)):
        negatives = validation.triplet_paths(index)[2]
        assert {os.path.basename(path) for path in negatives} <= set(validation.pair_names)


def test_triplet_arrays_cover_every_pair(folders):
    data = dataset(folders, validation_split=0.25, subset="validation", batch_size=4)
    anchor, positive, negative = data.triplet_arrays()
    assert anchor.shape == positive.shape == negative.shape == (6, *SHAPE, 3)
    names = data.pair_names
    expected_ids = [int(name[5:8]) for name in names]
    np.testing.assert_array_equal(pair_ids(anchor), expected_ids)
    np.testing.assert_array_equal(pair_ids(positive), expected_ids)
    for start in range(0, 6, 4):
        group = set(expected_ids[start : start + 4])
        assert not group & set(pair_ids(negative[start : start + 4]))
    again = data.triplet_arrays(max_triplets=3)
    np.testing.assert_array_equal(again[2], negative[:3])


def test_pydataset_options_are_passed_on(folders):
    data = dataset(folders, workers=2, max_queue_size=3)
    assert data.workers == 2 and data.max_queue_size == 3


def test_hidden_files_and_subfolders_are_ignored(folders):
    (folders / "left" / ".DS_Store").write_bytes(b"\x00junk")
    (folders / "right" / "thumbs").mkdir()
    assert len(find_pairs(folders)) == 24


# --- load_image ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
def test_load_image_converts_to_rgb_and_resizes(tmp_path, mode):
    path = tmp_path / "image.png"
    Image.new("RGB", (30, 10), (10, 120, 250)).convert(mode).save(path)
    image = load_image(path, target_shape=(8, 12))
    assert image.shape == (8, 12, 3) and image.dtype == np.float32
    assert load_image(path, target_shape=None).shape == (10, 30, 3)


def test_load_image_missing_file(tmp_path):
    with pytest.raises(SiameseK3Error, match="not found.*nothing.png"):
        load_image(tmp_path / "nothing.png")


def test_load_image_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(SiameseK3Error, match="notes.png"):
        load_image(path)


# --- bad input ----------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(SiameseK3Error, match="not found: .*nowhere.*left"):
        dataset(tmp_path / "nowhere")


@pytest.mark.parametrize("side", ["left", "right"])
def test_missing_side_folder(folders, side):
    for path in (folders / side).iterdir():
        path.unlink()
    (folders / side).rmdir()
    with pytest.raises(SiameseK3Error, match=rf"Missing folder .*{side}.*expected DIRECTORY/left"):
        dataset(folders)


def test_empty_folder(tmp_path):
    (tmp_path / "left").mkdir()
    (tmp_path / "right").mkdir()
    with pytest.raises(SiameseK3Error, match=r"left has no image files"):
        dataset(tmp_path)


def test_unpaired_file_is_named(folders):
    (folders / "right" / pair_name(3, "jpg")).unlink()
    with pytest.raises(SiameseK3Error, match=r"pair_003\.jpg.*skip_unpaired=True"):
        dataset(folders)


def test_unpaired_files_skipped_with_a_warning(folders):
    (folders / "right" / pair_name(3, "jpg")).unlink()
    Image.new("RGB", (8, 8)).save(folders / "right" / "lonely.png")
    with pytest.warns(UserWarning, match=r"pair_003\.jpg") as record:
        data = dataset(folders, skip_unpaired=True)
    assert "lonely.png" in str(record[0].message)
    assert len(data.pair_names) == 23
    assert pair_name(3, "jpg") not in data.pair_names and "lonely.png" not in data.pair_names


def test_no_common_names(tmp_path):
    make_paired_folders(tmp_path, count=2)
    (tmp_path / "right" / pair_name(0)).rename(tmp_path / "right" / "other0.png")
    (tmp_path / "right" / pair_name(1)).rename(tmp_path / "right" / "other1.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SiameseK3Error, match="No pairs"):
            dataset(tmp_path, skip_unpaired=True)


@pytest.mark.parametrize("content", [b"this is text, not an image", b"\x89PNG\r\n\x1a\ntruncated"])
def test_unreadable_image_is_named(folders, content):
    (folders / "left" / pair_name(5)).write_bytes(content)
    with pytest.raises(SiameseK3Error, match=r"left.pair_005\.png is not a readable image"):
        dataset(folders)


def test_unreadable_image_found_lazily_without_verification(folders):
    (folders / "left" / pair_name(5)).write_bytes(b"garbage")
    data = dataset(folders, verify_images=False, shuffle=False)
    with pytest.raises(SiameseK3Error, match=r"pair_005\.png"):
        data[1]  # pairs 5..9


def test_too_few_pairs_for_a_batch(folders):
    with pytest.raises(SiameseK3Error, match=r"Too few pairs for one batch: 24 .*batch_size=24"):
        dataset(folders, batch_size=24)
    with pytest.raises(SiameseK3Error, match=r"6 pair\(s\) in the validation subset"):
        dataset(folders, batch_size=6, validation_split=0.25, subset="validation")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"validation_split": 0.2}, "subset must be"),
        ({"validation_split": 0.2, "subset": "test"}, "subset must be"),
        ({"subset": "training"}, "needs validation_split"),
        ({"validation_split": 1.5, "subset": "training"}, "between 0 and 1"),
        ({"target_shape": (16,)}, "target_shape"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments(folders, kwargs, message):
    with pytest.raises(SiameseK3Error, match=message):
        dataset(folders, **kwargs)
