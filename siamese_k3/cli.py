"""The `siamese-k3` command line (also `python -m siamese_k3`).

    siamese-k3 train [--backend jax] [--dataset fashion_mnist] [--out runs/fashion_mnist] ...
    siamese-k3 evaluate RUN
    siamese-k3 embed RUN --images a.png b.png [--output embeddings.npy]
    siamese-k3 similarity RUN IMG1 IMG2
    siamese-k3 export RUN --format {savedmodel,onnx} [--output PATH]

The backend: --backend, else $KERAS_BACKEND, else keras' configured backend if
installed, else the first installed of jax, tensorflow, torch. Errors print one line and
exit non-zero; set SIAMESE_K3_DEBUG=1 to see the traceback.
"""

import argparse
import importlib.util
import os
import sys

from siamese_k3.backend import BACKENDS
from siamese_k3.checks import check_learning_rate, check_margin
from siamese_k3.distances import DISTANCES
from siamese_k3.recipes import LABELLED as RECIPES

LOSSES = ("semi_hard", "batch_hard", "batch_all", "triplet")



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
    train.add_argument("--data-dir", help="folder holding the dataset files (searched first)")
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
    train.add_argument("--seed", type=int, default=0)
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
                       help="--data-parallel: fail when the other processes do not answer for this long "
                       "(default: %(default)s)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = commands.add_parser("evaluate", help="recompute the metrics of a run")
    _backend_option(evaluate)
    evaluate.add_argument("run", help="a run folder written by `train`")

    embed = commands.add_parser("embed", help="write embeddings of image files")
    _backend_option(embed)
    embed.add_argument("run")
    embed.add_argument("--images", nargs="+", required=True, help="image files")
    embed.add_argument("--output", default="embeddings.npy", help=".npy file (default: %(default)s)")

    similarity = commands.add_parser("similarity", help="distance and cosine similarity of two images")
    _backend_option(similarity)
    similarity.add_argument("run")
    similarity.add_argument("image1")
    similarity.add_argument("image2")

    export = commands.add_parser("export", help="write the embedding model as a TF SavedModel or ONNX, for serving")
    _backend_option(export)
    export.add_argument("run")
    export.add_argument("--format", choices=("savedmodel", "onnx"), required=True)
    export.add_argument("--output", help="default: RUN/embedding_savedmodel or RUN/embedding.onnx")
    return parser


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


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def choose_backend(requested=None, argv=None):
    """Make keras run on `requested` (default: the backend it was imported with) and return it.

    `import siamese_k3` has already imported keras on $KERAS_BACKEND (or the first
    installed backend); keras cannot switch afterwards, so a different --backend
    restarts this command in a fresh interpreter with KERAS_BACKEND set.
    """
    import keras

    current = keras.backend.backend()
    if requested is None or requested == current:
        return current
    if not importlib.util.find_spec(requested):
        raise _user_error(
            f"backend {requested!r} is not installed: pip install 'siamese_k3[{requested}]' "
            "(with -c constraints.txt for torch) or choose another with --backend."
        )
    os.environ["KERAS_BACKEND"] = requested
    argv = sys.argv[1:] if argv is None else list(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "siamese_k3", *argv])


def _user_error(message):
    from siamese_k3.errors import SiameseK3Error

    return SiameseK3Error(message)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        choose_backend(args.backend, argv)
        from siamese_k3 import runs

        if os.environ.get("SIAMESE_K3_DEBUG"):  # whole tracebacks, keras' frames included
            import keras

            keras.config.disable_traceback_filtering()

        return getattr(runs, args.command)(args) or 0
    except KeyboardInterrupt:
        print("siamese-k3: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one line, never a traceback (unless debugging)
        if os.environ.get("SIAMESE_K3_DEBUG"):
            raise
        from siamese_k3.errors import SiameseK3Error

        detail = str(error) if isinstance(error, SiameseK3Error) else f"{type(error).__name__}: {error}"
        print(f"siamese-k3: error: {' '.join(detail.split())}", file=sys.stderr)
        return 1 if isinstance(error, SiameseK3Error) else 2


if __name__ == "__main__":
    sys.exit(main())
