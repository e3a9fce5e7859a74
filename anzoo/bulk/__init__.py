"""``anzoo predict`` as a library: many images (files, folders, globs, lists, video frames) in,
per-image files, a JSON-lines file or a COCO results file out; sharded over torchrun
processes and resumable (:func:`predict_bulk`, :mod:`anzoo.bulk.outputs`)."""
from __future__ import annotations

from .outputs import FORMATS, output_names
from .runner import BulkResult, ImageDone, predict_bulk

__all__ = ["FORMATS", "BulkResult", "ImageDone", "output_names", "predict_bulk"]
