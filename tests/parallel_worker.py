"""One training run through `siamese_k3.parallel.DataParallel`, or on one device; run by tests/test_parallel.py.

    python parallel_worker.py OUT LOSS single|parallel [--logical-cpus N]

LOSS is ``semi_hard`` (a `MiningModel` on P×K batches) or ``triplet`` (a
`SiameseModel` on offline triplets). The same tiny backbone (no BatchNorm, so
every engine computes the global batch's loss), the same seed, the same
global batches, SGD. The chief writes OUT (JSON): the loss logged after every
step, each step's own loss recovered from those running means, and the final
weights. With ``parallel`` it runs under whatever launched it (torchrun,
``KERAS_DISTRIBUTION_*`` for jax, ``TF_CONFIG`` for tensorflow); with
``--logical-cpus N`` (tensorflow) one process mirrors over N logical CPUs.
"""

import argparse
import json
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("loss", choices=("semi_hard", "triplet", "cosface"))
parser.add_argument("mode", choices=("single", "parallel"))
parser.add_argument("--logical-cpus", type=int, default=0)
args = parser.parse_args()

if args.logical_cpus:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)
    os.environ.pop("TF_CONFIG", None)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from siamese_k3 import CosFaceLoss, MiningModel, Proxies, SiameseModel, TripletSemiHardLoss  # noqa: E402
from siamese_k3.data import ClassBalancedBatches, TripletBatches  # noqa: E402
from siamese_k3.parallel import DataParallel  # noqa: E402

EPOCHS, STEPS = 2, 3


class StepLosses(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.logged = []

    def on_train_batch_end(self, batch, logs=None):
        self.logged.append(float(keras.ops.convert_to_numpy(logs["loss"])))


def backbone():
    inputs = keras.Input((28, 28))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Reshape((28, 28, 1))(x)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(8)(x))


def step_losses(logged):
    """Each step's loss from the epoch's running means (keras logs mean of steps 1..k)."""
    losses = []
    for epoch in range(EPOCHS):
        means = logged[epoch * STEPS : (epoch + 1) * STEPS]
        losses += [means[0]] + [(k + 1) * means[k] - k * means[k - 1] for k in range(1, len(means))]
    return losses


def main():
    rng = np.random.default_rng(0)
    labels = np.arange(96) % 6
    images = np.clip(rng.uniform(0, 255, (6, 28, 28))[labels] + rng.normal(0, 60, (96, 28, 28)), 0, 255)
    images = images.astype("float32")
    # On tensorflow keras' own PyDataset pipeline does not keep the batches' order (its worker
    # threads return them as they finish: measured, the first step trained on batch 2); the
    # one-process reference there is the same engine with one replica (no TF_CONFIG, CPU only).
    engine_for_one = keras.backend.backend() == "tensorflow"
    parallel = DataParallel() if args.mode == "parallel" or engine_for_one else None
    keras.utils.set_random_seed(0)
    if args.loss in ("semi_hard", "cosface"):
        batches = ClassBalancedBatches(images, labels, 4, 4, steps_per_epoch=STEPS, seed=0)
    else:
        batches = TripletBatches(images, labels, 16, steps_per_epoch=STEPS, seed=0)
    with parallel.scope() if parallel else _nothing():
        if args.loss == "semi_hard":
            model = MiningModel(backbone())
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss=TripletSemiHardLoss(margin=0.5),
                          steps_per_execution=1)
            model.build((None, 28, 28))
        elif args.loss == "cosface":  # the proxies: weights of the model, the same on every replica
            model = MiningModel(backbone(), proxies=Proxies(6))
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss=CosFaceLoss(scale=8.0), steps_per_execution=1)
            model.build((None, 28, 28))
        else:
            model = SiameseModel(backbone(), margin=0.5)
            model.compile(optimizer=keras.optimizers.SGD(0.05), steps_per_execution=1)
            model.build(((None, 28, 28),) * 3)
    inputs = parallel.fit_inputs(batches) if parallel else {"x": batches}
    steps = StepLosses()
    model.fit(**inputs, epochs=EPOCHS, callbacks=[steps], verbose=0)
    if parallel:
        parallel.barrier()
    if parallel is None or parallel.is_chief:
        engine = parallel.engine if parallel else None
        weights = engine.local_values(model.weights) if engine else [keras.ops.convert_to_numpy(w) for w in model.weights]
        report = {
            "replicas": parallel.replicas if parallel else 1,
            "engine": parallel is not None,
            "processes": parallel.processes if parallel else 1,
            "logged": steps.logged,
            "losses": step_losses(steps.logged),
            "weights": [np.asarray(w).tolist() for w in weights],
        }
        with open(args.out, "w") as handle:
            json.dump(report, handle)
    if parallel:
        parallel.stop()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    sys.exit(main())
