"""The command line's arguments: the `siamese-k3` parser, its argument types, and flags for the library's parameters.

`build_parser` declares every command and option; the argument types check a value with the
library's own checks (`siamese_k3.checks`), so a bad number fails at parse time in one line, exit 2.
`as_flags` spells the library's ``name=value`` settings in its messages as the flags a CLI user
types. Imports `siamese_k3.backend`'s names, `.checks`, `.errors` and `runs.config`/`runs.recipes`
(plain Python): never keras, so ``--help`` and argument errors are immediate.
"""

import argparse
import functools
import json
import re

from siamese_k3.backend import BACKENDS
from siamese_k3.checks import DISTANCES, MAX_SEED, check_integer, check_learning_rate, check_margin, integer_range
from siamese_k3.runs.config import LOSSES
from siamese_k3.runs.recipes import LABELLED as RECIPES


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
    train.add_argument("--backbone-options", type=_json_object, metavar="JSON",
                       help='the backbone\'s arguments as a JSON object, such as \'{"filters": [32, 64, 128]}\' '
                       "(default: the recipe's, for the recipe's backbone)")
    train.add_argument("--loss", choices=LOSSES,
                       help="a mining loss (semi_hard, batch_hard, batch_all), a pair loss (contrastive, "
                       "multi_similarity, circle, ntxent, supcon) or a proxy loss (arcface, cosface, proxy_anchor: "
                       "one trained proxy per class) on class-balanced batches (distance cosine unless given for "
                       "the pair and proxy losses), or triplet on random triplets")
    train.add_argument("--loss-options", type=_json_object, metavar="JSON",
                       help='the loss\'s own options as a JSON object, such as \'{"alpha": 2, "beta": 50}\' '
                       "for multi_similarity (siamese_k3.losses: PML's names and defaults)")
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
    train.add_argument("--no-plots", dest="plots", action="store_false",
                       help="draw no PNGs (loss, distances, triplets, embeddings, calibration curve); every JSON is written")
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


def _json_object(text):
    """An argparse type: a JSON object (a dict)."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"filters\": [32, 64]}}', got {text}")
    return value


_json_object.__name__ = "JSON object"


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], such as 0.95, got {text}")
    return value


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
