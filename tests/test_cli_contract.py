"""The CLI's contract (siamese_k3.cli, siamese_k3.errors): every error a user can cause is one line with its exit code;
``--help`` answers before keras is imported; artifacts read back as they claim; nothing fails silently."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from siamese_k3 import cli

from test_cli import TINY, write_clustered_idx

BACKEND = keras.backend.backend()
# One epoch of two steps: enough where a test needs a finished run with a property other than quality.
SHORT = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "32", "--classes-per-batch", "4",
         "--embedding-dim", "8", "--quiet", "--no-plots"]


@pytest.fixture(scope="module")
def finished(finished_run, tmp_path_factory):
    """A copy of the session's finished run (conftest.py), indexed; its data in ROOT/data."""
    import shutil

    root = tmp_path_factory.mktemp("contract")
    shutil.copytree(finished_run.root / "data", root / "data")
    out = root / "run"
    shutil.copytree(finished_run.out, out, ignore=shutil.ignore_patterns(".lock"))
    assert cli.main(["index", str(out), "--dataset", "fashion_mnist:train", "--engine", "numpy"]) == 0
    image = root / "image.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    (root / "empty_folder").mkdir()
    return root, out, image


def run_cli(*args, env=None):
    """`python -m siamese_k3 ARGS` in a fresh process: (exit code, stdout, stderr)."""
    completed = subprocess.run(
        [sys.executable, "-m", "siamese_k3", *map(str, args)], capture_output=True, text=True,
        env={**os.environ, "KERAS_BACKEND": BACKEND, **(env or {})}, timeout=600,
    )
    return completed.returncode, completed.stdout, completed.stderr


def damage(root, out, how):
    """A copy of the finished run with one file damaged; the copy's path."""
    import shutil

    copy = root / f"damaged_{how}"
    if not copy.exists():
        shutil.copytree(out, copy)
        if how == "config_json":
            (copy / "config.json").write_text('{"dataset": "fashion_mnist",')
        elif how == "half_embedding":
            data = (copy / "embedding.keras").read_bytes()
            (copy / "embedding.keras").write_bytes(data[: len(data) // 2])
        elif how == "status_json":
            (copy / "status.json").write_text("not json")
        elif how == "no_index":
            shutil.rmtree(copy / "index", ignore_errors=True)
    return copy


ERRORS = [
    # (argv builder, expected exit code, fragment of the one line)
    (lambda root, out, image: ["train", "--epochs", "0"], 2, "--epochs"),
    (lambda root, out, image: ["train", "--seed", "-1"], 2, "argument --seed: expected an integer from 0 to 2**32 - 1"),
    (lambda root, out, image: ["train", "--seed", "x"], 2, "argument --seed: 'x' is not an integer"),
    (lambda root, out, image: ["frobnicate"], 2, "invalid choice"),
    (lambda root, out, image: ["train", "--out", out, "--data-dir", root / "data"], 1, "holds a finished run"),
    (lambda root, out, image: ["train", "--out", root / "new", "--data-dir", root / "nowhere"], 1,
     "--data-dir"),
    (lambda root, out, image: ["train", "--out", root / "new", "--batch-size", "7", "--classes-per-batch", "4",
                               "--data-dir", root / "data"], 1, "--classes-per-batch 4 leaves fewer than 2"),
    (lambda root, out, image: ["evaluate", root], 1, "not a run folder"),
    (lambda root, out, image: ["evaluate", damage(root, out, "config_json")], 1, "config.json is damaged"),
    (lambda root, out, image: ["evaluate", damage(root, out, "status_json")], 1, "status.json is damaged"),
    (lambda root, out, image: ["embed", damage(root, out, "half_embedding"), "--images", image], 1,
     "embedding.keras cannot be loaded"),
    (lambda root, out, image: ["similarity", out, root / "missing.png", image], 1, "missing.png"),
    (lambda root, out, image: ["export", root, "--format", "onnx"], 1, "not a run folder"),
    (lambda root, out, image: ["search", damage(root, out, "no_index"), image], 1, "has no similarity index"),
    (lambda root, out, image: ["search", out, big_image(root)], 1, "this run's model takes 28x28 images"),
    (lambda root, out, image: ["search", out, image, "-k", "100000"], 1, "ask for at most -k 240,"),
    (lambda root, out, image: ["index", out, "--dataset", "fashion_mnist:validation"], 1, "split must be train or test"),
    (lambda root, out, image: ["index", out, "--images", root / "empty_folder"], 1, "holds no image files"),
    (lambda root, out, image: ["search", out, "fashion_mnist:validation:3"], 1,
     "'fashion_mnist:validation:3': the split must be train or test"),
    (lambda root, out, image: ["search", out, "fashion_mnist:test:x"], 1, "neither an image file nor a dataset row"),
    (lambda root, out, image: ["calibrate", out, "--target-precision", "2"], 2, "expected a number in (0, 1]"),
    # issue 31: a folder as a query says so; the library's parameter names read as the CLI's flags
    (lambda root, out, image: ["search", out, root / "empty_folder"], 1, "empty_folder is a folder, not an image file"),
    (lambda root, out, image: ["train", "--out", root / "new", "--data-dir", root / "data", "--batch-size", "22",
                               "--classes-per-batch", "11"], 1, "--classes-per-batch 11 exceeds the 10 distinct"),
    (lambda root, out, image: ["train", "--out", root / "new", "--dataset", f"pairs:{unpaired_folders(root)}",
                               "--loss", "triplet"], 1, "or pass --skip-unpaired to skip them"),
]


def unpaired_folders(root):
    """Paired folders with one file that has no partner."""
    from paired_folders import make_paired_folders

    folders = root / "unpaired"
    if not folders.exists():
        make_paired_folders(folders, count=4)
        (folders / "left" / "alone.png").write_bytes((folders / "left" / "pair_000.png").read_bytes())
    return folders


def big_image(root):
    path = root / "big.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(path)
    (root / "empty_folder").mkdir(exist_ok=True)
    return path


@pytest.mark.backend_independent
@pytest.mark.parametrize("case", range(len(ERRORS)))
def test_every_user_error_is_one_line_with_its_exit_code(case, finished, capsys):
    root, out, image = finished
    build, expected_code, fragment = ERRORS[case]
    argv = [str(value) for value in build(root, out, image)]
    capsys.readouterr()
    if expected_code == 2:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        code = exit_info.value.code
    else:
        code = cli.main(argv)
    error = capsys.readouterr().err
    assert code == expected_code, error
    assert error.count("\n") == 1 and error.startswith("siamese-k3"), error
    assert fragment in error and "Traceback" not in error


@pytest.mark.backend_independent
def test_index_search_and_calibrate_from_the_command_line(finished, tmp_path, capsys):
    """Issue 26: neighbours with ids, labels and distances; a contact sheet; a calibrated verdict."""
    _, out, image = finished
    capsys.readouterr()
    sheet = tmp_path / "sheet.png"
    assert cli.main(["search", str(out), "fashion_mnist:test:0", "fashion_mnist:test:1", "-k", "3",
                     "--sheet", str(sheet)]) == 0
    printed = capsys.readouterr().out.splitlines()
    neighbours = [line.split() for line in printed if line.strip()[:1].isdigit()]
    assert len(neighbours) == 6 and all(row[1].startswith("fashion_mnist:train:") for row in neighbours)
    distances = [float(row[3]) for row in neighbours[:3]]
    assert distances == sorted(distances)
    assert sheet.is_file() and sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["calibrate", str(out), "--target-recall", "0.5"]) == 0
    assert "on the held-out half" in capsys.readouterr().out
    assert cli.main(["similarity", str(out), str(image), str(image)]) == 0
    assert "verdict: same" in capsys.readouterr().out


@pytest.mark.backend_independent
def test_an_unknown_keras_backend_is_one_line_listing_the_valid_names_even_for_help():
    code, _, error = run_cli("evaluate", "somewhere", env={"KERAS_BACKEND": "nonsense"})
    assert code == 2 and error.count("\n") == 1
    assert "KERAS_BACKEND='nonsense' is not a Keras backend: choose one of jax, tensorflow, torch" in error
    code, output, error = run_cli("--help", env={"KERAS_BACKEND": "nonsense"})
    assert code == 0 and "train" in output and error == ""


@pytest.mark.backend_independent
def test_help_and_argument_errors_come_before_keras_is_imported():
    """`python -X importtime` lists every module imported: neither keras nor a framework may be among them."""
    for args in (["--help"], ["train", "--help"], ["train", "--epochs", "0"]):
        completed = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "siamese_k3", *args], capture_output=True, text=True,
            env={**os.environ, "KERAS_BACKEND": BACKEND}, timeout=60,
        )
        imported = {line.split("|")[-1].strip() for line in completed.stderr.splitlines() if line.startswith("import time:")}
        heavy = sorted(name for name in imported if name.split(".")[0] in ("keras", "tensorflow", "torch", "jax"))
        assert heavy == [], args


def test_model_keras_of_a_mining_run_loads_after_import_siamese_k3(finished):
    """The README's promise; it failed with 'Could not locate class FractionPositiveTriplets'."""
    _, out, _ = finished
    code = (
        "import sys, siamese_k3, keras\n"
        "model = keras.models.load_model(sys.argv[1])\n"
        "print(type(model).__name__, [type(m).__name__ for m in model.metrics])\n"
    )
    completed = subprocess.run([sys.executable, "-c", code, str(out / "model.keras")], capture_output=True, text=True,
                               env={**os.environ, "KERAS_BACKEND": BACKEND}, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.startswith("MiningModel")


def test_embed_writes_float32_under_exactly_the_name_it_reports(finished, tmp_path, capsys):
    _, out, image = finished
    target = tmp_path / "out.txt"
    assert cli.main(["embed", str(out), "--images", str(image), str(image), "--output", str(target)]) == 0
    assert f"to {target}" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]
    embeddings = np.load(target)
    assert embeddings.dtype == np.float32 and embeddings.shape == (2, 8)


def test_embed_after_a_bfloat16_run_writes_float32(tmp_path, capsys):
    """`embed` after a mixed_bfloat16 run wrote raw bfloat16 bytes (dtype |V2) and reported success."""
    write_clustered_idx(tmp_path / "data", train=80, test=40)
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tmp_path / "data"), "--out", str(out), *SHORT, "--mixed-precision", "mixed_bfloat16"]
    assert cli.main(args) == 0
    image = tmp_path / "a.png"
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(image)
    assert cli.main(["embed", str(out), "--images", str(image), "--output", str(tmp_path / "e.npy")]) == 0
    embeddings = np.load(tmp_path / "e.npy")
    assert embeddings.dtype == np.float32 and np.all(np.isfinite(embeddings))
    expected = keras.models.load_model(out / "embedding.keras").predict(
        np.asarray(Image.open(image), np.float32)[None], verbose=0
    )
    np.testing.assert_allclose(embeddings, np.asarray(expected, np.float32), rtol=1e-2, atol=1e-2)


def test_a_collapsed_embedding_is_flagged_and_strict_fails(tmp_path, capsys):
    """--learning-rate 1e9 maps every image to one point: flagged in the table and metrics.json; --strict exits 1.

    One run: --strict fails only after the run finished and its table was printed.
    """
    write_clustered_idx(tmp_path / "data", train=80, test=40)
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tmp_path / "data"), "--out", str(out), *TINY, "--learning-rate", "1e9", "--no-plots"]
    code = cli.main([*args, "--strict"])
    captured = capsys.readouterr()
    if code == 1 and "loss became" in captured.err:
        pytest.skip("this backend's loss went non-finite first (stopped as failed, which is also not silent)")
    assert code == 1 and "collapsed" in captured.err and "--strict" in captured.err
    with open(out / "metrics.json") as handle:
        collapse = json.load(handle)["collapse"]
    assert collapse["collapsed"] is True and collapse["distinct_fraction"] < 0.1
    assert "COLLAPSED" in captured.out
    with open(out / "status.json") as handle:
        assert json.load(handle)["state"] == "finished"


@pytest.mark.backend_independent
def test_search_mixes_files_and_rows_and_caps_the_contact_sheet(finished, tmp_path, capsys):
    """Issue 31: queries may mix image files and NAME:split:ROW rows; a sheet shows at most 10 neighbours a query;
    --no-sheet writes none."""
    _, out, image = finished
    capsys.readouterr()
    sheets = {k: tmp_path / f"k{k}.png" for k in (10, 30)}
    for k, sheet in sheets.items():
        argv = ["search", str(out), "fashion_mnist:test:0", str(image), "-k", str(k), "--sheet", str(sheet)]
        assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{image}\n" in printed and "fashion_mnist:test:0\n" in printed
    assert sum(line.strip().startswith("30.") for line in printed.splitlines()) == 2  # every neighbour is printed
    assert "(the first 10 neighbours of the first 2 queries)" in printed
    with Image.open(sheets[10]) as ten, Image.open(sheets[30]) as thirty:
        assert ten.size == thirty.size  # the same 2 x (1 + 10) grid
    default = out / "search.png"
    default.unlink(missing_ok=True)
    assert cli.main(["search", str(out), str(image), "--no-sheet"]) == 0
    assert not default.exists() and "Contact sheet" not in capsys.readouterr().out
    assert cli.main(["search", str(out), str(image), "-k", "2", "--sheet"]) == 0
    assert default.is_file()


@pytest.mark.backend_independent
def test_index_of_a_folder_recurses_into_subfolders_and_names_what_it_skipped(finished, tmp_path, capsys):
    """Issue 31: --images DIR indexes the images in its subfolders too (their ids: DIR/sub/name) and names the
    files it skipped."""
    import shutil

    root, out, _ = finished
    run = tmp_path / "run"
    shutil.copytree(out, run)
    gallery = tmp_path / "gallery"
    expected = [gallery / "a.png", gallery / "sub" / "b.PNG", gallery / "sub" / "deeper" / "c.png"]
    for position, path in enumerate(expected):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((28, 28), 40 * position, np.uint8)).save(path, format="PNG")
    (gallery / "sub" / "notes.txt").write_text("not an image")
    (gallery / ".hidden").mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(gallery / ".hidden" / "d.png")
    capsys.readouterr()
    assert cli.main(["index", str(run), "--images", str(gallery), "--engine", "numpy"]) == 0
    captured = capsys.readouterr()
    assert f"Indexed {len(expected)} embeddings" in captured.out
    assert "skipped 1 files without an image suffix" in captured.err and "notes.txt" in captured.err
    from siamese_k3 import Run

    assert Run.open(run).index().ids == [str(path) for path in expected]


@pytest.mark.backend_independent
@pytest.mark.parametrize("terminal", [True, False])
def test_an_interrupt_starts_its_line_afresh_on_a_terminal(terminal, monkeypatch, capsys):
    """Issue 31: a progress bar leaves the cursor mid-line on a terminal; the interrupt's message starts a new one."""
    from siamese_k3.errors import RunInterrupted

    def stopped(args):
        print("12/120 [==>...........]", end="", flush=True)
        raise RunInterrupted()

    monkeypatch.setitem(cli.COMMANDS, "evaluate", stopped)
    monkeypatch.setattr(cli, "_on_a_terminal", lambda: terminal)
    assert cli.main(["evaluate", "RUN"]) == 130
    expected = "siamese-k3: stopped by SIGINT\n"
    assert capsys.readouterr().err == ("\n" + expected if terminal else expected)


@pytest.mark.backend_independent
@pytest.mark.parametrize("message, expected", [
    ("classes_per_batch=11 exceeds the 10 classes.", "--classes-per-batch 11 exceeds the 10 classes."),
    ("or pass skip_unpaired=True to skip them.", "or pass --skip-unpaired to skip them."),
    ("ask for at most k=40, or add more items.", "ask for at most -k 40, or add more items."),
    ("validation_split=0.2.", "--validation-split 0.2."),
    ("samples_per_class=1: no flag of that name", "samples_per_class=1: no flag of that name"),
    ("skip_unpaired=False stays", "skip_unpaired=False stays"),
])
def test_the_cli_spells_parameter_settings_as_its_flags(message, expected):
    """Issue 31: the library names parameters; the CLI's messages name the flags a user types."""
    assert cli.as_flags(message) == expected


@pytest.mark.backend_independent
def test_a_path_holding_name_value_is_left_alone():
    assert cli.as_flags("image /data/k=3/x.png: k=3 is too many") == "image /data/k=3/x.png: -k 3 is too many"
