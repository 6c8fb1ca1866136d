"""Training recipes: what `siamese-k3 train` does for every option left unset.

Plain data, no keras: the CLI reads the names for `--recipe`, and `runs` fills a
run's config from them. An option given on the command line always wins.
Recipes are values: read-only mappings, and `defaults` gives a fresh copy, so
a variant is a recipe with options given (``TrainConfig.from_recipe("strong",
backbone_options={...})``, ``--backbone-options``), never a changed global.

- ``default``: the main job, about 4 minutes on a 2-core CPU (torch).
- ``strong``: the best Fashion-MNIST retrieval we measured in at most 20 minutes of
  training on a 2-core CPU (README, "Results"): a third conv block (128 filters),
  two 3×3 convolutions in the second and third blocks, random horizontal flips
  and random erasing inside the model, and eight times the steps of the default.
  The alternatives measured (no flips, shifts, dropout, one convolution per block,
  30 epochs, margin 0.5 on all 10 classes per batch) are in the README.
- pairs:DIR datasets (seeds 003/004) always start from `PAIRS`.
"""

import copy
from types import MappingProxyType

from siamese_k3.checks import check_choice


def _frozen(value):
    """`value` with every dict in it a read-only view (``LABELLED["strong"]["epochs"] = 3`` raises TypeError)."""
    if isinstance(value, dict):
        return MappingProxyType({key: _frozen(item) for key, item in value.items()})
    return value


def _thawed(value):
    """A new, changeable copy of a `_frozen` value: dicts again, lists copied."""
    if isinstance(value, MappingProxyType):
        return {key: _thawed(item) for key, item in value.items()}
    return copy.deepcopy(value)


LABELLED = _frozen({
    "default": dict(
        backbone="compact_cnn", backbone_options={}, loss="batch_all", margin=0.2, distance="euclidean",
        epochs=5, steps_per_epoch=120, batch_size=256, classes_per_batch=8, learning_rate=3e-3,
    ),
    "strong": dict(
        backbone="compact_cnn",
        backbone_options={"filters": [32, 64, 128], "convs": [1, 2, 2], "flip": True, "erase": 0.5},
        loss="batch_all", margin=0.2, distance="euclidean",
        epochs=40, steps_per_epoch=120, batch_size=256, classes_per_batch=8, learning_rate=3e-3,
    ),
})
PAIRS = _frozen(dict(
    backbone="resnet50", backbone_options={}, loss="triplet", margin=0.5, distance="squared_euclidean",
    epochs=10, batch_size=32, learning_rate=1e-4,
))


def defaults(recipe, pairs):
    """The option values of `recipe` (a name in `LABELLED`), or of `PAIRS` for a pairs:DIR dataset, as a new dict
    (nested values copied): the caller's to change, the recipe unchanged."""
    return _thawed(PAIRS if pairs else LABELLED[check_choice(recipe, LABELLED, "recipe")])
