"""Is one backbone call on the concatenated 3·B batch faster than three calls on B?

    python -m benchmarks.tools.concat_vs_three --backends jax,tensorflow,torch

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
import statistics
import sys
import time

from benchmarks import launcher, measure

BATCH = 128
INPUT_DIM = 784


def _worker(args):
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
    launcher.write_rows(
        [
            {
                "backend": keras.backend.backend(),
                "steps_per_execution": model.steps_per_execution,
                "jit_compile": model.jit_compile,
                "device": measure.cpu_name(),
                "step_ms": {name: statistics.median(values) for name, values in step_ms.items()},
                "spread_ms": {name: (max(values) - min(values)) / 2 for name, values in step_ms.items()},
                "first_epoch_excess_s": {name: statistics.median(values) for name, values in compile_s.items()},
            }
        ],
        args.worker_out,
    )


COLUMNS = [
    ("backend", "backend", ""),
    ("jit_compile", "jit_compile", ""),
    ("steps/exec", "steps_per_execution", ":"),
    ("concatenated ms/step", lambda r: f"{r['step_ms']['concatenated']:.2f} ± {r['spread_ms']['concatenated']:.2f}", ":"),
    ("three calls ms/step", lambda r: f"{r['step_ms']['three_calls']:.2f} ± {r['spread_ms']['three_calls']:.2f}", ":"),
    ("three / concat", lambda r: f"{r['step_ms']['three_calls'] / r['step_ms']['concatenated']:.2f}", ":"),
    ("device", "device", ""),
]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--steps", type=int, default=64, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per model (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh models per variant")
    parser.add_argument("--threads", type=int, help="CPU threads per framework (default: each framework's own)")
    parser.add_argument("--out", default="benchmarks/results/concat_vs_three.json")
    launcher.add_worker_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    rows = []
    for backend in args.backends.split(","):
        worker_argv = ["--steps", str(args.steps), "--epochs", str(args.epochs), "--repeats", str(args.repeats)]
        rows += launcher.run_in_backend(backend, "benchmarks.tools.concat_vs_three", worker_argv, args.threads)
    table = launcher.markdown_table(rows, COLUMNS)
    launcher.write_outputs(table, rows, args.out, "benchmarks.tools.concat_vs_three", argv)
    return 0 if len(rows) == len(args.backends.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
