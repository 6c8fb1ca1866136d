"""A long training run inside `siamese_k3.runs.interrupts.stop_on_signals`; run by tests/test_interrupts.py.

    python interrupts_worker.py mining|siamese [--parallel] [--timeout S] [--grace S] [--epochs N]

Prints ``WAITING`` before it starts data-parallel training (``--parallel``: a
`DataParallel` under whatever launched it), ``TRAINING`` when each epoch after
the first begins (compiled, steady state), and ``FINISHED`` if `fit` and the
save after it end. On `RunInterrupted` it prints ``INTERRUPTED stopped by
<signal> (<where>)`` on stderr (where: the function that raised it) and exits
with its exit code (130, 143); on `PeerTimeoutError` one line ``siamese_k3: error: ...`` and 1.
"""

import argparse
import os
import sys
import tempfile
import traceback

parser = argparse.ArgumentParser()
parser.add_argument("model", choices=("mining", "siamese"))
parser.add_argument("--parallel", action="store_true")
parser.add_argument("--timeout", type=float, default=600)
parser.add_argument("--grace", type=float, default=10)
parser.add_argument("--epochs", type=int, default=100_000)
args = parser.parse_args()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from siamese_k3 import MiningModel, SiameseModel, TripletSemiHardLoss  # noqa: E402
from siamese_k3.data import ClassBalancedBatches, TripletBatches  # noqa: E402
from siamese_k3.runs.interrupts import RunInterrupted, stop_on_signals  # noqa: E402
from siamese_k3.parallel import DataParallel, PeerTimeoutError  # noqa: E402


class Marker(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch >= 1:
            print(f"TRAINING {epoch}", flush=True)


def backbone():
    inputs = keras.Input((28, 28))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Reshape((28, 28, 1))(x)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(8)(x))


def train(stop):
    print("WAITING", flush=True)
    parallel = DataParallel(timeout_seconds=args.timeout) if args.parallel else None
    rng = np.random.default_rng(0)
    labels = np.arange(480) % 8
    images = np.clip(rng.uniform(0, 255, (8, 28, 28))[labels] + rng.normal(0, 60, (480, 28, 28)), 0, 255)
    images = images.astype("float32")
    keras.utils.set_random_seed(0)
    if args.model == "mining":
        batches = ClassBalancedBatches(images, labels, 4, 8, steps_per_epoch=64, seed=0)
        validation = ClassBalancedBatches(images, labels, 4, 8, steps_per_epoch=4, seed=1)
    else:
        batches = TripletBatches(images, labels, 32, steps_per_epoch=64, seed=0)
        validation = TripletBatches(images, labels, 32, steps_per_epoch=4, seed=1)
    with parallel.scope() if parallel else _nothing():
        if args.model == "mining":
            model = MiningModel(backbone())
            model.compile(optimizer="adam", loss=TripletSemiHardLoss())
            model.build((None, 28, 28))
        else:
            model = SiameseModel(backbone())
            model.compile(optimizer="adam")
            model.build(((None, 28, 28),) * 3)
    inputs = parallel.fit_inputs(batches, validation) if parallel else {"x": batches, "validation_data": validation}
    model.fit(**inputs, epochs=args.epochs, callbacks=[stop.callback, Marker()], verbose=0)
    with tempfile.TemporaryDirectory() as folder:
        model.save_weights(os.path.join(folder, "model.weights.h5"))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main():
    try:
        with stop_on_signals(grace_seconds=args.grace) as stop:
            train(stop)
    except RunInterrupted as interrupted:
        where = traceback.extract_tb(interrupted.__traceback__)[-1].name
        print(f"INTERRUPTED {interrupted} ({where})", file=sys.stderr, flush=True)
        return interrupted.exit_code
    except PeerTimeoutError as error:
        print(f"siamese_k3: error: {error}", file=sys.stderr, flush=True)
        return 1
    print("FINISHED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
