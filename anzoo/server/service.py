"""The service behind the HTTP routes: the models, the batcher, the memory pools and the
metrics, and the path of one admitted ``POST /segment`` request through them.

::

    admit (requests in flight, expected queue wait)
      -> [thread] header (format, pixels) -> decode-memory pool -> [thread] decode, preprocess
      -> DynamicBatcher (one queue; batches by (model, padded shape), each run by the least-loaded
         replica's worker thread) -> Predictor.detect_batch -> the detections scoring at least score_thr
      -> [thread] Predictor.rank (max_instances, pasted-area cap) -> masks pasted and encoded
         one at a time (RLE / polygons), or drawn one at a time -> JSON / PNG bytes

Decoding and encoding run in the threadpool, model work on the batcher's workers (one per
replica, see :mod:`~anzoo.server.replicas`), so the event loop only moves bytes. Every error a
client can cause is an :class:`ApiError`.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch

from ..data.images import DEFAULT_MAX_PIXELS, ImageHeader, decoded_bytes, load_image, read_image_header
from ..data.transforms import padded_shape, preprocess_image
from ..errors import AnzooError, ImageError, UnsupportedImageFormatError
from ..inference import Predictor
from ..models.detection.detections import Detections
from .batching import DynamicBatcher, NotRunningError, QueueFullError
from .limits import ByteBudget
from .prometheus import ServiceMetrics
from .replicas import Replica, build_replicas
from .schemas import ModelInfo, Readiness, ReplicaInfo, SegmentOptions, ZooInfo

if TYPE_CHECKING:
    from .request import UploadBody

__all__ = ["Admission", "ApiError", "ClientGone", "Segmented", "SegmentService", "ServeSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    """Limits and behaviour of the service (the ``anzoo serve`` options)."""

    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    request_timeout_s: float = 60.0
    max_body_bytes: int = 20_000_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: a request body may pause this long; it must also arrive within this long plus its size
    #: over ``read_min_rate`` (bytes/s), else 408
    read_timeout_s: float = 10.0
    read_min_rate: float = 50_000.0
    #: request bodies held in memory at once (being received, or waiting to be decoded)
    max_buffered_bytes: int = 256_000_000
    #: memory for images being decoded (estimated from their headers) and kept for drawing
    decode_memory_bytes: int = 1_000_000_000
    #: most pixels of pasted mask windows per request (the lowest-scoring instances past it are left out)
    max_mask_pixels: int = 200_000_000
    #: None: read ``$ANZOO_API_KEY``; "" disables auth.
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    warmup: bool = True
    #: Retry-After (seconds) sent with 503 answers.
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        checks = {"max_batch": self.max_batch >= 1, "max_queue": self.max_queue >= 1,
                  "max_wait_ms": self.max_wait_ms >= 0, "request_timeout_s": self.request_timeout_s > 0,
                  "max_body_bytes": self.max_body_bytes > 0, "max_pixels": self.max_pixels > 0,
                  "read_timeout_s": self.read_timeout_s > 0, "read_min_rate": self.read_min_rate > 0,
                  "max_buffered_bytes": self.max_buffered_bytes > 0,
                  "decode_memory_bytes": self.decode_memory_bytes > 0, "max_mask_pixels": self.max_mask_pixels > 0}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid server settings: {', '.join(bad)}")


class ApiError(Exception):
    """An error answered to the client (4xx, or 503/504 for load)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers or {}


class ClientGone(Exception):
    """The client closed the connection before its request was read (logged, answered 499)."""

    def __init__(self, received: int) -> None:
        super().__init__(f"the client disconnected after sending {received} bytes of its request body")
        self.received = received


@dataclass
class _Prepared:
    tensor: torch.Tensor
    meta: Any
    score_thr: float


@dataclass
class _Inferred:
    detections: Detections  # those scoring at least score_thr, masks not pasted
    batch_size: int
    inference_s: float
    predictor: Predictor  # the replica's, which pastes the masks (on its device)


@dataclass
class _Decoded:
    tensor: torch.Tensor
    meta: Any
    rgb: np.ndarray | None
    seconds: float


@dataclass
class Segmented:
    """The answer to a segmentation request: a JSON body, or a PNG with its headers."""

    content: bytes
    media_type: str
    headers: dict[str, str] | None = None


class Admission:
    """A request's place in the service, from :meth:`SegmentService.admit` to its answer."""

    def __init__(self, service: SegmentService) -> None:
        self.service = service
        self.inferring = True

    def inferred(self) -> None:
        """The request's model result is in (or never will be): it waits ahead of no one any more."""
        if self.inferring:
            self.inferring = False
            self.service.inferring -= 1

    def close(self) -> None:
        self.service.admitted -= 1
        self.inferred()


@dataclass
class SegmentService:
    """The predictors, the batcher and the metrics behind the HTTP routes.

    ``predictors`` are the first replica's; ``replicas`` (default: that one alone) hold every
    model on each device, see :func:`~anzoo.server.replicas.build_replicas`."""

    predictors: dict[str, Predictor]
    settings: ServeSettings
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    replicas: list[Replica] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.predictors:
            raise ValueError("the service needs at least one model")
        if not self.replicas:
            self.replicas = build_replicas(self.predictors)
        self.default_model = next(iter(self.predictors))
        #: requests past the admission check and not answered yet (touched on the event loop only)
        self.admitted = 0
        #: admitted requests without their model result yet (decoding, queued or running)
        self.inferring = 0
        self.batcher = DynamicBatcher(
            self._run_batch, replicas=len(self.replicas), max_batch=self.settings.max_batch,
            max_wait_s=self.settings.max_wait_ms / 1000.0, max_queue=self.settings.max_queue,
            startup=self._start_replica, on_depth=self.metrics.queue_depth.set, on_failure=self._replica_failed)
        self.buffered = ByteBudget(self.settings.max_buffered_bytes)
        self.decode_memory = ByteBudget(self.settings.decode_memory_bytes)

    # ------------------------------------------------------------ worker thread
    def _start_replica(self, index: int) -> None:
        """On the replica's worker thread: its share of the CPU threads, then the warm-up."""
        replica = self.replicas[index]
        if replica.threads is not None:
            torch.set_num_threads(replica.threads)  # this thread's OpenMP pool (and later threads')
        if replica.device.type == "cuda":
            torch.cuda.set_device(replica.device)  # this thread's current device: its kernels' default
        if not self.settings.warmup:
            return
        rng = np.random.default_rng(0)
        for model_id, predictor in replica.predictors.items():
            long_side, short_side = predictor.scale
            image = rng.integers(0, 256, (short_side, long_side, 3), dtype=np.uint8)
            start = time.perf_counter()
            tensor, meta = preprocess_image(image, scale=predictor.scale)
            for det in predictor.detect_batch([tensor], [meta]):
                ranked, _ = predictor.rank(det, 0.0, None, self.settings.max_mask_pixels)
                predictor.detection_records(ranked)
            log.info("warmed up %s on %s (replica %d) in %.2f s", model_id, predictor.device, index,
                     time.perf_counter() - start)

    def _replica_failed(self, index: int, exc: BaseException) -> None:
        self.metrics.replica_failures.labels(replica=str(index)).inc()

    def _run_batch(self, replica: int, key: tuple[str, tuple[int, int]], items: list[_Prepared]) -> list[_Inferred]:
        predictor = self.replicas[replica].predictors[key[0]]
        start = time.perf_counter()
        try:
            detections = predictor.detect_batch([it.tensor for it in items], [it.meta for it in items])
        except torch.cuda.OutOfMemoryError:
            if len(items) == 1:
                raise
            log.warning("out of GPU memory on a batch of %d; running its images one by one", len(items))
            torch.cuda.empty_cache()
            return [self._run_batch(replica, key, [it])[0] for it in items]
        kept = [det[det.scores >= it.score_thr] for det, it in zip(detections, items)]
        seconds = time.perf_counter() - start
        labels = {"model": key[0], "replica": str(replica)}
        self.metrics.batch_size.labels(**labels).observe(len(items))
        self.metrics.inference.labels(**labels).observe(seconds)
        return [_Inferred(det, len(items), seconds, predictor) for det in kept]

    # ------------------------------------------------------------ threadpool work
    def inspect(self, data: bytes) -> ImageHeader:
        """The image's header, checked against the accepted formats and the pixel limit. Raises ApiError."""
        try:
            header = read_image_header(data, name="image")
        except UnsupportedImageFormatError as exc:
            raise ApiError(415, "unsupported_image_format", str(exc)) from exc
        except ImageError as exc:
            if isinstance(exc.__cause__, PIL.Image.DecompressionBombError):  # Pillow's own hard limit
                raise ApiError(413, "too_many_pixels", str(exc)) from exc
            raise ApiError(400, "invalid_image", str(exc)) from exc
        limit = self.settings.max_pixels
        if header.pixels > limit:
            raise ApiError(413, "too_many_pixels",
                           f"image is {header.width}x{header.height} = {header.pixels} pixels, over the limit of "
                           f"{limit} pixels")
        return header

    def decode(self, data: bytes, model_id: str, keep_rgb: bool) -> _Decoded:
        """Bytes -> preprocessed tensor (and the RGB image when rendering). Raises ApiError."""
        start = time.perf_counter()
        predictor = self.predictors[model_id]
        try:
            rgb = load_image(data, max_pixels=self.settings.max_pixels, name="image")
            tensor, meta = preprocess_image(rgb, scale=predictor.scale)  # ImageError when too thin
        except UnsupportedImageFormatError as exc:
            raise ApiError(415, "unsupported_image_format", str(exc)) from exc
        except ImageError as exc:
            raise ApiError(400, "invalid_image", str(exc)) from exc
        return _Decoded(tensor, meta, rgb if keep_rgb else None, time.perf_counter() - start)

    def encode_json(self, model_id: str, options: SegmentOptions, inferred: _Inferred,
                    timing: dict[str, float]) -> bytes:
        start = time.perf_counter()
        predictor = inferred.predictor
        det = inferred.detections
        ranked, dropped = predictor.rank(det, options.score_thr, options.max_instances, self.settings.max_mask_pixels)
        if dropped:
            log.info("left out %d instances: their masks would cover more than %d pixels", dropped,
                     self.settings.max_mask_pixels)
        records = predictor.detection_records(ranked, mask_format=options.mask_format)
        instances = []
        for rec in records:
            mask = rec.pop("segmentation", None)
            rec["mask"] = mask
            instances.append(rec)
        timing["encode_ms"] = (time.perf_counter() - start) * 1000.0
        timing["total_ms"] = (time.perf_counter() - timing.pop("_t0")) * 1000.0
        body = {
            "model": model_id,
            "width": det.image_size[1],
            "height": det.image_size[0],
            "mask_format": options.mask_format,
            "instances": instances,
            "truncated": dropped > 0,
            "timing": {k: round(v, 3) if isinstance(v, float) else v for k, v in timing.items()},
        }
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()

    def render_png(self, model_id: str, options: SegmentOptions, rgb: np.ndarray,
                   inferred: _Inferred) -> tuple[bytes, int]:
        """The PNG with the instances drawn (masks pasted one at a time) and how many were drawn."""
        predictor = inferred.predictor
        ranked, _ = predictor.rank(inferred.detections, options.score_thr, options.max_instances,
                                   self.settings.max_mask_pixels)
        image = predictor.draw(rgb, ranked)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=3)
        return buffer.getvalue(), len(ranked)

    def check_wait(self, budget_s: float, ahead: int | None = None) -> None:
        """503 at once when the queue's expected wait (with ``ahead`` requests before this one;
        default: the batcher's queue) is over what is left of the request's time."""
        wait = self.batcher.expected_wait(ahead)
        if wait > budget_s:
            raise ApiError(503, "overloaded",
                           f"the server is overloaded: a result would take {wait:.1f} s (the model queue's "
                           f"expected wait), over the {self.settings.request_timeout_s:g} s a request may take; "
                           "retry later",
                           {"Retry-After": str(max(self.settings.retry_after_s, math.ceil(wait - budget_s)))})

    # ------------------------------------------------------------ one request, on the event loop
    def check_ready(self) -> None:
        """503 while the models load (or when they failed to)."""
        if self.batcher.startup_error is not None:
            raise ApiError(503, "not_ready", f"the models failed to load: {self.batcher.startup_error}")
        if not self.batcher.ready.is_set():
            raise ApiError(503, "not_ready", "the models are still loading; retry shortly",
                           {"Retry-After": str(max(self.settings.retry_after_s, 5))})

    def model_for(self, options: SegmentOptions) -> str:
        """The id of the model the request asks for (the default one when it names none)."""
        model_id = options.model or self.default_model
        if model_id not in self.predictors:
            raise ApiError(400, "unknown_model", f"unknown model '{model_id}': this server runs "
                           f"{', '.join(self.predictors)} (see GET /models)")
        return model_id

    @contextmanager
    def admit(self) -> Iterator[Admission]:
        """Admission: a place for a request whose body is read, or 503 at once. The requests
        between their body and their answer are bounded, which bounds memory; and a request
        whose expected wait (every admitted request still without its result is ahead of it)
        is over the timeout is refused."""
        running = self.settings.max_batch * len(self.replicas)  # a batch on each replica
        if self.admitted >= self.settings.max_queue + running:
            raise ApiError(503, "queue_full", "the server is busy (its queue is full); retry shortly",
                           {"Retry-After": str(self.settings.retry_after_s)})
        self.check_wait(self.settings.request_timeout_s, ahead=self.inferring)
        self.admitted += 1
        self.inferring += 1
        admission = Admission(self)
        try:
            yield admission
        finally:
            admission.close()

    async def segment(self, body: UploadBody, options: SegmentOptions, model_id: str, render: bool,
                      t0: float, admission: Admission) -> Segmented:
        """An admitted request's image (``body``, released once decoded) -> its answer, within
        the request timeout, which starts now."""
        deadline = time.perf_counter() + self.settings.request_timeout_s
        data = body.take()
        header = await asyncio.to_thread(self.inspect, data)
        keep_bytes = 6 * header.pixels if render else 0  # the photo and its drawn copy, until the PNG is made
        decode_bytes = max(decoded_bytes(header), keep_bytes)
        try:
            await self.decode_memory.acquire(decode_bytes, deadline - time.perf_counter())
        except asyncio.TimeoutError:
            raise ApiError(503, "busy", "the server is decoding too many images at once; retry shortly",
                           {"Retry-After": str(self.settings.retry_after_s)}) from None
        try:
            try:
                decoded = await asyncio.to_thread(self.decode, data, model_id, render)
            finally:
                del data
                body.release()  # the encoded bytes are no longer held
                self.decode_memory.release(decode_bytes - keep_bytes)
            inferred, timing = await self._infer(model_id, options, decoded, deadline, admission)
            timing["_t0"] = t0
            return await self._answer(model_id, options, decoded, inferred, timing, render)
        finally:
            self.decode_memory.release(keep_bytes)

    async def _infer(self, model_id: str, options: SegmentOptions, decoded: _Decoded, deadline: float,
                     admission: Admission) -> tuple[_Inferred, dict[str, Any]]:
        """The model's detections for a decoded image, through the batcher, and their timing."""
        key = (model_id, padded_shape(*decoded.meta.img_shape))
        self.check_wait(deadline - time.perf_counter())  # the queue as it is now, decoding took time
        try:
            job = self.batcher.submit(key, _Prepared(decoded.tensor, decoded.meta, options.score_thr))
        except QueueFullError as exc:
            raise ApiError(503, "queue_full", f"the server is busy ({exc}); retry shortly",
                           {"Retry-After": str(self.settings.retry_after_s)}) from exc
        except NotRunningError as exc:
            raise ApiError(503, "not_ready", str(exc), {"Retry-After": str(self.settings.retry_after_s)}) from exc
        try:
            inferred: _Inferred = await asyncio.wait_for(asyncio.wrap_future(job.future),
                                                         max(deadline - time.perf_counter(), 0.001))
        except asyncio.TimeoutError as exc:
            job.future.cancel()
            raise ApiError(504, "timeout", f"no result within the server's timeout of "
                           f"{self.settings.request_timeout_s:g} s; the server is overloaded") from exc
        except NotRunningError:  # a job being retried on another replica when the workers stopped
            raise ApiError(503, "shutting_down", "the server is shutting down") from None
        except Exception as exc:  # the model raised on this image's batch (the batcher logged it)
            raise ApiError(500, "internal", "internal server error: the model failed on this image") from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            cancelling = task.cancelling() if task is not None and hasattr(task, "cancelling") else 0
            if job.future.cancelled() and not cancelling:  # the batcher stopped: shutting down
                raise ApiError(503, "shutting_down", "the server is shutting down") from None
            raise
        finally:
            admission.inferred()
        timing = {
            "decode_ms": decoded.seconds * 1000.0,
            "queue_ms": max(0.0, job.started_at - job.submitted_at) * 1000.0,
            "inference_ms": inferred.inference_s * 1000.0,
            "batch_size": inferred.batch_size,
        }
        return inferred, timing

    async def _answer(self, model_id: str, options: SegmentOptions, decoded: _Decoded, inferred: _Inferred,
                      timing: dict[str, Any], render: bool) -> Segmented:
        """The JSON body, or the PNG with the instances drawn and its headers (in the threadpool)."""
        if render:
            png, drawn = await asyncio.to_thread(self.render_png, model_id, options, decoded.rgb, inferred)
            total = (time.perf_counter() - timing["_t0"]) * 1000.0
            server_timing = (f"decode;dur={timing['decode_ms']:.1f}, queue;dur={timing['queue_ms']:.1f}, "
                             f"inference;dur={timing['inference_ms']:.1f}, total;dur={total:.1f}")
            return Segmented(png, "image/png", {"Server-Timing": server_timing, "X-Model": model_id,
                                                "X-Instances": str(drawn)})
        body = await asyncio.to_thread(self.encode_json, model_id, options, inferred, timing)
        return Segmented(body, "application/json")

    # ------------------------------------------------------------ health
    def is_ready(self) -> bool:
        """The models are warm on a replica in rotation (the ``anzoo_ready`` gauge is set to it)."""
        ready = self.batcher.ready.is_set() and self.batcher.running
        self.metrics.ready.set(1 if ready else 0)
        return ready

    def replica_infos(self) -> list[ReplicaInfo]:
        """Each replica's device and state (``failed`` ones with the error that took them out)."""
        return [ReplicaInfo(index=state.index, device=str(replica.device), state=state.state,
                            detail=state.error, images=state.jobs_run)
                for replica, state in zip(self.replicas, list(self.batcher.replicas))]

    def readiness(self) -> Readiness:
        ready = self.is_ready()
        detail = None
        if self.batcher.startup_error is not None:
            detail = f"the models failed to load: {self.batcher.startup_error}"
        elif not ready:
            detail = "loading" if not self.batcher.ready.is_set() else "stopped"
        return Readiness(ready=ready, models=list(self.predictors), detail=detail, replicas=self.replica_infos())

    def render_metrics(self, accept: str | None = None) -> tuple[bytes, str]:
        """The Prometheus exposition (and its content type), with the queue depth, readiness and
        replica gauges as they are now."""
        self.metrics.queue_depth.set(self.batcher.depth)
        self.is_ready()
        for info in self.replica_infos():
            self.metrics.replica_up.labels(replica=str(info.index), device=info.device).set(info.state == "ready")
        return self.metrics.render(accept)

    # ------------------------------------------------------------ info
    def models_info(self) -> list[ModelInfo]:
        from .. import zoo

        out = []
        replicas = self.replica_infos()
        for model_id, predictor in self.predictors.items():
            try:
                # the fields of the entry's JSON that the API declares (ZooInfo ignores the others)
                zoo_info = ZooInfo.model_validate(zoo.get_entry(model_id).to_json())
            except AnzooError:
                zoo_info = None
            out.append(ModelInfo(id=model_id, default=model_id == self.default_model,
                                 device=str(predictor.device), precision=predictor.precision,
                                 fp16=predictor.fp16,
                                 scale=list(predictor.scale),
                                 num_classes=len(predictor.class_names()), zoo=zoo_info,
                                 replicas=replicas))
        return out
