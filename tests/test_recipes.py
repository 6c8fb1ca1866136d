"""siamese_k3.runs.recipes: the defaults of `siamese-k3 train`, and the command-line options that override them."""

import pytest

from siamese_k3 import api, cli
from siamese_k3.runs import recipes
from siamese_k3.errors import SiameseK3Error
from siamese_k3.backbones import BACKBONES
from siamese_k3.losses import MINING_LOSSES

from test_cli import read_json, write_clustered_idx


@pytest.mark.parametrize("recipe", list(recipes.LABELLED) + ["pairs"])
def test_every_recipe_names_known_parts(recipe):
    values = recipes.defaults(recipe, pairs=recipe == "pairs")
    assert values["backbone"] in BACKBONES
    assert values["loss"] in (*MINING_LOSSES, "triplet")
    assert values["margin"] >= 0 and values["learning_rate"] > 0


def test_the_default_recipe_is_the_main_job():
    assert recipes.defaults("default", pairs=False) == {
        "backbone": "compact_cnn", "backbone_options": {}, "loss": "batch_all", "margin": 0.2,
        "distance": "euclidean", "epochs": 5, "steps_per_epoch": 120, "batch_size": 256,
        "classes_per_batch": 8, "learning_rate": 3e-3,
    }


def test_an_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="recipe='best' is unknown: choose one of default"):
        recipes.defaults("best", pairs=False)


def test_strong_recipe_through_the_cli_with_overrides(tmp_path):
    write_clustered_idx(tmp_path / "data", train=80, test=40)
    out = tmp_path / "strong"
    code = cli.main(["train", "--recipe", "strong", "--data-dir", str(tmp_path / "data"), "--out", str(out),
                     "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16", "--classes-per-batch", "4",
                     "--quiet", "--no-plots"])
    assert code == 0
    config = read_json(out / "config.json")
    strong = recipes.LABELLED["strong"]
    assert config["recipe"] == "strong" and config["epochs"] == 1 and config["batch_size"] == 16
    assert config["backbone_options"] == strong["backbone_options"] and config["loss"] == strong["loss"]


def test_another_backbone_drops_the_recipes_backbone_options(tmp_path, monkeypatch):
    """`--recipe strong --backbone fashion_mnist_dense`: the config handed to training has no backbone options
    (a configuration property: checked on the `TrainConfig` the CLI builds, without training)."""
    handed = {}
    (tmp_path / "data").mkdir()

    def train(config, **options):
        handed["config"] = config
        raise SiameseK3Error("stop here")

    monkeypatch.setattr(api, "train", train)
    code = cli.main(["train", "--recipe", "strong", "--backbone", "fashion_mnist_dense", "--data-dir",
                     str(tmp_path / "data"), "--out", str(tmp_path / "dense"), "--epochs", "1", "--quiet"])
    assert code == 1
    config = handed["config"]
    assert config.recipe == "strong" and config.backbone == "fashion_mnist_dense" and config.backbone_options == {}
    assert config.loss == recipes.LABELLED["strong"]["loss"]


@pytest.mark.backend_independent
def test_recipes_are_values_nobody_changes():
    """A variant is a recipe with options given, never a changed global: the recipes are read-only, and
    `defaults` hands out a copy."""
    with pytest.raises(TypeError):
        recipes.LABELLED["strong"]["epochs"] = 3
    with pytest.raises(TypeError):
        recipes.LABELLED["strong"]["backbone_options"]["flip"] = False
    values = recipes.defaults("strong", pairs=False)
    values["backbone_options"]["filters"].append(256)
    assert recipes.defaults("strong", pairs=False)["backbone_options"]["filters"] == [32, 64, 128]


@pytest.mark.backend_independent
def test_backbone_options_from_the_command_line(tmp_path, monkeypatch, capsys):
    """`--backbone-options JSON` replaces the recipe's (checked on the `TrainConfig` the CLI builds); bad JSON is
    one line, exit 2."""
    handed = {}

    def train(config, **options):
        handed["config"] = config
        raise SiameseK3Error("stop here")

    monkeypatch.setattr(api, "train", train)
    arguments = ["train", "--recipe", "strong", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]
    assert cli.main([*arguments, "--backbone-options", '{"filters": [16, 32], "flip": false}']) == 1
    assert handed["config"].backbone_options == {"filters": [16, 32], "flip": False}
    capsys.readouterr()
    for bad in ("{filters: 1}", "[16, 32]"):
        with pytest.raises(SystemExit) as exited:
            cli.main([*arguments, "--backbone-options", bad])
        assert exited.value.code == 2
        error = capsys.readouterr().err
        assert "argument --backbone-options" in error and len(error.strip().splitlines()) == 1, error
