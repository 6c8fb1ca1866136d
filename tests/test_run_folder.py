"""siamese_k3.runs.folder and the checkpoint it resumes from (callbacks.RunCheckpoint): files read back as they claim."""

import json
import os

import keras
import numpy as np
import pytest

from siamese_k3.callbacks import RunCheckpoint
from siamese_k3.runs.config import TrainConfig
from siamese_k3.errors import RunFolderError
from siamese_k3.runs.folder import RunFolder, load_model


def test_a_damaged_json_file_is_named_with_what_to_do(tmp_path):
    (tmp_path / "config.json").write_text('{"epochs": ')
    with pytest.raises(RunFolderError) as caught:
        RunFolder(tmp_path).config()
    message = str(caught.value)
    assert f"{tmp_path / 'config.json'} is damaged (Expecting value" in message and "overwrite=True" in message
    assert "JSONDecodeError" not in message  # issue 31 #4: no exception class names in messages
    assert "\n" not in message


def test_a_folder_without_config_is_not_a_run(tmp_path):
    with pytest.raises(RunFolderError, match="is not a run folder"):
        RunFolder(tmp_path).config()


def test_prepare_refuses_a_finished_run_and_overwrite_replaces_it_only_once_the_new_run_holds_a_checkpoint(tmp_path):
    """Issue 31 #1: overwrite used to remove the finished run first; it now prepares a scratch sibling."""
    folder = RunFolder(tmp_path / "run")
    os.makedirs(folder.path)
    for name in ("config.json", "metrics.json"):
        (tmp_path / "run" / name).write_text("{}")
    (tmp_path / "run" / "status.json").write_text(json.dumps({"state": "finished"}))
    with pytest.raises(RunFolderError, match="holds a finished run: pass overwrite=True"):
        with folder.prepare(TrainConfig(), overwrite=False):
            pass
    assert (tmp_path / "run" / "metrics.json").exists()
    with folder.prepare(TrainConfig(), overwrite=True) as (work, metadata):
        assert metadata is None and work.path == str(tmp_path / ".run.overwrite")
        assert (tmp_path / "run" / "metrics.json").exists()  # untouched until the new run replaces it
        (tmp_path / ".run.overwrite" / "config.json").write_text('{"new": 1}')
        folder.replace_with(work)
        assert work.path == folder.path
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"new": 1}
    assert sorted(os.listdir(tmp_path)) == ["run"] and not (tmp_path / "run" / "metrics.json").exists()


def test_bad_input_in_an_overwrite_removes_its_scratch_and_keeps_the_old_run(tmp_path):
    folder = RunFolder(tmp_path / "run")
    os.makedirs(folder.path)
    (tmp_path / "run" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="late check"):
        with folder.prepare(TrainConfig(), overwrite=True):
            raise ValueError("a late check")
    assert sorted(os.listdir(tmp_path)) == ["run"] and (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("exchange", [True, False])
def test_a_replacement_cut_short_is_completed_by_the_next_lock(exchange, tmp_path, monkeypatch):
    """Without an atomic exchange, a kill between the two renames leaves RUN missing: the next lock finishes it."""
    folder = RunFolder(tmp_path / "run")
    (tmp_path / ".run.replaced").mkdir()
    (tmp_path / ".run.replaced" / "metrics.json").write_text("old")
    (tmp_path / ".run.overwrite").mkdir()
    (tmp_path / ".run.overwrite" / "status.json").write_text('{"state": "unfinished"}')
    if exchange:  # the exchanged state: the new run in place, the old in the scratch sibling
        os.rename(tmp_path / ".run.overwrite", tmp_path / "run")
        os.rename(tmp_path / ".run.replaced", tmp_path / ".run.overwrite")
    with folder.lock():
        assert folder.state() == "unfinished"
        with folder.prepare(TrainConfig(), overwrite=False) as (work, metadata):
            assert work is folder and metadata is None
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_an_unfinished_run_with_its_metrics_written_resumes_instead_of_reading_as_finished(tmp_path):
    """A kill between metrics.json and status 'finished' leaves both: the run is still unfinished."""
    folder = RunFolder(tmp_path)
    config = TrainConfig()
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "status.json").write_text(json.dumps({"state": "unfinished"}))
    with folder.prepare(config, overwrite=False) as (work, metadata):  # no checkpoint: starts again, no refusal
        assert work is folder and metadata is None


def test_exchange_paths_swaps_two_folders_or_says_it_cannot(tmp_path):
    from siamese_k3.files import exchange_paths

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    if exchange_paths(tmp_path / "a", tmp_path / "b"):
        assert (tmp_path / "b" / "x").read_text() == "a" and not (tmp_path / "a" / "x").exists()
    else:
        assert (tmp_path / "a" / "x").read_text() == "a"


def tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    return model


def checkpointed(folder, epochs=2):
    """A checkpoint after `epochs` epochs of a tiny model; (model, metadata)."""
    model = tiny_model()
    checkpoint = RunCheckpoint(folder)
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), epochs=epochs, verbose=0, callbacks=[checkpoint])
    return model, RunCheckpoint.read(folder)


def test_the_checkpoint_keeps_only_its_last_epoch_and_restores_weights_and_optimizer(tmp_path):
    model, metadata = checkpointed(tmp_path)
    assert metadata["epoch"] == 2 and sorted(metadata["epochs"]) == [0, 1]
    assert sorted(name for name in os.listdir(tmp_path) if name.endswith(".h5")) == ["epoch-0002.weights.h5"]
    fresh = tiny_model()
    fresh.build((None, 3))
    restorer = RunCheckpoint(tmp_path)
    restorer.set_model(fresh)
    assert restorer.restore(metadata) == 2
    for restored, trained in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(restored, trained)
    assert int(fresh.optimizer.iterations) == int(model.optimizer.iterations) == 2
    assert restorer.history()["loss"] == [metadata["epochs"][0]["loss"], metadata["epochs"][1]["loss"]]


@pytest.mark.parametrize("damage", ["no_weights", "not_hdf5", "epochs_disagree", "weights_without_metadata"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(damage, tmp_path):
    _, metadata = checkpointed(tmp_path)
    weights = tmp_path / "epoch-0002.weights.h5"
    named = weights
    if damage == "no_weights":
        weights.unlink()
    elif damage == "not_hdf5":
        weights.write_bytes(b"half a file")
    elif damage == "epochs_disagree":
        named = tmp_path / "training_metadata.json"
        named.write_text(json.dumps({"epoch": 3, "weights": weights.name, "epochs": {"0": {}, "1": {}}}))
    else:
        named = tmp_path / "training_metadata.json"
        named.unlink()
    with pytest.raises(RunFolderError) as caught:
        RunCheckpoint.read(tmp_path)
    assert str(named) in str(caught.value) and "overwrite=True" in str(caught.value)


def test_a_truncated_weights_file_is_refused_when_loaded(tmp_path):
    _, metadata = checkpointed(tmp_path)
    weights = tmp_path / "epoch-0002.weights.h5"
    weights.write_bytes(weights.read_bytes()[:2048])  # still starts like HDF5
    fresh = tiny_model()
    fresh.build((None, 3))
    restorer = RunCheckpoint(tmp_path)
    restorer.set_model(fresh)
    with pytest.raises(RunFolderError, match=f"{weights} cannot be loaded"):
        restorer.restore(RunCheckpoint.read(tmp_path))


def test_load_model_names_a_half_written_file(tmp_path):
    path = tmp_path / "embedding.keras"
    path.write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(RunFolderError, match=f"{path} cannot be loaded"):
        load_model(path)
    with pytest.raises(RunFolderError, match="is missing"):
        load_model(tmp_path / "absent.keras")
