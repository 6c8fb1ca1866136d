"""The package's shape (STYLE.md): imports flow one way, and nothing below the CLI prints."""

import ast
import pathlib

import pytest

pytestmark = pytest.mark.backend_independent  # numpy, files and checks: one backend runs it (tests/README.md)

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "siamese_k3"

# Each module may import only modules of a strictly lower layer (and backend/, data/ as noted).
LAYERS = [
    ("errors",),
    ("files", "checks"),
    ("recipes",),
    ("config", "precision", "index"),
    ("distances", "evaluation"),
    ("losses", "backbones", "plots"),
    ("metrics", "data", "parallel", "calibration"),
    ("models", "callbacks", "inference", "export", "run_evaluation", "interrupts"),
    ("run_folder",),
    ("training",),
    ("api",),
    ("cli",),
    ("__main__",),
]
LAYER = {name: depth for depth, names in enumerate(LAYERS) for name in names}


def imported_modules(path):
    """Top-level siamese_k3 modules a file imports (anywhere in it, function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("siamese_k3"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("siamese_k3."))
    return found - {"backend"}


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda path: path.stem)
def test_imports_flow_one_way(path):
    if path.stem == "__init__":
        return  # the package entry imports what it exports
    assert path.stem in LAYER, f"{path.stem} has no layer in tests/test_package.py: add it where it belongs"
    upward = sorted(name for name in imported_modules(path) if LAYER.get(name, -1) >= LAYER[path.stem])
    assert upward == [], f"{path.stem} imports {upward}, which are not below it"


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda path: path.stem)
def test_only_the_cli_prints(path):
    if path.stem in ("cli", "__main__"):
        return
    calls = [node for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"]
    assert calls == [], f"{path.stem} prints on line {calls[0].lineno if calls else ''}: use the siamese_k3 logger"


EVERY_MODULE = sorted(PACKAGE.rglob("*.py"))


def _module_id(path):
    return str(path.relative_to(PACKAGE).with_suffix(""))


@pytest.mark.parametrize("path", EVERY_MODULE, ids=_module_id)
def test_every_exception_class_lives_in_errors(path):
    """The error contract (siamese_k3/errors.py): one module holds every exception the library defines."""
    if path == PACKAGE / "errors.py":
        return
    classes = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)
               and any(getattr(base, "id", getattr(base, "attr", "")).endswith(("Error", "Exception", "Interrupt"))
                       for base in node.bases)]
    assert classes == [], f"{_module_id(path)} defines {[c.name for c in classes]}: define exceptions in errors.py"


@pytest.mark.parametrize("path", EVERY_MODULE, ids=_module_id)
def test_bad_input_raises_the_library_s_own_errors(path):
    """No plain `raise ValueError(...)`: bad input is a `SiameseK3Error` (a ValueError), whose message the CLI
    prints in one line with flags for parameters; `TypeError` stays for arguments of the wrong Python type."""
    raised = [node.lineno for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Raise)
              and isinstance(node.exc, ast.Call) and getattr(node.exc.func, "id", None) == "ValueError"]
    assert raised == [], f"{_module_id(path)} raises a plain ValueError on line(s) {raised}: raise SiameseK3Error"


@pytest.mark.parametrize("path", [path for path in EVERY_MODULE if "backend" not in path.relative_to(PACKAGE).parts],
                         ids=_module_id)
def test_no_module_outside_backend_names_a_backend(path):
    """What differs by backend lives in siamese_k3/backend/: elsewhere no code compares with or keys on a backend's name."""
    names = {"jax", "tensorflow", "torch"}
    found = [node.lineno for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and node.value in names]
    assert found == [], f"{_module_id(path)} names a backend on line(s) {found}: ask siamese_k3.backend instead"
