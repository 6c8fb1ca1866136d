"""Models saved on one backend load on every backend with the same embeddings.

The 3 × 3 matrix (saving backend × loading backend) for three backbones, one
without and two with BatchNormalization. The backend is fixed per process, so
tests/portability_worker.py does the work in subprocesses: one per backend to
train 2 steps and save model.keras and embedding.keras, then one per backend
to load every saved file and embed the same fixed inputs.

Each backend's worker runs in the Python that ``SIAMESE_K3_PYTHON_<BACKEND>``
names, else in this Python when it has that backend. ``nox -s portability``
names the three `tests(backend)` virtualenvs, each with keras and only its own
backend, as a user who has one backend installed. A pair with a backend in
neither is skipped.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.portability

BACKENDS = ("jax", "tensorflow", "torch")
BACKBONES = ("fashion_mnist_dense", "compact_cnn", "resnet50_embedding")
FILES = ("embedding.keras", "model.keras")
TOLERANCE = 1e-5  # max abs difference of float32 embeddings
WORKER = Path(__file__).with_name("portability_worker.py")
REPOSITORY = Path(__file__).resolve().parents[1]
IMAGENET_MEAN_RGB = np.array([123.68, 116.779, 103.939], "float32")


def python_for(backend):
    """The Python that runs `backend`'s worker: $SIAMESE_K3_PYTHON_<BACKEND>, else this one if it has it, else None."""
    named = os.environ.get(f"SIAMESE_K3_PYTHON_{backend.upper()}")
    if named:
        return named
    return sys.executable if importlib.util.find_spec(backend) is not None else None


def installed(backend):
    return python_for(backend) is not None


def require(*backends):
    for backend in backends:
        if not installed(backend):
            pytest.skip(
                f"{backend} is not installed: pip install 'siamese_k3[{backend}]', or name a Python that has it "
                f"in SIAMESE_K3_PYTHON_{backend.upper()}"
            )


def fixed_inputs(backbone):
    """Six images for `backbone`, 0-255 pixel values as the CLI feeds them."""
    rng = np.random.default_rng(0)
    if backbone == "resnet50_embedding":
        # Low-contrast images, within ±2 of the ImageNet mean. Random ResNet50
        # weights with frozen BatchNorm (moving statistics still 0 and 1) turn
        # full-contrast 0-255 images into embeddings of about 500, where one
        # float32 ulp is 6e-5: there the backends' convolutions, 2-5 ulps apart,
        # differ by 2-3e-4 (relative 6e-7) although every weight and statistic
        # loads exactly. Near the mean the embeddings are O(1) and the 1e-5 bar
        # checks what was saved, not float32 rounding.
        return (IMAGENET_MEAN_RGB + rng.uniform(-2, 2, (6, 32, 32, 3))).astype("float32")
    return rng.uniform(0, 255, (6, 28, 28)).astype("float32")


def run_workers(step, directory, backends, *arguments):
    """`portability_worker.py STEP DIRECTORY ...` once per backend, all at once (each is one process, mostly
    one core), each in its backend's Python; fails naming every backend whose worker failed."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
    }
    workers = {
        backend: subprocess.Popen(
            [python_for(backend), str(WORKER), step, str(directory), *arguments],
            env={**environment, "KERAS_BACKEND": backend}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        for backend in backends
    }
    failures = []
    for backend, worker in workers.items():
        _, stderr = worker.communicate(timeout=1800)
        if worker.returncode != 0:
            failures.append(f"{backend} worker {step} failed:\n{stderr[-4000:]}")
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A folder with, per installed backend, the trained models and their embeddings on every backend."""
    directory = tmp_path_factory.mktemp("portability")
    for backbone in BACKBONES:
        np.save(directory / f"{backbone}.inputs.npy", fixed_inputs(backbone))
    available = [backend for backend in BACKENDS if installed(backend)]
    run_workers("save", directory, available, *BACKBONES)
    run_workers("load", directory, available)
    return directory


def max_abs_difference(path, reference):
    embeddings = np.load(path)
    assert embeddings.shape == reference.shape, path
    return float(np.max(np.abs(embeddings.astype(np.float64) - reference)))


@pytest.mark.parametrize("loader", BACKENDS)
@pytest.mark.parametrize("saver", BACKENDS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_saved_files_give_the_same_embeddings_on_every_backend(saved, backbone, saver, loader):
    require(saver, loader)
    folder = saved / saver / backbone
    reference = np.load(folder / "reference.npy").astype(np.float64)
    for name in FILES:
        difference = max_abs_difference(folder / f"{name}.{loader}.npy", reference)
        assert difference <= TOLERANCE, (
            f"{backbone} {name} saved on {saver}, loaded on {loader}: max abs difference {difference:.2e}"
        )


@pytest.mark.parametrize("backbone", BACKBONES)
def test_jax_trained_model_gives_torch_tensors_in_torch(saved, backbone):
    """Train on JAX, load in a PyTorch program: a torch.Tensor in, a torch.Tensor out, same numbers."""
    require("jax", "torch")
    folder = saved / "jax" / backbone
    reference = np.load(folder / "reference.npy").astype(np.float64)
    for name in FILES:
        difference = max_abs_difference(folder / f"{name}.torch_tensor.npy", reference)
        assert difference <= TOLERANCE, f"{backbone} {name}: max abs difference {difference:.2e}"
