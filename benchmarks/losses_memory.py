"""Time and peak host memory of each mining loss, and of its gradient, per backend.

    python -m benchmarks.losses_memory --backends jax,tensorflow,torch [--out losses.json]

For every (backend, loss, B) a fresh subprocess (KERAS_BACKEND is read at
import) builds B embeddings of `--dim` dimensions (labels: B / 4 classes of
4, a P × K batch) and runs the loss compiled the way `fit` runs it by
default on CPU: `jax.jit`, `tf.function` (no XLA), eager torch. It times the
loss alone and the loss with its gradient (median of `--repeats` calls after
one warm-up call) and reports the memory the run added to the subprocess's
peak resident set: ru_maxrss after the runs minus ru_maxrss before them
(imports and data already resident). For scale, one B × B × B float32 tensor
(TF Addons' semi-hard) is 32 GiB at B = 2048; B × B float32 is 16 MiB.

`--threads N` caps each framework's intra-op threads (default: the
framework's own choice). On a loaded machine, torch's default OpenMP
threads wait on each other: there `--threads 1` gives steadier numbers.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from benchmarks.measure import thread_env

LOSSES = ("semi_hard", "batch_hard", "batch_all")
SAMPLES_PER_CLASS = 4


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _compiled(loss, labels):
    """(loss(embeddings), value_and_gradient(embeddings), to_numpy) for the active backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def value(embeddings):
            return loss(labels, embeddings)

        return (
            jax.jit(value),
            jax.jit(jax.value_and_grad(value)),
            lambda out: jax.block_until_ready(out),
        )
    if backend == "tensorflow":
        import tensorflow as tf

        labels = tf.constant(labels)

        @tf.function
        def value(embeddings):
            return loss(labels, embeddings)

        @tf.function
        def value_and_gradient(embeddings):
            with tf.GradientTape() as tape:
                tape.watch(embeddings)
                result = loss(labels, embeddings)
            return result, tape.gradient(result, embeddings)

        return (
            value,
            value_and_gradient,
            lambda out: tf.nest.map_structure(lambda t: t.numpy(), out),
        )
    if backend == "torch":
        import torch

        labels = torch.as_tensor(labels)

        def value(embeddings):
            with torch.no_grad():
                return loss(labels, embeddings)

        def value_and_gradient(embeddings):
            embeddings = embeddings.detach().requires_grad_(True)
            result = loss(labels, embeddings)
            (gradient,) = torch.autograd.grad(result, embeddings)
            return result, gradient

        return value, value_and_gradient, lambda out: out
    raise ValueError(f"Unknown backend {backend!r}")


def _median_ms(function, argument, finish, repeats):
    finish(function(argument))  # warm-up: compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        finish(function(argument))
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def _child(args):
    import keras
    import numpy as np

    from siamese_k3 import losses

    functions = {
        "semi_hard": losses.semi_hard_triplet_loss,
        "batch_hard": losses.batch_hard_triplet_loss,
        "batch_all": losses.batch_all_triplet_loss,
    }
    rng = np.random.default_rng(0)
    labels = (np.arange(args.batch) // SAMPLES_PER_CLASS).astype("int32")
    embeddings = keras.ops.convert_to_tensor(
        rng.normal(size=(args.batch, args.dim)).astype("float32")
    )
    value, value_and_gradient, finish = _compiled(functions[args.loss], labels)
    before = _peak_rss_mib()
    loss_ms = _median_ms(value, embeddings, finish, args.repeats)
    gradient_ms = _median_ms(value_and_gradient, embeddings, finish, args.repeats)
    after = _peak_rss_mib()
    print(
        json.dumps(
            {
                "backend": keras.backend.backend(),
                "loss": args.loss,
                "batch": args.batch,
                "dim": args.dim,
                "loss_ms": loss_ms,
                "loss_and_gradient_ms": gradient_ms,
                "added_peak_rss_mib": after - before,
                "peak_rss_mib": after,
            }
        )
    )


def _table(rows):
    lines = [
        "| backend | loss | B | loss ms | loss + grad ms | added peak RSS MiB | process peak RSS MiB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['backend']} | {row['loss']} | {row['batch']} | {row['loss_ms']:.1f} "
            f"| {row['loss_and_gradient_ms']:.1f} | {row['added_peak_rss_mib']:.0f} | {row['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--sizes", default="256,1024,2048", help="batch sizes B")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, help="intra-op threads per framework (default: its own)"
    )
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loss", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    rows = []
    for backend in args.backends.split(","):
        for loss in args.losses.split(","):
            for batch in map(int, args.sizes.split(",")):
                command = [
                    sys.executable,
                    "-m",
                    "benchmarks.losses_memory",
                    "--child",
                    f"--loss={loss}",
                    f"--batch={batch}",
                    f"--dim={args.dim}",
                    f"--repeats={args.repeats}",
                ]
                completed = subprocess.run(
                    command,
                    env={**os.environ, **thread_env(args.threads), "KERAS_BACKEND": backend},
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if completed.returncode != 0:
                    sys.exit(f"{backend} {loss} B={batch} failed:\n{completed.stderr[-3000:]}")
                rows.append(json.loads(completed.stdout.strip().splitlines()[-1]))
                print(_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(_table(rows))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
