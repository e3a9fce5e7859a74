"""Human-readable forms of evaluation results: the comparison rows and the ``--all`` report."""
from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from ..schema import Backbone, BackboneNorm, Detector, HeadNorm, VocabularyEnum
from ..zoo import ZooEntry
from .metrics import PARTIAL, SHOWN_METRICS, TOLERANCE
from .runner import EvalResult

__all__ = ["ReportRow", "comparison_rows", "markdown_report", "percent", "signed"]


def _label(vocabulary: type[VocabularyEnum], value: str) -> str:
    """The display label of a zoo value (the value itself when the vocabulary lacks it)."""
    try:
        return vocabulary(value).label
    except ValueError:
        return value


def percent(value: float | None) -> str:
    """A COCOeval fraction as AP points with one decimal ('-' when pycocotools has none)."""
    return "-" if value is None or value < 0 else f"{100.0 * value:.1f}"


def signed(diff: float | None) -> str:
    return "-" if diff is None else f"{diff:+.1f}"


def comparison_rows(result: EvalResult) -> list[tuple[str, ...]]:
    """Rows (metric, box measured, box table, box diff, mask measured, mask table, mask diff)
    for AP, AP50, AP75, APs, APm, APl; the table only quotes AP."""
    comps = result.comparisons
    rows = []
    for name in SHOWN_METRICS:
        row = [name]
        for iou_type in ("bbox", "segm"):
            comp = comps.get(iou_type)
            measured = None if comp is None else comp.measured.get(name)
            if name == "AP" and comp is not None:
                exp = comp.expected_ap
                row += [percent(measured), "-" if exp is None else f"{exp:.1f}", signed(comp.difference)]
            else:
                row += [percent(measured), "", ""]
        rows.append(tuple(row))
    return rows


def verdict_line(result: EvalResult) -> str:
    """One sentence: the verdict of the box and mask AP."""
    if result.partial:
        return (f"partial run ({result.num_images} of {result.dataset_images} images): "
                f"no verdict")
    parts = []
    for iou_type, label in (("bbox", "box AP"), ("segm", "mask AP")):
        comp = result.comparisons.get(iou_type)
        if comp is None:
            continue
        parts.append(f"{label} {comp.verdict}")
    return f"{'; '.join(parts)} (tolerance ±{TOLERANCE} AP)"


@dataclass
class ReportRow:
    entry: ZooEntry
    result: EvalResult | None = None
    error: str | None = None


def _measured(row: ReportRow, iou_type: str) -> tuple[str, str]:
    if row.result is None:
        return "-", "-"
    comp = row.result.comparisons[iou_type]
    return percent(comp.measured.get("AP")), signed(comp.difference)


def markdown_report(rows: Sequence[ReportRow], title: str = "anzoo eval --all: COCO val2017") -> str:
    """The authors' table with the measured AP beside the expected, one section per detector."""
    lines = [f"# {title}", "",
             (f"Measured with anzoo on {datetime.date.today().isoformat()}; AP in points; Δ = measured − "
              f"table; reproduced when |Δ| ≤ {TOLERANCE}."), ""]
    for detector in Detector:
        section = [r for r in rows if r.entry.detector == detector]
        if not section:
            continue
        lines += [f"## {detector.label}", "",
                  ("| Architecture | Backbone | Head | #Params | box AP | box AP (measured) | Δ | mask AP | "
                   "mask AP (measured) | Δ | verdict | id |"),
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for row in section:
            e = row.entry
            box, box_diff = _measured(row, "bbox")
            mask, mask_diff = _measured(row, "segm")
            if row.error:
                verdict = f"error: {row.error}"
            elif row.result is None:
                verdict = "no weights" if not e.has_weights else "not run"
            elif row.result.partial:
                verdict = f"{PARTIAL} ({row.result.num_images} images)"
            else:
                verdict = row.result.verdict
            params = "-" if e.params_m is None else f"{e.params_m:.2f}M"
            table_box = "-" if e.box_ap is None else f"{e.box_ap:.1f}"
            table_mask = "-" if e.mask_ap is None else f"{e.mask_ap:.1f}"
            cells = [_label(Backbone, e.backbone), _label(BackboneNorm, e.backbone_norm),
                     _label(HeadNorm, e.head_norm), params, table_box, box, box_diff, table_mask, mask,
                     mask_diff, verdict.replace("|", "/"), f"`{e.id}`"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    done = [r.result for r in rows if r.result is not None]
    if done:
        first = done[0]
        lines += [(f"Device: {first.device}; batch size {first.batch_size}; precision {first.precision}; "
                   f"{first.world_size} process(es); scale {first.scale[0]}x{first.scale[1]}."), ""]
    return "\n".join(lines)
