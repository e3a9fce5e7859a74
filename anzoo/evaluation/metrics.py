"""COCO metrics (pycocotools' COCOeval, unchanged) and the comparison with the zoo's table.

The 12 numbers are exactly what ``COCOeval.summarize()`` prints, as fractions in 0..1
(-1 where pycocotools has nothing to average, e.g. APl without large objects). The table quotes
AP in percent with one decimal; :func:`verdict` compares ``100 * AP`` with it.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.coco import COCO_CATEGORY_IDS, coco_from_dict

__all__ = [
    "IOU_TYPES",
    "METRIC_NAMES",
    "TOLERANCE",
    "Comparison",
    "coco_evaluate",
    "compare",
    "is_coco_val2017",
    "verdict",
]

log = logging.getLogger(__name__)

#: pycocotools iouType of the box and mask results.
IOU_TYPES = ("bbox", "segm")
#: ``COCOeval.stats`` in order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
#: The metrics printed beside the table (the table itself only quotes AP).
SHOWN_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: A row is reproduced when the measured AP is within this many AP points of the table.
TOLERANCE = 0.3

# verdicts
REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
PARTIAL = "partial"
NO_REFERENCE = "no reference"

VAL2017_IMAGES = 5000


def coco_evaluate(coco_gt: COCO, results: str | os.PathLike[str] | Sequence[dict[str, Any]], iou_type: str,
                  image_ids: Sequence[int] | None = None) -> tuple[dict[str, float], str]:
    """Run COCOeval on a results file (or list); return ``{metric: value}`` and the summary text.

    ``image_ids``: evaluate on these images only (default: every image of ``coco_gt``), as a
    partial run must, so that the ground truth of images never seen does not count as missed.
    A results list is deep-copied first (pycocotools' ``loadRes`` writes into the records).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}")
    if isinstance(results, (str, os.PathLike)):
        with open(results, encoding="utf-8") as fh:
            records = json.load(fh)
    else:
        records = json.loads(json.dumps(list(results)))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if records:
            coco_dt = coco_gt.loadRes(records)
        else:
            # loadRes cannot take an empty list: give COCOeval an empty result set itself.
            coco_dt = coco_from_dict({"images": list(coco_gt.dataset["images"]),
                                      "categories": list(coco_gt.dataset["categories"]), "annotations": []})
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = list(image_ids) if image_ids is not None else sorted(coco_gt.getImgIds())
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = np.asarray(evaluator.stats, dtype=np.float64)
    text = out.getvalue()
    summary = text[text.find(" Average Precision"):] if " Average Precision" in text else text
    log.debug("COCOeval %s:\n%s", iou_type, summary)
    return {name: float(v) for name, v in zip(METRIC_NAMES, stats)}, summary


def is_coco_val2017(coco: COCO) -> bool:
    """Whether a dataset looks like COCO val2017 (the set the table's numbers are for)."""
    return len(coco.imgs) == VAL2017_IMAGES and sorted(coco.getCatIds()) == list(COCO_CATEGORY_IDS)


def verdict(measured_ap: float | None, expected_ap: float | None, partial: bool = False,
            tolerance: float = TOLERANCE) -> str:
    """'reproduced' when ``100 * measured_ap`` is within ``tolerance`` AP points of
    ``expected_ap`` (percent), 'not reproduced' otherwise; 'partial' for a run over a part of
    the images (no verdict), 'no reference' when there is no expected value."""
    if partial:
        return PARTIAL
    if expected_ap is None:
        return NO_REFERENCE
    if measured_ap is None or measured_ap < 0:
        return NOT_REPRODUCED
    # rounding slack: 39.5 vs 39.2 is within 0.3 although 100 * 0.395 - 39.2 is 0.30000000000000426
    return REPRODUCED if abs(100.0 * measured_ap - expected_ap) <= tolerance + 1e-9 else NOT_REPRODUCED


@dataclass(frozen=True)
class Comparison:
    """One iou type's measured AP beside the table's."""

    iou_type: str
    measured: dict[str, float]
    expected_ap: float | None
    verdict: str

    @property
    def difference(self) -> float | None:
        ap = self.measured.get("AP")
        if self.expected_ap is None or ap is None or ap < 0:
            return None
        return 100.0 * ap - self.expected_ap


def compare(metrics: Mapping[str, Mapping[str, float]], expected: Mapping[str, float | None],
            partial: bool, tolerance: float = TOLERANCE) -> dict[str, Comparison]:
    """Comparisons for each iou type in ``metrics``; ``expected`` maps iou type -> AP (percent)."""
    out = {}
    for iou_type, values in metrics.items():
        exp = expected.get(iou_type)
        out[iou_type] = Comparison(iou_type, dict(values), exp,
                                   verdict(values.get("AP"), exp, partial, tolerance))
    return out


def overall_verdict(comparisons: Mapping[str, Comparison]) -> str:
    """Reproduced only if every iou type is; partial / no reference pass through."""
    verdicts = {c.verdict for c in comparisons.values()}
    for v in (PARTIAL, NOT_REPRODUCED, NO_REFERENCE):
        if v in verdicts:
            return v
    return REPRODUCED if verdicts else NO_REFERENCE
