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
from siamese_k3.distances import DISTANCES

LOSSES = ("semi_hard", "batch_hard", "batch_all", "triplet")

# Defaults of `train` on labelled image datasets (Fashion-MNIST, MNIST); a
# `pairs:DIR` dataset switches to the seeds' image-similarity setting.
LABELLED_DEFAULTS = dict(
    backbone="compact_cnn", loss="batch_all", margin=0.2, distance="euclidean",
    epochs=5, steps_per_epoch=120, batch_size=256, classes_per_batch=8, learning_rate=3e-3,
)
PAIRS_DEFAULTS = dict(
    backbone="resnet50", loss="triplet", margin=0.5, distance="squared_euclidean",
    epochs=10, batch_size=32, learning_rate=1e-4,
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="siamese-k3",
        description="Train and use Siamese embedding networks on TensorFlow, JAX or PyTorch.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train an embedding and evaluate it")
    _backend_option(train)
    train.add_argument("--dataset", default="fashion_mnist",
                       help="fashion_mnist, mnist, or pairs:DIR (DIR/left, DIR/right) (default: %(default)s)")
    train.add_argument("--data-dir", help="folder holding the dataset files (searched first)")
    train.add_argument("--backbone", help="compact_cnn, small_cnn, fashion_mnist_dense, mnist_dense, "
                       "mnist_siamese_dense or resnet50")
    train.add_argument("--loss", choices=LOSSES,
                       help="online mining loss on class-balanced batches, or triplet on random triplets")
    train.add_argument("--margin", type=float)
    train.add_argument("--distance", choices=DISTANCES)
    train.add_argument("--epochs", type=_positive_int)
    train.add_argument("--batch-size", type=_positive_int)
    train.add_argument("--steps-per-epoch", type=_positive_int,
                       help="batches per epoch on fashion_mnist or mnist (default: 120); pairs:DIR makes one pass over its pairs")
    train.add_argument("--classes-per-batch", type=_positive_int,
                       help="P of a P×K batch for the mining losses (K = batch size / P)")
    train.add_argument("--embedding-dim", type=_positive_int, default=64)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", help="run folder (default: runs/<dataset>)")
    train.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    train.add_argument("--image-size", type=_positive_int, default=200, help="pairs: images are resized to N×N")
    train.add_argument("--weights", help="resnet50: None (default), imagenet, or a weights file")
    train.add_argument("--validation-split", type=float, default=0.2, help="pairs: held-out fraction")
    train.add_argument("--skip-unpaired", action="store_true", help="pairs: warn about unpaired files instead")
    train.add_argument("--mixed-precision", choices=("mixed_bfloat16", "mixed_float16"))
    train.add_argument("--data-parallel", action="store_true",
                       help="jax: split each batch over all devices (keras.distribution.DataParallel)")
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
