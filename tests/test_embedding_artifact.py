"""embedding.keras is for other codebases: plain `keras.models.load_model`, siamese_k3 not importable.

Every built-in backbone is trained one step with a siamese_k3 mining loss (so
the backbone's compile config names a siamese_k3 class), saved as a run saves
it, and loaded in a fresh interpreter where ``import siamese_k3`` fails.
"""

import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from siamese_k3 import TripletSemiHardLoss
from siamese_k3.models import standalone_embedding
from siamese_k3.runs.config import TrainConfig
from siamese_k3.runs.folder import save_model
from siamese_k3.runs.training import build_backbone

SHAPES = {"resnet50": [32, 32, 3], "mnist_dense": [784]}

LOAD_WITHOUT_SIAMESE_K3 = """
import sys
sys.modules["siamese_k3"] = None  # `import siamese_k3` now raises ImportError
import json, keras, numpy as np
try:
    import siamese_k3
except ImportError:
    pass
else:
    raise SystemExit("siamese_k3 was importable")
for name in json.loads(sys.argv[1]):
    model = keras.models.load_model(f"{sys.argv[2]}/{name}.keras")
    assert getattr(model, "optimizer", None) is None and not model.compiled, name
    images = np.load(f"{sys.argv[2]}/{name}.npy")
    np.save(f"{sys.argv[2]}/{name}.out.npy", keras.ops.convert_to_numpy(model.predict(images, verbose=0)))
print("loaded", keras.backend.backend())
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{backbone: embeddings computed in this process}, each model in DIR/NAME.keras with inputs in DIR/NAME.npy."""
    from siamese_k3.backbones import BACKBONES

    folder = tmp_path_factory.mktemp("artifacts")
    rng = np.random.default_rng(0)
    expected = {}
    for name in BACKBONES:
        shape = SHAPES.get(name, [28, 28])
        backbone = build_backbone(TrainConfig(backbone=name, embedding_dim=8), shape)
        backbone.compile(optimizer="adam", loss=TripletSemiHardLoss(margin=0.2))  # what the file must not hold
        # Moving statistics (BatchNormalization) away from their initial 0 and 1, as training leaves them,
        # so that a file that dropped them would embed differently; the weights are random already.
        for layer in backbone._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_mean.assign(rng.uniform(-0.5, 0.5, layer.moving_mean.shape).astype("float32"))
                layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape).astype("float32"))
        images = rng.uniform(0, 255, (8, *shape)).astype("float32")
        save_model(standalone_embedding(backbone), folder / f"{name}.keras")
        np.save(folder / f"{name}.npy", images)
        expected[name] = np.asarray(backbone.predict(images, verbose=0))
    return folder, expected


def test_the_file_holds_no_optimizer_and_no_loss(saved):
    folder, expected = saved
    for name in expected:
        with zipfile.ZipFile(folder / f"{name}.keras") as archive:
            config = json.loads(archive.read("config.json"))
        assert not config.get("compile_config"), name
        assert "siamese_k3" not in json.dumps(config), name


def test_plain_keras_loads_every_backbone_without_siamese_k3(saved):
    folder, expected = saved
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_SIAMESE_K3, json.dumps(list(expected)), str(folder)],
        capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": keras.backend.backend()},
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"loaded {keras.backend.backend()}" in completed.stdout
    for name, embeddings in expected.items():
        np.testing.assert_allclose(np.load(folder / f"{name}.out.npy"), embeddings, rtol=1e-5, atol=1e-5, err_msg=name)


def test_it_shares_the_backbones_weights():
    backbone = build_backbone(TrainConfig(backbone="compact_cnn", embedding_dim=4), [28, 28])
    embedding = standalone_embedding(backbone)
    assert [id(weight) for weight in embedding.weights] == [id(weight) for weight in backbone.weights]
    assert not embedding.compiled
