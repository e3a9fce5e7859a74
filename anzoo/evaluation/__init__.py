"""COCO evaluation of the zoo's detectors: ``anzoo eval`` as a library.

* :func:`evaluate` runs a model over a COCO-format dataset (DataLoader workers, batched
  detection, masks pasted and encoded off the main thread, sharded across torchrun
  processes, resumable) and scores it with pycocotools' COCOeval;
* :func:`coco_evaluate` scores a results file; :func:`verdict` compares with the table;
* :func:`evaluate_zoo_model` evaluates a zoo model with its released weights, and
  :func:`evaluate_zoo` every one of them, writing :func:`markdown_report` (``anzoo eval --all``).

Running under torchrun (process groups, ranks) is :mod:`anzoo.distributed`.
"""
from __future__ import annotations

from .dataset import CocoFiles, label_category_ids, resolve_coco_files
from .metrics import IOU_TYPES, METRIC_NAMES, TOLERANCE, coco_evaluate, compare, is_coco_val2017, verdict
from .report import ReportRow, comparison_rows, markdown_report, verdict_line
from .reproduce import ZooReport, default_batch_size, evaluate_zoo, evaluate_zoo_model, weights_to_evaluate
from .runner import EvalResult, evaluate, evaluate_model
from .store import ResultStore, result_line

__all__ = [
    "IOU_TYPES",
    "METRIC_NAMES",
    "TOLERANCE",
    "CocoFiles",
    "EvalResult",
    "ReportRow",
    "ResultStore",
    "ZooReport",
    "coco_evaluate",
    "compare",
    "comparison_rows",
    "default_batch_size",
    "evaluate",
    "evaluate_model",
    "evaluate_zoo",
    "evaluate_zoo_model",
    "is_coco_val2017",
    "label_category_ids",
    "markdown_report",
    "resolve_coco_files",
    "result_line",
    "verdict",
    "verdict_line",
    "weights_to_evaluate",
]
