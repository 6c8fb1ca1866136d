"""Is one backbone call on the concatenated 3·B batch faster than three calls on B?

    python -m benchmarks.concat_vs_three --backends jax,tensorflow,torch

`SiameseModel` concatenates anchor, positive and negative and runs the
backbone once; `ThreeCalls` runs it three times. Both train an MLP
784-128-128-64 on random data with batch 128 and Adam, through
`model.compile()` (the package's defaults: steps_per_execution, jit_compile)
and `fit`. Each backend runs in its own subprocess; inside it the two
variants alternate, `--repeats` fresh models each, so both see the same
machine load. A step time is one epoch's wall time over its steps, epoch 0
(compilation) excluded; the table gives the median over repeats × epochs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BATCH = 128
INPUT_DIM = 784


def _child(args):
    import keras
    import numpy as np

    from siamese_k3.models import SiameseModel, split_triplet

    class ThreeCalls(SiameseModel):
        """The backbone applied to anchor, positive and negative separately."""

        def call(self, inputs, training=None):
            return tuple(self.backbone(part, training=training) for part in split_triplet(inputs))

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    rng = np.random.default_rng(0)
    triplets = tuple(
        rng.normal(size=(BATCH * args.steps, INPUT_DIM)).astype("float32") for _ in range(3)
    )
    step_ms = {"concatenated": [], "three_calls": []}
    compile_s = {"concatenated": [], "three_calls": []}
    for _ in range(args.repeats):
        for name, model_class in (("concatenated", SiameseModel), ("three_calls", ThreeCalls)):
            keras.utils.set_random_seed(0)
            backbone = keras.Sequential(
                [
                    keras.Input((INPUT_DIM,)),
                    keras.layers.Dense(128, activation="relu"),
                    keras.layers.Dense(128, activation="relu"),
                    keras.layers.Dense(64),
                ]
            )
            model = model_class(backbone)
            model.compile(optimizer="adam")
            clock = EpochClock()
            clock.times = []
            model.fit(
                triplets,
                batch_size=BATCH,
                epochs=args.epochs + 1,
                shuffle=False,
                verbose=0,
                callbacks=[clock],
            )
            steady = clock.times[1:]
            step_ms[name] += [1000 * seconds / args.steps for seconds in steady]
            compile_s[name].append(clock.times[0] - statistics.median(steady))
    print(
        json.dumps(
            {
                "backend": keras.backend.backend(),
                "steps_per_execution": model.steps_per_execution,
                "jit_compile": model.jit_compile,
                "step_ms": {name: statistics.median(values) for name, values in step_ms.items()},
                "spread_ms": {
                    name: (max(values) - min(values)) / 2 for name, values in step_ms.items()
                },
                "first_epoch_excess_s": {
                    name: statistics.median(values) for name, values in compile_s.items()
                },
            }
        )
    )


def _table(results):
    lines = [
        "| backend | jit_compile | steps/exec | concatenated ms/step | three calls ms/step | three / concat |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        concat, three = result["step_ms"]["concatenated"], result["step_ms"]["three_calls"]
        spread = result["spread_ms"]
        lines.append(
            f"| {result['backend']} | {result['jit_compile']} | {result['steps_per_execution']} "
            f"| {concat:.2f} ± {spread['concatenated']:.2f} | {three:.2f} ± {spread['three_calls']:.2f} "
            f"| {three / concat:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--steps", type=int, default=64, help="steps per epoch")
    parser.add_argument(
        "--epochs", type=int, default=3, help="timed epochs per model (after one warm-up)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="fresh models per variant")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    results = []
    for backend in args.backends.split(","):
        command = [
            sys.executable,
            "-m",
            "benchmarks.concat_vs_three",
            "--child",
            f"--steps={args.steps}",
            f"--epochs={args.epochs}",
            f"--repeats={args.repeats}",
        ]
        completed = subprocess.run(
            command,
            env={**os.environ, "KERAS_BACKEND": backend},
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            sys.exit(f"{backend} failed:\n{completed.stderr[-3000:]}")
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    print(_table(results))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
