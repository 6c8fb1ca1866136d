"""siamese_k3: Siamese networks and triplet losses for Keras 3 on TensorFlow, JAX or PyTorch.

Importing it picks an installed backend when none is configured (keras' own default,
tensorflow, may be absent) and registers the package's serializable classes, so
`keras.models.load_model` reads siamese_k3 models.
"""

import os
import sys

from siamese_k3.backend import default_backend

if "keras" not in sys.modules and "KERAS_BACKEND" not in os.environ:
    if default_backend() is None:
        raise ImportError(
            "siamese_k3 needs a Keras backend and none is installed: "
            "pip install 'siamese_k3[jax]' (or [tensorflow], or [torch] with -c constraints.txt)."
        )
    os.environ["KERAS_BACKEND"] = default_backend()

from siamese_k3 import backbones, distances, losses  # noqa: E402
from siamese_k3.losses import (  # noqa: E402
    TripletBatchAllLoss,
    TripletHardLoss,
    TripletLoss,
    TripletSemiHardLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
    triplet_loss,
)
from siamese_k3.models import MiningModel, SiameseModel  # noqa: E402
from siamese_k3.parallel import DataParallel  # noqa: E402

__version__ = "0.1.0"
