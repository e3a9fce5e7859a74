"""The model zoo: ``zoo.yaml`` (shipped inside the package) plus the files in ``ANZOO_ZOO``.

``zoo.yaml`` holds three sections:

* ``models``: the COCO detectors, one :class:`ZooEntry` per row of the authors' table;
* ``backbones``: the ImageNet-pretrained backbones they start from (:class:`BackboneEntry`);
* ``papers``: the references the entries cite (:class:`Paper`).

Every file is checked when it is loaded. The first problem found raises one
:class:`~anzoo.errors.ZooSchemaError` that names the file, the entry and the field.
``ANZOO_ZOO`` names extra YAML files of the same layout (several joined with
``os.pathsep``); an entry whose id already exists replaces the earlier one as a whole.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UnknownModelError, ZooSchemaError

__all__ = [
    "DEFAULT_MODEL",
    "DETECTORS",
    "BACKBONES",
    "BACKBONE_NORMS",
    "HEAD_NORMS",
    "BACKBONE_SHORT_NAMES",
    "Paper",
    "WeightsSpec",
    "ZooEntry",
    "BackboneEntry",
    "Zoo",
    "builtin_zoo_path",
    "load_zoo",
    "get_entry",
    "list_entries",
    "get_backbone_entry",
    "list_backbone_entries",
    "list_models",
]

DEFAULT_MODEL = "aognet40m-an-gn"

DETECTORS = ("mask_rcnn", "cascade_mask_rcnn")
BACKBONES = ("resnet50", "resnet101", "aognet12m", "aognet40m")
BACKBONE_NORMS = ("bn", "an", "gn", "sn")
HEAD_NORMS = ("none", "gn", "an_gn", "sn")
#: short backbone names used in ids (``r50-an``, ``aognet40m-bn``).
BACKBONE_SHORT_NAMES = {"resnet50": "r50", "resnet101": "r101", "aognet12m": "aognet12m",
                        "aognet40m": "aognet40m"}
COCO_NUM_CLASSES = 80

ENV_ZOO = "ANZOO_ZOO"

# ids become folder names in the cache: keep them to a safe alphabet.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SCHEDULE_RE = re.compile(r"^[0-9]+(x|e)$")  # '1x', '2x' (12-epoch units) or '20e' (epochs)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_GDRIVE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{10,}$")


# --------------------------------------------------------------------------- data classes
@dataclass(frozen=True)
class Paper:
    key: str
    title: str
    authors: str
    venue: str
    arxiv: str | None = None
    url: str | None = None

    @property
    def link(self) -> str | None:
        if self.url:
            return self.url
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else None

    def cite(self) -> str:
        """One line: authors, title, venue, link."""
        link = f" {self.link}" if self.link else ""
        return f"{self.authors}. {self.title}. {self.venue}.{link}"


@dataclass(frozen=True)
class WeightsSpec:
    """Where a weights file comes from. At least one of ``gdrive_id``, ``url``, ``mirrors``."""

    gdrive_id: str | None = None
    url: str | None = None
    #: sha256 of the file as served (for an archive: of the archive); optional pin.
    sha256: str | None = None
    #: further HTTP(S) URLs, tried in order after the primary source.
    mirrors: tuple[str, ...] = ()
    #: name of the file in the cache (default: ``<id>.pth`` or ``<id>.zip``).
    filename: str | None = None

    @property
    def manual_url(self) -> str | None:
        """The link a person opens in a browser to fetch the file by hand."""
        if self.gdrive_id:
            return gdrive_manual_url(self.gdrive_id)
        return self.url or (self.mirrors[0] if self.mirrors else None)


def gdrive_manual_url(file_id: str) -> str:
    return f"https://drive.google.com/open?id={file_id}"


@dataclass(frozen=True)
class ZooEntry:
    """One detector of the zoo (a row of the authors' table, or a user's own model)."""

    id: str
    detector: str
    backbone: str
    backbone_norm: str
    head_norm: str
    weights: WeightsSpec | None
    schedule: str | None = None
    params_m: float | None = None
    box_ap: float | None = None
    mask_ap: float | None = None
    #: id of the ImageNet backbone (``backbones:`` section) training starts from.
    pretrained_backbone: str | None = None
    #: config file of the reference implementation this entry reproduces.
    config: str | None = None
    papers: tuple[Paper, ...] = ()
    notes: str | None = None
    num_classes: int = COCO_NUM_CLASSES
    #: None means COCO's 80 categories.
    class_names: tuple[str, ...] | None = None
    #: the YAML file the entry was read from.
    source: str | None = field(default=None, compare=False)

    @property
    def backbone_id(self) -> str:
        """The backbone registry name, e.g. ``r50-an``, ``aognet40m-bn``, ``r101-gn``."""
        return f"{BACKBONE_SHORT_NAMES[self.backbone]}-{self.backbone_norm}"

    @property
    def has_weights(self) -> bool:
        return self.weights is not None


@dataclass(frozen=True)
class BackboneEntry:
    """An ImageNet-pretrained backbone (AOGNet-v2 release)."""

    id: str
    arch: str
    norm: str
    weights: WeightsSpec | None
    params_m: float | None = None
    top1_error: float | None = None
    top5_error: float | None = None
    config: str | None = None
    papers: tuple[Paper, ...] = ()
    notes: str | None = None
    source: str | None = field(default=None, compare=False)

    @property
    def has_weights(self) -> bool:
        return self.weights is not None


@dataclass(frozen=True)
class Zoo:
    models: Mapping[str, ZooEntry]
    backbones: Mapping[str, BackboneEntry]
    papers: Mapping[str, Paper]
    files: tuple[str, ...]


# --------------------------------------------------------------------------- validation
class _Checker:
    """Reads one entry's fields, raising a ZooSchemaError that names file, entry and field."""

    def __init__(self, file: str, section: str, index: int, raw: Any) -> None:
        self.file, self.section, self.index = file, section, index
        self.raw: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        if not isinstance(raw, Mapping):
            self.fail(None, f"must be a mapping of fields, got {type(raw).__name__}")

    def fail(self, field_name: str | None, problem: str) -> None:
        ident = self.raw.get("id")
        name = f"entry {ident!r}" if isinstance(ident, str) else "entry"
        at = f", field {field_name!r}" if field_name else ""
        raise ZooSchemaError(f"{self.file}: {name} ({self.section}[{self.index}]){at}: {problem}")

    def only(self, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        unknown = [k for k in self.raw if k not in allowed]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known fields: {', '.join(sorted(allowed))})"
            self.fail(str(unknown[0]), f"unknown field{hint}")

    def get(self, name: str, *, required: bool = False, default: Any = None) -> Any:
        if name not in self.raw:
            if required:
                self.fail(name, "missing (required)")
            return default
        return self.raw[name]

    def ident(self) -> str:
        value = self.get("id", required=True)
        if not isinstance(value, str) or not _ID_RE.match(value):
            self.fail("id", f"{value!r} is not a valid id (letters, digits, '.', '_', '-'; "
                            "starting with a letter or digit)")
        return value

    def choice(self, name: str, choices: Iterable[str], *, required: bool = True,
               nullable: bool = False) -> str | None:
        value = self.get(name, required=required)
        if value is None and (nullable or not required):
            return None
        choices = tuple(choices)
        if value not in choices:
            self.fail(name, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def number(self, name: str, *, lo: float = 0.0, hi: float | None = None,
               required: bool = False) -> float | None:
        value = self.get(name, required=required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, f"{value!r} is not a number (use null when unknown)")
        if value < lo or (hi is not None and value > hi):
            rng = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
            self.fail(name, f"{value!r} must be {rng}")
        return float(value)

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self.get(name, required=required)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(name, f"{value!r} must be a non-empty string")
        return value.strip()

    def schedule(self) -> str | None:
        value = self.get("schedule")
        if value is None:
            return None
        if not isinstance(value, str) or not _SCHEDULE_RE.match(value):
            self.fail("schedule", f"{value!r} is not a schedule like '2x' or '20e'")
        return value

    def papers(self, known: Mapping[str, Paper]) -> tuple[Paper, ...]:
        value = self.get("papers", default=[])
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail("papers", "must be a list of paper keys")
        out = []
        for key in value:
            if key not in known:
                self.fail("papers", f"unknown paper {key!r} (known: {', '.join(sorted(known)) or 'none'})")
            out.append(known[key])
        return tuple(out)

    def weights(self) -> WeightsSpec | None:
        value = self.get("weights", required=True)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.fail("weights", "must be null or a mapping with gdrive_id, url, sha256, mirrors, filename")
        known = {"gdrive_id", "url", "sha256", "mirrors", "filename"}
        unknown = [k for k in value if k not in known]
        if unknown:
            self.fail(f"weights.{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})")
        gdrive_id = value.get("gdrive_id")
        if gdrive_id is not None and (not isinstance(gdrive_id, str) or not _GDRIVE_ID_RE.match(gdrive_id)):
            self.fail("weights.gdrive_id", f"{gdrive_id!r} is not a Google Drive file id")
        url = value.get("url")
        if url is not None:
            self._check_url("weights.url", url)
        mirrors = value.get("mirrors") or []
        if not isinstance(mirrors, list):
            self.fail("weights.mirrors", "must be a list of URLs")
        for i, m in enumerate(mirrors):
            self._check_url(f"weights.mirrors[{i}]", m)
        sha = value.get("sha256")
        if sha is not None:
            if not isinstance(sha, str) or not _SHA256_RE.match(sha.lower()):
                self.fail("weights.sha256", f"{sha!r} is not a sha256 hex digest (64 hex digits)")
            sha = sha.lower()
        filename = value.get("filename")
        if filename is not None and (not isinstance(filename, str) or not _ID_RE.match(filename)):
            self.fail("weights.filename", f"{filename!r} is not a plain file name")
        if not (gdrive_id or url or mirrors):
            self.fail("weights", "needs at least one of gdrive_id, url, mirrors (or weights: null)")
        return WeightsSpec(gdrive_id=gdrive_id, url=url, sha256=sha, mirrors=tuple(mirrors),
                           filename=filename)

    def _check_url(self, name: str, url: Any) -> None:
        if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
            self.fail(name, f"{url!r} is not an http(s) URL")


_MODEL_FIELDS = ("id", "detector", "backbone", "backbone_norm", "head_norm", "schedule", "params_m",
                 "box_ap", "mask_ap", "weights", "pretrained_backbone", "config", "papers", "notes",
                 "num_classes", "class_names")
_BACKBONE_FIELDS = ("id", "arch", "norm", "params_m", "top1_error", "top5_error", "weights",
                    "config", "papers", "notes")
_PAPER_FIELDS = ("title", "authors", "venue", "arxiv", "url")


def _parse_model(c: _Checker, papers: Mapping[str, Paper]) -> ZooEntry:
    c.only(_MODEL_FIELDS)
    ident = c.ident()
    num_classes = c.get("num_classes", default=COCO_NUM_CLASSES)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        c.fail("num_classes", f"{num_classes!r} must be a positive integer")
    class_names = c.get("class_names")
    if class_names is not None:
        if not isinstance(class_names, list) or not all(isinstance(n, str) for n in class_names):
            c.fail("class_names", "must be a list of strings")
        if len(class_names) != num_classes:
            c.fail("class_names", f"has {len(class_names)} names but num_classes is {num_classes}")
        class_names = tuple(class_names)
    return ZooEntry(
        id=ident,
        detector=c.choice("detector", DETECTORS),
        backbone=c.choice("backbone", BACKBONES),
        backbone_norm=c.choice("backbone_norm", BACKBONE_NORMS),
        head_norm=c.choice("head_norm", HEAD_NORMS),
        weights=c.weights(),
        schedule=c.schedule(),
        params_m=c.number("params_m"),
        box_ap=c.number("box_ap", hi=100.0),
        mask_ap=c.number("mask_ap", hi=100.0),
        pretrained_backbone=c.text("pretrained_backbone"),
        config=c.text("config"),
        papers=c.papers(papers),
        notes=c.text("notes"),
        num_classes=num_classes,
        class_names=class_names,
        source=c.file,
    )


def _parse_backbone(c: _Checker, papers: Mapping[str, Paper]) -> BackboneEntry:
    c.only(_BACKBONE_FIELDS)
    return BackboneEntry(
        id=c.ident(),
        arch=c.choice("arch", BACKBONES),
        norm=c.choice("norm", BACKBONE_NORMS),
        weights=c.weights(),
        params_m=c.number("params_m"),
        top1_error=c.number("top1_error", hi=100.0),
        top5_error=c.number("top5_error", hi=100.0),
        config=c.text("config"),
        papers=c.papers(papers),
        notes=c.text("notes"),
        source=c.file,
    )


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


def _parse_papers(path: str, raw: Any, into: dict[str, Paper]) -> None:
    if raw is None:
        return
    if not isinstance(raw, Mapping):
        raise ZooSchemaError(f"{path}: 'papers' must be a mapping of key -> paper")
    for key, value in raw.items():
        if not isinstance(value, Mapping):
            raise ZooSchemaError(f"{path}: paper {key!r}: must be a mapping of fields")
        unknown = [k for k in value if k not in _PAPER_FIELDS]
        if unknown:
            raise ZooSchemaError(f"{path}: paper {key!r}, field {unknown[0]!r}: unknown field")
        for name in ("title", "authors", "venue"):
            if not isinstance(value.get(name), str) or not value[name].strip():
                raise ZooSchemaError(f"{path}: paper {key!r}, field {name!r}: missing or empty")
        arxiv = value.get("arxiv")
        into[str(key)] = Paper(key=str(key), title=value["title"], authors=value["authors"],
                               venue=value["venue"], arxiv=None if arxiv is None else str(arxiv),
                               url=value.get("url"))


def _parse_section(path: str, data: Mapping[str, Any], section: str, parse, papers) -> list:
    raw = data.get(section)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ZooSchemaError(f"{path}: '{section}' must be a list of entries")
    out, seen = [], {}
    for i, item in enumerate(raw):
        entry = parse(_Checker(path, section, i, item), papers)
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
        _parse_papers(shown, data.get("papers"), papers)
        # An entry with a known id replaces the earlier one (dict keeps its table position).
        for entry in _parse_section(shown, data, "backbones", _parse_backbone, papers):
            backbones[entry.id] = entry
        for entry in _parse_section(shown, data, "models", _parse_model, papers):
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
    known = list(known)
    close = difflib.get_close_matches(ident, known, n=3, cutoff=0.5)
    if not close:  # e.g. 'aognet40m' -> the ids that start with it
        close = [k for k in known if k.startswith(ident) or ident in k][:3]
    hint = (f"; did you mean {', '.join(close)}?" if close
            else "; run `anzoo list` to see the ids")
    return UnknownModelError(f"unknown {kind} {ident!r}{hint}")


def get_entry(model_id: str) -> ZooEntry:
    """The zoo entry of a detector id; UnknownModelError (with the closest ids) otherwise."""
    models = load_zoo().models
    if model_id not in models:
        raise _unknown("model", model_id, models)
    return models[model_id]


def list_entries(detector: str | None = None, backbone: str | None = None) -> list[ZooEntry]:
    """Detector entries in table order, optionally filtered by detector and backbone
    (``resnet50`` or its short name ``r50``)."""
    if backbone is not None:
        short_to_long = {v: k for k, v in BACKBONE_SHORT_NAMES.items()}
        backbone = short_to_long.get(backbone, backbone)
    return [e for e in load_zoo().models.values()
            if (detector is None or e.detector == detector)
            and (backbone is None or e.backbone == backbone)]


def get_backbone_entry(backbone_id: str) -> BackboneEntry:
    backbones = load_zoo().backbones
    if backbone_id not in backbones:
        raise _unknown("backbone", backbone_id, backbones)
    return backbones[backbone_id]


def list_backbone_entries() -> list[BackboneEntry]:
    return list(load_zoo().backbones.values())


def list_models(pattern: str | None = None) -> list[str]:
    """Detector ids in table order; ``pattern`` is a shell-style wildcard (``'*-an-gn'``)."""
    ids = list(load_zoo().models)
    return ids if pattern is None else [i for i in ids if fnmatch.fnmatchcase(i, pattern)]
