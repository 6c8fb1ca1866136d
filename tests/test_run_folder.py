"""siamese_k3.run_folder and the checkpoint it resumes from (callbacks.RunCheckpoint): files read back as they claim."""

import json
import os

import keras
import numpy as np
import pytest

from siamese_k3.callbacks import RunCheckpoint
from siamese_k3.config import TrainConfig
from siamese_k3.errors import RunFolderError
from siamese_k3.run_folder import RunFolder, load_model


def test_a_damaged_json_file_is_named_with_what_to_do(tmp_path):
    (tmp_path / "config.json").write_text('{"epochs": ')
    with pytest.raises(RunFolderError) as caught:
        RunFolder(tmp_path).config()
    message = str(caught.value)
    assert f"{tmp_path / 'config.json'} is damaged (JSONDecodeError" in message and "--overwrite" in message
    assert "\n" not in message


def test_a_folder_without_config_is_not_a_run(tmp_path):
    with pytest.raises(RunFolderError, match="is not a run folder"):
        RunFolder(tmp_path).config()


def test_prepare_refuses_a_finished_run_and_overwrite_removes_it_only_when_asked(tmp_path):
    folder = RunFolder(tmp_path / "run")
    os.makedirs(folder.path)
    for name in ("config.json", "metrics.json"):
        (tmp_path / "run" / name).write_text("{}")
    (tmp_path / "run" / "status.json").write_text(json.dumps({"state": "finished"}))
    with pytest.raises(RunFolderError, match="holds a finished run: pass --overwrite"):
        folder.prepare(TrainConfig(), overwrite=False)
    assert (tmp_path / "run" / "metrics.json").exists()
    assert folder.prepare(TrainConfig(), overwrite=True) is None
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_an_unfinished_run_with_its_metrics_written_resumes_instead_of_reading_as_finished(tmp_path):
    """A kill between metrics.json and status 'finished' leaves both: the run is still unfinished."""
    folder = RunFolder(tmp_path)
    config = TrainConfig()
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "status.json").write_text(json.dumps({"state": "unfinished"}))
    assert folder.prepare(config, overwrite=False) is None  # no checkpoint here: starts again, does not refuse


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
    assert str(named) in str(caught.value) and "--overwrite" in str(caught.value)


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
