"""Training with and without keras.distribution.DataParallel, run by tests/test_distribution.py.

Run with KERAS_BACKEND=jax and XLA_FLAGS=--xla_force_host_platform_device_count=2
(two CPU devices); prints one JSON object:

    python distribution_worker.py fit LOSS   # {"devices", "single", "parallel", "global_loss", "per_half_loss"}
    python distribution_worker.py cli DIR    # {"single", "parallel", "uneven_exit", "uneven_error"}

`fit` trains the same tiny backbone (same seed, same initial weights, same
batches) with the mining loss LOSS on one device, then with `set_data_parallel`
over all devices, and reports each run's per-step losses, final embeddings and
over how many devices its variables lie; then, for the test's power, one
batch's loss next to the mean loss of its two halves mined apart.
`cli` does the same through ``siamese-k3 train`` with and without --data-parallel.
"""

import contextlib
import io
import json
import os
import sys

import keras
import numpy as np

from siamese_k3 import backbones, cli, losses
from siamese_k3.data import ClassBalancedBatches
from siamese_k3.runs import set_data_parallel

from test_cli import write_clustered_idx


class StepLosses(keras.callbacks.Callback):
    """logs["loss"] after every step: the mean loss of the epoch's steps so far."""

    def on_train_begin(self, logs=None):
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def train(loss, batches, data_parallel):
    """A tiny backbone (with BatchNorm) trained 2 epochs on `batches`; same seed, same initial weights."""
    keras.utils.set_random_seed(0)
    batches.epoch = 0
    if data_parallel:
        set_data_parallel(16)
    try:
        backbone = backbones.compact_cnn(filters=(4, 8), hidden=16, embedding_dim=8, rescale=1 / 255)
        # SGD: Adam would turn rounding-level gradient differences into learning-rate-sized steps.
        backbone.compile(
            optimizer=keras.optimizers.SGD(0.05), loss=losses.get(loss, margin=0.2), steps_per_execution=1
        )
        steps = StepLosses()
        backbone.fit(batches, epochs=2, callbacks=[steps], verbose=0)
        sharded_over = len(backbone.weights[0].value.sharding.device_set)
    finally:
        keras.distribution.set_distribution(None)
    return backbone, steps.losses, sharded_over


def global_and_per_half_loss(loss, backbone, batch_images, batch_labels):
    """The loss of one batch, and the mean loss of its halves mined apart (what per-device mining would give)."""
    function = losses.get(loss, margin=0.2)
    embeddings = backbone(batch_images, training=False)
    half = len(batch_labels) // 2
    per_half = [function(batch_labels[part], embeddings[part]) for part in (slice(None, half), slice(half, None))]
    return float(function(batch_labels, embeddings)), float(np.mean([float(value) for value in per_half]))


def fit(loss):
    rng = np.random.default_rng(0)
    labels = np.arange(80) % 10
    images = (rng.uniform(0, 255, (10, 28, 28))[labels] + rng.normal(0, 60, (80, 28, 28))).astype("float32")
    batches = ClassBalancedBatches(images, labels, 4, 4, steps_per_epoch=3, seed=0)
    report = {"devices": len(keras.distribution.list_devices())}
    for name in ("single", "parallel"):
        backbone, step_losses, sharded_over = train(loss, batches, data_parallel=name == "parallel")
        embeddings = keras.ops.convert_to_numpy(backbone(images[:8], training=False))
        report[name] = {"losses": step_losses, "embeddings": embeddings.tolist(), "sharded_over": sharded_over}
    report["global_loss"], report["per_half_loss"] = global_and_per_half_loss(loss, backbone, *batches[0])
    return report


def run_cli(arguments):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(arguments)
    return code, stderr.getvalue()


def cli_runs(directory):
    # 41 test images: evaluation after a data-parallel fit predicts an odd-sized batch.
    write_clustered_idx(os.path.join(directory, "data"), train=80, test=41)
    common = ["train", "--data-dir", os.path.join(directory, "data"), "--epochs", "2", "--steps-per-epoch", "3",
              "--embedding-dim", "8", "--quiet"]
    report = {}
    for name, extra in (("single", []), ("parallel", ["--data-parallel"])):
        out = os.path.join(directory, name)
        code, error = run_cli([*common, "--batch-size", "16", "--classes-per-batch", "4", "--out", out, *extra])
        if code:
            sys.exit(f"siamese-k3 train {name} failed: {error}")
        with open(os.path.join(out, "history.json")) as handle:
            report[name] = {"history": json.load(handle)}
        with open(os.path.join(out, "config.json")) as handle:
            report[name]["devices"] = json.load(handle).get("data_parallel_devices")
    # 5 classes × 3 items: 15 rows do not split over 2 devices.
    report["uneven_exit"], report["uneven_error"] = run_cli(
        [*common, "--batch-size", "15", "--classes-per-batch", "5", "--data-parallel",
         "--out", os.path.join(directory, "uneven")]
    )
    return report


if __name__ == "__main__":
    mode, argument = sys.argv[1:]
    print(json.dumps(fit(argument) if mode == "fit" else cli_runs(argument)))
