"""Time one triplet train step of the seeds' ResNet50 (seeds 003/004) on the current backend.

    KERAS_BACKEND=torch python -m benchmarks.resnet_step --steps 5

Setting as in the seeds: 200×200 RGB, 32 triplets per step (96 images through the
backbone), `resnet50_embedding(weights=None, trainable_from="conv5_block1_out")`,
Adam, euclidean triplet loss. Each step is `model.train_on_batch` on the same
random raw-pixel batch; it returns the loss as a number, so the step has finished
on the device when the clock stops. `--warmup` steps (tracing/compilation) are
excluded; the row reports the median of the timed steps. Prints one JSON row:
{backend, model, batch_size, image_size, step_ms, ...}.
"""

import argparse
import json
import statistics
import time

import keras
import numpy as np

from benchmarks.measure import cpu_name
from siamese_k3.backbones import resnet50_embedding
from siamese_k3.models import SiameseModel


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=32, help="triplets per step")
    parser.add_argument("--image-size", type=int, default=200, help="height = width")
    parser.add_argument("--trainable-from", default="conv5_block1_out")
    parser.add_argument("--out", help="also append the JSON row to this file")
    return parser.parse_args(argv)


def device_name(backend):
    """The device keras trains on: the first GPU if the backend sees one, else the CPU."""
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return f"{device.platform}: {device.device_kind}"
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)}"
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return f"gpu: {tf.config.experimental.get_device_details(gpus[0]).get('device_name')}"
    return f"cpu: {cpu_name()}"


def run(args):
    backend = keras.backend.backend()
    keras.utils.set_random_seed(0)
    shape = (args.image_size, args.image_size, 3)
    backbone = resnet50_embedding(shape, weights=None, trainable_from=args.trainable_from)
    model = SiameseModel(backbone, margin=0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    rng = np.random.default_rng(0)
    batch = tuple(
        rng.uniform(0, 255, (args.batch_size, *shape)).astype("float32") for _ in range(3)
    )
    for _ in range(args.warmup):
        model.train_on_batch(batch)
    step_ms = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = model.train_on_batch(batch)
        step_ms.append((time.perf_counter() - start) * 1000)
    return {
        "backend": backend,
        "model": "resnet50",
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "step_ms": round(statistics.median(step_ms), 1),
        "step_ms_min": round(min(step_ms), 1),
        "step_ms_max": round(max(step_ms), 1),
        "steps": args.steps,
        "trainable_from": args.trainable_from,
        "trainable_params": int(sum(np.prod(w.shape) for w in backbone.trainable_weights)),
        "loss": float(np.asarray(loss).reshape(-1)[0]),
        "keras": keras.__version__,
        "device": device_name(backend),
    }


def main(argv=None):
    args = parse_args(argv)
    row = run(args)
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(line + "\n")
    return row


if __name__ == "__main__":
    main()
