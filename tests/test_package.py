"""The package's shape (STYLE.md): imports flow one way, and nothing below the CLI prints."""

import ast
import pathlib

import pytest

pytestmark = pytest.mark.backend_independent  # numpy, files and checks: one backend runs it (tests/README.md)

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "siamese_k3"
EVERY_MODULE = sorted(PACKAGE.rglob("*.py"))

# Each top-level module or package may import only those of a strictly lower layer (and backend/); a module
# inside a package (data/, search/) only those below its package, and its own package's other modules.
LAYERS = [
    ("errors",),
    ("files", "checks"),
    ("precision", "distances"),
    ("losses", "backbones", "plots"),
    ("metrics", "data", "parallel", "search"),
    ("models", "callbacks"),
    ("runs",),
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


PACKAGES = ("data", "losses", "search", "runs", "cli")  # and backend/, which every layer may ask
LAYERED = sorted(PACKAGE.glob("*.py")) + sorted(path for package in PACKAGES for path in PACKAGE.glob(f"{package}/*.py"))


@pytest.mark.parametrize("path", LAYERED, ids=lambda path: _module_id(path))
def test_imports_flow_one_way(path):
    if path == PACKAGE / "__init__.py":
        return  # the package entry imports what it exports
    unit = path.parent.name if path.parent != PACKAGE else path.stem  # a module inside data/ counts as data
    assert unit in LAYER, f"{unit} has no layer in tests/test_package.py: add it where it belongs"
    upward = sorted(name for name in imported_modules(path) - {unit} if LAYER.get(name, -1) >= LAYER[unit])
    assert upward == [], f"{_module_id(path)} imports {upward}, which are not below {unit}"


def module_graph():
    """{module: the siamese_k3 modules it imports}, anywhere in it (function bodies included), by dotted name.

    ``from siamese_k3.search import index`` is the module siamese_k3.search.index; ``from siamese_k3.search
    import SimilarityIndex`` the package siamese_k3.search (its __init__).
    """
    modules = {_dotted(path): path for path in EVERY_MODULE}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package upwards
                    base = ".".join(filter(None, [package.rsplit(".", node.level - 1)[0], base]))
                if not base.startswith("siamese_k3"):
                    continue
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("siamese_k3"))
        graph[name] = sorted(module for module in found if module in modules and module != name)
    return graph


def _dotted(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def cycles(graph):
    """Every strongly connected set of two or more modules (Tarjan), as sorted tuples."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in graph.get(node, ()):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_import_cycles():
    """No module imports, directly or through others, one that imports it back (function-level imports included)."""
    assert cycles(module_graph()) == []


def test_cycles_finds_a_cycle_through_a_function_level_import():
    """The check above can fail: a made-up graph with a cycle is found, whatever the order of its members."""
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert cycles(graph) == [("a", "b", "c")]


def test_only_the_registry_imports_the_backends_packages():
    """One object per backend, chosen once (siamese_k3/backend/registry.py): no other module picks a backend's package."""
    packages = [f"siamese_k3.backend.{name}" for name in ("jax", "tensorflow", "torch")]

    def inside(module):
        return any(module == package or module.startswith(f"{package}.") for package in packages)

    importers = sorted(module for module, imported in module_graph().items()
                       if not inside(module) and any(inside(name) for name in imported))
    assert importers == ["siamese_k3.backend.registry"], importers


def test_every_module_is_under_400_lines():
    """One concept per module: a module that grows past 400 lines holds two."""
    long = {_module_id(path): n for path in EVERY_MODULE if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}, long


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: _module_id(path))
def test_only_the_cli_prints(path):
    if _module_id(path).split("/")[0] in ("cli", "__main__"):
        return
    calls = [node for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"]
    assert calls == [], f"{_module_id(path)} prints on line {calls[0].lineno if calls else ''}: use the siamese_k3 logger"


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


README = PACKAGE.parent / "README.md"


def readme_names():
    """Every `from siamese_k3... import name` and every dotted ``siamese_k3.x.y`` the README shows."""
    import re

    text = README.read_text()
    names = set()
    for module, imported in re.findall(r"from (siamese_k3[\w.]*) import ([\w, ]+)", text):
        names.update(f"{module}.{name.strip()}" for name in imported.split(",") if name.strip())
    names.update(re.findall(r"\bsiamese_k3(?:\.\w+)+(?![/\w])", text))  # not a file format's name (siamese_k3.run/1)
    return sorted(name for name in names if not name.endswith((".py", ".keras", ".json")))


def _resolve(dotted):
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("dotted", readme_names())
def test_every_name_the_readme_uses_imports(dotted):
    _resolve(dotted)
