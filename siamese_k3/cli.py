"""The `siamese-k3` command line (also `python -m siamese_k3`): parse, call `siamese_k3.api`, print.

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

import argparse
import functools
import importlib.util
import logging
import os
import re
import sys

from siamese_k3.backend import BACKENDS, default_backend
from siamese_k3.checks import DISTANCES, MAX_SEED, check_integer, check_learning_rate, check_margin, integer_range
from siamese_k3.config import LOSSES, TrainConfig
from siamese_k3.errors import UsageError
from siamese_k3.recipes import LABELLED as RECIPES



class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `siamese-k3 train: error: argument --margin: ...`, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    parser = _Parser(
        prog="siamese-k3",
        description="Train and use Siamese embedding networks on TensorFlow, JAX or PyTorch.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train an embedding and evaluate it")
    _backend_option(train)
    train.add_argument("--dataset", default="fashion_mnist",
                       help="fashion_mnist, mnist, or pairs:DIR (DIR/left, DIR/right) (default: %(default)s)")
    train.add_argument("--data-dir", help="folder holding the dataset files (then the only place looked in)")
    train.add_argument("--recipe", choices=RECIPES, default="default",
                       help="fashion_mnist, mnist: the defaults of every option below: default (the ~4-minute "
                       "main job) or strong (better retrieval in ~20 minutes; README, Results) (default: %(default)s)")
    train.add_argument("--backbone", help="compact_cnn, small_cnn, fashion_mnist_dense, mnist_dense, "
                       "mnist_siamese_dense or resnet50")
    train.add_argument("--loss", choices=LOSSES,
                       help="online mining loss on class-balanced batches, or triplet on random triplets")
    train.add_argument("--margin", type=_checked(check_margin), help="a finite number >= 0")
    train.add_argument("--distance", choices=DISTANCES)
    train.add_argument("--epochs", type=_positive_int)
    train.add_argument("--batch-size", type=_positive_int)
    train.add_argument("--steps-per-epoch", type=_positive_int,
                       help="batches per epoch on fashion_mnist or mnist (default: 120); pairs:DIR makes one pass over its pairs")
    train.add_argument("--classes-per-batch", type=_positive_int,
                       help="P of a P×K batch for the mining losses (K = batch size / P)")
    train.add_argument("--embedding-dim", type=_positive_int, default=64)
    train.add_argument("--learning-rate", type=_checked(check_learning_rate), help="a finite number > 0")
    train.add_argument("--seed", type=_seed, default=0, help="0 to 2**32 - 1 (default: %(default)s)")
    train.add_argument("--validation-size", type=_non_negative_int, default=3000,
                       help="fashion_mnist, mnist: test images whose precision@1, R-precision and MAP@R are "
                       "logged after every epoch (default: %(default)s; 0: off); pairs:DIR logs the held-out pairs' ROC AUC")
    train.add_argument("--out", help="run folder (default: runs/<dataset>)")
    train.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    train.add_argument("--image-size", type=_positive_int, default=200, help="pairs: images are resized to N×N")
    train.add_argument("--weights", help="resnet50: None (default), imagenet, or a weights file")
    train.add_argument("--validation-split", type=float, default=0.2, help="pairs: held-out fraction")
    train.add_argument("--skip-unpaired", action="store_true", help="pairs: warn about unpaired files instead")
    train.add_argument("--mixed-precision", choices=("mixed_bfloat16", "mixed_float16"))
    train.add_argument("--data-parallel", action="store_true",
                       help="split each global batch over all devices and processes with the backend's own engine: "
                       "jax keras.distribution, tensorflow tf.distribute, torch torch.distributed under torchrun "
                       "(README, Scale out)")
    train.add_argument("--collective-timeout", type=_positive_int, default=600, metavar="SECONDS",
                       help="--data-parallel: give up, with one line, when the other processes have not all "
                       "started, or do not answer a collective, for this long (default: %(default)s)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--strict", action="store_true",
                       help="exit 1 when the evaluation flags the embedding as collapsed (README, Nothing fails silently)")

    evaluate = commands.add_parser("evaluate", help="recompute the metrics of a run")
    _backend_option(evaluate)
    evaluate.add_argument("run", help="a run folder written by `train`")

    embed = commands.add_parser("embed", help="write embeddings of image files")
    _backend_option(embed)
    embed.add_argument("run")
    embed.add_argument("--images", nargs="+", required=True, help="image files")
    embed.add_argument("--output", default="embeddings.npy",
                       help="float32 .npy file, written under exactly this name (default: %(default)s)")

    similarity = commands.add_parser("similarity", help="distance and cosine similarity of two images")
    _backend_option(similarity)
    similarity.add_argument("run")
    similarity.add_argument("image1")
    similarity.add_argument("image2")

    index = commands.add_parser("index", help="embed a gallery and save its similarity index in RUN/index")
    _backend_option(index)
    index.add_argument("run")
    gallery = index.add_mutually_exclusive_group(required=True)
    gallery.add_argument("--dataset", help="NAME[:split], such as fashion_mnist:train (split default: test)")
    gallery.add_argument("--images", nargs="+", help="folders of images (subfolders included), or image files "
                         "(their paths are the ids)")
    index.add_argument("--method", choices=("exact", "hnsw", "ivf"), default="exact",
                       help="exact (numpy, or FAISS flat), or approximate with FAISS: hnsw, ivf (default: %(default)s)")
    index.add_argument("--engine", choices=("auto", "numpy", "faiss"), default="auto")

    search = commands.add_parser("search", help="the nearest gallery items of query images, and a contact sheet")
    _backend_option(search)
    search.add_argument("run")
    search.add_argument("queries", nargs="+", metavar="QUERY",
                        help="image files or dataset rows NAME:split:ROW, mixed as you like (when all are rows, "
                        "their labels frame wrong neighbours)")
    search.add_argument("-k", type=_positive_int, default=10, help="neighbours per query (default: %(default)s)")
    search.add_argument("--sheet", nargs="?", const=True, default=True, metavar="PATH",
                        help=f"write a contact sheet PNG: each query beside its nearest neighbours (at most "
                        f"{SHEET_NEIGHBOURS} of each of the first {SHEET_QUERIES} queries), wrong labels framed "
                        "(default: on, at RUN/search.png)")
    search.add_argument("--no-sheet", dest="sheet", action="store_false", help="no contact sheet")

    calibrate = commands.add_parser("calibrate", help="choose the 'same or not' distance threshold on held-out data")
    _backend_option(calibrate)
    calibrate.add_argument("run")
    target = calibrate.add_mutually_exclusive_group()
    target.add_argument("--target-precision", type=_fraction, help="the largest threshold reaching this precision")
    target.add_argument("--target-recall", type=_fraction, help="the smallest threshold reaching this recall")

    export = commands.add_parser("export", help="write the embedding model as a TF SavedModel or ONNX, for serving")
    _backend_option(export)
    export.add_argument("run")
    export.add_argument("--format", choices=("savedmodel", "onnx"), required=True)
    export.add_argument("--output", help="default: RUN/embedding_savedmodel or RUN/embedding.onnx")
    return parser


SHEET_NEIGHBOURS, SHEET_QUERIES = 10, 20  # what a contact sheet shows at most: neighbours per query, queries


def _backend_option(parser):
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND, else the first installed)")


def _checked(check):
    """An argparse type: a float that `check` (from siamese_k3.checks) accepts."""

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        try:
            return check(value, name=None)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = "number"
    return parse


def _integer(minimum, maximum=None):
    """An argparse type: an integer that `siamese_k3.checks.check_integer` accepts (the one integer check)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        try:
            return check_integer(value, "value", minimum, maximum)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {integer_range(minimum, maximum)}, got {text}") from None

    parse.__name__ = "integer"
    return parse


_positive_int, _non_negative_int, _seed = _integer(1), _integer(0), _integer(0, MAX_SEED)


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], such as 0.95, got {text}")
    return value


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


_SETTING = re.compile(r"(?<![\w/\\.-])([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;:()]+?)(?=[\s,;:()]|\.(?:\s|$)|$)")


def as_flags(message, parser=None):
    """`message` with the library's parameter settings spelled as this command line's flags.

    The library names its parameters (``classes_per_batch=11``,
    ``skip_unpaired=True``); a CLI user types flags, so each ``name=value``
    whose name is the destination of a flag of `parser` (default: the
    `build_parser` one) becomes ``--flag value`` (``--classes-per-batch 11``),
    or the bare flag for a switch set to True (``--skip-unpaired``). Other
    ``name=value`` pairs are left as they are.
    """
    flags = _flags(parser) if parser is not None else _default_flags()

    def spell(match):
        name, value = match.groups()
        if name not in flags:
            return match.group(0)
        flag, switch = flags[name]
        if switch:
            return flag if value == "True" else match.group(0)
        return f"{flag} {value}"

    return _SETTING.sub(spell, message)


@functools.cache
def _default_flags():
    return _flags(build_parser())


def _flags(parser):
    """{destination: (its longest flag, whether it is a switch)} over `parser` and its subcommands."""
    flags = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                flags.update(_flags(subparser))
        elif action.option_strings and action.dest != "help":
            switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            flags.setdefault(action.dest, (max(action.option_strings, key=len), switch))
    return flags


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
    from siamese_k3 import api, run_evaluation
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
    from siamese_k3 import api, run_evaluation

    run = api.Run.open(args.run)
    with run.folder.lock():
        metrics = run.evaluate()
    _print_table(run_evaluation.table(metrics), run.path)
    return 0


def embed(args):
    from siamese_k3 import api, inference

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

    run = api.Run.open(args.run)
    images = None
    if args.images:
        images, skipped = api.image_files(args.images, name="--images")
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
