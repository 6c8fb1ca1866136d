"""The benchmark harness on tiny sizes: every entry point runs, and each native loop trains what keras trains.

Run by each ``nox -s tests`` session (one per backend, each installing only
that backend) as its own pytest call (``pytest -m bench_smoke``): `check_native` asserts that
every native baseline's first-step loss equals keras' on the same batch and
weights (the model, its batch-norm mode and the loss algorithm), for every
workload the README's tables use; the launchers must produce their rows and
tables. Sizes are tiny, so no figure here means anything.
"""

import importlib.util
import json

import keras
import pytest

from benchmarks import check_native, native_common, profile_fit, train_core
from benchmarks.tools import concat_vs_three, losses, search

pytestmark = pytest.mark.bench_smoke
BACKEND = keras.backend.backend()
HAS_PML = BACKEND == "torch" and importlib.util.find_spec("pytorch_metric_learning") is not None


# Every (model, loss) of the README's tables, each at a tiny batch size. The first three hold every model and
# every loss once: there every native loop is checked, torch's torch.compile'd one included (its inductor
# compile is most of the smoke's time on torch, about 40 s per workload on a cold cache); the last two
# check the eager native loop against keras (native_compiled compiles the same step function).
WORKLOADS = [("mlp", "triplet", 8), ("cnn", "semi_hard", 16), ("compact", "batch_all", 32),
             ("compact", "semi_hard", 32), ("cnn", "batch_all", 16)]  # fmt: skip
EAGER_ONLY = WORKLOADS[3:]


@pytest.mark.parametrize("model, loss, batch_size", WORKLOADS)
def test_check_native_first_losses_equal_keras(model, loss, batch_size):
    argv = ["--model", model, "--loss", loss, "--batch-size", str(batch_size), "--steps", "2"]
    if (model, loss, batch_size) in EAGER_ONLY:
        argv += ["--implementations", "native"]
    assert check_native.main(argv) == 0


def test_check_native_refuses_a_loop_this_backend_lacks(capsys):
    with pytest.raises(SystemExit) as exit_info:
        check_native.main(["--model", "mlp", "--batch-size", "8", "--steps", "1", "--implementations", "no_such_loop"])
    assert exit_info.value.code == 2
    assert f"no native loop named no_such_loop on {BACKEND}" in capsys.readouterr().err


def test_select_keeps_the_named_loops_and_refuses_a_name_the_backend_lacks():
    loops = [type("Loop", (), {"impl": name})() for name in ("native", "native_compiled")]
    assert [loop.impl for loop in native_common.select(loops, None, "torch")] == ["native", "native_compiled"]
    assert [loop.impl for loop in native_common.select(loops, ["native_compiled"], "torch")] == ["native_compiled"]
    with pytest.raises(LookupError, match=r"no native loop named fused on torch \(it has: native, native_compiled\)"):
        native_common.select(loops, ["fused"], "torch")


# The launcher, its worker and the table: with two runs (fresh processes each) on the cheapest model, where
# the per-run ratios and the median are checked, and once on the main job (a mining loss: the worker's
# labelled-batch path). The cnn's native loops and keras models are the ones check_native builds and steps
# above (the same `implementations` and `build_keras_model`); the worker's timing code does not depend on the
# model. At check_native's batch sizes: the same programs, which XLA's cache then holds (jax, TensorFlow).
# Beside keras, the eager native loop only (--implementations native): torch's
# torch.compile'd loop is the same step function, checked against keras above, and compiling it again in
# each fresh worker process cost the torch session about 60 worker-seconds.
@pytest.mark.parametrize("model, loss, batch_size, runs", [(*WORKLOADS[0], 2), (*WORKLOADS[2], 1)])
def test_train_core_rows_and_table(model, loss, batch_size, runs, tmp_path):
    out = tmp_path / "rows.json"
    argv = ["--backends", BACKEND, "--model", model, "--loss", loss, "--batch-size", str(batch_size), "--steps", "2",
            "--repeats", "2", "--runs", str(runs), "--implementations", "native", "--out", str(out)]  # fmt: skip
    assert train_core.main(argv) == 0
    rows = json.loads(out.read_text())
    assert {(row["impl"], row["run"]) for row in rows} == {(impl, run) for impl in ("keras", "native") for run in range(runs)}
    table = out.with_suffix(".md").read_text()
    assert "keras ÷ native per run" in table and "median" in table and "python -m benchmarks.train_core" in table


def test_loss_table(tmp_path):
    # Every implementation and loss in one process (a process per case, the default, is what the test below runs).
    out = tmp_path / "losses.json"
    argv = ["--backends", BACKEND, "--sizes", "16", "--repeats", "1", "--process-per", "backend", "--out", str(out)]
    assert losses.main(argv) == 0
    rows = json.loads(out.read_text())
    measured = {(row["implementation"], row["loss"], row["batch"]) for row in rows if "ms" in row}
    implementations = [name for name in losses.IMPLEMENTATIONS if name != "pytorch_metric_learning" or HAS_PML]
    expected = {(name, loss, 16) for name in implementations for loss in losses.TRIPLET_LOSSES}
    expected |= {(name, loss, 16) for name in ("siamese_k3", "pytorch_metric_learning") for loss in losses.PML_LOSSES
                 if name in implementations}  # the other families: siamese_k3 beside PML only
    assert measured == expected
    assert not any("added_peak_mib" in row for row in rows)  # one process: no case's own peak


def test_loss_table_skips_what_would_not_fit(tmp_path):
    out = tmp_path / "losses.json"
    argv = ["--backends", BACKEND, "--sizes", "64", "--implementations", "textbook", "--losses", "semi_hard",
            "--max-cubic-gib", "0.0001", "--out", str(out)]  # fmt: skip
    assert losses.main(argv) == 0
    assert "needs" in json.loads(out.read_text())[0]["skipped"]


def test_concat_vs_three(tmp_path):
    out = tmp_path / "concat.json"
    argv = ["--backends", BACKEND, "--steps", "2", "--epochs", "1", "--repeats", "1", "--out", str(out)]
    assert concat_vs_three.main(argv) == 0
    assert len(json.loads(out.read_text())) == 1


def test_search_table(tmp_path):
    out = tmp_path / "search.json"
    argv = ["--sizes", "600", "--dim", "8", "--clusters", "6", "--queries", "40", "--brute-force-queries", "10",
            "--repeats", "1", "--retrieval-items", "300", "--out", str(out)]  # fmt: skip
    assert search.main(argv) == 0
    rows = json.loads(out.read_text())
    by_search = {row.get("search", "retrieval"): row for row in rows}
    assert by_search["exact, numpy chunks"]["equal"] == 1.0  # the chunked search finds the brute force's neighbours
    assert by_search["retrieval"]["items"] == 300
    if "skipped" not in by_search["hnsw"]:
        assert by_search["exact, faiss flat"]["recall"] == 1.0 and by_search["hnsw"]["recall"] > 0.5
    assert "python -m benchmarks.tools.search" in out.with_suffix(".md").read_text()


def test_profile_fit(capsys):
    profile_fit.main(["--steps", "4", "--batch-size", "8", "--top", "3"])
    assert "fit" in capsys.readouterr().out


@pytest.mark.skipif(BACKEND != "torch", reason="compares torch's own Adam")
def test_adam_update(capsys):
    from benchmarks.tools import adam_update

    assert adam_update.main(["--updates", "2", "--repeats", "1"]) == 0
    assert "| compact |" in capsys.readouterr().out


@pytest.mark.backend_independent
def test_recipe_variant_gives_its_values_as_flags_and_leaves_the_recipe(monkeypatch):
    from benchmarks import recipe_variant
    from siamese_k3 import cli
    from siamese_k3.runs import recipes

    called = []
    monkeypatch.setattr(cli, "main", lambda argv: called.append(argv) or 0)
    before = recipes.defaults("strong", pairs=False)
    variant = '{"backbone_options": {"filters": [32, 64, 128]}, "epochs": 30, "margin": 0.5}'
    assert recipe_variant.main([variant, "--out", "runs/v", "--backend", "jax"]) == 0
    assert called == [["train", "--recipe", "strong", "--backbone-options", '{"filters": [32, 64, 128]}',
                       "--epochs", "30", "--margin", "0.5", "--out", "runs/v", "--backend", "jax"]]
    assert recipes.defaults("strong", pairs=False) == before
    with pytest.raises(SystemExit, match="embedding_size not recipe values"):
        recipe_variant.main(['{"embedding_size": 3}'])
    with pytest.raises(SystemExit, match="not JSON"):
        recipe_variant.main(["{epochs: 3}"])
