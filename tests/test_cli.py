"""siamese_k3.cli and what it calls (training, the run folder): short end-to-end runs, the run folder, one-line errors."""

import json
import os
import re
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from PIL import Image

from siamese_k3 import cli
from siamese_k3.runs import training
from siamese_k3.search.evaluation import retrieval_metrics

from paired_folders import make_paired_folders
from toy import TINY, write_clustered_idx  # noqa: F401 (other test modules import them from here)


@pytest.fixture
def labelled_run(finished_run):
    """The session's finished 2-epoch run (conftest.py): (data root, run folder, arrays), only read here."""
    return finished_run.root, finished_run.out, finished_run.arrays


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def test_train_writes_the_whole_run_folder(labelled_run, capsys):
    _, out, _ = labelled_run
    for name in cli_run_files():
        assert (out / name).is_file(), name
    assert not (out / "backup").exists()
    config = read_json(out / "config.json")
    assert config["backend"] == keras.backend.backend()
    assert config["input_shape"] == [28, 28]
    assert config["loss"] == "batch_all" and config["recipe"] == "default"
    history = read_json(out / "history.json")
    assert len(history["loss"]) == len(history["val_loss"]) == 2
    assert all(np.isfinite(history["loss"]))


def cli_run_files():
    from siamese_k3.runs.folder import RUN_FILES

    return RUN_FILES


def test_history_holds_the_retrieval_metrics_and_active_fraction_of_every_epoch(labelled_run):
    """The per-epoch sample is the whole 120-image test split here, so the last epoch's values are
    metrics.json's, which the next test recomputes independently."""
    _, out, _ = labelled_run
    history = read_json(out / "history.json")
    metrics = read_json(out / "metrics.json")
    for key in ("precision_at_1", "r_precision", "map_at_r"):
        assert len(history[f"val_{key}"]) == 2
        assert history[f"val_{key}"][-1] == pytest.approx(metrics[key], abs=1e-6), key
    for key in ("fraction_positive_triplets", "val_fraction_positive_triplets"):
        assert len(history[key]) == 2 and all(0.0 <= value <= 1.0 for value in history[key])


def test_metrics_match_an_independent_recomputation(labelled_run):
    """metrics.json holds what the saved embedding model gives on the test split."""
    _, out, arrays = labelled_run
    metrics = read_json(out / "metrics.json")
    embedding_model = keras.models.load_model(out / "embedding.keras")
    embeddings = np.asarray(embedding_model.predict(arrays["x_test"], verbose=0), np.float64)
    # Brute-force precision@1 (query excluded) from plain numpy distances.
    squared = ((embeddings[:, None, :] - embeddings[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(squared, np.inf)
    nearest = arrays["y_test"][np.argmin(squared, axis=1)]
    assert metrics["precision_at_1"] == pytest.approx(np.mean(nearest == arrays["y_test"]), abs=1e-6)
    assert metrics["map_at_r"] == pytest.approx(
        retrieval_metrics(embeddings, arrays["y_test"])["map_at_r"], abs=1e-5
    )
    # The embedding model takes raw 0-255 pixels and is trained: better than chance on 10 classes.
    assert metrics["precision_at_1"] > 0.5
    assert set(metrics["raw_pixel_baseline"]) >= {"precision_at_1", "map_at_r"}
    assert 0.0 <= metrics["verification"]["roc_auc"] <= 1.0


def test_train_prints_a_metrics_table(finished_run):
    """What `siamese-k3 train` printed when the session's run finished."""
    printed = finished_run.printed
    assert "precision_at_1" in printed and "map_at_r" in printed and "raw pixels" in printed


def test_finished_run_is_not_overwritten(labelled_run, capsys):
    root, out, _ = labelled_run
    before = (out / "metrics.json").read_bytes()
    code = cli.main(["train", "--data-dir", str(root / "data"), "--out", str(out), *TINY])
    assert code == 1
    error = capsys.readouterr().err
    assert "finished run" in error and "--overwrite" in error and "Traceback" not in error
    assert (out / "metrics.json").read_bytes() == before


def test_evaluate_recomputes_the_same_metrics(finished_run_copy, capsys):
    out = finished_run_copy.out
    before = read_json(out / "metrics.json")
    assert cli.main(["evaluate", str(out)]) == 0
    after = read_json(out / "metrics.json")
    for key in ("precision_at_1", "r_precision", "map_at_r"):
        assert after[key] == pytest.approx(before[key], abs=1e-6)
    assert "precision_at_1" in capsys.readouterr().out


def test_embed_and_similarity_on_image_files(labelled_run, tmp_path, capsys):
    _, out, arrays = labelled_run
    paths = []
    for index in range(3):
        path = tmp_path / f"item{index}.png"
        Image.fromarray(arrays["x_test"][index]).save(path)
        paths.append(str(path))
    target = tmp_path / "e.npy"
    assert cli.main(["embed", str(out), "--images", *paths, "--output", str(target)]) == 0
    embeddings = np.load(target)
    expected = keras.models.load_model(out / "embedding.keras").predict(arrays["x_test"][:3], verbose=0)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)

    capsys.readouterr()
    assert cli.main(["similarity", str(out), paths[0], paths[1]]) == 0
    printed = capsys.readouterr().out
    distance = float(printed.split("euclidean distance:")[1].split()[0])
    cosine = float(printed.split("cosine similarity:")[1].split()[0])
    first, second = expected[0].astype(np.float64), expected[1].astype(np.float64)
    assert distance == pytest.approx(np.linalg.norm(first - second), abs=1e-4)
    reference = first @ second / (np.linalg.norm(first) * np.linalg.norm(second))
    assert cosine == pytest.approx(reference, abs=1e-4)


def test_unfinished_run_with_other_options_is_refused(tmp_path, capsys):
    run = tmp_path / "r"
    (run / "backup").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"epochs": 9}))
    write_clustered_idx(tmp_path / "data", train=40, test=20)
    code = cli.main(["train", "--data-dir", str(tmp_path / "data"), "--out", str(run), "--epochs", "1"])
    assert code == 1
    assert "other options" in capsys.readouterr().err


def test_missing_dataset_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SIAMESE_K3_DATA", raising=False)
    from siamese_k3.data import datasets

    monkeypatch.setattr(datasets, "DEBIAN_DIRS", {"fashion_mnist": str(tmp_path / "none")})
    monkeypatch.setattr(datasets, "_download", _no_network, raising=False)
    code = cli.main(["train", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--epochs", "1"])
    assert code == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("siamese-k3: error:") and "\n" not in error
    assert str(tmp_path / "empty") in error and "Traceback" not in error


def _no_network(*args, **kwargs):
    raise OSError("no network in tests")


def test_unreadable_image_is_named(labelled_run, tmp_path, capsys):
    _, out, _ = labelled_run
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    assert cli.main(["similarity", str(out), str(bad), str(bad)]) == 1
    error = capsys.readouterr().err
    assert "broken.png" in error and "Traceback" not in error


def test_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path)]) == 1
    assert "not a run folder" in capsys.readouterr().err


def test_unknown_backbone(tmp_path, capsys):
    write_clustered_idx(tmp_path / "data", train=40, test=20)
    code = cli.main(["train", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
                     "--backbone", "vgg99"])
    assert code == 1
    assert "vgg99" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--epochs", "0"], "positive integer"),
        (["train", "--loss", "quadruplet"], "invalid choice"),
        (["train", "--backend", "mxnet"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_non_zero(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_batch_too_small_for_the_classes(tmp_path, capsys):
    write_clustered_idx(tmp_path / "data", train=40, test=20)
    code = cli.main(["train", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
                     "--batch-size", "8", "--classes-per-batch", "8"])
    assert code == 1
    assert "--classes-per-batch" in capsys.readouterr().err


def test_choose_backend_prefers_the_option(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())
    assert cli.choose_backend() == keras.backend.backend()
    assert cli.choose_backend(keras.backend.backend()) == keras.backend.backend()


# --------------------------------------------------------------------------
# pairs:DIR (seeds 003/004)
# --------------------------------------------------------------------------


def test_pairs_run_trains_evaluates_and_compares_images(tmp_path, capsys):
    """One pairs:DIR run: trains, evaluates, compares two images; with --skip-unpaired, a file without its
    pair is named in a warning and left out (12 pairs still, 3 of them held out)."""
    folders = make_paired_folders(tmp_path / "tll", count=12, size=(40, 48))
    Image.new("RGB", (40, 48)).save(folders / "right" / "lonely.png")
    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", f"pairs:{folders}", "--out", str(out), "--backbone", "small_cnn",
                     "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--validation-split", "0.25",
                     "--skip-unpaired", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "lonely.png" in captured.out + captured.err
    config = read_json(out / "config.json")
    assert (config["loss"], config["margin"], config["distance"]) == ("triplet", 0.5, "squared_euclidean")
    metrics = read_json(out / "metrics.json")
    assert metrics["num_validation_pairs"] == 3
    for key in ("best_accuracy", "roc_auc", "mean_cosine_similarity_anchor_positive",
                "mean_cosine_similarity_anchor_negative"):
        assert np.isfinite(metrics[key])
    # pairs runs are validated by ROC AUC each epoch; after the last, it is the final one
    assert read_json(out / "history.json")["val_pair_roc_auc"] == [pytest.approx(metrics["roc_auc"], abs=1e-6)]
    assert "mean_cosine_similarity_anchor_positive" in captured.out
    left = folders / "left" / "pair_000.png"
    right = folders / "right" / "pair_000.png"
    assert cli.main(["similarity", str(out), str(left), str(right)]) == 0
    assert "cosine similarity:" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "empty", "unpaired", "not_an_image"])
def test_pairs_bad_input_is_one_clear_line(tmp_path, case, capsys):
    folders = tmp_path / "tll"
    if case != "missing":
        (folders / "left").mkdir(parents=True)
        (folders / "right").mkdir()
    if case in ("unpaired", "not_an_image"):
        make_paired_folders(folders, count=6, size=(16, 16))
    if case == "unpaired":
        Image.new("RGB", (16, 16)).save(folders / "left" / "lonely.png")
        expected = "lonely.png"
    elif case == "not_an_image":
        (folders / "right" / "pair_002.png").write_text("hello")
        expected = "pair_002.png"
    else:
        expected = "left"
    code = cli.main(["train", "--dataset", f"pairs:{folders}", "--out", str(tmp_path / "r"),
                     "--backbone", "small_cnn", "--image-size", "16", "--epochs", "1"])
    assert code == 1
    error = capsys.readouterr().err
    assert expected in error and "Traceback" not in error
    assert error.count("\n") == 1


def test_mining_loss_needs_labels(tmp_path, capsys):
    folders = make_paired_folders(tmp_path / "tll", count=4, size=(16, 16))
    code = cli.main(["train", "--dataset", f"pairs:{folders}", "--out", str(tmp_path / "r"),
                     "--loss", "semi_hard"])
    assert code == 1
    assert "use --loss 'triplet'" in capsys.readouterr().err


def test_backend_that_is_not_installed_is_one_clear_line(tmp_path, capsys):
    from siamese_k3.backend import installed_backends

    missing = [name for name in cli.BACKENDS if name not in installed_backends()]
    if not missing:
        pytest.skip("every backend is installed here (the per-backend nox sessions have one)")
    assert cli.main(["evaluate", str(tmp_path), "--backend", missing[0]]) == 1
    error = capsys.readouterr().err
    assert f"backend {missing[0]!r} is not installed" in error and "pip install" in error


# --------------------------------------------------------------------------
# Nothing silent (issue 14): the exact inputs that used to pass without a word
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--margin", "nan", "is not a valid margin: expected a finite number >= 0"),
        ("--margin", "-1", "is not a valid margin: expected a finite number >= 0"),
        ("--learning-rate", "0", "is not a valid learning rate: expected a finite number > 0"),
        ("--learning-rate", "inf", "is not a valid learning rate: expected a finite number > 0"),
    ],
)
def test_bad_margin_or_learning_rate_is_one_line_and_exit_2(option, value, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", option, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"argument {option}: {value}" in error and expected in error


def test_diverging_run_stops_unfinished_and_evaluate_refuses_it(tmp_path, capsys):
    write_clustered_idx(tmp_path / "data", train=80, test=40)
    run = tmp_path / "r"
    code = cli.main(["train", "--data-dir", str(tmp_path / "data"), "--out", str(run), "--learning-rate", "1e38", *TINY])
    assert code == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Traceback" not in error
    assert re.search(r"loss became (nan|inf|-inf) at epoch 1, step \d+\. Likely causes: a learning rate", error)
    assert not (run / "metrics.json").exists() and not (run / "embedding.keras").exists()
    assert read_json(run / "status.json")["state"] == "failed"
    assert cli.main(["evaluate", str(run)]) == 1
    assert "failed run" in capsys.readouterr().err


def test_evaluate_refuses_non_finite_weights(labelled_run, tmp_path, capsys):
    _, out, _ = labelled_run
    run = tmp_path / "nan_run"
    run.mkdir()
    (run / "config.json").write_text((out / "config.json").read_text())
    model = keras.models.load_model(out / "embedding.keras")
    weights = model.get_weights()
    weights[-1] = np.full_like(weights[-1], np.nan)
    model.set_weights(weights)
    model.save(run / "embedding.keras")
    assert cli.main(["evaluate", str(run)]) == 1
    assert "non-finite weights (NaN or inf)" in capsys.readouterr().err
    assert not (run / "metrics.json").exists()


class _NaNWhereLabelsAreNaN(keras.losses.Loss):
    """A mining loss whose value is NaN for a batch with NaN labels, on every backend.

    (NaN images are no reliable trigger: TensorFlow's CPU relu maps NaN to 0.)
    """

    def __init__(self, inner):
        super().__init__(name=inner.name)
        self.inner = inner

    def call(self, y_true, y_pred):
        return self.inner.call(y_true, y_pred) + 0.0 * keras.ops.sum(y_true)


def test_nan_mid_run_keeps_the_last_good_epoch_and_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    """A NaN loss in epoch 2 of 3 stops the run; the rerun resumes at epoch 2 and finishes finite."""
    write_clustered_idx(tmp_path / "data", train=80, test=40)
    args = ["train", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
            "--epochs", "3", "--steps-per-epoch", "3", "--batch-size", "16", "--classes-per-batch", "4", "--quiet",
            "--no-plots"]
    epochs_ended = []

    class PoisonedOnce(training.ClassBalancedBatches):
        """The training batches of epoch 2 carry NaN labels (the epoch count, not the batch count,
        says when: how many batches keras reads ahead differs between backends and settings)."""

        def on_epoch_end(self):
            super().on_epoch_end()
            if self.steps_per_epoch == 3:  # the training batches, not the validation ones
                epochs_ended.append(True)

        def __getitem__(self, index):
            images, labels = super().__getitem__(index)
            labels = labels.astype("float32")
            if self.steps_per_epoch == 3 and len(epochs_ended) == 2:  # keras also ends one before epoch 1
                labels = np.full(labels.shape, np.nan, "float32")
            return images, labels

    real_get = training.losses.get
    monkeypatch.setattr(training, "ClassBalancedBatches", PoisonedOnce)
    monkeypatch.setattr(training.losses, "get", lambda *args, **kwargs: _NaNWhereLabelsAreNaN(real_get(*args, **kwargs)))
    assert cli.main(args) == 1
    monkeypatch.undo()  # the rerun trains on the real data with the real loss
    error = capsys.readouterr().err
    assert "at epoch 2, step " in error and "resumes it from the last finished epoch" in error
    assert read_json(tmp_path / "r" / "backup" / "training_metadata.json")["epoch"] == 1
    assert cli.main(args) == 0
    assert "Resuming" in capsys.readouterr().out
    history = read_json(tmp_path / "r" / "history.json")
    assert len(history["loss"]) == 3 and np.all(np.isfinite(history["loss"]))
    assert read_json(tmp_path / "r" / "status.json")["state"] == "finished"


@pytest.mark.timed
@pytest.mark.backend_independent
def test_second_train_on_a_folder_in_use_fails_at_once_naming_the_other_process(tmp_path, capsys):
    """Two `siamese-k3 train --out cc`: the second fails naming the first; once the first is killed, it runs."""
    write_clustered_idx(tmp_path / "data", train=80, test=40)
    run = tmp_path / "cc"
    args = ["train", "--data-dir", str(tmp_path / "data"), "--out", str(run), *TINY]
    long_run = [arg if arg != "2" else "200" for arg in args]  # --epochs 200: still running when we look
    first = subprocess.Popen([sys.executable, "-m", "siamese_k3", *long_run], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "KERAS_BACKEND": keras.backend.backend()})
    try:
        deadline = time.monotonic() + 120
        while f"pid {first.pid} " not in _read_or_empty(run / ".lock") and time.monotonic() < deadline:
            assert first.poll() is None, "the first train ended early"
            time.sleep(0.2)
        assert cli.main(args) == 1
        error = capsys.readouterr().err.strip()
        assert "\n" not in error and f"{run} is in use by pid {first.pid} on " in error and "siamese_k3 train" in error
    finally:
        first.kill()  # SIGKILL: no cleanup, the OS drops the lock
        first.wait()
    # The lock is free again: a run (as short as can be, the property is only that it starts) takes the folder.
    assert cli.main([*args, "--overwrite", "--epochs", "1", "--steps-per-epoch", "1", "--validation-size", "0"]) == 0


def _read_or_empty(path):
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_run_folder_holds_no_partial_files(labelled_run):
    _, out, _ = labelled_run
    assert not [name for name in os.listdir(out) if ".partial-" in name]
    assert read_json(out / "status.json")["state"] == "finished"
