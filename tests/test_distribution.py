"""Data-parallel training (siamese_k3.runs.set_data_parallel, ``siamese-k3 train --data-parallel``).

On JAX, `keras.distribution.DataParallel` splits each batch over the devices,
yet the jitted train step computes the loss on the whole, sharded batch: online
mining sees the global batch, so training over two devices gives the losses of
one. Checked in a subprocess with two CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``), whatever backend
this session runs on; TensorFlow and PyTorch get an error naming what to use.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from siamese_k3 import cli

from test_cli import write_clustered_idx

WORKER = Path(__file__).with_name("distribution_worker.py")
REPOSITORY = Path(__file__).resolve().parents[1]
RTOL = 1e-5

needs_jax = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="data-parallel training needs jax: pip install 'siamese_k3[jax]'"
)


def run_worker(*arguments):
    environment = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": " ".join(
            filter(None, [os.environ.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=2"])
        ),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, str(WORKER), *arguments], env=environment, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_jax
@pytest.mark.parametrize("loss", ["semi_hard", "batch_all"])
def test_two_devices_train_like_one(loss):
    report = run_worker("fit", loss)
    assert report["devices"] == 2
    assert report["single"]["sharded_over"] == 1 and report["parallel"]["sharded_over"] == 2
    single, parallel = report["single"], report["parallel"]
    assert len(single["losses"]) == 6  # 2 epochs × 3 steps
    np.testing.assert_allclose(parallel["losses"], single["losses"], rtol=RTOL, atol=0)
    np.testing.assert_allclose(parallel["embeddings"], single["embeddings"], rtol=0, atol=1e-4)
    # Mining each device's half apart would have given other losses: the check can tell.
    assert abs(report["per_half_loss"] - report["global_loss"]) > 100 * RTOL * abs(report["global_loss"])


@needs_jax
def test_cli_data_parallel_run_matches_the_single_device_run(tmp_path):
    report = run_worker("cli", str(tmp_path))
    assert report["single"]["devices"] is None and report["parallel"]["devices"] == 2
    single, parallel = report["single"]["history"], report["parallel"]["history"]
    # The CLI trains with Adam, which divides each gradient by its running RMS: rounding-level
    # differences between the sharded and unsharded steps grow (measured 2e-5 after 6 steps),
    # hence 10 × RTOL here; the SGD runs above hold RTOL itself.
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(parallel[key], single[key], rtol=10 * RTOL, atol=0)
    assert report["uneven_exit"] == 1
    assert "15" in report["uneven_error"] and "multiple of 2" in report["uneven_error"]


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="keras 3 has DataParallel on jax: see the tests above")
def test_other_backends_are_told_what_to_use_instead(tmp_path, capsys):
    write_clustered_idx(tmp_path / "data", train=80, test=40)
    code = cli.main(["train", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                     "--batch-size", "16", "--classes-per-batch", "4", "--data-parallel", "--quiet"])
    assert code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--backend jax" in error
    alternative = {"tensorflow": "tf.distribute.MirroredStrategy", "torch": "torchrun"}[keras.backend.backend()]
    assert alternative in error
