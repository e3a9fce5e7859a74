"""The outputs of ``anzoo predict``: where each image's files go and the final files.

Each source's outputs are named after its key (its path relative to the inputs' common
folder, :mod:`anzoo.data.sources`) without the extension: ``a/x.jpg`` -> ``OUT/a/x.json``
and ``OUT/a/x.png``; when two files of a folder share a name (``x.jpg``, ``x.png``) they keep
their extension (``x.jpg.json``); video frames go to ``OUT/<video key>/<frame, 6 digits>``.

Formats:

* ``files``: ``<name>.json`` (the records, highest score first) per image, written as it is done;
* ``jsonl``: ``predictions.jsonl``, one line per image in input order:
  ``{"file": "a/x.jpg", "height": h, "width": w, "instances": [records]}`` (video frames add
  ``"frame": k``); the part files hold the lines while running (:mod:`anzoo.partfiles`);
* ``coco``: ``results.json`` (COCO results: ``image_id, category_id, bbox, score, segmentation``)
  and ``images.json`` (``images`` with ``id, file_name, height, width[, frame]``, ``categories``):
  ``COCO("images.json").loadRes("results.json")`` loads them.

``failed.txt`` lists the inputs that could not be read, each as a ``# reason`` line and its
path, so that ``anzoo predict @failed.txt`` tries them again.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from ..data.sources import Source
from ..fileio import atomic_open, atomic_write_text
from ..partfiles import PartFiles

__all__ = ["COCO_IMAGES_FILE", "COCO_RESULTS_FILE", "FAILED_FILE", "FORMATS", "JSONL_FILE", "line_fields",
           "output_names", "write_failed", "write_final"]

FORMATS = ("files", "jsonl", "coco")
JSONL_FILE = "predictions.jsonl"
COCO_RESULTS_FILE = "results.json"
COCO_IMAGES_FILE = "images.json"
FAILED_FILE = "failed.txt"


def output_names(sources: Sequence[Source]) -> list[str]:
    """Each source's output path under the output folder, without extension (module docstring)."""
    names = [f"{s.key}/{s.frame:06d}" if s.frame is not None else str(PurePosixPath(s.key).with_suffix(""))
             for s in sources]
    shared = Counter(name for s, name in zip(sources, names) if s.frame is None)
    seen: Counter[str] = Counter()
    out = []
    for source, name in zip(sources, names):
        if source.frame is None and shared[name] > 1:
            name = source.key
        n = seen[name]
        seen[name] += 1
        out.append(name if n == 0 else f"{name}-{n}")
    return out


def line_fields(fmt: str, source: Source, size: tuple[int, int], records: list[dict]) -> dict[str, Any]:
    """What an image's part-file line holds: for ``files`` (whose records are in their own
    file) only its key; for ``jsonl`` and ``coco`` its ``predictions.jsonl`` line."""
    fields: dict[str, Any] = {"file": source.key}
    if source.frame is not None:
        fields["frame"] = source.frame
    if fmt != "files":
        fields.update(height=int(size[0]), width=int(size[1]), instances=records)
    return fields


def write_final(fmt: str, parts: PartFiles, index: Mapping[int, Any], categories: Sequence[Mapping[str, Any]],
                ) -> list[Path]:
    """The final files of ``jsonl`` and ``coco`` in ``parts.out_dir`` from the part files
    (``index``: theirs), in input order; the files written (none for ``files``)."""
    if fmt == "files":
        return []
    out_dir = parts.out_dir
    lines = parts.read(sorted(index), index)
    if fmt == "jsonl":
        path = out_dir / JSONL_FILE
        with atomic_open(path) as fh:
            for _, fields in lines:
                del fields["image_id"]
                fh.write(json.dumps(fields, separators=(",", ":")).encode() + b"\n")
        return [path]
    return _write_coco(lines, out_dir, categories)


def _write_coco(lines: Iterable[tuple[int, dict[str, Any]]], out_dir: Path,
                categories: Sequence[Mapping[str, Any]]) -> list[Path]:
    """``results.json`` and ``images.json``; image ids are the sources' positions plus one, the
    same in every run over the same inputs."""
    results_path, images_path = out_dir / COCO_RESULTS_FILE, out_dir / COCO_IMAGES_FILE
    with atomic_open(results_path) as results, atomic_open(images_path) as images:
        results.write(b"[")
        images.write(b'{"images": [')
        count = 0
        for n, (index, fields) in enumerate(lines):
            image = {"id": index + 1, "file_name": fields["file"], "height": fields["height"],
                     "width": fields["width"]}
            if "frame" in fields:
                image["frame"] = fields["frame"]
            images.write((",\n" if n else "\n").encode() + json.dumps(image).encode())
            for record in fields["instances"]:
                result = {"image_id": index + 1, "category_id": record["category_id"], "bbox": record["bbox"],
                          "score": record["score"]}
                if "segmentation" in record:
                    result["segmentation"] = record["segmentation"]
                results.write((",\n" if count else "\n").encode() + json.dumps(result).encode())
                count += 1
        results.write(b"\n]\n")
        images.write(b'\n], "annotations": [], "categories": ' + json.dumps(list(categories)).encode() + b"}\n")
    return [results_path, images_path]


def write_failed(out_dir: Path, failures: Sequence[tuple[str, str]]) -> Path | None:
    """``failed.txt`` for ``(path, message)`` failures (an earlier run's is removed when none)."""
    path = out_dir / FAILED_FILE
    if not failures:
        path.unlink(missing_ok=True)
        return None
    text = "".join(f"# {' '.join(message.split())}\n{target}\n" for target, message in failures)
    atomic_write_text(path, text)
    return path
