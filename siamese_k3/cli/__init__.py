"""The `siamese-k3` command line (also `python -m siamese_k3`): parse (`cli.parser`), call `siamese_k3.api`, print.

    siamese-k3 train [--backend jax] [--dataset fashion_mnist] [--out runs/fashion_mnist] ...
    siamese-k3 evaluate RUN
    siamese-k3 embed RUN --images a.png b.png [--output embeddings.npy]
    siamese-k3 similarity RUN IMG1 IMG2
    siamese-k3 export RUN --format {savedmodel,onnx} [--output PATH]
    siamese-k3 index RUN (--dataset NAME[:split] | --images DIR|FILES...) [--method exact|hnsw|ivf]
    siamese-k3 search RUN QUERY... [-k 10] [--sheet [PATH] | --no-sheet]
    siamese-k3 calibrate RUN [--target-precision P | --target-recall R]

The backend: --backend, else $KERAS_BACKEND, else keras' configured backend if
installed, else the first installed of jax, tensorflow, torch. Keras and the
backend are imported only once the arguments parse, so ``--help`` and argument
errors are immediate.

Exit codes (`siamese_k3.errors`): 0 done; 2 the command line does not parse
(or names no valid backend); 1 the command was understood but could not run or
failed (bad input, a run folder that cannot be used, training diverged), in one
line ``siamese-k3: error: ...``; 130 / 143 interrupted by SIGINT / SIGTERM (the
run is left unfinished; the same command resumes it). SIAMESE_K3_DEBUG=1 shows
tracebacks.
"""

import importlib.util
import logging
import os
import sys

from siamese_k3.backend import BACKENDS, default_backend
from siamese_k3.cli.parser import SHEET_NEIGHBOURS, SHEET_QUERIES, as_flags, build_parser
from siamese_k3.runs.config import TrainConfig
from siamese_k3.errors import UsageError



def choose_backend(requested=None, argv=None):
    """Make keras run on `requested` (else $KERAS_BACKEND, else the default) and return its name.

    Before keras is imported this only sets KERAS_BACKEND. Once it is (a test
    calling `main`, a notebook), keras cannot switch, so a different backend
    restarts this command in a fresh interpreter with KERAS_BACKEND set.
    """
    requested = requested or os.environ.get("KERAS_BACKEND") or default_backend()
    if requested not in BACKENDS:
        raise UsageError(
            f"KERAS_BACKEND={requested!r} is not a Keras backend: choose one of {', '.join(BACKENDS)} "
            "(with --backend or KERAS_BACKEND)."
        )
    if not importlib.util.find_spec(requested):
        from siamese_k3.errors import SiameseK3Error

        raise SiameseK3Error(
            f"backend {requested!r} is not installed: pip install 'siamese_k3[{requested}]' "
            "(with -c constraints.txt for torch) or choose another with --backend."
        )
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = requested
        return requested
    import keras

    current = keras.backend.backend()
    if requested == current:
        return current
    os.environ["KERAS_BACKEND"] = requested
    argv = sys.argv[1:] if argv is None else list(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "siamese_k3", *argv])


class _ConsoleHandler(logging.Handler):
    """The `siamese_k3` logger on the console: information to stdout, warnings to stderr, one line each."""

    def emit(self, record):
        message = as_flags(" ".join(record.getMessage().split()))
        if record.levelno >= logging.WARNING:
            print(f"siamese-k3: warning: {message}", file=sys.stderr)
        else:
            print(message, file=sys.stdout)


def _show_logs():
    logger = logging.getLogger("siamese_k3")
    if not any(isinstance(handler, _ConsoleHandler) for handler in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


# --------------------------------------------------------------------------
# the commands: call the API, print
# --------------------------------------------------------------------------


def train(args):
    from siamese_k3 import api
    from siamese_k3.runs import evaluation as run_evaluation
    from siamese_k3.errors import RunFailedError

    options = {key: getattr(args, key) for key in TrainConfig.__dataclass_fields__ if hasattr(args, key)}
    config = TrainConfig.from_recipe(**options)
    run = api.train(
        config, out=args.out, overwrite=args.overwrite, data_parallel=args.data_parallel,
        collective_timeout=args.collective_timeout, verbose=0 if args.quiet else "auto",
    )
    if run is None:  # a data-parallel process beside the chief
        return 0
    metrics = run.metrics
    _print_table(run_evaluation.table(metrics), run.path)
    if args.strict and metrics.get("collapse", {}).get("collapsed"):
        raise RunFailedError(
            f"the embedding of the run in {run.path} collapsed (see the table and metrics.json 'collapse'); "
            "--strict makes that a failure."
        )
    return 0


def evaluate(args):
    from siamese_k3 import api
    from siamese_k3.runs import evaluation as run_evaluation

    run = api.Run.open(args.run)
    with run.folder.lock():
        metrics = run.evaluate()
    _print_table(run_evaluation.table(metrics), run.path)
    return 0


def embed(args):
    from siamese_k3 import api
    from siamese_k3.runs import inference

    embeddings = api.Run.open(args.run).embed(args.images)
    path = inference.save_embeddings(args.output, embeddings)
    print(f"Wrote {embeddings.shape[0]} embeddings of dimension {embeddings.shape[1]} ({embeddings.dtype}) to {path}")
    return 0


def similarity(args):
    from siamese_k3 import api

    run = api.Run.open(args.run)
    values = run.similarity(args.image1, args.image2)
    distance = run.config.distance
    print(f"{distance} distance: {values[distance]:.6f}")
    print(f"cosine similarity: {values['cosine_similarity']:.6f}")
    if "same" in values:
        verdict = "same" if values["same"] else "different"
        print(f"verdict: {verdict} (threshold {values['threshold']:.6f}; calibrated precision "
              f"{values['expected_precision']:.3f})")
    else:
        print("verdict: none (no calibration.json: run `siamese-k3 calibrate RUN`)")
    return 0


def index(args):
    from siamese_k3 import api
    from siamese_k3.runs import inference

    run = api.Run.open(args.run)
    images = None
    if args.images:
        images, skipped = inference.image_files(args.images, name="--images")
        if skipped:
            shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
            print(f"siamese-k3: warning: skipped {len(skipped)} files without an image suffix: {shown}",
                  file=sys.stderr)
    built = run.build_index(images=images, dataset=args.dataset, method=args.method, engine=args.engine,
                            verbose=1)  # fmt: skip
    print(f"Indexed {len(built)} embeddings ({args.method}, {built.engine}) in {run.folder.file('index')}")
    return 0


def search(args):
    from siamese_k3 import api

    run = api.Run.open(args.run)
    queries, query_labels = run.images(args.queries)
    result = run.search(queries, k=args.k)
    for row, query in enumerate(args.queries):
        print(query)
        for rank in range(result.indices.shape[1]):
            if result.indices[row, rank] < 0:
                continue
            identifier = result.ids[row][rank] if result.ids is not None else int(result.indices[row, rank])
            label = result.labels[row][rank] if result.labels is not None else ""
            print(f"  {rank + 1:>3}. {identifier}  {label}  {result.distances[row, rank]:.6f}")
    if args.sheet is not False:
        _contact_sheet(run, args, queries, query_labels, result)
    return 0


def _contact_sheet(run, args, queries, query_labels, result):
    """The contact sheet of a search: its first `SHEET_QUERIES` queries, each with its nearest `SHEET_NEIGHBOURS`."""
    from siamese_k3 import plots

    rows, columns = min(len(queries), SHEET_QUERIES), min(result.indices.shape[1], SHEET_NEIGHBOURS)
    shown = result._replace(**{
        field: None if value is None else value[:rows, :columns] for field, value in result._asdict().items()
    })  # fmt: skip
    sheet = args.sheet if isinstance(args.sheet, str) else run.folder.file("search.png")
    gallery = run.neighbour_images(shown)
    if gallery is None:
        return
    labelled = query_labels is not None and shown.labels is not None
    plots.plot_neighbours(queries[:rows], gallery, sheet, distances=shown.distances, count=rows,
                          query_labels=query_labels[:rows] if labelled else None,
                          neighbour_labels=shown.labels if labelled else None)  # fmt: skip
    capped = rows < len(queries) or columns < result.indices.shape[1]
    shown_part = f" (the first {columns} neighbours of the first {rows} queries)" if capped else ""
    print(f"Contact sheet: {sheet}{shown_part}" + ("" if labelled else " (no query labels: nothing framed)"))


def calibrate(args):
    from siamese_k3 import api

    run = api.Run.open(args.run)
    calibration, summary = run.calibrate(target_precision=args.target_precision, target_recall=args.target_recall)
    print(f"threshold ({run.config.distance}): {calibration.threshold:.6f} ({calibration.objective})")
    print(f"precision {calibration.precision:.4f}, recall {calibration.recall:.4f} on the calibration pairs")
    if "held_out_precision" in summary:
        print(f"precision {summary['held_out_precision']:.4f}, recall {summary['held_out_recall']:.4f} "
              "on the held-out half")
    print(f"Wrote {run.folder.file('calibration.json')} and calibration.png")
    return 0


def export(args):
    import keras

    from siamese_k3 import api

    path = api.Run.open(args.run).export(args.format, args.output)
    print(f"Wrote {path} ({args.format}, exported on {keras.backend.backend()})")
    return 0


def _print_table(lines, path):
    for line in lines:
        print(line)
    print(f"Run folder: {path}")


COMMANDS = {
    "train": train, "evaluate": evaluate, "embed": embed, "similarity": similarity, "export": export,
    "index": index, "search": search, "calibrate": calibrate,
}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(os.environ.get("SIAMESE_K3_DEBUG"))
    try:
        backend = choose_backend(args.backend, argv)
        from siamese_k3.backend import quiet_framework_logs

        quiet_framework_logs(backend)  # before keras (and a bystander tensorflow) is imported
        _show_logs()
        if debug:  # whole tracebacks, keras' frames included
            import keras

            keras.config.disable_traceback_filtering()
        return COMMANDS[args.command](args)
    except UsageError as error:  # the environment names no valid backend: exit 2, as argparse
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # Ctrl-C, or SIGINT / SIGTERM as siamese_k3.errors.RunInterrupted
        from siamese_k3.errors import exit_code

        reason = str(error) or "interrupted"
        resumable = " the run is left unfinished; the same command resumes it." if args.command == "train" else ""
        fresh_line = "\n" if _on_a_terminal() else ""  # a progress bar may have left the cursor mid-line
        print(f"{fresh_line}siamese-k3: {reason}:{resumable}" if resumable else f"{fresh_line}siamese-k3: {reason}",
              file=sys.stderr)
        interrupted = exit_code(error)
    except Exception as error:  # one line, never a traceback (unless debugging)
        if debug:
            raise
        from siamese_k3.errors import SiameseK3Error, RunFailedError

        known = isinstance(error, (SiameseK3Error, RunFailedError))
        detail = str(error) if known else f"{type(error).__name__}: {error}"
        if isinstance(error, OSError) and error.strerror and error.filename:  # a file the command could not use
            detail = f"{error.filename}: {error.strerror}"
        print(f"siamese-k3: error: {as_flags(' '.join(detail.split()), parser)}", file=sys.stderr)
        return 1
    # Only an interrupt gets here. The work it stopped (its frames were the traceback's) is released now, while
    # Python still runs: a TensorFlow data iterator finalized at exit prints "Error occurred when finalizing
    # GeneratorDataset iterator: ... The process may be terminated."
    import gc

    gc.collect()
    return interrupted


def _on_a_terminal():
    return any(stream.isatty() for stream in (sys.stdout, sys.stderr) if hasattr(stream, "isatty"))


if __name__ == "__main__":
    sys.exit(main())
