"""The instance-segmentation service: a FastAPI app around :class:`anzoo.inference.Predictor`.

Request path of ``POST /segment``::

    auth -> options (query) -> body (streamed: size limit, read deadline, buffered-bytes pool)
      -> admission (requests in flight, expected queue wait)
      -> [thread] header (format, pixels) -> decode-memory pool -> [thread] decode, preprocess
      -> DynamicBatcher (one worker thread; batches by (model, padded shape))
           -> Predictor.detect_batch -> Predictor.select (score_thr)
      -> [thread] Predictor.rank (max_instances, pasted-area cap) -> masks pasted and encoded
         one at a time (RLE / polygons), or drawn one at a time -> JSON / PNG bytes

Decoding and encoding run in the threadpool, model work on the batcher's single worker, so
the event loop only moves bytes. Memory per request grows with what is returned: no mask is
ever pasted at full image size, and the instances are chosen before any pasting. Every error
a client can cause is an :class:`ApiError` answered as ``{"error": kind, "message": ...,
"status": code}`` with a 4xx code; a full queue, or one whose expected wait is over the
timeout, is a 503 with ``Retry-After``; a request waiting longer than the timeout gets a 504;
a body that stops arriving gets a 408; a client that goes away mid-upload is logged (499).
"""
from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from .. import __version__
from ..data.images import ACCEPTED_FORMATS, DEFAULT_MAX_PIXELS, ImageHeader, decoded_bytes, load_image, \
    read_image_header
from ..data.transforms import TEST_SCALE, padded_shape, preprocess_image
from ..errors import AnzooError, ImageError, UnsupportedImageFormatError
from ..inference import Predictor
from ..models.detection.detections import Detections
from .batching import DynamicBatcher, NotRunningError, QueueFullError
from .limits import ByteBudget
from .metrics import CONTENT_TYPE, ServiceMetrics
from .schemas import (
    ErrorResponse,
    Health,
    ModelInfo,
    ModelsResponse,
    Readiness,
    SegmentOptions,
    SegmentResponse,
    ZooInfo,
    options_openapi_parameters,
)

__all__ = ["ApiError", "ServeSettings", "SegmentService", "create_app", "API_KEY_ENV"]

log = logging.getLogger(__name__)

API_KEY_ENV = "ANZOO_API_KEY"
STATIC_DIR = Path(__file__).with_name("static")
RAW_BODY_TYPES = ("application/octet-stream",)


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


def _error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message, "status": status}, status_code=status,
                        headers=headers)


# --------------------------------------------------------------------------- the model side
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


@dataclass
class _Decoded:
    tensor: torch.Tensor
    meta: Any
    rgb: np.ndarray | None
    seconds: float


@dataclass
class SegmentService:
    """The predictors, the batcher and the metrics behind the HTTP routes."""

    predictors: dict[str, Predictor]
    settings: ServeSettings
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)

    def __post_init__(self) -> None:
        if not self.predictors:
            raise ValueError("the service needs at least one model")
        self.default_model = next(iter(self.predictors))
        #: requests past the admission check and not answered yet (touched on the event loop only)
        self.admitted = 0
        #: admitted requests without their model result yet (decoding, queued or running)
        self.inferring = 0
        self.batcher = DynamicBatcher(
            self._run_batch, max_batch=self.settings.max_batch,
            max_wait_s=self.settings.max_wait_ms / 1000.0, max_queue=self.settings.max_queue,
            startup=self._warmup, on_depth=self.metrics.queue_depth.set)
        self.buffered = ByteBudget(self.settings.max_buffered_bytes)
        self.decode_memory = ByteBudget(self.settings.decode_memory_bytes)

    # ------------------------------------------------------------ worker thread
    def _warmup(self) -> None:
        if not self.settings.warmup:
            return
        rng = np.random.default_rng(0)
        for model_id, predictor in self.predictors.items():
            long_side, short_side = predictor.scale
            image = rng.integers(0, 256, (short_side, long_side, 3), dtype=np.uint8)
            start = time.perf_counter()
            tensor, meta = preprocess_image(image, scale=predictor.scale)
            for det in predictor.detect_batch([tensor], [meta]):
                ranked, _ = predictor.rank(det, 0.0, None, self.settings.max_mask_pixels)
                predictor.detection_records(ranked)
            log.info("warmed up %s on %s in %.2f s", model_id, predictor.device,
                     time.perf_counter() - start)

    def _run_batch(self, key: tuple[str, tuple[int, int]], items: list[_Prepared]) -> list[_Inferred]:
        predictor = self.predictors[key[0]]
        start = time.perf_counter()
        try:
            detections = predictor.detect_batch([it.tensor for it in items], [it.meta for it in items])
        except torch.cuda.OutOfMemoryError:
            if len(items) == 1:
                raise
            log.warning("out of GPU memory on a batch of %d; running its images one by one", len(items))
            torch.cuda.empty_cache()
            return [self._run_batch(key, [it])[0] for it in items]
        kept = [predictor.select(det, it.score_thr) for det, it in zip(detections, items)]
        seconds = time.perf_counter() - start
        self.metrics.batch_size.observe(len(items), model=key[0])
        self.metrics.inference.observe(seconds, model=key[0])
        return [_Inferred(det, len(items), seconds) for det in kept]

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
        predictor = self.predictors[model_id]
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
        predictor = self.predictors[model_id]
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

    # ------------------------------------------------------------ info
    def models_info(self) -> list[ModelInfo]:
        from .. import zoo

        out = []
        for model_id, predictor in self.predictors.items():
            try:
                entry = zoo.get_entry(model_id)
                zoo_info = ZooInfo(detector=entry.detector, backbone=entry.backbone,
                                   backbone_norm=entry.backbone_norm, head_norm=entry.head_norm,
                                   params_m=entry.params_m, box_ap=entry.box_ap, mask_ap=entry.mask_ap)
            except AnzooError:
                zoo_info = None
            out.append(ModelInfo(id=model_id, default=model_id == self.default_model,
                                 device=str(predictor.device), fp16=predictor.fp16,
                                 scale=list(predictor.scale),
                                 num_classes=len(predictor.class_names()), zoo=zoo_info))
        return out


# --------------------------------------------------------------------------- request helpers
def _route_label(path: str) -> str:
    if path in ("/segment", "/segment/render", "/models", "/healthz", "/readyz", "/metrics", "/"):
        return path
    if path.startswith("/static/"):
        return "/static"
    if path in ("/docs", "/openapi.json", "/redoc"):
        return path
    return "other"


class _MetricsMiddleware:
    """Counts requests by route and status and observes their latency (pure ASGI)."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_watch(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route = _route_label(scope.get("path", ""))
            self.metrics.requests.inc(route=route, status=str(status))
            self.metrics.latency.observe(time.perf_counter() - start, route=route)


def _check_auth(request: Request, api_key: str) -> None:
    if not api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "this server needs an API key: send 'Authorization: Bearer <key>'",
                       {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "unauthorized", "invalid API key", {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def _single_values(items: list[tuple[str, str]], source: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in items:
        if name in values:
            raise ApiError(400, "bad_option", f"option '{name}' is given more than once in the {source}")
        values[name] = value
    return values


def _validate_options(raw: dict[str, Any]) -> SegmentOptions:
    try:
        return SegmentOptions.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, "bad_option", _describe_validation(exc.errors(), raw)) from exc


def _describe_validation(errors: list[Any], raw: Mapping[str, Any] | None = None) -> str:
    allowed = ", ".join(SegmentOptions.model_fields)
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "body")]
        name = ".".join(loc) or "request"
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown option '{name}' (options: {allowed})")
            continue
        given = f" (got {raw[name]!r})" if raw is not None and name in raw else ""
        parts.append(f"{name}: {err.get('msg', 'invalid value')}{given}")
    return "; ".join(parts) or "invalid request"


@dataclass
class _Body:
    """The bytes of a request body being read, and its share of the buffered-bytes pool."""

    settings: ServeSettings
    pool: ByteBudget
    reserved: int = 0
    received: int = 0
    data: bytes = b""  # the image, once read (handed on with take(), so that it can be freed)

    def take(self) -> bytes:
        data, self.data = self.data, b""
        return data

    def reserve(self, amount: int) -> None:
        if amount > self.reserved:
            if not self.pool.try_acquire(amount - self.reserved):
                raise ApiError(503, "busy", "the server is receiving too many uploads at once; retry shortly",
                               {"Retry-After": str(self.settings.retry_after_s), "Connection": "close"})
            self.reserved = amount

    def release(self) -> None:
        self.pool.release(self.reserved)
        self.reserved = 0

    async def chunks(self, request: Request) -> AsyncIterator[bytes]:
        """The body's chunks, within its size limit and its deadline: no pause longer than
        ``read_timeout_s``, and all of it within ``read_timeout_s`` + its size / ``read_min_rate``."""
        settings, limit = self.settings, self.settings.max_body_bytes
        loop = asyncio.get_running_loop()
        start = loop.time()
        stream = request.stream().__aiter__()
        while True:
            elapsed = loop.time() - start
            allowed = settings.read_timeout_s + self.received / settings.read_min_rate - elapsed
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, min(settings.read_timeout_s, allowed)))
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise ApiError(408, "read_timeout",
                               f"the request body did not arrive in time: {self.received} bytes in "
                               f"{loop.time() - start:.1f} s (the server waits {settings.read_timeout_s:g} s at "
                               f"most for each part and needs {settings.read_min_rate / 1000:g} kB/s on average)",
                               {"Connection": "close"}) from None
            except ClientDisconnect:
                raise ClientGone(self.received) from None
            self.received += len(chunk)
            if self.received > limit:
                raise ApiError(413, "body_too_large", f"request body is over the limit of {limit} bytes",
                               {"Connection": "close"})
            self.reserve(self.received)
            yield chunk


async def _read_image(request: Request, body: _Body) -> tuple[bytes, dict[str, str]]:
    """The image bytes and the option fields of a multipart body (or of none, for a raw body)."""
    limit = body.settings.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit():
        if int(length) > limit:
            raise ApiError(413, "body_too_large",
                           f"request body is {int(length)} bytes, over the limit of {limit} bytes",
                           {"Connection": "close"})
        body.reserve(int(length))
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        parser = MultiPartParser(request.headers, body.chunks(request), max_files=1,
                                 max_fields=len(SegmentOptions.model_fields) + 1,
                                 max_part_size=64 * 1024)
        try:
            form = await parser.parse()
        except (ApiError, ClientGone):
            raise
        except MultiPartException as exc:
            raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from exc
        except Exception as exc:  # python-multipart raises several kinds on garbage
            raise ApiError(400, "bad_multipart", f"malformed multipart body ({type(exc).__name__})") from exc
        try:
            upload = form.get("image")
            if upload is None:
                raise ApiError(400, "missing_image",
                               "the multipart body has no 'image' field: send the file as image=@photo.jpg")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "missing_image",
                               "the 'image' field must be a file upload (a part with a filename)")
            data = await upload.read()
            fields = _single_values([(k, v) for k, v in form.multi_items() if k != "image"], "form")
            for name, value in fields.items():
                if not isinstance(value, str):
                    raise ApiError(400, "bad_option", f"form field '{name}' must be a plain value, not a file")
            return data, fields
        finally:
            await form.close()
    if media_type and not media_type.startswith("image/") and media_type not in RAW_BODY_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"unsupported Content-Type '{media_type}': send the image as the multipart field "
                       "'image', or as the raw body with Content-Type image/* (e.g. image/jpeg)")
    chunks = [chunk async for chunk in body.chunks(request)]
    return b"".join(chunks), {}


# --------------------------------------------------------------------------- the app
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in {
        400: "Not an image, truncated or empty image, malformed body, unknown model.",
        401: "Missing or wrong API key (when the server has one).",
        408: "The body did not arrive in time (a pause over --read-timeout, or too slow on average).",
        413: "Body over the size limit, or image over the pixel limit.",
        415: "Body is neither multipart/form-data nor image/*, or the image is in a format that is not "
             f"accepted (accepted: {', '.join(ACCEPTED_FORMATS)}).",
        422: "An option has a bad value.",
        503: "Queue full, expected wait over the timeout, too many uploads, or models not ready "
             "(see Retry-After).",
        504: "The request waited longer than the server's timeout.",
    }.items()
}

IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary",
                                         "description": "The image file (JPEG, PNG, WebP, BMP, TIFF, GIF)."}},
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


def create_app(models: Mapping[str, Any], *, settings: ServeSettings | None = None,
               device: str | torch.device | None = None, fp16: bool = False,
               scale: tuple[int, int] = TEST_SCALE, **setting_overrides: Any) -> FastAPI:
    """The service for ready models.

    Args:
        models: model id -> a detector (``anzoo.create_model``) or a configured ``Predictor``.
            The first one is the default.
        settings: limits and behaviour; keyword overrides (e.g. ``max_batch=1``) apply on top.
        device, fp16, scale: how detectors (not Predictors) are run.

    The models are warmed up on the worker thread when the app starts (lifespan); ``/readyz``
    answers 200 from then on.
    """
    settings = replace(settings or ServeSettings(), **setting_overrides)
    if settings.api_key is None:
        settings = replace(settings, api_key=os.environ.get(API_KEY_ENV, "").strip())
    predictors = {
        model_id: m if isinstance(m, Predictor) else Predictor(m, device=device, fp16=fp16, scale=scale)
        for model_id, m in models.items()
    }
    service = SegmentService(predictors, settings)
    metrics = service.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.batcher.stop)

    app = FastAPI(
        title="anzoo",
        version=__version__,
        description="Instance segmentation with the Attentive Normalization and AOGNet Mask R-CNN "
                    "/ Cascade Mask R-CNN detectors (COCO classes).",
        lifespan=lifespan,
    )
    app.state.service = service
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["Retry-After", "Server-Timing"])
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    # ---------------------------------------------------------------- error handlers
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.errors.inc(kind=exc.kind)
        return _error_response(exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.inc(kind="bad_option")
        return _error_response(422, "bad_option", _describe_validation(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        metrics.errors.inc(kind=kind)
        return _error_response(exc.status_code, kind, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        # Nobody reads this answer; the status (nginx's 499) is for the logs and the metrics.
        log.info("%s %s: %s", request.method, request.url.path, exc)
        metrics.errors.inc(kind="client_disconnected")
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        metrics.errors.inc(kind="internal")
        return _error_response(500, "internal", "internal server error")

    # ---------------------------------------------------------------- segmentation
    async def run_segmentation(request: Request, render: bool) -> Response:
        t0 = time.perf_counter()
        _check_auth(request, settings.api_key or "")
        query = _single_values(list(request.query_params.multi_items()), "query string")
        _validate_options(query)  # fail fast, before reading the body
        if service.batcher.startup_error is not None:
            raise ApiError(503, "not_ready", f"the models failed to load: {service.batcher.startup_error}")
        if not service.batcher.ready.is_set():
            raise ApiError(503, "not_ready", "the models are still loading; retry shortly",
                           {"Retry-After": str(max(settings.retry_after_s, 5))})
        # The body is read before admission, under its own deadline and the buffered-bytes
        # pool: a slow or stalled upload never holds a place in the model's queue.
        body = _Body(settings, service.buffered)
        try:
            body.data, fields = await _read_image(request, body)
            both = sorted(set(query) & set(fields))
            if both:
                raise ApiError(400, "bad_option", f"option(s) {', '.join(both)} given both in the query and the form")
            options = _validate_options({**query, **fields})
            model_id = options.model or service.default_model
            if model_id not in service.predictors:
                raise ApiError(400, "unknown_model", f"unknown model '{model_id}': this server runs "
                               f"{', '.join(service.predictors)} (see GET /models)")
            if not body.data:
                raise ApiError(400, "empty_body", "no image data: the image is empty (0 bytes)")
            # Admission: requests between their body and their answer are bounded, which bounds memory.
            if service.admitted >= settings.max_queue + settings.max_batch:
                raise ApiError(503, "queue_full", "the server is busy (its queue is full); retry shortly",
                               {"Retry-After": str(settings.retry_after_s)})
            # Expected wait: every admitted request still without its result is ahead of this one.
            service.check_wait(settings.request_timeout_s, ahead=service.inferring)
            service.admitted += 1
            service.inferring += 1
            inferring = [True]

            def inferred() -> None:  # once this request's model result is in (or never will be)
                if inferring[0]:
                    inferring[0] = False
                    service.inferring -= 1

            try:
                return await _segment_admitted(render, t0, options, model_id, body, inferred)
            finally:
                service.admitted -= 1
                inferred()
        finally:
            body.release()

    async def _segment_admitted(render: bool, t0: float, options: SegmentOptions, model_id: str,
                                body: _Body, inferred: Callable[[], None]) -> Response:
        deadline = time.perf_counter() + settings.request_timeout_s  # the model's time starts now
        data = body.take()
        header = await asyncio.to_thread(service.inspect, data)
        keep_bytes = 6 * header.pixels if render else 0  # the photo and its drawn copy, until the PNG is made
        decode_bytes = max(decoded_bytes(header), keep_bytes)
        try:
            await service.decode_memory.acquire(decode_bytes, deadline - time.perf_counter())
        except asyncio.TimeoutError:
            raise ApiError(503, "busy", "the server is decoding too many images at once; retry shortly",
                           {"Retry-After": str(settings.retry_after_s)}) from None
        try:
            try:
                decoded = await asyncio.to_thread(service.decode, data, model_id, render)
            finally:
                del data
                body.release()  # the encoded bytes are no longer held
                service.decode_memory.release(decode_bytes - keep_bytes)
            return await _infer_and_answer(render, t0, deadline, options, model_id, decoded, inferred)
        finally:
            service.decode_memory.release(keep_bytes)

    async def _infer_and_answer(render: bool, t0: float, deadline: float, options: SegmentOptions,
                                model_id: str, decoded: _Decoded, done: Callable[[], None]) -> Response:
        key = (model_id, padded_shape(*decoded.meta.img_shape))
        service.check_wait(deadline - time.perf_counter())  # the queue as it is now, decoding took time
        try:
            job = service.batcher.submit(key, _Prepared(decoded.tensor, decoded.meta, options.score_thr))
        except QueueFullError as exc:
            raise ApiError(503, "queue_full", f"the server is busy ({exc}); retry shortly",
                           {"Retry-After": str(settings.retry_after_s)}) from exc
        except NotRunningError as exc:
            raise ApiError(503, "not_ready", str(exc), {"Retry-After": str(settings.retry_after_s)}) from exc
        try:
            inferred: _Inferred = await asyncio.wait_for(asyncio.wrap_future(job.future),
                                                         max(deadline - time.perf_counter(), 0.001))
        except asyncio.TimeoutError as exc:
            job.future.cancel()
            raise ApiError(504, "timeout", f"no result within the server's timeout of "
                           f"{settings.request_timeout_s:g} s; the server is overloaded") from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            cancelling = task.cancelling() if task is not None and hasattr(task, "cancelling") else 0
            if job.future.cancelled() and not cancelling:  # the batcher stopped: shutting down
                raise ApiError(503, "shutting_down", "the server is shutting down") from None
            raise
        finally:
            done()
        timing = {
            "_t0": t0,
            "decode_ms": decoded.seconds * 1000.0,
            "queue_ms": max(0.0, job.started_at - job.submitted_at) * 1000.0,
            "inference_ms": inferred.inference_s * 1000.0,
            "batch_size": inferred.batch_size,
        }
        if render:
            png, drawn = await asyncio.to_thread(service.render_png, model_id, options, decoded.rgb, inferred)
            total = (time.perf_counter() - t0) * 1000.0
            server_timing = (f"decode;dur={timing['decode_ms']:.1f}, queue;dur={timing['queue_ms']:.1f}, "
                             f"inference;dur={timing['inference_ms']:.1f}, total;dur={total:.1f}")
            return Response(png, media_type="image/png",
                            headers={"Server-Timing": server_timing, "X-Model": model_id,
                                     "X-Instances": str(drawn)})
        body = await asyncio.to_thread(service.encode_json, model_id, options, inferred, timing)
        return Response(body, media_type="application/json")

    segment_extra = {"parameters": options_openapi_parameters(), "requestBody": IMAGE_BODY}
    if settings.api_key:
        segment_extra["security"] = [{"bearerAuth": []}]

    @app.post("/segment", response_model=SegmentResponse, responses=ERROR_RESPONSES,
              openapi_extra=segment_extra, summary="Segment the instances in one image")
    async def segment(request: Request) -> Response:
        """The image as the multipart field ``image`` or as the raw body (``image/*``);
        options as query parameters (or multipart fields). Masks are COCO RLE or polygons."""
        return await run_segmentation(request, render=False)

    @app.post("/segment/render", response_class=Response, openapi_extra=segment_extra,
              responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                               "description": "The image with masks, boxes and labels drawn."},
                         **ERROR_RESPONSES},
              summary="Segment one image and return it with the masks drawn (PNG)")
    async def segment_render(request: Request) -> Response:
        return await run_segmentation(request, render=True)

    # ---------------------------------------------------------------- info, health, metrics
    @app.get("/models", response_model=ModelsResponse, summary="The loaded models")
    async def models_route() -> ModelsResponse:
        return ModelsResponse(models=service.models_info())

    @app.get("/healthz", response_model=Health, summary="The process is alive")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
             summary="The models are loaded and warmed up")
    async def readyz() -> JSONResponse:
        ready = service.batcher.ready.is_set() and service.batcher.running
        metrics.ready.set(1 if ready else 0)
        detail = None
        if service.batcher.startup_error is not None:
            detail = f"the models failed to load: {service.batcher.startup_error}"
        elif not ready:
            detail = "loading" if not service.batcher.ready.is_set() else "stopped"
        body = Readiness(ready=ready, models=list(service.predictors), detail=detail)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics_route() -> Response:
        metrics.queue_depth.set(service.batcher.depth)
        metrics.ready.set(1 if service.batcher.ready.is_set() and service.batcher.running else 0)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # ---------------------------------------------------------------- the web page
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    if settings.api_key:
        default_openapi = app.openapi

        def openapi_with_auth() -> dict[str, Any]:
            if app.openapi_schema is None:
                schema = default_openapi()
                schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearerAuth"] = {
                    "type": "http", "scheme": "bearer"}
                app.openapi_schema = schema
            return app.openapi_schema

        app.openapi = openapi_with_auth  # type: ignore[method-assign]
    return app
