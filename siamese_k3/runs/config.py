"""`TrainConfig`: every option of a training run, typed, filled from a recipe and checked where it is built.

Plain Python, no keras (the CLI builds one before any framework is imported).
A run folder's ``config.json`` is `TrainConfig.to_dict` plus what the run found
out (backend, input shape, class names, data-parallel layout); `TrainConfig.from_dict`
reads it back, ignoring those facts.

Each field is the CLI option of the same name (``batch_size`` is ``--batch-size``,
``plots=False`` is ``--no-plots``);
error messages name the option. Fields left at None take the recipe's value
(`siamese_k3.runs.recipes`), so ``TrainConfig.from_recipe("strong", epochs=2)`` is the
strong recipe for two epochs.
"""

import dataclasses
import os
from typing import Optional

from siamese_k3.runs import recipes
from siamese_k3.checks import DISTANCES, MAX_SEED, check_choice, check_integer, check_learning_rate, check_margin
from siamese_k3.errors import SiameseK3Error

# The pair losses (siamese_k3.losses.pairs) and the options each takes (`loss_options`), named here so that a
# config is checked before keras is imported; tests/test_losses_pairs.py holds them to the loss classes' signatures.
PAIR_LOSS_OPTIONS = {
    "contrastive": ("pos_margin", "neg_margin", "distance", "normalize"),
    "multi_similarity": ("alpha", "beta", "base", "epsilon"),
    "circle": ("m", "gamma"),
    "ntxent": ("temperature",),
    "supcon": ("temperature",),
}
# The proxy losses (siamese_k3.losses.proxies): one trained proxy per class, proxy_lr_multiplier for its Proxies.
PROXY_LOSS_OPTIONS = {
    "arcface": ("margin", "scale", "proxy_lr_multiplier"),
    "cosface": ("margin", "scale", "proxy_lr_multiplier"),
    "proxy_anchor": ("margin", "alpha", "proxy_lr_multiplier"),
}
MINING_LOSS_OPTIONS = {"semi_hard": ("normalize",), "batch_hard": ("soft", "normalize"), "batch_all": ("normalize",)}
LOSSES = (*MINING_LOSS_OPTIONS, "triplet", *PAIR_LOSS_OPTIONS, *PROXY_LOSS_OPTIONS)
LOSS_OPTIONS = {**MINING_LOSS_OPTIONS, **PAIR_LOSS_OPTIONS, **PROXY_LOSS_OPTIONS}
# The losses that take none of the run's margin and distance, only their own options, and train directions
# (cosine similarity): their runs rank by cosine unless a distance is given.
OWN_OPTIONS_LOSSES = (*PAIR_LOSS_OPTIONS, *PROXY_LOSS_OPTIONS)
DATASETS = ("fashion_mnist", "mnist")
MIXED_PRECISION = ("mixed_bfloat16", "mixed_float16")
PAIRS_PREFIX = "pairs:"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The options of one training run (the recipe's values where None was given).

    A labelled dataset (``fashion_mnist``, ``mnist``) trains with `recipe`
    (``default`` or ``strong``); ``pairs:DIR`` (DIR/left, DIR/right) always
    starts from `recipes.PAIRS`. Construction checks every field and raises
    `SiameseK3Error` (a `ValueError`) naming the option and what it accepts.
    """

    dataset: str = "fashion_mnist"
    recipe: str = "default"
    data_dir: Optional[str] = None
    backbone: Optional[str] = None
    backbone_options: Optional[dict] = None
    loss: Optional[str] = None
    loss_options: Optional[dict] = None
    margin: Optional[float] = None
    distance: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    classes_per_batch: Optional[int] = None
    embedding_dim: int = 64
    learning_rate: Optional[float] = None
    seed: int = 0
    validation_size: int = 3000
    image_size: int = 200
    weights: Optional[str] = None
    validation_split: float = 0.2
    skip_unpaired: bool = False
    mixed_precision: Optional[str] = None
    plots: bool = True

    @classmethod
    def from_recipe(cls, recipe="default", **options):
        """The config of `recipe` with `options` (TrainConfig fields) overriding it; None means "the recipe's"."""
        unknown = sorted(set(options) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise SiameseK3Error(
                f"unknown training option(s) {', '.join(unknown)}: expected TrainConfig fields "
                f"({', '.join(field.name for field in dataclasses.fields(cls))})."
            )
        return cls(recipe=recipe, **{key: value for key, value in options.items() if value is not None})

    def __post_init__(self):
        _check_dataset(self.dataset)
        check_choice(self.recipe, recipes.LABELLED, "recipe")
        defaults = recipes.defaults(self.recipe, pairs=self.pairs_dir is not None)
        if self.distance is None and (self.loss or defaults["loss"]) in OWN_OPTIONS_LOSSES:
            object.__setattr__(self, "distance", "cosine")
        given_options = self.backbone_options
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        if given_options is None:  # the recipe's backbone options are for the recipe's own backbone
            own = self.backbone == defaults["backbone"]
            object.__setattr__(self, "backbone_options", dict(defaults.get("backbone_options") or {}) if own else {})
        if self.classes_per_batch is None:  # pairs:DIR has no classes
            object.__setattr__(self, "classes_per_batch", 0)
        if self.steps_per_epoch is None:
            object.__setattr__(self, "steps_per_epoch", 0)
        if self.loss_options is None:
            object.__setattr__(self, "loss_options", {})
        self._check()

    @property
    def pairs_dir(self):
        """DIR of a ``pairs:DIR`` dataset, else None."""
        return self.dataset[len(PAIRS_PREFIX):] if self.dataset.startswith(PAIRS_PREFIX) else None

    @property
    def mining(self):
        """True for the online mining losses on class-balanced P×K batches."""
        return self.loss != "triplet"

    @property
    def train_batch_size(self):
        """Rows per training batch: P × (batch size // P) for the mining losses, else the batch size."""
        if not self.mining:
            return self.batch_size
        return self.classes_per_batch * (self.batch_size // self.classes_per_batch)

    def to_dict(self):
        """The fields as a JSON-ready dict (config.json holds this plus the run's facts)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """A config from a dict such as config.json; keys that are not fields are ignored."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    def differences(self, values):
        """Names of the fields whose value differs from `values` (a config.json dict), for resuming.

        `validation_size` and `plots` are left out: they change what is logged or drawn, not what is trained.
        """
        ignored = {"validation_size", "plots"}
        mine = self.to_dict()
        return sorted(key for key in mine if key not in ignored and values.get(key) != mine[key])

    def _check(self):
        if not isinstance(self.plots, bool):
            raise SiameseK3Error(f"plots={self.plots!r} must be True or False.")
        if not isinstance(self.backbone_options, dict):
            raise SiameseK3Error(f"backbone_options must be a dict of the backbone's arguments, got {self.backbone_options!r}.")
        check_choice(self.loss, LOSSES, "loss")
        _check_loss_options(self.loss, self.loss_options)
        check_choice(self.distance, DISTANCES, "distance")
        check_margin(self.margin)
        check_learning_rate(self.learning_rate)
        for name in ("epochs", "batch_size", "embedding_dim", "image_size"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("steps_per_epoch", "classes_per_batch", "validation_size"):
            _check_int(name, getattr(self, name), minimum=0)
        _check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        if not (isinstance(self.validation_split, (int, float)) and 0 < self.validation_split < 1):
            raise SiameseK3Error(f"validation_split={self.validation_split!r} must lie strictly between 0 and 1, such as 0.2.")
        check_choice(self.mixed_precision, (None, *MIXED_PRECISION), "mixed_precision")
        if self.pairs_dir is not None:
            if self.mining:
                raise SiameseK3Error(
                    f"loss={self.loss!r} needs class labels; a pairs:DIR dataset has none: use loss='triplet'."
                )
            return
        if self.steps_per_epoch < 1:
            raise SiameseK3Error(f"steps_per_epoch={self.steps_per_epoch!r} must be a positive integer.")
        if self.mining:
            if self.classes_per_batch < 2:
                raise SiameseK3Error(f"classes_per_batch={self.classes_per_batch!r} must be at least 2 for loss={self.loss!r}.")
            if self.batch_size // self.classes_per_batch < 2:
                raise SiameseK3Error(
                    f"batch_size={self.batch_size} with classes_per_batch={self.classes_per_batch} "
                    "leaves fewer than 2 samples per class: raise the batch size or lower the classes per batch."
                )
        if self.data_dir is not None and not os.path.isdir(self.data_dir):
            raise SiameseK3Error(f"data_dir={str(self.data_dir)!r} is not a folder: give the folder holding the dataset files.")


def _check_loss_options(loss, options):
    if not isinstance(options, dict):
        raise SiameseK3Error(f"loss_options must be a dict of the loss's options, such as {{'alpha': 2.0}}, got {options!r}.")
    allowed = LOSS_OPTIONS.get(loss, ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none (margin and distance are options of the run)"
        raise SiameseK3Error(f"loss_options={options!r}: loss={loss!r} has no option {', '.join(unknown)}; {takes}.")


def _check_dataset(dataset):
    if not isinstance(dataset, str) or not (dataset in DATASETS or dataset.replace("-", "_") in DATASETS or (
        dataset.startswith(PAIRS_PREFIX) and len(dataset) > len(PAIRS_PREFIX)
    )):
        check_choice(dataset, DATASETS, "dataset", also="or pairs:DIR for a folder with left/ and right/ image subfolders")


def _check_int(name, value, minimum, maximum=None):
    check_integer(value, name, minimum, maximum)
