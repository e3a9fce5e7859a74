"""Reproducing the zoo's table: a zoo model evaluated with its released weights (``anzoo eval
ID``), or every model that has weights, with a report beside the table (``anzoo eval --all``).

Under torchrun every process runs each evaluation (they share its images); only rank 0
writes the report.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from .. import factory, hub, zoo
from ..data.coco import load_coco_annotations
from ..distributed import process_rank
from ..errors import AnzooError
from ..fileio import atomic_write_json, atomic_write_text
from ..zoo import ZooEntry
from .dataset import CocoFiles
from .report import ReportRow, markdown_report
from .runner import EvalResult, evaluate

__all__ = ["ZooReport", "default_batch_size", "evaluate_zoo", "evaluate_zoo_model", "weights_to_evaluate"]

log = logging.getLogger(__name__)


def weights_to_evaluate(model_id: str, weights: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """The checkpoint to evaluate (``weights``, or the cached release, downloaded when needed)
    and its sha256."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise AnzooError(f"weights file {path} does not exist")
        return path, hub.sha256_file(path)
    path = hub.fetch_weights(model_id)
    state = hub.cache_state(model_id)
    return path, state.sha256 if state.sha256 and state.checkpoint == path else hub.sha256_file(path)


def default_batch_size(device: str) -> int:
    """Images per forward pass when none is given: 4 on CUDA, 1 on the CPU."""
    import torch

    return 4 if device != "cpu" and torch.cuda.is_available() else 1


def evaluate_zoo_model(model_id: str, files: CocoFiles, out_dir: str | os.PathLike[str], *,
                       weights: str | os.PathLike[str] | None = None, coco: COCO | None = None,
                       batch_size: int | None = None, device: str = "auto", **options: Any) -> EvalResult:
    """Evaluate the zoo's ``model_id`` on ``files`` with its released weights or ``weights``.

    The annotations are read first (``coco``: already read), so a broken dataset fails before
    any download. ``batch_size`` None: :func:`default_batch_size`; ``options`` go to
    :func:`~anzoo.evaluation.evaluate` (``limit``, ``workers``, ``precision``, ``scale``, ``resume``, ...).
    """
    coco = coco if coco is not None else load_coco_annotations(files.ann_file)
    batch_size = batch_size if batch_size is not None else default_batch_size(device)
    path, sha256 = weights_to_evaluate(model_id, weights)
    model = factory.create_model(model_id, pretrained=path, device="cpu")
    return evaluate(model, files.ann_file, files.image_dir, out_dir, model_id=model_id, weights=path,
                    weights_sha256=sha256, coco=coco, batch_size=batch_size, device=device, **options)


@dataclass
class ZooReport:
    """The outcome of :func:`evaluate_zoo`: one row per zoo entry, and the report files (rank 0)."""

    rows: list[ReportRow]
    markdown_file: Path | None = None
    json_file: Path | None = None

    @property
    def failed(self) -> bool:
        """Whether some model that has weights could not be evaluated."""
        return any(row.error for row in self.rows)


def evaluate_zoo(files: CocoFiles, out_dir: str | os.PathLike[str], *, entries: Sequence[ZooEntry] | None = None,
                 on_error: Callable[[str, AnzooError], None] | None = None, **options: Any) -> ZooReport:
    """Evaluate every zoo model that has weights, each into ``out_dir/<id>``, and write
    ``report.md`` (the table with the measured AP beside it) and ``report.json`` there.

    A model that cannot be evaluated (weights refused, ...) gets its error in the report, and
    ``on_error(model_id, error)`` on rank 0 at once; the others still run. ``entries``: the
    zoo's by default. ``options`` go to :func:`evaluate_zoo_model`.
    """
    root = Path(out_dir)
    coco = load_coco_annotations(files.ann_file)
    rows: list[ReportRow] = []
    for entry in entries if entries is not None else zoo.list_entries():
        row = ReportRow(entry)
        rows.append(row)
        if not entry.has_weights:
            continue
        log.info("evaluating %s", entry.id)
        try:
            row.result = evaluate_zoo_model(entry.id, files, root / entry.id, coco=coco, **options)
        except AnzooError as exc:
            row.error = str(exc)
            if on_error is not None and process_rank() == 0:
                on_error(entry.id, exc)
    if process_rank() > 0:
        return ZooReport(rows)
    report = ZooReport(rows, root / "report.md", root / "report.json")
    atomic_write_text(report.markdown_file, markdown_report(rows))
    atomic_write_json(report.json_file, [
        {"id": r.entry.id, "error": r.error, "result": None if r.result is None else r.result.to_json(summaries=False)}
        for r in rows])
    return report
