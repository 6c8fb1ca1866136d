"""siamese-k3 export (siamese_k3.runs.export): serving artifacts with the embedding model's numbers.

Each format runs where the current backend can write it: a test whose exporter
or runtime is not installed is skipped, naming the package.
"""

import importlib.util
import json
import shutil

import keras
import numpy as np
import pytest

from siamese_k3 import cli
from siamese_k3.backend.exporters import EXPORT_REQUIREMENTS
from siamese_k3.errors import SiameseK3Error
from siamese_k3.runs.export import check_export_requirements

BACKEND = keras.backend.backend()


@pytest.fixture(scope="module")
def trained_runs(finished_run, tmp_path_factory):
    """finish(backbone): a finished run on toy Fashion-MNIST-layout data, made once per backbone.

    compact_cnn (the CLI's default) is a copy of the session's finished run (conftest.py); any
    other backbone trains one epoch of two steps, enough for an export to reproduce its numbers.
    """
    root = tmp_path_factory.mktemp("export")
    images = finished_run.arrays["x_test"][:5].astype("float32")
    finished = {}

    def finish(backbone):
        if backbone not in finished:
            out = root / backbone
            if backbone == "compact_cnn":
                shutil.copytree(finished_run.out, out, ignore=shutil.ignore_patterns(".lock"))
            else:
                code = cli.main([
                    "train", "--data-dir", str(finished_run.root / "data"), "--out", str(out), "--backbone", backbone,
                    "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16", "--classes-per-batch", "4",
                    "--embedding-dim", "8", "--quiet", "--no-plots",
                ])
                assert code == 0
            assert json.loads((out / "config.json").read_text())["backbone"] == backbone
            expected = keras.models.load_model(out / "embedding.keras").predict(images, verbose=0)
            finished[backbone] = out, images, expected
        return finished[backbone]

    return finish


@pytest.fixture
def run(trained_runs):
    """The CLI's default backbone (compact_cnn: convolutions, BatchNorm, max pooling)."""
    return trained_runs("compact_cnn")


def require_exporter(format):
    try:
        check_export_requirements(format, BACKEND)
    except SiameseK3Error as error:
        pytest.skip(str(error))


def test_savedmodel_serves_the_same_embeddings(run):
    require_exporter("savedmodel")
    tf = pytest.importorskip("tensorflow")
    out, images, expected = run
    assert cli.main(["export", str(out), "--format", "savedmodel"]) == 0
    artifact = tf.saved_model.load(str(out / "embedding_savedmodel"))  # keep it: it owns the variables
    served = artifact.serve(tf.constant(images))
    np.testing.assert_allclose(np.asarray(served), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", ["compact_cnn", "fashion_mnist_dense"])
def test_onnx_runs_with_the_same_embeddings(trained_runs, backbone, tmp_path, capsys):
    require_exporter("onnx")
    onnxruntime = pytest.importorskip("onnxruntime", reason="pip install onnxruntime to run ONNX files")
    out, images, expected = trained_runs(backbone)
    target = tmp_path / "embedding.onnx"
    assert cli.main(["export", str(out), "--format", "onnx", "--output", str(target)]) == 0
    if BACKEND == "jax" and backbone == "compact_cnn":
        assert "onnxruntime cannot run" in capsys.readouterr().err
        pytest.skip("jax2onnx writes MaxPooling2D as a 4-D MaxPool that onnxruntime rejects (warned)")
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (embeddings,) = session.run(None, {session.get_inputs()[0].name: images})
    np.testing.assert_allclose(embeddings, expected, atol=1e-5, rtol=0)


def test_onnx_default_output_is_in_the_run_folder(run):
    require_exporter("onnx")
    out, _, _ = run
    assert cli.main(["export", str(out), "--format", "onnx"]) == 0
    assert (out / "embedding.onnx").is_file()


@pytest.mark.parametrize("format", ["savedmodel", "onnx"])
def test_missing_exporter_package_is_one_line_with_the_pip_command(run, format, monkeypatch, capsys):
    needed = EXPORT_REQUIREMENTS[format, BACKEND]
    if not needed:
        pytest.skip(f"{format} on {BACKEND} needs no package besides the backend")
    module, package = needed[-1]
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == module else find_spec(name, *args)
    )
    out, _, _ = run
    assert cli.main(["export", str(out), "--format", format, "--output", str(out / "unused")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert module in error and "pip install " in error and package in error.split("pip install ")[1]
    assert not (out / "unused").exists()
