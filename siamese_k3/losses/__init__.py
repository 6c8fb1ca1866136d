"""The losses embeddings are trained with: pure functions of tensors in `keras.ops`, then thin Keras `Loss` classes.

One module per family, each a set of functions with their formula in the docstring and the `Loss`
classes that configure them (`get_config`), registered with keras for `model.keras` files:

- `triplet`: `triplet_loss` on explicit (anchor, positive, negative) triplets, and the mining
  losses on a labelled batch: `batch_all_triplet_loss`, `batch_hard_triplet_loss`,
  `semi_hard_triplet_loss` (TensorFlow Addons' successors), `fraction_positive_triplets`.
- `pairs`: every same-label pair of a labelled batch a positive, pytorch-metric-learning's
  names and defaults: `contrastive_loss`, `multi_similarity_loss`, `circle_loss`, `ntxent_loss`,
  `supcon_loss`.
- `proxies`: one learned vector per class, each embedding against every proxy (O(B·C)):
  `arcface_loss`, `cosface_loss`, `proxy_anchor_loss`; the `Proxies` layer holds them in the
  training model (`MiningModel(backbone, proxies=Proxies(C))`) and the `Loss` classes read them.
- `base`: what the families share (pair masks, masked reductions, the `Loss` bases).

`get(name)` builds a loss on a labelled batch by its short name (`MINING_LOSSES`, `PAIR_LOSSES`).
Imports: keras, `siamese_k3.distances`, `siamese_k3.checks` and `siamese_k3.backend.distributed`
(the global batch under data parallelism); nothing above them.
"""

from siamese_k3.checks import check_choice
from siamese_k3.losses import pairs, proxies, triplet
from siamese_k3.losses.pairs import *  # noqa: F403 (the family's public names, `pairs.__all__`)
from siamese_k3.losses.proxies import *  # noqa: F403 (the family's public names, `proxies.__all__`)
from siamese_k3.losses.triplet import *  # noqa: F403 (the family's public names, `triplet.__all__`)

__all__ = [*triplet.__all__, *pairs.__all__, *proxies.__all__, "MINING_LOSSES", "PAIR_LOSSES", "PROXY_LOSSES", "get"]

MINING_LOSSES = {
    "semi_hard": TripletSemiHardLoss,
    "batch_hard": TripletHardLoss,
    "batch_all": TripletBatchAllLoss,
}
PAIR_LOSSES = {
    "contrastive": ContrastiveLoss,
    "multi_similarity": MultiSimilarityLoss,
    "circle": CircleLoss,
    "ntxent": NTXentLoss,
    "supcon": SupConLoss,
}
PROXY_LOSSES = {"arcface": ArcFaceLoss, "cosface": CosFaceLoss, "proxy_anchor": ProxyAnchorLoss}
_LABELLED_LOSSES = {**MINING_LOSSES, **PAIR_LOSSES, **PROXY_LOSSES}


def get(name, **options):
    """A loss on a labelled batch by short name: a mining loss (``semi_hard``, ``batch_hard``, ``batch_all``) or
    a pair loss (``contrastive``, ``multi_similarity``, ``circle``, ``ntxent``, ``supcon``) or a proxy loss
    (``arcface``, ``cosface``, ``proxy_anchor``: compile it into ``MiningModel(backbone, proxies=...)``),
    with its options."""
    return _LABELLED_LOSSES[check_choice(name, _LABELLED_LOSSES, "loss")](**options)
