"""Imports point down the layers of the package, never up.

Lowest first; a module may import its own layer and the layers below it:

====  ===========  =================================================================================
rank  layer        modules
====  ===========  =================================================================================
0     foundation   errors, fileio, partfiles, structures, log, schema, version, data.defaults
1     models       models/ (torch, torchvision and the numerics mmdetection used: numpy, cv2)
2     data         data/ (images, transforms, COCO files)
3     zoo          checkpoint, zoo, hub, factory, runtime, distributed, visualize
4     run          inference, bulk/, evaluation/, training/, export (to come), testing, the package top
5     shells       cli, server/, __main__
====  ===========  =================================================================================

Why the modules the issue does not list sit where they do:

* ``schema`` (the zoo's vocabulary and entry dataclasses) and ``version`` use only the
  standard library, so every layer can name a detector or record the version;
  ``data.defaults`` is plain numbers the command line shows without loading the data stack.
* ``data`` sits above ``models``: a model never reads files or knows the data pipeline (the
  predictor hands it tensors), while nothing in ``data`` needs a model either today.
* ``runtime`` (the device choice), ``distributed`` (process groups) and ``visualize``
  (drawing ``structures.Instances``) serve the layer that runs models and use only the
  foundation, so they sit with the zoo layer, below inference.
* ``testing`` builds zoo models for the tests and benchmarks (through ``factory``); nothing
  in the package imports it.
* The package top (``anzoo/__init__``) is the public API: it names ``create_model``
  (factory) and ``Predictor`` (inference), so it sits with inference; modules below it take
  ``__version__`` from ``anzoo.version``. Its lazily imported names (``_LAZY``) count as
  imports here.

Imports inside functions count as much as those at the top of a module: a lazy import is
still a dependency, only a cheaper one. A module that no layer claims fails the test, so a
new module must be placed deliberately.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import anzoo

PACKAGE_DIR = Path(anzoo.__file__).resolve().parent

#: (layer, module prefixes), lowest first. The longest matching prefix places a module.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("anzoo.errors", "anzoo.fileio", "anzoo.partfiles", "anzoo.structures", "anzoo.log",
                    "anzoo.schema", "anzoo.version", "anzoo.data.defaults")),
    ("models", ("anzoo.models",)),
    ("data", ("anzoo.data",)),
    ("zoo", ("anzoo.checkpoint", "anzoo.zoo", "anzoo.hub", "anzoo.factory", "anzoo.runtime",
             "anzoo.distributed", "anzoo.visualize")),
    ("run", ("anzoo.inference", "anzoo.bulk", "anzoo.evaluation", "anzoo.training", "anzoo.export",
             "anzoo.testing", "anzoo")),
    ("shells", ("anzoo.cli", "anzoo.server", "anzoo.__main__")),
]

#: Upward imports that are known and waiting for another change: (importer, imported) -> why.
#: Each entry must still exist (the test fails on a stale one), so the list empties itself.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}

#: what models/ may import from outside the package: the standard library, torch and
#: torchvision, plus numpy and OpenCV, which build mask targets exactly as mmdetection v1 did.
MODELS_THIRD_PARTY = {"torch", "torchvision", "numpy", "cv2"}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _owning_module(name: str, modules: dict[str, Path]) -> str:
    """``anzoo.zoo.get_entry`` -> ``anzoo.zoo``: the longest prefix that is a module."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import of an ``anzoo`` module in the file, wherever it is written."""
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package (or the module's package) up
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from . import hub` imports the module anzoo.hub; `from .zoo import get_entry` anzoo.zoo
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        for target in targets:
            if target == "anzoo" or target.startswith("anzoo."):
                found.append(Import(name, _owning_module(target, modules), node.lineno))
    if name == "anzoo":  # the package top imports its lazy names by module name
        found += [Import(name, module, 0) for module, _ in anzoo._LAZY.values()]
    return list(dict.fromkeys(found))  # one per imported module and line


def layer_of(module: str) -> tuple[int, str] | None:
    best: tuple[int, int, str] | None = None  # (prefix length, rank, layer)
    for rank, (layer, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank, layer)
    return None if best is None else (best[1], best[2])


def upward_imports() -> list[tuple[Import, str, str]]:
    modules = all_modules()
    out = []
    for name, path in modules.items():
        for imp in imports_of(name, path, modules):
            (rank, layer), (target_rank, target_layer) = layer_of(imp.importer), layer_of(imp.imported)
            if target_rank > rank:
                out.append((imp, layer, target_layer))
    return out


def test_every_module_has_a_layer():
    unplaced = [name for name in all_modules() if layer_of(name) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS in {__file__}): {', '.join(unplaced)}"


def test_imports_point_down():
    modules, problems = all_modules(), []
    for imp, layer, target_layer in upward_imports():
        if (imp.importer, imp.imported) in KNOWN_VIOLATIONS:
            continue
        path = modules[imp.importer].relative_to(PACKAGE_DIR.parent)
        where = f"{path}:{imp.line}" if imp.line else f"{path} (_LAZY)"
        problems.append(f"{where}: {imp.importer} ({layer}) imports {imp.imported} ({target_layer}), a higher layer")
    assert not problems, "imports that point up:\n" + "\n".join(problems)


def test_known_violations_still_exist():
    found = {(imp.importer, imp.imported) for imp, _, _ in upward_imports()}
    stale = [f"{a} -> {b} ({why})" for (a, b), why in KNOWN_VIOLATIONS.items() if (a, b) not in found]
    assert not stale, "fixed: remove from KNOWN_VIOLATIONS: " + "; ".join(stale)


def test_models_use_only_torch_and_the_standard_library():
    modules = all_modules()
    problems = []
    for name, path in modules.items():
        if not name.startswith("anzoo.models"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            for root in roots:
                if root not in sys.stdlib_module_names and root not in MODELS_THIRD_PARTY and root != "anzoo":
                    problems.append(f"{name} line {node.lineno}: imports {root}")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- the checker itself
def _check_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rel: str, source: str) -> list[str]:
    """Run the import walk over a fake package holding one extra file."""
    fake = tmp_path / "anzoo"
    for path in PACKAGE_DIR.rglob("*.py"):  # the same modules, empty
        file = fake / path.relative_to(PACKAGE_DIR)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("")
    (fake / rel).write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE_DIR", fake)
    return [f"{imp.importer}:{imp.line} {layer}->{target}" for imp, layer, target in upward_imports()
            if imp.line]


@pytest.mark.parametrize("source", [
    "from ...hub import fetch_weights\n",                      # relative, from models/backbones/
    "def f():\n    from ... import hub\n",                     # inside a function, from a package
    "import anzoo.factory\n",                                  # absolute
    "from anzoo import inference as inf\n",                    # absolute, a module by name
], ids=["relative", "in-function", "absolute", "from-package"])
def test_an_upward_import_is_found(tmp_path, monkeypatch, source):
    found = _check_source(tmp_path, monkeypatch, "models/backbones/probe.py", source)
    assert len(found) == 1 and found[0].startswith("anzoo.models.backbones.probe:"), found
    assert "models->zoo" in found[0] or "models->run" in found[0], found


def test_a_downward_import_passes(tmp_path, monkeypatch):
    found = _check_source(tmp_path, monkeypatch, "hub.py",
                          "from .errors import AnzooError\nfrom .models import backbones\nimport anzoo.zoo\n")
    assert not [f for f in found if f.startswith("anzoo.hub:")], found
