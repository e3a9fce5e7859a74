"""COCO evaluation of the zoo's detectors: ``anzoo eval`` as a library.

* :func:`evaluate` runs a model over a COCO-format dataset (DataLoader workers, batched
  detection, masks pasted and encoded off the main thread, sharded across torchrun
  processes, resumable) and scores it with pycocotools' COCOeval;
* :func:`coco_evaluate` scores a results file; :func:`verdict` compares with the table;
* :func:`markdown_report` writes the table with measured columns (``anzoo eval --all``).
"""
from __future__ import annotations

from .dataset import CocoFiles, label_category_ids, resolve_coco_files
from ..distributed import DistContext, init_distributed, launched_by_torchrun, torchrun_command
from .metrics import IOU_TYPES, METRIC_NAMES, TOLERANCE, coco_evaluate, compare, is_coco_val2017, verdict
from .report import ReportRow, comparison_rows, markdown_report, verdict_line
from .runner import EvalResult, evaluate, evaluate_model
from .store import ResultStore, result_line

__all__ = [
    "IOU_TYPES",
    "METRIC_NAMES",
    "TOLERANCE",
    "CocoFiles",
    "DistContext",
    "EvalResult",
    "ReportRow",
    "ResultStore",
    "coco_evaluate",
    "compare",
    "comparison_rows",
    "evaluate",
    "evaluate_model",
    "init_distributed",
    "is_coco_val2017",
    "label_category_ids",
    "launched_by_torchrun",
    "markdown_report",
    "resolve_coco_files",
    "result_line",
    "torchrun_command",
    "verdict",
    "verdict_line",
]
