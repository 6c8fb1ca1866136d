"""Training-step benchmark: siamese_k3 through keras `fit` against native loops, per backend.

    python -m benchmarks.train_core --backends jax,torch,tensorflow --model mlp
    python -m benchmarks.train_core --model cnn --loss semi_hard --batch-size 256 --steps 10
    python -m benchmarks.train_core --model compact --loss batch_all --batch-size 256 --steps 10  # the main job

Each backend runs in its own subprocess (KERAS_BACKEND is fixed at import).
Writes the JSON rows, a markdown table and a bar chart next to `--out`
(see benchmarks/README.md for what is timed and how).
"""

import argparse
import datetime
import json
import pathlib
import shlex
import sys

from benchmarks import launcher, report
from benchmarks.spec import LOSSES, MODELS, Workload

BACKENDS = ("jax", "torch", "tensorflow")
DEFAULT_STEPS = {"mlp": 100, "cnn": 10, "compact": 10, "resnet50": 3}
DEFAULT_REPEATS = {"mlp": 7, "cnn": 5, "compact": 5, "resnet50": 3}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of jax,torch,tensorflow")
    parser.add_argument("--model", choices=MODELS, default="mlp")
    parser.add_argument("--loss", choices=LOSSES, default="triplet")
    parser.add_argument("--batch-size", type=int, default=128, help="triplets (triplet) or labelled images (semi_hard) per step")
    parser.add_argument("--steps", type=int, help="steps per timed epoch (default by model)")
    parser.add_argument("--repeats", type=int, help="timed epochs per implementation (default by model)")
    parser.add_argument("--image-size", type=int, default=0, help="resnet50 input side (default: the backbone's 200)")
    parser.add_argument(
        "--compile",
        default="{}",
        help="JSON keyword arguments for the keras compile(), e.g. "
        "'{\"steps_per_execution\": 1, \"jit_compile\": \"auto\"}' (default: the library's defaults)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads per framework (OMP/MKL, TF intra-op, XLA); default: each framework's own default",
    )
    parser.add_argument(
        "--implementations",
        nargs="+",
        metavar="IMPL",
        help="only these native loops beside keras (e.g. native; torch also has native_compiled); default: all",
    )
    parser.add_argument("--runs", type=int, default=3, help="whole measurements, each in fresh processes (default 3)")
    parser.add_argument("--out", help="JSON path; .md and .png are written beside it (default benchmarks/results/<model>_<loss>.json)")
    launcher.add_worker_arguments(parser)
    args = parser.parse_args(argv)
    args.steps = args.steps or DEFAULT_STEPS[args.model]
    args.repeats = args.repeats or DEFAULT_REPEATS[args.model]
    return args


def _workload(args):
    return Workload(args.model, args.loss, args.batch_size, args.steps, args.repeats, args.image_size)


def run_backend(backend, args):
    """Rows from a fresh `python -m benchmarks.train_core --worker BACKEND` process, or [] on failure."""
    argv = [
        "--model", args.model, "--loss", args.loss, "--batch-size", str(args.batch_size),
        "--steps", str(args.steps), "--repeats", str(args.repeats), "--compile", args.compile,
        "--image-size", str(args.image_size),
    ]  # fmt: skip
    if args.implementations:
        argv += ["--implementations", *args.implementations]
    return launcher.run_in_backend(backend, "benchmarks.train_core", argv, args.threads)


def write_outputs(rows, args, argv):
    out = pathlib.Path(args.out or f"benchmarks/results/{args.model}_{args.loss}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    command = "python -m benchmarks.train_core " + " ".join(shlex.quote(a) for a in argv)
    title = f"{args.model}, {args.loss}, batch {args.batch_size}"
    table = (
        f"{datetime.date.today().isoformat()} — `{command}`\n\n"
        f"{args.runs} run(s); {args.steps} steps per epoch, {args.repeats} timed epochs per implementation (interleaved), "
        f"threads: {args.threads or 'framework defaults'}\n\n"
        + report.markdown_table(rows)
    )
    out.with_suffix(".md").write_text(table)
    if rows:
        report.bar_chart(rows, out.with_suffix(".png"), title)
    print(table)
    launcher.log(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    compile_kwargs = json.loads(args.compile)
    if args.worker:
        from benchmarks import worker

        try:
            worker.main(args.worker, _workload(args), compile_kwargs, args.worker_out, launcher.log, args.implementations)
        except LookupError as error:  # a loop this backend lacks: one line, and the launcher reports the backend failed
            launcher.log(f"[{args.worker}] {error}")
            return 2
        return 0
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; expected some of {BACKENDS}")
    rows = []
    for run in range(args.runs):
        for backend in backends:
            launcher.log(f"== run {run + 1}/{args.runs}: {backend} ==")
            rows += [dict(row, run=run) for row in run_backend(backend, args)]
    write_outputs(rows, args, argv)
    complete = all({row["backend"] for row in rows if row["run"] == run} == set(backends) for run in range(args.runs))
    return 0 if rows and complete else 1


if __name__ == "__main__":
    sys.exit(main())
