"""The losses embeddings are trained with: pure functions of tensors in `keras.ops`, then thin Keras `Loss` classes.

One module per family, each a set of functions with their formula in the docstring and the `Loss`
classes that configure them (`get_config`), registered with keras for `model.keras` files:

- `triplet`: `triplet_loss` on explicit (anchor, positive, negative) triplets, and the mining
  losses on a labelled batch: `batch_all_triplet_loss`, `batch_hard_triplet_loss`,
  `semi_hard_triplet_loss` (TensorFlow Addons' successors), `fraction_positive_triplets`.

`get(name)` builds a mining loss by the short name the CLI and the recipes use (`MINING_LOSSES`).
Imports: keras, `siamese_k3.distances`, `siamese_k3.checks` and `siamese_k3.backend.distributed`
(the global batch under data parallelism); nothing above them.
"""

from siamese_k3.checks import check_choice
from siamese_k3.losses import triplet
from siamese_k3.losses.triplet import *  # noqa: F403 (the family's public names, `triplet.__all__`)

__all__ = [*triplet.__all__, "MINING_LOSSES", "get"]

MINING_LOSSES = {
    "semi_hard": TripletSemiHardLoss,
    "batch_hard": TripletHardLoss,
    "batch_all": TripletBatchAllLoss,
}


def get(name, **options):
    """A mining loss by short name (``semi_hard``, ``batch_hard``, ``batch_all``)."""
    return MINING_LOSSES[check_choice(name, MINING_LOSSES, "loss")](**options)
