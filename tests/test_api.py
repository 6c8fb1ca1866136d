"""siamese_k3.api: every CLI flow as a Python call (train -> metrics -> embed -> similarity), on each backend."""

import json
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

import siamese_k3
from siamese_k3 import Run, TrainConfig
from siamese_k3.runs import training
from siamese_k3.errors import RunFolderError, SiameseK3Error
from siamese_k3.runs.folder import RunFolder

TINY = dict(epochs=1, steps_per_epoch=3, batch_size=32, classes_per_batch=4, embedding_dim=8, validation_size=60,
            verbose=0)


@pytest.fixture(scope="module")
def trained(finished_run, tmp_path_factory):
    """A copy of the session's finished run (conftest.py) and its data, opened as a `Run`: the tests here index and
    calibrate it."""
    root = tmp_path_factory.mktemp("api")
    shutil.copytree(finished_run.root / "data", root / "data")
    shutil.copytree(finished_run.out, root / "run", ignore=shutil.ignore_patterns(".lock"))
    return root, Run.open(root / "run"), finished_run.arrays


def test_train_builds_the_recipes_config_with_the_fields_over_it_and_returns_the_run(trained, monkeypatch, tmp_path):
    """`siamese_k3.train(**fields)` hands training the recipe's `TrainConfig` with the fields over it, and returns
    the folder it trained as a `Run` (training itself: the session's run and tests/test_training.py)."""
    root, _, _ = trained
    handed = {}

    def train_run(config, out=None, **options):
        handed.update(config=config, out=out, **options)
        return RunFolder(out), {"precision_at_1": 1.0}

    monkeypatch.setattr(training, "train_run", train_run)
    run = siamese_k3.train(recipe="strong", out=str(root / "run"), data_dir=str(root / "data"), seed=2, **TINY)
    assert isinstance(run, Run) and run.path == str(root / "run") and handed["out"] == str(root / "run")
    assert handed["config"] == TrainConfig.from_recipe("strong", data_dir=str(root / "data"), seed=2, epochs=1,
                                                       steps_per_epoch=3, batch_size=32, classes_per_batch=4,
                                                       embedding_dim=8, validation_size=60)
    assert handed["config"].backbone_options["flip"] is True  # the strong recipe's backbone
    assert handed["verbose"] == 0 and handed["overwrite"] is False


def test_a_trained_run_has_its_metrics_history_and_config(trained):
    root, run, _ = trained
    assert isinstance(run, Run) and run.state == "finished"
    with open(root / "run" / "metrics.json") as handle:
        assert run.metrics == json.load(handle)
    assert run.config.recipe == "default" and run.config.seed == 3 and run.config.epochs == 2
    assert len(run.history["loss"]) == 2 and run.backend == keras.backend.backend()


def test_embed_gives_float32_and_matches_the_saved_model(trained, tmp_path):
    root, run, arrays = trained
    images = arrays["x_test"][:4]
    expected = keras.models.load_model(root / "run" / "embedding.keras").predict(images, verbose=0)
    from_arrays = run.embed(images)
    assert from_arrays.dtype == np.float32 and from_arrays.shape == (4, 8)
    np.testing.assert_allclose(from_arrays, expected, atol=1e-5)
    paths = []
    for index, image in enumerate(images):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(paths[-1])
    np.testing.assert_allclose(run.embed(paths), expected, atol=1e-5)
    np.testing.assert_allclose(run.embed(images[0]), expected[:1], atol=1e-5)  # one image, no batch axis


def test_similarity_of_two_images_against_numpy(trained):
    _, run, arrays = trained
    first, second = run.embed(arrays["x_test"][:2]).astype(np.float64)
    values = run.similarity(arrays["x_test"][0], arrays["x_test"][1])
    assert values["euclidean"] == pytest.approx(np.linalg.norm(first - second), abs=1e-5)
    cosine = first @ second / np.linalg.norm(first) / np.linalg.norm(second)
    assert values["cosine_similarity"] == pytest.approx(cosine, abs=1e-5)


def test_open_and_evaluate_give_the_same_metrics(trained):
    root, run, _ = trained
    again = Run.open(root / "run")
    metrics = again.evaluate(plots=False)
    for key in ("precision_at_1", "r_precision", "map_at_r"):
        assert metrics[key] == pytest.approx(run.metrics[key], abs=1e-6)


def test_images_of_the_wrong_shape_are_a_value_error(trained):
    _, run, _ = trained
    with pytest.raises(ValueError, match=r"expected \[N, 28, 28\]"):
        run.embed(np.zeros((2, 32, 32)))


def test_open_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunFolderError, match="not a run folder"):
        Run.open(tmp_path)
    assert issubclass(RunFolderError, SiameseK3Error) and issubclass(SiameseK3Error, ValueError)


def test_an_unfinished_run_is_not_used(trained, tmp_path):
    root, _, _ = trained
    (tmp_path / "config.json").write_text((root / "run" / "config.json").read_text())
    (tmp_path / "status.json").write_text(json.dumps({"state": "unfinished"}))
    with pytest.raises(RunFolderError, match="unfinished run: train it again with the same options"):
        Run.open(tmp_path).embedding_model()
    with pytest.raises(RunFolderError) as caught:  # issue 31 #4: it said to retrain with --overwrite
        Run.open(tmp_path).metrics
    assert "is unfinished; train it again with the same options to resume" in str(caught.value)
    assert "overwrite" not in str(caught.value)


def test_train_takes_a_config_or_its_fields_not_both(tmp_path):
    with pytest.raises(TypeError, match="not both"):
        siamese_k3.train(TrainConfig(), epochs=2, out=str(tmp_path))
    with pytest.raises(ValueError, match="^seed=-1 must be an integer from 0"):
        siamese_k3.train(seed=-1, out=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------
# search, calibrate, match (issue 26)
# --------------------------------------------------------------------------


def test_build_index_and_search_give_the_brute_force_neighbours(trained):
    root, run, arrays = trained
    index = run.build_index(dataset="fashion_mnist:train", engine="numpy")
    assert len(index) == len(arrays["y_train"]) and (root / "run" / "index").is_dir()
    result = run.search(arrays["x_test"][:5], k=3)
    gallery = run.embed(arrays["x_train"]).astype(np.float64)
    queries = run.embed(arrays["x_test"][:5]).astype(np.float64)
    distances = np.sqrt(((queries[:, None, :] - gallery[None]) ** 2).sum(-1))
    expected = np.argsort(distances, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(result.indices, expected)
    np.testing.assert_allclose(result.distances, np.take_along_axis(distances, expected, 1), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(result.labels), arrays["y_train"][expected])
    assert result.ids[0][0] == f"fashion_mnist:train:{expected[0, 0]}"


def test_an_index_built_by_another_model_is_refused(trained, tmp_path):
    root, run, _ = trained
    run.build_index(dataset="fashion_mnist:test", engine="numpy")
    other = tmp_path / "other"
    shutil.copytree(root / "run", other)
    model = keras.models.load_model(other / "embedding.keras")
    model.set_weights([weight * 0.5 for weight in model.get_weights()])
    model.save(other / "embedding.keras")
    with pytest.raises(ValueError, match="fingerprint"):
        Run.open(other).search(np.zeros((1, 28, 28)), k=1)


def test_calibration_is_written_and_similarity_gives_a_verdict(trained):
    root, run, arrays = trained
    assert (root / "run" / "calibration.json").is_file()  # train calibrates by default (best F1)
    assert set(run.metrics["calibration"]) >= {"threshold", "held_out_precision", "held_out_recall"}
    calibration, summary = run.calibrate(target_recall=0.5)
    assert summary["recall"] >= 0.5 and calibration.objective == "recall"
    values = run.similarity(arrays["x_test"][0], arrays["x_test"][0])
    assert values["same"] is True and values["euclidean"] == pytest.approx(0.0, abs=1e-5)
    assert values["threshold"] == pytest.approx(calibration.threshold)


def test_an_index_of_image_files_has_their_paths_as_ids_and_shows_their_images(trained, tmp_path):
    _, run, arrays = trained
    paths = []
    for row in range(6):
        paths.append(str(tmp_path / f"{row}.png"))
        Image.fromarray(arrays["x_test"][row]).save(paths[-1])
    run.build_index(images=paths, labels=arrays["y_test"][:6], engine="numpy")
    queries, labels = run.images(paths[:2])
    assert labels is None and queries.shape == (2, 28, 28)
    result = run.search(queries, k=1)
    assert [row[0] for row in result.ids] == paths[:2]  # each image is its own nearest
    neighbours = run.neighbour_images(result)
    np.testing.assert_array_equal(neighbours[:, 0], arrays["x_test"][:2])
    rows, labels = run.images(["fashion_mnist:test:3"])
    np.testing.assert_array_equal(rows[0], arrays["x_test"][3])
    assert labels[0] == arrays["y_test"][3]


# --------------------------------------------------------------------------
# artefacts that belong to their model, written whole, one writer (issue 31)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_model(trained, tmp_path_factory):
    """A copy of the run with an index, whose embedding.keras was then replaced by another model."""
    import shutil

    root, run, _ = trained
    run.build_index(dataset="fashion_mnist:test", engine="numpy")
    other = tmp_path_factory.mktemp("other") / "run"
    shutil.copytree(root / "run", other)
    model = keras.models.load_model(other / "embedding.keras")
    model.set_weights([weight * 0.5 for weight in model.get_weights()])
    model.save(other / "embedding.keras")
    return other


def test_calibration_carries_its_model_fingerprint_and_another_models_is_refused(trained, other_model):
    """Issue 31 #2c: calibration.json of another model was used silently."""
    root, run, arrays = trained
    saved = json.loads((root / "run" / "calibration.json").read_text())
    assert saved["fingerprint"] == run.folder.fingerprint()
    with pytest.raises(RunFolderError) as caught:
        Run.open(other_model).similarity(arrays["x_test"][0], arrays["x_test"][1])
    message = str(caught.value)
    assert "calibration.json was chosen with another model" in message and "\n" not in message
    assert f"`siamese-k3 calibrate {other_model}`" in message


def test_the_index_of_another_model_names_the_whole_index_command(other_model):
    with pytest.raises(RunFolderError) as caught:
        Run.open(other_model).index()
    message = str(caught.value)
    assert "fingerprint" in message and "SimilarityIndex" not in message
    assert f"`siamese-k3 index {other_model} --dataset NAME[:split]`" in message
    assert f"`siamese-k3 index {other_model} --images DIR`" in message


def test_an_index_with_fewer_items_than_vectors_is_one_clear_error(trained, tmp_path):
    """Issue 31 #2d: a shorter items.json gave an IndexError at search time."""
    import shutil

    root, run, _ = trained
    run.build_index(dataset="fashion_mnist:test", engine="numpy")
    copy = tmp_path / "run"
    shutil.copytree(root / "run", copy)
    items = json.loads((copy / "index" / "items.json").read_text())
    (copy / "index" / "items.json").write_text(json.dumps({"labels": items["labels"][:3], "ids": items["ids"]}))
    with pytest.raises(RunFolderError) as caught:
        Run.open(copy).index()
    message = str(caught.value)
    assert f"items.json holds 3 labels for {len(items['ids'])} vectors" in message
    assert "SimilarityIndex" not in message and f"`siamese-k3 index {copy} --dataset NAME[:split]`" in message


@pytest.mark.parametrize("command", ["index", "calibrate", "evaluate"])
def test_index_and_calibrate_take_the_run_lock(command, trained, capsys):
    """Issue 31 #2b: two writers of one run's index used to both succeed with mixed files; #4: the lock's
    message offered --out to commands that have none."""
    from siamese_k3 import cli

    root, run, _ = trained
    extra = ["--dataset", "fashion_mnist"] if command == "index" else []
    before = (root / "run" / "calibration.json").read_bytes()
    with run.folder.lock():  # another writer holds the run
        if command != "evaluate":
            with pytest.raises(RunFolderError, match="is in use by pid"):
                (run.build_index(dataset="fashion_mnist") if command == "index" else run.calibrate())
        capsys.readouterr()
        assert cli.main([command, str(root / "run"), *extra]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is in use by pid" in error and "--out" not in error
    assert (root / "run" / "calibration.json").read_bytes() == before


@pytest.mark.parametrize(
    "file, change, match",
    [
        ("config.json", {"format": "siamese_k3.run/9"}, "format 'siamese_k3.run/9': this version of siamese_k3 reads"),
        ("status.json", {"state": "archived"}, "state 'archived': this version of siamese_k3 reads unfinished, failed"),
    ],
)
def test_a_run_folder_of_an_unknown_format_or_state_is_refused_in_one_line(file, change, match, trained, tmp_path):
    """Issue 31 #3."""
    import shutil

    root, _, arrays = trained
    copy = tmp_path / "run"
    shutil.copytree(root / "run", copy)
    assert json.loads((root / "run" / "config.json").read_text())["format"] == "siamese_k3.run/1"
    values = json.loads((copy / file).read_text())
    (copy / file).write_text(json.dumps({**values, **change}))
    with pytest.raises(RunFolderError, match=match):
        Run.open(copy).embed(arrays["x_test"][:1])
    with pytest.raises(RunFolderError, match=match):
        siamese_k3.train(out=str(copy), data_dir=str(root / "data"), **TINY)


def test_a_file_the_cli_cannot_write_is_named_without_temporary_names_or_exception_classes(trained, tmp_path, capsys):
    """Issue 31 #4: `embed --output MISSING/x.npy` printed FileNotFoundError and the .x.partial-PID.npy name."""
    from siamese_k3 import cli

    root, _, arrays = trained
    Image.fromarray(arrays["x_test"][0]).save(tmp_path / "a.png")
    output = tmp_path / "missing" / "x.npy"
    capsys.readouterr()
    assert cli.main(["embed", str(root / "run"), "--images", str(tmp_path / "a.png"), "--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert error == f"siamese-k3: error: {output}: No such file or directory\n"
