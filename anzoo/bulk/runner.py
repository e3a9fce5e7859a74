"""Prediction over many images: sharded over torchrun processes, resumable, written as it goes.

::

    rank 0: the sources (files, folders, globs, lists, video frames) -> every rank
    each rank: its windows of consecutive sources (window w -> rank w % world_size)
        DataLoader workers: decode + preprocess a window                  [processes]
        -> main thread: Predictor.detect_batch per padded shape           [the device]
        -> thread pool: rank, RLE-encode, draw, write files + part lines  [per batch]
    rank 0: predictions.jsonl | results.json + images.json, failed.txt; the part files go

The :class:`~anzoo.inference.Predictor` is the one inference path; batches hold images of
one padded shape only, so results do not depend on the batch size, the number of processes
or which process took an image. Each process appends its images' lines to its own part file
(:mod:`anzoo.partfiles`), fsynced per batch: a crash loses the batches in flight at most, and
``resume`` skips the images that have a complete line. The final files are written from the
part files in input order, so a resumed run ends with the same files as an uninterrupted one.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.defaults import DEFAULT_MAX_PIXELS
from ..data.sources import LoadedSource, Source, SourceWindows, build_source_loader
from ..distributed import DistContext
from ..fileio import atomic_write_bytes
from ..inference import Predictor
from ..log import progress_bar
from ..models.detection.detections import Detections
from ..partfiles import PartFiles, part_line
from ..runtime import device_kind
from .outputs import FORMATS, line_fields, output_names, write_failed, write_final

__all__ = ["BulkResult", "ImageDone", "predict_bulk", "shard_windows"]

log = logging.getLogger(__name__)

LOCK_FILE = ".anzoo-predict.lock"


@dataclass
class ImageDone:
    """One image predicted (what a caller's ``on_image`` gets)."""

    source: Source
    records: list[dict]
    seconds: float  # model time per image (batch time / batch size)
    json_path: Path | None
    png_path: Path | None


@dataclass
class BulkResult:
    """What a :func:`predict_bulk` run did (every process gets rank 0's)."""

    images: int  # sources with results, this run and earlier ones (resumed)
    images_this_run: int
    failed: list[tuple[str, str]]  # (path, message), the arguments' failures included
    seconds: float  # inference time (the slowest process)
    images_per_s: float  # images_this_run / seconds
    outputs: list[str] = field(default_factory=list)  # final files (jsonl, coco, failed.txt)
    world_size: int = 1


def predict_bulk(predictor: Predictor, sources: Sequence[Source], out_dir: str | os.PathLike[str], *,
                 fmt: str = "files", render: bool = True, score_thr: float = 0.3, workers: int = 2,
                 resume: bool = False, ctx: DistContext | None = None,
                 input_failures: Sequence[tuple[str, str]] = (), fingerprint: Mapping[str, Any] | None = None,
                 window: int | None = None, post_threads: int | None = None, progress: bool = True,
                 on_image: Callable[[ImageDone], None] | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> BulkResult:
    """Predict ``sources`` (every process passes the same list) and write ``fmt``'s outputs to
    ``out_dir`` (:mod:`anzoo.bulk.outputs`); with ``render``, a PNG of the masks per image.

    Args:
        ctx: the processes sharing the work (:func:`anzoo.distributed.init_distributed`).
        workers: DataLoader processes decoding images (0: in this one).
        resume: skip the images an interrupted run in ``out_dir`` finished.
        input_failures: ``(argument, message)`` of inputs that named nothing readable, for failed.txt.
        fingerprint: what else the results depend on (model id, weights): resuming with others is refused.
        window: consecutive sources read by one worker and batched together (default 16, at
            least 4 batches).
        on_image: called in this process for each of its images when done.
        max_pixels: an image of more pixels is that image's failure, found from its header
            before it is decoded.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
    run = _BulkRun(predictor=predictor, sources=list(sources), parts=PartFiles(out_dir, lock_name=LOCK_FILE,
                                                                               what="prediction"),
                   fmt=fmt, render=render, score_thr=score_thr, workers=workers, resume=resume,
                   ctx=ctx or DistContext(device=predictor.device), input_failures=list(input_failures),
                   extra=dict(fingerprint or {}), window=window or max(16, 4 * predictor.batch_size),
                   post_threads=post_threads, progress=progress, on_image=on_image, max_pixels=max_pixels)
    try:
        return run.run()
    finally:
        run.held.close()


def shard_windows(todo: Sequence[int], window: int, rank: int, world_size: int) -> list[list[int]]:
    """Process ``rank``'s share of ``todo``: windows of ``window`` consecutive items, window
    ``w`` to process ``w % world_size``; with fewer items than a window for every process, the
    windows are made smaller so that all take part."""
    size = max(1, min(window, -(-len(todo) // world_size)))
    windows = [list(todo[j:j + size]) for j in range(0, len(todo), size)]
    return windows[rank::world_size]


@dataclass
class _BulkRun:
    predictor: Predictor
    sources: list[Source]
    parts: PartFiles
    fmt: str
    render: bool
    score_thr: float
    workers: int
    resume: bool
    ctx: DistContext
    input_failures: list[tuple[str, str]]
    extra: dict[str, Any]
    window: int
    post_threads: int | None
    progress: bool
    on_image: Callable[[ImageDone], None] | None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    held: ExitStack = field(default_factory=ExitStack)  # the folder's lock, on rank 0

    def run(self) -> BulkResult:
        def plan() -> tuple[list[int], str]:
            # taken here, on rank 0 only, so that every rank hears when another run holds it
            self.held.enter_context(self.parts.locked())
            done = self.parts.prepare(self._fingerprint(), self.resume)
            return sorted(done), secrets.token_hex(4)

        self.names = output_names(self.sources)
        done_ids, run_token = self.ctx.run_on_main(plan)
        done = set(done_ids)
        todo = [i for i in range(len(self.sources)) if i not in done]
        if self.ctx.is_main and done:
            log.info("%d of %d images already done; %d to go", len(self.sources) - len(todo), len(self.sources),
                     len(todo))
        windows = shard_windows(todo, self.window, self.ctx.rank, self.ctx.world_size)
        count, seconds, failed = self._infer(windows, run_token)
        stats = self.ctx.all_gather((count, seconds, failed))
        images_this_run = sum(c for c, _, _ in stats)
        seconds = max(s for _, s, _ in stats)
        failed_ids = sorted(i for _, _, ids in stats for i in ids)

        def finish() -> BulkResult:
            return self._finish(images_this_run, seconds, failed_ids)

        return self.ctx.run_on_main(finish)

    def _infer(self, windows: list[list[int]], run_token: str) -> tuple[int, float, list[tuple[int, str]]]:
        """Predict and write this process's windows: (images done, seconds, failures)."""
        total = sum(len(w) for w in windows)
        dataset = SourceWindows(self.sources, windows, scale=self.predictor.scale, keep_images=self.render,
                                max_pixels=self.max_pixels)
        loader = build_source_loader(dataset, self.workers)
        threads = self.post_threads or max(1, min(4, (os.cpu_count() or 2) // (2 * self.ctx.world_size)))
        writer = self.parts.writer(run_token, self.ctx.rank)
        failed: list[tuple[int, str]] = []
        done = 0
        start = time.perf_counter()
        batches = iter(loader)  # DataLoader workers fork here, before any thread below exists
        pool = ThreadPoolExecutor(threads, thread_name_prefix="anzoo-predict-post")
        in_flight: collections.deque[Future[list[ImageDone]]] = collections.deque()
        label = f"{self.extra.get('model_id') or 'predict'}" + (
            f" (rank 0 of {self.ctx.world_size})" if self.ctx.distributed else "")
        try:
            with progress_bar(label, total, unit="images", enabled=self.progress and self.ctx.is_main) as bar:
                for loaded in batches:
                    for item in loaded:
                        if item.error is not None:
                            failed.append((item.index, item.error))
                            bar.update(advance=1)
                    for items, dets, seconds in self._detect(loaded):
                        in_flight.append(pool.submit(self._post_batch, items, dets, seconds, writer))
                    while in_flight and (in_flight[0].done() or len(in_flight) > 2 * threads + 1):
                        done += self._report(in_flight.popleft().result(), bar)
                while in_flight:
                    done += self._report(in_flight.popleft().result(), bar)
        finally:
            # on an error or Ctrl-C the batches already detected still reach the part file
            pool.shutdown(wait=True)
            writer.close()
            dataset.close()
        seconds = time.perf_counter() - start
        prefix = f"rank {self.ctx.rank}: " if self.ctx.distributed else ""
        log.info("%s%d images in %.1f s (%.2f images/s)", prefix, done, seconds, done / seconds if seconds else 0.0)
        return done, seconds, failed

    def _detect(self, loaded: list[LoadedSource]) -> Iterator[tuple[list[LoadedSource], list[Detections], float]]:
        """A window's images batched by padded shape and detected, one batch at a time (each is
        handed on before the next is detected): (items, detections, seconds per image)."""
        ok = [item for item in loaded if item.error is None]
        for group in self.predictor.batches([item.meta for item in ok]):  # type: ignore[misc]
            items = [ok[g] for g in group]
            t0 = time.perf_counter()
            dets = self.predictor.detect_batch([item.tensor for item in items],  # type: ignore[misc]
                                               [item.meta for item in items])  # type: ignore[misc]
            yield items, dets, (time.perf_counter() - t0) / len(items)

    def _post_batch(self, items: list[LoadedSource], dets: list[Detections], seconds: float,
                    writer: Any) -> list[ImageDone]:
        """Worker thread: rank, encode, draw and write a batch's images, then their part lines."""
        if self.predictor.device.type == "cuda":
            torch.cuda.set_device(self.predictor.device)  # a new thread starts on cuda:0
        lines, done = [], []
        with torch.inference_mode():
            for item, det in zip(items, dets):
                source, name = self.sources[item.index], self.names[item.index]
                ranked, _ = self.predictor.rank(det, self.score_thr)
                records = self.predictor.detection_records(ranked)
                json_path = png_path = None
                if self.fmt == "files":
                    json_path = self.parts.out_dir / f"{name}.json"
                    atomic_write_bytes(json_path, json.dumps(records).encode())
                if self.render:
                    png_path = self.parts.out_dir / f"{name}.png"
                    buf = io.BytesIO()
                    self.predictor.draw(item.image, ranked).save(buf, format="PNG")  # type: ignore[arg-type]
                    atomic_write_bytes(png_path, buf.getvalue())
                lines.append(part_line(item.index, line_fields(self.fmt, source, det.image_size, records)))
                done.append(ImageDone(source, records, seconds, json_path, png_path))
        writer.write(lines)
        return done

    def _report(self, done: list[ImageDone], bar: Any) -> int:
        bar.update(advance=len(done))
        if self.on_image is not None:
            for image in done:
                self.on_image(image)
        return len(done)

    def _finish(self, images_this_run: int, seconds: float, failed_ids: list[int]) -> BulkResult:
        """Rank 0: the final files from the part files, failed.txt; the part files go."""
        index = self.parts.index()
        outputs = write_final(self.fmt, self.parts, index, self._categories())
        images = len(index)
        failures = self.input_failures + [(self.sources[i].path, message) for i, message in failed_ids]
        failed_file = write_failed(self.parts.out_dir, failures)
        if failed_file is not None:
            outputs.append(failed_file)
        self.parts.remove_partial()
        return BulkResult(images=images, images_this_run=images_this_run, failed=failures, seconds=seconds,
                          images_per_s=images_this_run / seconds if seconds > 0 else 0.0,
                          outputs=[str(p) for p in outputs], world_size=self.ctx.world_size)

    def _categories(self) -> list[dict[str, Any]]:
        return [{"id": cid, "name": name}
                for cid, name in zip(self.predictor.category_ids(), self.predictor.class_names())]

    def _fingerprint(self) -> dict[str, Any]:
        """What the outputs depend on; resuming partial results made otherwise is refused.
        Batch size, workers and process count do not count (batches hold one padded shape)."""
        digest = hashlib.sha256()
        for source in self.sources:
            digest.update(f"{source.key}\0{source.path}\0{source.frame}\n".encode())
        p = self.predictor
        return {**self.extra, "inputs": digest.hexdigest(), "format": self.fmt, "render": self.render,
                "score_thr": self.score_thr, "scale": list(p.scale), "precision": p.precision,
                "device": device_kind(p.device), "mask_paste": p.mask_paste, "channels_last": p.channels_last}
