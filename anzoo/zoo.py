"""The model zoo: ``zoo.yaml`` (shipped inside the package) plus the files in ``ANZOO_ZOO``.

``zoo.yaml`` holds three sections:

* ``models``: the COCO detectors, one :class:`ZooEntry` per row of the authors' table;
* ``backbones``: the ImageNet-pretrained backbones they start from (:class:`BackboneEntry`);
* ``papers``: the references the entries cite (:class:`Paper`).

The entries, their fields and how each is checked are declared once in :mod:`anzoo.schema`;
this module reads the files and answers the queries. Every file is checked when it is
loaded. The first problem found raises one :class:`~anzoo.errors.ZooSchemaError` that names
the file, the entry and the field.
``ANZOO_ZOO`` names extra YAML files of the same layout (several joined with
``os.pathsep``); an entry whose id already exists replaces the earlier one as a whole.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import UnknownModelError, ZooSchemaError
from .schema import (BACKBONE_SHORT_NAMES, COCO_NUM_CLASSES, BackboneEntry, Paper, WeightsSpec, ZooEntry,
                     gdrive_manual_url, long_backbone_name, parse_entry, parse_papers)

__all__ = [
    "DEFAULT_MODEL",
    "BACKBONE_SHORT_NAMES",
    "COCO_NUM_CLASSES",
    "Paper",
    "WeightsSpec",
    "ZooEntry",
    "BackboneEntry",
    "Zoo",
    "builtin_zoo_path",
    "gdrive_manual_url",
    "load_zoo",
    "get_entry",
    "list_entries",
    "get_backbone_entry",
    "list_backbone_entries",
    "list_models",
]

DEFAULT_MODEL = "aognet40m-an-gn"

ENV_ZOO = "ANZOO_ZOO"


@dataclass(frozen=True)
class Zoo:
    models: Mapping[str, ZooEntry]
    backbones: Mapping[str, BackboneEntry]
    papers: Mapping[str, Paper]
    files: tuple[str, ...]


def _read_yaml(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ZooSchemaError(f"zoo file not found: {path} (check {ENV_ZOO})") from None
    except OSError as exc:
        raise ZooSchemaError(f"cannot read zoo file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ZooSchemaError(f"{path}: not valid YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ZooSchemaError(f"{path}: must be a mapping with 'models', 'backbones' and/or 'papers'")
    unknown = [k for k in data if k not in ("schema", "papers", "backbones", "models")]
    if unknown:
        raise ZooSchemaError(f"{path}: unknown top-level key {unknown[0]!r} "
                             "(known: schema, papers, backbones, models)")
    if data.get("schema", 1) != 1:
        raise ZooSchemaError(f"{path}: schema {data.get('schema')!r} is not supported (this anzoo reads schema 1)")
    return data


def _parse_section(path: str, data: Mapping[str, Any], section: str, cls: type, papers: Mapping[str, Paper]
                   ) -> list:
    raw = data.get(section)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ZooSchemaError(f"{path}: '{section}' must be a list of entries")
    out, seen = [], {}
    for i, item in enumerate(raw):
        entry = parse_entry(cls, item, file=path, section=section, index=i, papers=papers)
        if entry.id in seen:
            raise ZooSchemaError(f"{path}: entry {entry.id!r} ({section}[{i}]), field 'id': "
                                 f"duplicated id (first defined at {section}[{seen[entry.id]}])")
        seen[entry.id] = i
        out.append(entry)
    return out


def builtin_zoo_path() -> Path:
    return Path(__file__).with_name("zoo.yaml")


def _extra_zoo_paths() -> list[Path]:
    value = os.environ.get(ENV_ZOO, "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]


def _file_stamp(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
        return (str(path), st.st_mtime_ns, st.st_size)
    except OSError:
        return (str(path), -1, -1)


def load_zoo() -> Zoo:
    """The built-in zoo merged with the ``ANZOO_ZOO`` files (re-read when they change)."""
    paths = [builtin_zoo_path(), *_extra_zoo_paths()]
    return _load_zoo(tuple(_file_stamp(p) for p in paths))


@functools.lru_cache(maxsize=8)
def _load_zoo(stamps: tuple[tuple[str, int, int], ...]) -> Zoo:
    papers: dict[str, Paper] = {}
    models: dict[str, ZooEntry] = {}
    backbones: dict[str, BackboneEntry] = {}
    files = []
    for path_str, _, _ in stamps:
        path = Path(path_str)
        shown = "zoo.yaml" if path == builtin_zoo_path() else str(path)
        data = _read_yaml(path)
        parse_papers(shown, data.get("papers"), papers)
        # An entry with a known id replaces the earlier one (dict keeps its table position).
        for entry in _parse_section(shown, data, "backbones", BackboneEntry, papers):
            backbones[entry.id] = entry
        for entry in _parse_section(shown, data, "models", ZooEntry, papers):
            models[entry.id] = entry
        files.append(str(path))
    for entry in models.values():
        if entry.pretrained_backbone is not None and entry.pretrained_backbone not in backbones:
            raise ZooSchemaError(
                f"{entry.source}: entry {entry.id!r}, field 'pretrained_backbone': "
                f"{entry.pretrained_backbone!r} is not in the backbones section "
                f"(known: {', '.join(backbones)})")
    return Zoo(models=models, backbones=backbones, papers=papers, files=tuple(files))


# --------------------------------------------------------------------------- queries
def _unknown(kind: str, ident: str, known: Iterable[str]) -> UnknownModelError:
    """The error for an id that is not in the zoo, with the closest ids, the closest first
    (compared without case, as ids are looked up)."""
    by_folded = {k.casefold(): k for k in known}
    folded = ident.casefold()
    close = difflib.get_close_matches(folded, by_folded, n=3, cutoff=0.5)
    if not close:  # e.g. 'aognet40m' -> the ids that start with it
        close = [k for k in by_folded if k.startswith(folded) or folded in k][:3]
    hint = (f"; did you mean {', '.join(by_folded[k] for k in close)}?" if close
            else "; run `anzoo list` to see the ids")
    return UnknownModelError(f"unknown {kind} {ident!r}{hint}")


def _lookup(kind: str, ident: str, table: dict[str, Any]) -> Any:
    """``table[ident]``, ids compared without case (``R50-BN`` is ``r50-bn``)."""
    if ident in table:
        return table[ident]
    folded = ident.casefold()
    for key, value in table.items():
        if key.casefold() == folded:
            return value
    raise _unknown(kind, ident, table)


def get_entry(model_id: str) -> ZooEntry:
    """The zoo entry of a detector id (any case); UnknownModelError (with the closest ids) otherwise."""
    return _lookup("model", model_id, load_zoo().models)


def list_entries(detector: str | None = None, backbone: str | None = None) -> list[ZooEntry]:
    """Detector entries in table order, optionally filtered by detector and backbone
    (``resnet50`` or its short name ``r50``)."""
    if backbone is not None:
        backbone = long_backbone_name(backbone)
    return [e for e in load_zoo().models.values()
            if (detector is None or e.detector == detector)
            and (backbone is None or e.backbone == backbone)]


def get_backbone_entry(backbone_id: str) -> BackboneEntry:
    """The entry of an ImageNet backbone id (any case); UnknownModelError otherwise."""
    return _lookup("backbone", backbone_id, load_zoo().backbones)


def list_backbone_entries(backbone: str | None = None) -> list[BackboneEntry]:
    """ImageNet backbone entries in table order, optionally only those of one architecture
    (``resnet50`` or its short name ``r50``)."""
    entries = list(load_zoo().backbones.values())
    if backbone is None:
        return entries
    return [e for e in entries if e.arch == long_backbone_name(backbone)]


def list_models(pattern: str | None = None) -> list[str]:
    """Detector ids in table order; ``pattern`` is a shell-style wildcard (``'*-an-gn'``)."""
    ids = list(load_zoo().models)
    return ids if pattern is None else [i for i in ids if fnmatch.fnmatchcase(i, pattern)]
