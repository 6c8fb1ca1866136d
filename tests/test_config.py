"""siamese_k3.runs.config: a TrainConfig is the recipe plus overrides, checked where it is built."""

import dataclasses

import pytest

from siamese_k3.runs import recipes
from siamese_k3.cli import as_flags
from siamese_k3.runs.config import TrainConfig
from siamese_k3.errors import SiameseK3Error

pytestmark = pytest.mark.backend_independent  # numpy, files and checks: one backend runs it (tests/README.md)


def test_unset_fields_take_the_recipes_values_and_given_ones_win():
    config = TrainConfig.from_recipe("strong", epochs=2, margin=0.3)
    strong = recipes.LABELLED["strong"]
    assert (config.epochs, config.margin) == (2, 0.3)
    for key in ("backbone", "backbone_options", "loss", "steps_per_epoch", "batch_size", "learning_rate"):
        assert getattr(config, key) == strong[key], key


def test_another_backbone_drops_the_recipes_backbone_options():
    assert TrainConfig.from_recipe("strong", backbone="small_cnn").backbone_options == {}
    assert TrainConfig.from_recipe("strong", backbone="small_cnn", backbone_options={"a": 1}).backbone_options == {"a": 1}


def test_pairs_datasets_start_from_the_pairs_recipe():
    config = TrainConfig(dataset="pairs:/data/tll")
    assert config.pairs_dir == "/data/tll"
    assert (config.backbone, config.loss, config.distance) == (recipes.PAIRS["backbone"], "triplet", "squared_euclidean")


def test_a_config_round_trips_through_its_dict_and_ignores_the_runs_facts():
    config = TrainConfig.from_recipe("default", epochs=3, seed=7)
    saved = {**config.to_dict(), "backend": "jax", "input_shape": [28, 28]}
    assert TrainConfig.from_dict(saved) == config
    assert config.differences(saved) == []
    assert config.differences({**saved, "epochs": 9}) == ["epochs"]
    assert config.differences({**saved, "validation_size": 1}) == []  # what is logged, not what is trained
    # what is drawn, not what is trained: a run resumes with or without --no-plots, and so does one saved
    # before the option existed (no "plots" in its config.json)
    assert TrainConfig.from_recipe("default", epochs=3, seed=7, plots=False).differences(saved) == []
    assert config.differences({key: value for key, value in saved.items() if key != "plots"}) == []


def test_train_batch_size_is_p_times_k_for_mining_losses():
    assert TrainConfig(batch_size=30, classes_per_batch=4).train_batch_size == 28
    assert TrainConfig(batch_size=30, loss="triplet").train_batch_size == 30


@pytest.mark.parametrize(
    "options, fragment, on_the_command_line",
    [
        ({"seed": -1}, "seed=-1 must be an integer from 0 to 2**32 - 1", "--seed -1 must be"),
        ({"seed": 2**32}, "seed=4294967296 must be an integer from 0 to 2**32 - 1", "--seed 4294967296 must be"),
        ({"epochs": 0}, "epochs=0 must be a positive integer", "--epochs 0 must be a positive integer"),
        ({"batch_size": 7, "classes_per_batch": 4}, "batch_size=7 with classes_per_batch=4 leaves fewer than 2",
         "--batch-size 7 with --classes-per-batch 4 leaves fewer than 2"),
        ({"dataset": "cifar"}, "dataset='cifar' is unknown: choose one of fashion_mnist, mnist, or pairs:DIR",
         "--dataset 'cifar' is unknown"),
        ({"recipe": "fast"}, "recipe='fast' is unknown: choose one of default, strong", "--recipe 'fast' is unknown"),
        ({"loss": "quadruplet"}, "loss='quadruplet' is unknown: choose one of", "--loss 'quadruplet' is unknown"),
        ({"distance": "manhattan"}, "distance='manhattan' is unknown", "--distance 'manhattan' is unknown"),
        ({"margin": float("nan")}, "margin=nan is not a valid margin", "--margin nan is not a valid margin"),
        ({"learning_rate": 0.0}, "learning_rate=0.0 is not a valid learning rate", "--learning-rate 0.0 is not"),
        ({"validation_split": 1.5}, "validation_split=1.5 must lie strictly between 0 and 1",
         "--validation-split 1.5 must lie"),
        ({"mixed_precision": "fp8"}, "mixed_precision='fp8' is unknown: choose one of None, mixed_bfloat16",
         "--mixed-precision 'fp8' is unknown"),
        ({"dataset": "pairs:/x", "loss": "semi_hard"}, "use loss='triplet'", "use --loss 'triplet'"),
        ({"data_dir": "/no/such/folder"}, "data_dir='/no/such/folder' is not a folder",
         "--data-dir '/no/such/folder' is not a folder"),
        ({"epochs": 2.5}, "epochs=2.5 must be a positive integer", "--epochs 2.5 must be"),
        ({"plots": "no"}, "plots='no' must be True or False", "plots='no' must be"),  # API only: no such flag
    ],
)
def test_a_bad_option_is_a_value_error_naming_it(options, fragment, on_the_command_line):
    """The library names the parameter (an API user reads `loss=`); the CLI spells it as its flag (`--loss`)."""
    from siamese_k3.cli import as_flags

    with pytest.raises(SiameseK3Error, match=None) as caught:
        TrainConfig.from_recipe(**options)
    assert isinstance(caught.value, ValueError)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value) and "--" not in str(caught.value)
    assert on_the_command_line in as_flags(str(caught.value))


def test_an_unknown_field_is_named():
    with pytest.raises(ValueError, match="unknown training option.*epoch_count"):
        TrainConfig.from_recipe(epoch_count=3)


def test_configs_are_frozen_and_options_are_spelled_as_on_the_command_line():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().epochs = 3
    assert as_flags("steps_per_epoch=3") == "--steps-per-epoch 3"  # the CLI's one mapping of fields to flags


def test_pair_losses_rank_by_cosine_and_take_only_their_own_options():
    supcon = TrainConfig.from_recipe("default", loss="supcon", loss_options={"temperature": 0.2})
    assert (supcon.distance, supcon.loss_options, supcon.mining) == ("cosine", {"temperature": 0.2}, True)
    assert TrainConfig.from_recipe("default", loss="circle", distance="euclidean").distance == "euclidean"
    assert TrainConfig.from_recipe("default").loss_options == {}
    assert TrainConfig.from_recipe("default", loss="batch_hard", loss_options={"soft": True}).distance == "euclidean"
    assert TrainConfig.from_dict(supcon.to_dict()) == supcon
    with pytest.raises(SiameseK3Error, match=r"loss='supcon' has no option alpha; it takes temperature"):
        TrainConfig.from_recipe("default", loss="supcon", loss_options={"alpha": 2})
    with pytest.raises(SiameseK3Error, match="loss_options must be a dict"):
        TrainConfig.from_recipe("default", loss="circle", loss_options=[1])
    with pytest.raises(SiameseK3Error, match="triplet' has no option soft; it takes none"):
        TrainConfig.from_recipe("default", loss="triplet", loss_options={"soft": True})


def test_proxy_losses_rank_by_cosine_and_take_a_proxy_lr_multiplier():
    config = TrainConfig.from_recipe("default", loss="proxy_anchor", loss_options={"alpha": 16, "proxy_lr_multiplier": 100})
    assert (config.distance, config.loss_options["proxy_lr_multiplier"]) == ("cosine", 100)
    with pytest.raises(SiameseK3Error, match="loss='arcface' has no option temperature"):
        TrainConfig.from_recipe("default", loss="arcface", loss_options={"temperature": 1})
