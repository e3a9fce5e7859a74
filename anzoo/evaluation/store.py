"""Results on disk: per-image partial results while running, the COCO results files at the end.

While an evaluation runs, each process appends one line per finished image to its own part
file (:mod:`anzoo.partfiles`: per-rank files, torn lines ignored, resumable)::

    {"image_id":139,"records":[{"image_id":139,"category_id":1,"bbox":[...],"score":0.99,"segmentation":{...}}, ...]}

At the end rank 0 streams the lines, in the dataset's image order, into ``results.segm.json``
(records with ``segmentation`` and ``bbox``) and ``results.bbox.json`` (without
``segmentation``), each written to a temporary file and renamed into place.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..fileio import atomic_open
from ..partfiles import PartFiles, PartialWriter, part_line

__all__ = [
    "BBOX_FILE",
    "METRICS_FILE",
    "SEGM_FILE",
    "PartialWriter",
    "ResultStore",
    "result_line",
]

BBOX_FILE = "results.bbox.json"
SEGM_FILE = "results.segm.json"
METRICS_FILE = "metrics.json"
LOCK_FILE = ".anzoo-eval.lock"


def result_line(image_id: int, records: Sequence[Mapping[str, Any]]) -> bytes:
    """One partial-results line (compact JSON, newline-terminated)."""
    return part_line(image_id, {"records": list(records)})


class ResultStore(PartFiles):
    """The files of one evaluation under ``out_dir`` (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        super().__init__(out_dir, lock_name=LOCK_FILE, what="evaluation")

    @property
    def bbox_file(self) -> Path:
        return self.out_dir / BBOX_FILE

    @property
    def segm_file(self) -> Path:
        return self.out_dir / SEGM_FILE

    @property
    def metrics_file(self) -> Path:
        return self.out_dir / METRICS_FILE

    def write_results(self, image_ids: Sequence[int]) -> int:
        """Write the two results files from the partial lines of ``image_ids`` (in that order);
        return the number of records. AnzooError if an image has no result."""
        lines = self.read(image_ids)  # checks first that every image has its line
        count = 0
        with atomic_open(self.segm_file) as segm, atomic_open(self.bbox_file) as bbox:
            segm.write(b"[")
            bbox.write(b"[")
            for _, fields in lines:
                for record in fields["records"]:
                    sep = b",\n" if count else b"\n"
                    segm.write(sep + json.dumps(record).encode())
                    box_only = {k: v for k, v in record.items() if k != "segmentation"}
                    bbox.write(sep + json.dumps(box_only).encode())
                    count += 1
            segm.write(b"\n]\n")
            bbox.write(b"\n]\n")
        return count
