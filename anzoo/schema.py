"""The zoo's vocabulary and entries, each named once.

* String enums (``Detector.mask_rcnn == "mask_rcnn"``) with the label people read
  (``Detector.mask_rcnn.label == "Mask R-CNN"``). ``zoo.yaml`` values, the builders in
  ``anzoo.models``, the command line's choices and the service's model info all use these.
* The entries of a zoo file as frozen dataclasses: :class:`ZooEntry` (a detector),
  :class:`BackboneEntry` (an ImageNet backbone), :class:`WeightsSpec` and :class:`Paper`.
  Each entry field says in its metadata how it is read from a zoo file (:func:`entry_field`),
  so :func:`parse_entry` checks every field from the dataclass alone, and ``to_json()``
  writes the entry the way ``anzoo list --json``, ``anzoo info --json`` and the service's
  ``/models`` show it. A new field is one line here.

Reading YAML files, merging ``ANZOO_ZOO`` and the queries live in :mod:`anzoo.zoo`. This
module imports nothing but the standard library and :mod:`anzoo.errors`, so every layer
(``anzoo.models`` included) may use it.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from .errors import ZooSchemaError

__all__ = ["Detector", "Backbone", "BackboneNorm", "HeadNorm", "VocabularyEnum", "BACKBONE_SHORT_NAMES",
           "BACKBONE_NAMES", "COCO_NUM_CLASSES", "long_backbone_name", "Paper", "WeightsSpec", "ZooEntry",
           "BackboneEntry", "FieldRule", "EntryReader", "entry_field", "parse_entry", "parse_papers",
           "gdrive_manual_url"]


# =========================================================================== vocabulary
class VocabularyEnum(str, Enum):
    """A ``str`` enum member with a display ``label``: ``Member = ("value", "Label")``."""

    label: str

    def __new__(cls, value: str, label: str) -> "VocabularyEnum":
        member = str.__new__(cls, value)
        member._value_ = value
        member.label = label
        return member

    def __str__(self) -> str:  # f"{Detector.mask_rcnn}" -> "mask_rcnn", as the YAML spells it
        return self.value

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


class Detector(VocabularyEnum):
    mask_rcnn = ("mask_rcnn", "Mask R-CNN")
    cascade_mask_rcnn = ("cascade_mask_rcnn", "Cascade Mask R-CNN")


class Backbone(VocabularyEnum):
    resnet50 = ("resnet50", "ResNet-50")
    resnet101 = ("resnet101", "ResNet-101")
    aognet12m = ("aognet12m", "AOGNet-12m")
    aognet40m = ("aognet40m", "AOGNet-40m")


class BackboneNorm(VocabularyEnum):
    bn = ("bn", "BN")
    an = ("an", "AN (w/ BN)")
    gn = ("gn", "GN")
    sn = ("sn", "SN")


class HeadNorm(VocabularyEnum):
    none = ("none", "-")
    gn = ("gn", "GN")
    an_gn = ("an_gn", "AN (w/ GN)")
    sn = ("sn", "SN")


#: short backbone names used in ids and backbone registry names (``r50-an``, ``aognet40m-bn``).
BACKBONE_SHORT_NAMES: dict[str, str] = {"resnet50": "r50", "resnet101": "r101", "aognet12m": "aognet12m",
                                        "aognet40m": "aognet40m"}
#: every spelling a backbone filter accepts: the names, then the short names that differ (r50, r101).
BACKBONE_NAMES: tuple[str, ...] = tuple(dict.fromkeys([*Backbone.values(), *BACKBONE_SHORT_NAMES.values()]))

COCO_NUM_CLASSES = 80


def long_backbone_name(name: str) -> str:
    """``'r50'`` -> ``'resnet50'``; any other name unchanged."""
    return {short: long for long, short in BACKBONE_SHORT_NAMES.items()}.get(name, name)


# =========================================================================== checks of one entry
# ids become folder names in the cache: keep them to a safe alphabet.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SCHEDULE_RE = re.compile(r"^[0-9]+(x|e)$")  # '1x', '2x' (12-epoch units) or '20e' (epochs)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_GDRIVE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{10,}$")
_URL_RE = re.compile(r"^https?://[^\s/]+")
#: a file on the Hugging Face Hub: hf://OWNER/REPO/PATH[@REVISION] (fetched by huggingface_hub)
HF_URL_RE = re.compile(r"hf://(?P<repo>[\w.-]+/[\w.-]+)/(?P<path>[^@\s]+?)(?:@(?P<revision>[\w./-]+))?")


class EntryReader:
    """Reads one entry's fields, raising a ZooSchemaError that names file, entry and field.

    ``papers`` are the papers known so far (for the ``papers`` field); ``parsed`` holds the
    fields already read, for checks that involve two of them (``class_names`` against
    ``num_classes``).
    """

    def __init__(self, file: str, section: str, index: int, raw: Any,
                 papers: Mapping[str, Paper] | None = None) -> None:
        self.file, self.section, self.index = file, section, index
        self.known_papers: Mapping[str, Paper] = papers or {}
        self.parsed: dict[str, Any] = {}
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

    def ident(self, name: str = "id") -> str:
        value = self.get(name, required=True)
        if not isinstance(value, str) or not _ID_RE.match(value):
            self.fail(name, f"{value!r} is not a valid id (letters, digits, '.', '_', '-'; "
                            "starting with a letter or digit)")
        return value

    def choice(self, name: str, vocabulary: type[VocabularyEnum]) -> VocabularyEnum:
        value = self.get(name, required=True)
        if value not in vocabulary.values():
            self.fail(name, f"{value!r} is not one of {', '.join(vocabulary.values())}")
        return vocabulary(value)

    def number(self, name: str, *, lo: float = 0.0, hi: float | None = None) -> float | None:
        value = self.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, f"{value!r} is not a number (use null when unknown)")
        if value < lo or (hi is not None and value > hi):
            rng = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
            self.fail(name, f"{value!r} must be {rng}")
        return float(value)

    def text(self, name: str) -> str | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(name, f"{value!r} must be a non-empty string")
        return value.strip()

    def schedule(self, name: str) -> str | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not _SCHEDULE_RE.match(value):
            self.fail(name, f"{value!r} is not a schedule like '2x' or '20e'")
        return value

    def count(self, name: str) -> int:
        value = self.get(name, default=COCO_NUM_CLASSES)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(name, f"{value!r} must be a positive integer")
        return value

    def class_names(self, name: str) -> tuple[str, ...] | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
            self.fail(name, "must be a list of strings")
        num_classes = self.parsed["num_classes"]
        if len(value) != num_classes:
            self.fail(name, f"has {len(value)} names but num_classes is {num_classes}")
        return tuple(value)

    def papers(self, name: str) -> tuple[Paper, ...]:
        value = self.get(name, default=[])
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(name, "must be a list of paper keys")
        out = []
        for key in value:
            if key not in self.known_papers:
                known = ", ".join(sorted(self.known_papers)) or "none"
                self.fail(name, f"unknown paper {key!r} (known: {known})")
            out.append(self.known_papers[key])
        return tuple(out)

    def weights(self, name: str) -> WeightsSpec | None:
        value = self.get(name, required=True)
        if value is None:
            return None
        known = [f.name for f in dataclasses.fields(WeightsSpec)]
        if not isinstance(value, Mapping):
            self.fail(name, f"must be null or a mapping with {', '.join(known)}")
        unknown = [k for k in value if k not in known]
        if unknown:
            self.fail(f"{name}.{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})")
        gdrive_id = value.get("gdrive_id")
        if gdrive_id is not None and (not isinstance(gdrive_id, str) or not _GDRIVE_ID_RE.match(gdrive_id)):
            self.fail(f"{name}.gdrive_id", f"{gdrive_id!r} is not a Google Drive file id")
        url = value.get("url")
        if url is not None:
            self._check_url(f"{name}.url", url)
        mirrors = value.get("mirrors") or []
        if not isinstance(mirrors, list):
            self.fail(f"{name}.mirrors", "must be a list of URLs")
        for i, m in enumerate(mirrors):
            self._check_url(f"{name}.mirrors[{i}]", m)
        sha = value.get("sha256")
        if sha is not None:
            if not isinstance(sha, str) or not _SHA256_RE.match(sha.lower()):
                self.fail(f"{name}.sha256", f"{sha!r} is not a sha256 hex digest (64 hex digits)")
            sha = sha.lower()
        filename = value.get("filename")
        if filename is not None and (not isinstance(filename, str) or not _ID_RE.match(filename)):
            self.fail(f"{name}.filename", f"{filename!r} is not a plain file name")
        if not (gdrive_id or url or mirrors):
            self.fail(name, "needs at least one of gdrive_id, url, mirrors (or weights: null)")
        return WeightsSpec(gdrive_id=gdrive_id, url=url, sha256=sha, mirrors=tuple(mirrors), filename=filename)

    def _check_url(self, name: str, url: Any) -> None:
        if not isinstance(url, str) or not (_URL_RE.match(url) or HF_URL_RE.fullmatch(url)):
            self.fail(name, f"{url!r} is not an http(s) URL nor hf://OWNER/REPO/PATH[@REVISION]")


#: how a field's value is read from a zoo file: ``read(reader, field_name)``
Read = Callable[[EntryReader, str], Any]


@dataclass(frozen=True)
class FieldRule:
    """What an entry field's metadata says: how it is read from a zoo file (None: it is not
    written there), the vocabulary its values come from, and how ``to_json()`` writes it (its
    key, and a converter)."""

    read: Read | None
    vocabulary: type[VocabularyEnum] | None = None
    json_key: str | None = None
    to_json: Callable[[Any], Any] | None = None


_RULE = "anzoo.schema"


def entry_field(read: Read | None = None, *, vocabulary: type[VocabularyEnum] | None = None,
                json_key: str | None = None, to_json: Callable[[Any], Any] | None = None, **kwargs: Any) -> Any:
    """A dataclass field of a zoo entry: ``dataclasses.field(**kwargs)`` plus its :class:`FieldRule`.
    A field with a ``vocabulary`` is read as one of its values (required) and holds the enum member."""
    if vocabulary is not None:
        read = _choice(vocabulary)
    return field(metadata={_RULE: FieldRule(read, vocabulary, json_key, to_json)}, **kwargs)


def _choice(vocabulary: type[VocabularyEnum]) -> Read:
    return lambda reader, name: reader.choice(name, vocabulary)


def _number(hi: float | None = None) -> Read:
    return lambda reader, name: reader.number(name, hi=hi)


def _json_value(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if hasattr(value, "to_json"):
        return value.to_json()
    return value


def _as_vocabulary(entry: Any) -> None:
    """Fields with a vocabulary hold its members, also when an entry is made from plain strings."""
    for f in dataclasses.fields(entry):
        vocabulary = f.metadata[_RULE].vocabulary
        if vocabulary is not None:
            object.__setattr__(entry, f.name, vocabulary(getattr(entry, f.name)))


def _entry_json(entry: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(entry):
        rule: FieldRule = f.metadata[_RULE]
        value = getattr(entry, f.name)
        out[rule.json_key or f.name] = rule.to_json(value) if rule.to_json else _json_value(value)
    return out


# =========================================================================== entries
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

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "authors": self.authors, "venue": self.venue,
                "arxiv": self.arxiv, "link": self.link}


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

    def to_json(self) -> dict[str, Any]:
        """The sources (the cache's state of the file is the hub's to add)."""
        return {"source": self.manual_url, "gdrive_id": self.gdrive_id, "url": self.url,
                "mirrors": list(self.mirrors), "sha256_pinned": self.sha256}


def gdrive_manual_url(file_id: str) -> str:
    return f"https://drive.google.com/open?id={file_id}"


def _weights_json(weights: WeightsSpec | None) -> dict[str, Any]:
    return (weights or WeightsSpec()).to_json()  # no weights: every source null


# The field order is the order of to_json() (and of `anzoo info`).
@dataclass(frozen=True)
class ZooEntry:
    """One detector of the zoo (a row of the authors' table, or a user's own model)."""

    id: str = entry_field(EntryReader.ident)
    detector: Detector = entry_field(vocabulary=Detector)
    backbone: Backbone = entry_field(vocabulary=Backbone)
    backbone_norm: BackboneNorm = entry_field(vocabulary=BackboneNorm)
    head_norm: HeadNorm = entry_field(vocabulary=HeadNorm)
    schedule: str | None = entry_field(EntryReader.schedule, default=None)
    params_m: float | None = entry_field(_number(), default=None)
    box_ap: float | None = entry_field(_number(hi=100.0), default=None)
    mask_ap: float | None = entry_field(_number(hi=100.0), default=None)
    #: required in a zoo file; null there when no weights were released.
    weights: WeightsSpec | None = entry_field(EntryReader.weights, to_json=_weights_json, default=None)
    #: the backbone registry name, e.g. ``r50-an``, ``aognet40m-bn``, ``r101-gn`` (derived).
    backbone_id: str = entry_field(None, init=False, compare=False)
    #: id of the ImageNet backbone (``backbones:`` section) training starts from.
    pretrained_backbone: str | None = entry_field(EntryReader.text, default=None)
    #: config file of the reference implementation this entry reproduces.
    config: str | None = entry_field(EntryReader.text, default=None)
    num_classes: int = entry_field(EntryReader.count, default=COCO_NUM_CLASSES)
    #: None means COCO's 80 categories.
    class_names: tuple[str, ...] | None = entry_field(EntryReader.class_names, default=None)
    papers: tuple[Paper, ...] = entry_field(EntryReader.papers, default=())
    notes: str | None = entry_field(EntryReader.text, default=None)
    #: the YAML file the entry was read from (set by the loader).
    source: str | None = entry_field(None, json_key="zoo_file", default=None, compare=False)

    def __post_init__(self) -> None:
        _as_vocabulary(self)
        object.__setattr__(self, "backbone_id", f"{BACKBONE_SHORT_NAMES[self.backbone]}-{self.backbone_norm}")

    @property
    def has_weights(self) -> bool:
        return self.weights is not None

    def to_json(self) -> dict[str, Any]:
        """Every field, JSON-ready (enums as their values, tuples as lists, ``source`` as ``zoo_file``)."""
        return _entry_json(self)


@dataclass(frozen=True)
class BackboneEntry:
    """An ImageNet-pretrained backbone (AOGNet-v2 release)."""

    id: str = entry_field(EntryReader.ident)
    arch: Backbone = entry_field(vocabulary=Backbone)
    norm: BackboneNorm = entry_field(vocabulary=BackboneNorm)
    params_m: float | None = entry_field(_number(), default=None)
    top1_error: float | None = entry_field(_number(hi=100.0), default=None)
    top5_error: float | None = entry_field(_number(hi=100.0), default=None)
    #: required in a zoo file; null there when no weights were released.
    weights: WeightsSpec | None = entry_field(EntryReader.weights, to_json=_weights_json, default=None)
    config: str | None = entry_field(EntryReader.text, default=None)
    papers: tuple[Paper, ...] = entry_field(EntryReader.papers, default=())
    notes: str | None = entry_field(EntryReader.text, default=None)
    source: str | None = entry_field(None, json_key="zoo_file", default=None, compare=False)

    def __post_init__(self) -> None:
        _as_vocabulary(self)

    @property
    def has_weights(self) -> bool:
        return self.weights is not None

    def to_json(self) -> dict[str, Any]:
        """Every field, JSON-ready (enums as their values, tuples as lists, ``source`` as ``zoo_file``)."""
        return _entry_json(self)


# =========================================================================== parsing
E = TypeVar("E", ZooEntry, BackboneEntry)


def parse_entry(cls: type[E], raw: Any, *, file: str, section: str, index: int,
                papers: Mapping[str, Paper]) -> E:
    """One entry of a zoo file's ``section`` (already loaded from YAML), every field checked
    as its :class:`FieldRule` says, in field order; the first problem raises ZooSchemaError."""
    reader = EntryReader(file, section, index, raw, papers)
    rules = [(f.name, f.metadata[_RULE]) for f in dataclasses.fields(cls)]
    reader.only(name for name, rule in rules if rule.read is not None)
    for name, rule in rules:
        if rule.read is not None:
            reader.parsed[name] = rule.read(reader, name)
    return cls(**reader.parsed, source=file)


def parse_papers(file: str, raw: Any, into: dict[str, Paper]) -> None:
    """The ``papers`` mapping of a zoo file (key -> fields), added to ``into``."""
    if raw is None:
        return
    if not isinstance(raw, Mapping):
        raise ZooSchemaError(f"{file}: 'papers' must be a mapping of key -> paper")
    paper_fields = [f for f in dataclasses.fields(Paper) if f.name != "key"]
    for key, value in raw.items():
        if not isinstance(value, Mapping):
            raise ZooSchemaError(f"{file}: paper {key!r}: must be a mapping of fields")
        unknown = [k for k in value if k not in {f.name for f in paper_fields}]
        if unknown:
            raise ZooSchemaError(f"{file}: paper {key!r}, field {unknown[0]!r}: unknown field")
        for f in paper_fields:
            if f.default is dataclasses.MISSING and (not isinstance(value.get(f.name), str)
                                                     or not value[f.name].strip()):
                raise ZooSchemaError(f"{file}: paper {key!r}, field {f.name!r}: missing or empty")
        arxiv = value.get("arxiv")
        into[str(key)] = Paper(key=str(key), title=value["title"], authors=value["authors"],
                               venue=value["venue"], arxiv=None if arxiv is None else str(arxiv),
                               url=value.get("url"))
