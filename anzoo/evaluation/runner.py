"""The evaluation pipeline: COCO images in, COCO metrics out, as fast as the device allows.

::

    DataLoader workers: decode + resize (+ pinned memory on CUDA)       [processes]
        -> main thread: Predictor.detect_batch on the device              [the GPU's queue never waits]
        -> thread pool: paste masks, RLE-encode, JSON, append + fsync     [per batch]
        -> rank 0: results.{bbox,segm}.json -> COCOeval -> metrics.json

The main thread only feeds the model. Pasting and encoding run in worker threads (on CUDA on
their own CUDA streams, ordered after the detection by an event; the masks are pasted on the
GPU and only their run boundaries are copied to the host), with a bounded number of batches in
flight. Under torchrun each process takes every ``world_size``-th batch of equal-padded-shape
images; rank 0 gathers the results from the partial files (:mod:`anzoo.evaluation.store`).
"""
from __future__ import annotations

import collections
import logging
import os
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO

from .. import __version__
from ..data.coco import (
    CocoImageDataset,
    build_inference_loader,
    load_coco_annotations,
    raise_worker_errors_plainly,
    split_by_padded_shape,
)
from ..data.results import encode_masks_rle_torch, instances_to_coco
from ..data.transforms import TEST_SCALE
from ..distributed import DistContext, init_distributed
from ..errors import AnzooError
from ..fileio import atomic_write_json
from ..inference import Predictor
from ..log import progress_bar
from ..models.detection.detections import Detections
from ..models.detection.detector import TwoStageDetector
from ..runtime import check_precision, device_kind, precision_from_fp16, resolve_device
from ..structures import Instances
from .dataset import label_category_ids
from .metrics import IOU_TYPES, METRIC_NAMES, Comparison, coco_evaluate, compare, is_coco_val2017, overall_verdict
from .store import ResultStore, result_line

__all__ = ["EvalResult", "evaluate", "evaluate_model"]

log = logging.getLogger(__name__)


#: size mismatches warned about one by one (all are listed in metrics.json)
MISMATCH_WARNINGS = 5


@dataclass
class EvalResult:
    """What one evaluation measured (``metrics.json`` is :meth:`to_json`)."""

    model_id: str | None
    metrics: dict[str, dict[str, float]]  # iou type -> the 12 COCOeval numbers (0..1, -1: none)
    expected: dict[str, float | None]  # iou type -> the table's AP (percent)
    verdicts: dict[str, str]  # iou type -> reproduced / not reproduced / partial / no reference
    verdict: str
    num_images: int  # images evaluated
    dataset_images: int  # images in the annotation file
    partial: bool
    images_this_run: int  # the others came from the partial results of an interrupted run
    wall_time_s: float  # model loading excluded, COCOeval included
    inference_time_s: float
    images_per_s: float  # images_this_run / inference_time_s (all processes together)
    device: str
    precision: str  # fp32, bf16 or fp16
    batch_size: int
    world_size: int
    scale: tuple[int, int]
    ann_file: str
    image_dir: str
    out_dir: str
    weights: str | None = None
    weights_sha256: str | None = None
    num_detections: int = 0
    # ids of this run's images whose file is not the size the annotation file gives
    size_mismatches: list[int] = field(default_factory=list)
    summaries: dict[str, str] = field(default_factory=dict)  # COCOeval's printed tables
    anzoo_version: str = __version__

    @property
    def comparisons(self) -> dict[str, Comparison]:
        return {t: Comparison(t, self.metrics[t], self.expected.get(t), self.verdicts[t]) for t in self.metrics}

    def to_json(self, summaries: bool = True) -> dict[str, Any]:
        """``metrics.json``; without COCOeval's printed ``summaries`` for the command line's output."""
        data = asdict(self)
        data["scale"] = list(self.scale)
        data["difference"] = {t: c.difference for t, c in self.comparisons.items()}
        data["metric_names"] = list(METRIC_NAMES)
        if not summaries:
            del data["summaries"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvalResult:
        names = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in data.items() if k in names}
        if "precision" not in data:  # written before `precision` replaced `fp16`
            kwargs["precision"] = "bf16" if data.get("fp16") else "fp32"
        kwargs["scale"] = tuple(kwargs["scale"])
        return cls(**kwargs)


def evaluate(
    model: TwoStageDetector,
    ann_file: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model_id: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    weights_sha256: str | None = None,
    expected: Mapping[str, float | None] | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    workers: int = 2,
    device: str | torch.device | None = "auto",
    precision: str = "fp32",
    scale: Sequence[int] = TEST_SCALE,
    resume: bool = False,
    legacy_box: bool = True,
    post_threads: int | None = None,
    mask_paste: str = "auto",
    channels_last: bool = False,
    progress: bool = True,
    coco: COCO | None = None,
    distributed: bool = True,
    fp16: bool | None = None,
) -> EvalResult:
    """Evaluate a detector on a COCO-format dataset with pycocotools (bbox and segm).

    Writes ``results.bbox.json``, ``results.segm.json`` and ``metrics.json`` into ``out_dir``
    (rank 0) and returns the result on every process. Run under torchrun, the processes
    share the images (see :mod:`anzoo.distributed`).

    Args:
        model: the detector (moved to ``device``).
        ann_file, image_dir: the dataset (checked; DatasetError names what is missing).
        out_dir: results folder (also holds the partial results of an unfinished run).
        model_id, weights, weights_sha256: recorded in metrics.json; ``model_id`` also gives
            the expected AP (the zoo's table) when the dataset is COCO val2017.
        expected: iou type -> expected AP in percent, instead of the zoo's.
        limit: the first ``limit`` images only (a partial run: no verdict).
        batch_size: images per forward pass (equal padded shapes only: results do not change).
        workers: DataLoader processes decoding and resizing images (0: in the main thread).
        device: 'auto', 'cpu', 'cuda'; under torchrun each process takes cuda:LOCAL_RANK.
        precision: 'fp32', 'bf16' or 'fp16' (CUDA), as :class:`~anzoo.inference.Predictor`.
        scale: test-time (long, short) resize limits; the table was made at (1333, 800).
        resume: continue from the partial results in ``out_dir`` instead of starting over.
        legacy_box: write boxes as mmdetection v1 did (``w = x2 - x1 + 1``); the released
            checkpoints' AP was computed that way.
        post_threads: threads pasting masks and encoding results (default: from the CPU count).
        mask_paste: 'auto' (fast on CUDA, exact OpenCV on CPU), 'legacy' or 'fast'.
        channels_last: channels-last memory format for the model (GPUs).
        progress: show a progress bar on stderr (rank 0).
        coco: ``ann_file`` already loaded (:func:`anzoo.data.coco.load_coco_annotations`).
        distributed: join torchrun's process group (False: this process alone evaluates all).
        fp16: deprecated alias of ``precision`` (True: 'fp16' on CUDA, 'bf16' elsewhere).
    """
    started = time.perf_counter()
    files = ResultStore(out_dir)
    dev = resolve_device(device)
    precision = check_precision(precision if fp16 is None else precision_from_fp16(fp16, dev), dev)
    ctx = init_distributed(dev) if distributed else DistContext(device=dev)
    try:
        if ctx.distributed:
            dev = ctx.device  # cuda:LOCAL_RANK
        elif dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return _Evaluation(
            ctx=ctx, model=model, ann_file=Path(ann_file), image_dir=Path(image_dir), store=files,
            model_id=model_id if model_id is not None else getattr(model, "model_id", None),
            weights=weights, weights_sha256=weights_sha256, expected=expected, limit=limit,
            batch_size=batch_size, workers=workers, device=dev, precision=precision, scale=(int(scale[0]), int(scale[1])),
            resume=resume, legacy_box=legacy_box, post_threads=post_threads, mask_paste=mask_paste,
            channels_last=channels_last, progress=progress, started=started, coco=coco,
        ).run()
    finally:
        ctx.close()


def evaluate_model(model: TwoStageDetector, ann_file: str | os.PathLike[str], image_dir: str | os.PathLike[str],
                   *, scale: Sequence[int] = TEST_SCALE, device: str | torch.device | None = None,
                   max_images: int | None = None, out_dir: str | os.PathLike[str] | None = None,
                   batch_size: int = 1, workers: int = 2, distributed: bool = False,
                   coco: COCO | None = None) -> dict[str, float]:
    """COCO metrics of a model (e.g. periodic evaluation while training).

    Returns ``images`` and ``<bbox|segm>_<metric>`` for the 12 metrics in lower case
    (``bbox_ap``, ``segm_ap50``, ...). ``device`` None: the model's own. The results files go
    to ``out_dir``, or to a temporary folder that is removed. ``distributed``: every process of
    the current process group calls this and evaluates its share of the images (``out_dir``
    must then be a folder they all see); each gets the metrics. ``coco``: ``ann_file`` already
    loaded.
    """
    import tempfile

    if distributed and out_dir is None:
        raise ValueError("a distributed evaluation needs an out_dir shared by the processes")
    if device is None:
        device = next(model.parameters()).device
    with tempfile.TemporaryDirectory(prefix="anzoo-eval-") if out_dir is None else nullcontext(out_dir) as out:
        result = evaluate(model, ann_file, image_dir, out, limit=max_images, scale=scale, device=device,
                          batch_size=batch_size, workers=workers, progress=False, expected={},
                          distributed=distributed, coco=coco)
    metrics: dict[str, float] = {"images": result.num_images}  # a count: an integer in metrics.jsonl
    for iou_type in IOU_TYPES:
        for name in METRIC_NAMES:
            metrics[f"{iou_type}_{name.lower()}"] = result.metrics[iou_type][name]
    return metrics


@dataclass
class _Evaluation:
    ctx: DistContext
    model: TwoStageDetector
    ann_file: Path
    image_dir: Path
    store: ResultStore
    model_id: str | None
    weights: str | os.PathLike[str] | None
    weights_sha256: str | None
    expected: Mapping[str, float | None] | None
    limit: int | None
    batch_size: int
    workers: int
    device: torch.device
    precision: str
    scale: tuple[int, int]
    resume: bool
    legacy_box: bool
    post_threads: int | None
    mask_paste: str
    channels_last: bool
    progress: bool
    started: float
    coco: COCO | None = None

    # ------------------------------------------------------------------ the stages
    def run(self) -> EvalResult:
        coco = self.coco if self.coco is not None else load_coco_annotations(self.ann_file)
        all_ids = [int(i) for i in coco.getImgIds()]
        if self.limit is not None and self.limit < 1:
            raise AnzooError(f"`limit` must be at least 1, got {self.limit}")
        target_ids = all_ids[: self.limit] if self.limit is not None else all_ids
        partial = len(target_ids) < len(all_ids)
        dataset = CocoImageDataset(coco, self.image_dir, target_ids, scale=self.scale)
        self.category_ids = label_category_ids(self.model.class_names, coco, self.model.num_classes)
        self.predictor = Predictor(self.model, device=self.device, precision=self.precision, batch_size=self.batch_size,
                                   mask_paste=self.mask_paste, channels_last=self.channels_last,
                                   scale=self.scale)

        with ExitStack() as held:  # the folder's lock, taken on rank 0 and kept to the end
            return self._run(coco, dataset, target_ids, all_ids, partial, held)

    def _run(self, coco: Any, dataset: CocoImageDataset, target_ids: list[int], all_ids: list[int],
             partial: bool, held: ExitStack) -> EvalResult:
        def plan() -> tuple[list[int], str]:
            # taken here, on rank 0 only, so that every rank hears when another run holds it
            held.enter_context(self.store.locked())
            done = self.store.prepare(self._fingerprint(), self.resume)
            return sorted(done), secrets.token_hex(4)

        done_ids, run_token = self.ctx.run_on_main(plan)
        done = set(done_ids)
        todo = [i for i, image_id in enumerate(target_ids) if image_id not in done]
        if self.ctx.is_main and done:
            log.info("%d of %d images already evaluated; %d to go", len(target_ids) - len(todo),
                     len(target_ids), len(todo))

        count, seconds, mismatched = self._infer(dataset, todo, run_token)
        stats = self.ctx.all_gather((count, seconds, mismatched))
        images_this_run = sum(c for c, _, _ in stats)
        inference_time = max(s for _, s, _ in stats)
        size_mismatches = sorted(i for _, _, ids in stats for i in ids)

        def finish() -> dict[str, Any]:
            result = self._finish(coco, target_ids, all_ids, partial, images_this_run, inference_time,
                                  size_mismatches)
            return result.to_json()

        return EvalResult.from_json(self.ctx.run_on_main(finish))

    def _infer(self, dataset: CocoImageDataset, todo: list[int], run_token: str) -> tuple[int, float, list[int]]:
        """Detect, paste and write this process's shard; (images done, seconds, ids of the images
        whose size is not the annotated one)."""
        cuda = self.device.type == "cuda"
        loader = build_inference_loader(dataset, self.batch_size, self.workers, rank=self.ctx.rank,
                                        world_size=self.ctx.world_size, indices=todo, pin_memory=cuda)
        total = loader.batch_sampler.num_images  # type: ignore[union-attr]
        if total == 0:
            return 0, 0.0, []
        threads = self.post_threads or max(1, min(8, (os.cpu_count() or 2) // (2 * self.ctx.world_size)))
        max_in_flight = 2 * threads + 1
        writer = self.store.writer(run_token, self.ctx.rank)
        done = 0
        mismatched: list[int] = []
        batches = iter(loader)  # DataLoader workers fork here, before any thread below exists
        pool = ThreadPoolExecutor(threads, thread_name_prefix="anzoo-eval-post")
        in_flight: collections.deque[Future[int]] = collections.deque()
        local = threading.local()
        start = time.perf_counter()  # the progress bar's clock starts here too: the same rate
        try:
            with progress_bar(self._label(), total, unit="images", enabled=self.progress and self.ctx.is_main) as bar:
                for batch in raise_worker_errors_plainly(batches):
                    self._note_size_mismatches(dataset, batch[0], batch[2], mismatched)
                    # the sampler batched by annotated sizes: detect each real padded shape apart
                    for image_ids, images, metas in split_by_padded_shape(*batch):
                        dets = self.predictor.detect_batch(images, metas)
                        ready = None
                        if cuda:
                            ready = torch.cuda.Event()
                            ready.record(torch.cuda.current_stream(self.device))
                        in_flight.append(pool.submit(self._post_batch, image_ids, dets, ready, writer, local))
                    while in_flight and (in_flight[0].done() or len(in_flight) > max_in_flight):
                        n = in_flight.popleft().result()
                        done += n
                        bar.update(advance=n)
                while in_flight:
                    n = in_flight.popleft().result()
                    done += n
                    bar.update(advance=n)
        finally:
            # On Ctrl-C or an error too, the batches already detected (a few at most) are pasted
            # and reach the partial file: a resumed run need not detect them again.
            pool.shutdown(wait=True)
            writer.close()
        seconds = time.perf_counter() - start
        log.info("%s%d images in %.1f s (%.2f images/s)", self._rank_prefix(), done, seconds,
                 done / seconds if seconds > 0 else 0.0)
        return done, seconds, mismatched

    def _note_size_mismatches(self, dataset: CocoImageDataset, image_ids: Sequence[int],
                              metas: Sequence[Any], mismatched: list[int]) -> None:
        """Warn (the first few) and count images whose file is not the annotated size: their
        detections are right for the file, but COCOeval scores their masks against ground truth
        of the annotated size."""
        for image_id, meta in zip(image_ids, metas):
            expected = dataset.size_mismatch(image_id, meta)
            if expected is None:
                continue
            mismatched.append(int(image_id))
            if len(mismatched) <= MISMATCH_WARNINGS:
                log.warning("%simage %s is %dx%d (h x w) but the annotation file says %dx%d: its masks are "
                            "scored against ground truth of the annotated size", self._rank_prefix(), image_id,
                            meta.orig_size[0], meta.orig_size[1], expected[0], expected[1])

    def _post_batch(self, image_ids: Sequence[int], dets: Sequence[Detections], ready: Any,
                    writer: Any, local: threading.local) -> int:
        """Worker thread: paste masks, encode and append the batch's result lines."""
        stream_ctx: Any = nullcontext()
        if ready is not None:
            stream = getattr(local, "stream", None)
            if stream is None:
                torch.cuda.set_device(self.device)  # a new thread starts on cuda:0
                stream = local.stream = torch.cuda.Stream(device=self.device)
            stream.wait_event(ready)
            stream_ctx = torch.cuda.stream(stream)
        with torch.inference_mode(), stream_ctx:
            lines = [result_line(i, self._records(i, det)) for i, det in zip(image_ids, dets)]
        writer.write(lines)
        return len(lines)

    def _records(self, image_id: int, det: Detections) -> list[dict[str, Any]]:
        det = _keep_labels(det, self.category_ids)
        masks = self.predictor.paste_masks(det)
        rles = None
        if masks is not None and masks.device.type != "cpu":
            rles = encode_masks_rle_torch(masks)  # only the run boundaries leave the GPU
            masks = None
        inst = Instances(image_size=det.image_size, boxes=det.boxes.cpu(), scores=det.scores.cpu(),
                         labels=det.labels.cpu(), masks=masks)
        cat_ids = [c if c is not None else -1 for c in self.category_ids]
        return instances_to_coco(inst, image_id, cat_ids, legacy_box=self.legacy_box, rles=rles)

    def _finish(self, coco: Any, target_ids: list[int], all_ids: list[int], partial: bool,
                images_this_run: int, inference_time: float, size_mismatches: list[int]) -> EvalResult:
        """Rank 0: results files, COCOeval, metrics.json; the partial files go."""
        if size_mismatches:
            log.warning("%d images are not the size the annotation file gives (ids %s%s): listed in "
                        "metrics.json (size_mismatches)", len(size_mismatches),
                        ", ".join(map(str, size_mismatches[:MISMATCH_WARNINGS])),
                        ", ..." if len(size_mismatches) > MISMATCH_WARNINGS else "")
        num_records = self.store.write_results(target_ids)
        log.info("wrote %d detections of %d images to %s and %s", num_records, len(target_ids),
                 self.store.bbox_file, self.store.segm_file)
        metrics, summaries = {}, {}
        for iou_type, path in zip(IOU_TYPES, (self.store.bbox_file, self.store.segm_file)):
            metrics[iou_type], summaries[iou_type] = coco_evaluate(coco, path, iou_type, target_ids)
        expected = self._expected(coco)
        comparisons = compare(metrics, expected, partial)
        result = EvalResult(
            model_id=self.model_id, metrics=metrics, expected={t: expected.get(t) for t in IOU_TYPES},
            verdicts={t: c.verdict for t, c in comparisons.items()}, verdict=overall_verdict(comparisons),
            num_images=len(target_ids), dataset_images=len(all_ids), partial=partial,
            images_this_run=images_this_run, wall_time_s=time.perf_counter() - self.started,
            inference_time_s=inference_time,
            images_per_s=images_this_run / inference_time if inference_time > 0 else 0.0,
            device=_device_name(self.device), precision=self.precision, batch_size=self.batch_size,
            world_size=self.ctx.world_size, scale=self.scale, ann_file=str(self.ann_file),
            image_dir=str(self.image_dir), out_dir=str(self.store.out_dir),
            weights=None if self.weights is None else str(self.weights), weights_sha256=self.weights_sha256,
            num_detections=num_records, size_mismatches=size_mismatches, summaries=summaries,
        )
        atomic_write_json(self.store.metrics_file, result.to_json())
        self.store.remove_partial()
        return result

    # ------------------------------------------------------------------ helpers
    def _fingerprint(self) -> dict[str, Any]:
        """What the results depend on; --resume refuses partial results made otherwise. The
        device (its kind and GPU model: other kernels give slightly other numbers), the mask
        paste and the memory format count too; batch size and process count do not (batches
        hold one padded shape)."""
        return {"model_id": self.model_id, "weights_sha256": self.weights_sha256,
                "num_classes": self.model.num_classes, "ann_file": str(self.ann_file.resolve()),
                "image_dir": str(self.image_dir.resolve()), "scale": list(self.scale),
                "legacy_box": self.legacy_box, "precision": self.precision, "device": device_kind(self.device),
                "mask_paste": self.predictor.mask_paste, "channels_last": self.channels_last}

    def _expected(self, coco: Any) -> dict[str, float | None]:
        if self.expected is not None:
            return dict(self.expected)
        if self.model_id is None:
            return {}
        from ..zoo import get_entry

        try:
            entry = get_entry(self.model_id)
        except AnzooError:
            return {}
        if not is_coco_val2017(coco):
            log.info("the table's AP of %s is for COCO val2017; this dataset is another one: no verdict",
                     self.model_id)
            return {}
        return {"bbox": entry.box_ap, "segm": entry.mask_ap}

    def _label(self) -> str:
        name = self.model_id or "model"
        return f"{name} (rank 0 of {self.ctx.world_size})" if self.ctx.distributed else name

    def _rank_prefix(self) -> str:
        return f"rank {self.ctx.rank}: " if self.ctx.distributed else ""


def _keep_labels(det: Detections, category_ids: Sequence[int | None]) -> Detections:
    """Drop detections of classes that are not categories of the dataset."""
    if all(c is not None for c in category_ids) or len(det) == 0:
        return det
    valid = torch.tensor([c is not None for c in category_ids], device=det.labels.device)
    keep = valid[det.labels]
    return det[keep]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
