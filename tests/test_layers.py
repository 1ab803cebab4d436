"""The package's layers (docs/design.md): each package imports only the ones below it, runtime
imports nothing else of the package, no import hides inside a function, and pyproject.toml lists
every package."""

import ast
import tomllib
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "deeplab"
# Bottom to top. Top-level modules (the `python -m` tools) sit above every package.
LAYERS = ["runtime", "models", "weights", "data", "crf", "engine", "tables"]
TOP = len(LAYERS)


def layer_of(module: str) -> int:
    """`deeplab.weights.caffe.recognise` -> the rank of `weights`; top-level modules -> TOP."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 or parts[1] in LAYERS else TOP


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def deeplab_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of the package."""
    tree = ast.parse(path.read_text())
    nested = {
        id(node)
        for func in ast.walk(tree)
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(func)
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "deeplab":
                names = [f"deeplab.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        out += [(n, node.lineno, id(node) in nested) for n in names if n.split(".")[0] == "deeplab"]
    return out


def test_every_package_imports_only_the_layers_below_it():
    wrong = []
    for name, path in modules().items():
        if name == "deeplab":
            continue
        mine = layer_of(name)
        for target, line, _ in deeplab_imports(path):
            if target == "deeplab" or layer_of(target) > mine:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {target}")
            elif name.startswith("deeplab.runtime") and not target.startswith("deeplab.runtime"):
                wrong.append(f"{path.relative_to(REPO)}:{line} (runtime) imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_of_the_package_hides_inside_a_function():
    late = [
        f"{path.relative_to(REPO)}:{line} imports {target}"
        for path in modules().values()
        for target, line, inside in deeplab_imports(path)
        if inside
    ]
    assert not late, "\n".join(late)


def test_the_package_root_holds_few_modules():
    assert len(list(PACKAGE.glob("*.py"))) <= 8


def test_pyproject_lists_every_package():
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {n for n, p in modules().items() if p.name == "__init__.py"}
    assert listed == found | {"deeplab.conf"}
