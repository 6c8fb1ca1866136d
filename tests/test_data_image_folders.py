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

pytestmark = pytest.mark.backend_independent  # numpy, files and checks: one backend runs it (tests/README.md)

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


# --- load_image: the one reading rule (issue 31) -----------------------------


RNG = np.random.default_rng(31)
GREY = RNG.integers(0, 256, (6, 7)).astype(np.uint8)  # an 8-bit reference picture
COLOUR = RNG.integers(0, 256, (6, 7, 3)).astype(np.uint8)
ALPHA = RNG.integers(0, 256, (6, 7)).astype(np.uint8)


def over_white(values, alpha):
    """Compositing over white, written independently: c * a + 255 * (1 - a), a in [0, 1], rounded."""
    weight = alpha.astype(np.float64)[..., None] / 255.0 if values.ndim == 3 else alpha / 255.0
    return np.rint(values * weight + 255.0 * (1.0 - weight))


def luma(rgb):
    """ITU-R 601-2 luma, as the docstring states it."""
    return (299 * rgb[..., 0].astype(np.float64) + 587 * rgb[..., 1] + 114 * rgb[..., 2]) / 1000


@pytest.mark.parametrize("mode, suffix", [("I;16", "png"), ("I;16B", "tiff"), ("I", "tiff")])
@pytest.mark.parametrize("grayscale", [True, False])
def test_16_bit_images_are_scaled_by_1_over_257_not_clipped(tmp_path, mode, suffix, grayscale):
    exact = GREY.astype(np.uint32) * 257  # v * 257 must read as v
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
    path = tmp_path / f"image.{suffix}"
    Image.frombytes(mode, (7, 6), exact.astype(dtype).tobytes()).save(path)
    assert Image.open(path).mode.startswith("I")
    image = load_image(path, target_shape=None, grayscale=grayscale)
    expected = GREY if grayscale else np.repeat(GREY[..., None], 3, axis=-1)
    np.testing.assert_array_equal(image, expected)


def test_any_16_bit_value_reads_as_its_nearest_8_bit_value(tmp_path):
    values = np.array([[0, 128, 129, 65535, 40000, 300]], np.uint16)
    path = tmp_path / "image.png"
    Image.frombytes("I;16", (6, 1), values.astype("<u2").tobytes()).save(path)
    np.testing.assert_array_equal(load_image(path, None, grayscale=True), np.rint(values / 257.0))


@pytest.mark.parametrize("grayscale", [True, False])
def test_rgba_and_la_images_are_composited_over_white(tmp_path, grayscale):
    rgba, la = tmp_path / "rgba.png", tmp_path / "la.png"
    Image.fromarray(np.dstack([COLOUR, ALPHA])).save(rgba)
    Image.fromarray(np.dstack([GREY, ALPHA])).save(la)
    colour = over_white(COLOUR.astype(np.float64), ALPHA)
    grey = over_white(GREY.astype(np.float64), ALPHA)
    if grayscale:
        np.testing.assert_allclose(load_image(rgba, None, grayscale=True), luma(colour), atol=1)
        np.testing.assert_array_equal(load_image(la, None, grayscale=True), grey)
    else:
        np.testing.assert_array_equal(load_image(rgba, None), colour)
        np.testing.assert_array_equal(load_image(la, None), np.repeat(grey[..., None], 3, axis=-1))


def test_palette_images_read_their_palette_and_transparency(tmp_path):
    palette = RNG.integers(0, 256, (256, 3)).astype(np.uint8)
    indices = RNG.integers(0, 4, (6, 7)).astype(np.uint8)
    image = Image.frombytes("P", (7, 6), indices.tobytes())
    image.putpalette(palette.reshape(-1).tolist())
    image.save(tmp_path / "plain.png")
    np.testing.assert_array_equal(load_image(tmp_path / "plain.png", None), palette[indices])
    image.save(tmp_path / "transparent.png", transparency=2)  # palette entry 2 is fully transparent
    expected = palette[indices].astype(np.float64)
    expected[indices == 2] = 255.0
    np.testing.assert_array_equal(load_image(tmp_path / "transparent.png", None), expected)


def test_cmyk_images_are_converted_to_rgb(tmp_path):
    cmyk = RNG.integers(0, 256, (6, 7, 4)).astype(np.uint8)
    path = tmp_path / "image.tiff"
    Image.frombytes("CMYK", (7, 6), cmyk.tobytes()).save(path)
    black = 255.0 - cmyk[..., 3:].astype(np.float64)
    expected = (255.0 - cmyk[..., :3]) * black / 255.0
    np.testing.assert_allclose(load_image(path, None), expected, atol=1)


@pytest.mark.parametrize("orientation, turn", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                               (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    Image.fromarray(GREY).save(path, exif=exif)
    np.testing.assert_array_equal(load_image(path, None, grayscale=True), turn(GREY))


def test_float_images_and_folders_are_refused_with_what_to_do(tmp_path):
    path = tmp_path / "float.tiff"
    Image.fromarray(GREY.astype(np.float32)).save(path)
    with pytest.raises(SiameseK3Error, match="32-bit float image .mode F."):
        load_image(path)
    with pytest.raises(SiameseK3Error, match="is a folder, not an image file"):
        load_image(tmp_path)


def test_paired_folders_read_16_bit_images_by_the_same_rule(tmp_path):
    for side in ("left", "right"):
        os.makedirs(tmp_path / side)
        for name in range(3):
            pixels = (GREY.astype(np.uint32) + name) * 257
            Image.frombytes("I;16", (7, 6), pixels.astype("<u2").tobytes()).save(tmp_path / side / f"{name}.png")
    data = PairedImageFolders(tmp_path, target_shape=(6, 7), batch_size=1, shuffle=False, seed=0)
    anchor = data.triplet_arrays()[0][0]
    np.testing.assert_array_equal(anchor, np.repeat(GREY[..., None].astype(np.float64), 3, axis=-1))


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
