"""siamese_k3: Siamese networks and triplet losses for Keras 3 on TensorFlow, JAX or PyTorch.

Importing it picks an installed backend when none is configured (keras' own default,
tensorflow, may be absent), imports keras and registers the package's serializable
classes (losses, metrics, models, backbone layers), so `keras.models.load_model`
reads a run's ``model.keras`` after ``import siamese_k3``.

The command line (``siamese-k3``, ``python -m siamese_k3``) is the one exception:
it parses its arguments before keras is imported (``--help`` is immediate), so the
package starts empty and each name below is imported on first use.

    import siamese_k3
    run = siamese_k3.train(recipe="default", out="runs/fm")   # a siamese_k3.Run
    run.metrics["map_at_r"]
"""

import importlib
import os
import sys

from siamese_k3.backend import default_backend

__version__ = "0.1.0"

# Public name -> the module that defines it (imported on first use when started as the CLI).
_EXPORTS = {
    **dict.fromkeys(
        ("TripletBatchAllLoss", "TripletHardLoss", "TripletLoss", "TripletSemiHardLoss", "batch_all_triplet_loss",
         "batch_hard_triplet_loss", "semi_hard_triplet_loss", "triplet_loss",
         "ContrastiveLoss", "MultiSimilarityLoss", "CircleLoss", "NTXentLoss", "SupConLoss", "ArcFaceLoss",
         "CosFaceLoss", "ProxyAnchorLoss", "Proxies"),
        "siamese_k3.losses",
    ),
    "MiningModel": "siamese_k3.models",
    "SiameseModel": "siamese_k3.models",
    "DataParallel": "siamese_k3.parallel",
    "FractionPositiveTriplets": "siamese_k3.metrics",
    "TrainConfig": "siamese_k3.runs.config",
    "train": "siamese_k3.api",
    "Run": "siamese_k3.api",
    "SimilarityIndex": "siamese_k3.search.index",
    "Calibration": "siamese_k3.search.calibration",
    "calibrate": "siamese_k3.search.calibration",
    "match": "siamese_k3.search.calibration",
    **dict.fromkeys(
        ("SiameseK3Error", "RunFolderError", "RunFailedError", "NonFiniteLossError", "PeerTimeoutError",
         "RunInterrupted"),
        "siamese_k3.errors",
    ),
}
_SUBMODULES = ("backbones", "distances", "losses", "metrics", "models")
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"siamese_k3.{name}")
    raise AttributeError(f"module 'siamese_k3' has no attribute {name!r}")


def _started_as_cli():
    """True while `python -m siamese_k3` or the `siamese-k3` script imports the package.

    Python sets ``sys.argv[0]`` to ``"-m"`` while it locates the module `-m`
    names, and the console script's name is ``siamese-k3``.
    """
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return program == "-m" or program.split(".")[0] == "siamese-k3"


def _choose_backend():
    if "keras" not in sys.modules and "KERAS_BACKEND" not in os.environ:
        if default_backend() is None:
            raise ImportError(
                "siamese_k3 needs a Keras backend and none is installed: "
                "pip install 'siamese_k3[jax]' (or [tensorflow], or [torch] with -c constraints.txt)."
            )
        os.environ["KERAS_BACKEND"] = default_backend()


if not _started_as_cli():
    _choose_backend()
    for _module in sorted(set(_EXPORTS.values())) + [f"siamese_k3.{name}" for name in _SUBMODULES]:
        importlib.import_module(_module)  # registers the serializable classes with keras
    del _module
