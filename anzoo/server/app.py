"""The instance-segmentation service: a FastAPI app around :class:`anzoo.inference.Predictor`.

:func:`create_app` wires the parts together:

* :mod:`~anzoo.server.service`: the models, the batcher, the memory pools and the path of one
  request through them (:class:`SegmentService`), and the settings (:class:`ServeSettings`);
* :mod:`~anzoo.server.routes`: the HTTP routes, which get the service through ``Depends``;
* :mod:`~anzoo.server.request`: reading a request's API key, options and body within limits;
* :mod:`~anzoo.server.replicas`: the models' copies on each device (``--devices``, ``--replicas``);
* :mod:`~anzoo.server.prometheus`: the ``/metrics`` registry (``prometheus_client``).

Every error a client can cause is an :class:`ApiError` answered as ``{"error": kind,
"message": ..., "status": code}`` with a 4xx code; a full queue, or one whose expected wait is
over the timeout, is a 503 with ``Retry-After``; a request waiting longer than the timeout gets
a 504; a body that stops arriving gets a 408; a client that goes away mid-upload is logged (499).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..data.transforms import TEST_SCALE
from ..inference import Predictor
from .prometheus import ServiceMetrics
from .replicas import build_replicas
from .request import describe_validation
from .routes import SEGMENT_PATHS, STATIC_DIR, router
from .service import ApiError, ClientGone, SegmentService, ServeSettings

__all__ = ["ApiError", "ServeSettings", "SegmentService", "create_app", "API_KEY_ENV"]

log = logging.getLogger(__name__)

API_KEY_ENV = "ANZOO_API_KEY"


def create_app(models: Mapping[str, Any], *, settings: ServeSettings | None = None,
               device: str | torch.device | None = None, precision: str = "fp32",
               scale: tuple[int, int] = TEST_SCALE, devices: Sequence[str | torch.device] | None = None,
               replicas: int = 1, fp16: bool | None = None, **setting_overrides: Any) -> FastAPI:
    """The service for ready models.

    Args:
        models: model id -> a detector (``anzoo.create_model``) or a configured ``Predictor``.
            The first one is the default.
        settings: limits and behaviour; keyword overrides (e.g. ``max_batch=1``) apply on top.
        device, precision, scale: how detectors (not Predictors) are run (see ``Predictor``;
            ``fp16`` is its deprecated alias of ``precision``).
        devices, replicas: ``replicas`` copies of every model on each of ``devices`` (default:
            the models' device), fed from one queue (see :mod:`~anzoo.server.replicas`).

    The models are warmed up on the worker thread when the app starts (lifespan); ``/readyz``
    answers 200 from then on.
    """
    settings = replace(settings or ServeSettings(), **setting_overrides)
    if settings.api_key is None:
        settings = replace(settings, api_key=os.environ.get(API_KEY_ENV, "").strip())
    predictors = {
        model_id: m if isinstance(m, Predictor) else Predictor(m, device=device, precision=precision, scale=scale,
                                                             fp16=fp16)
        for model_id, m in models.items()
    }
    placed = build_replicas(predictors, [torch.device(d) for d in devices or ()], replicas)
    service = SegmentService(placed[0].predictors, settings, replicas=placed)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.batcher.stop)
            service.metrics.process_exited()

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
    app.add_middleware(_MetricsMiddleware, metrics=service.metrics)
    for exc_class, handler in _ERROR_HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if settings.api_key:
        _require_bearer_auth_in_openapi(app)
    return app


# --------------------------------------------------------------------------- error answers
def _error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message, "status": status}, status_code=status,
                        headers=headers)


def _metrics(request: Request) -> ServiceMetrics:
    return request.app.state.service.metrics


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    _metrics(request).errors.labels(kind=exc.kind).inc()
    return _error_response(exc.status, exc.kind, exc.message, exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    _metrics(request).errors.labels(kind="bad_option").inc()
    return _error_response(422, "bad_option", describe_validation(list(exc.errors())))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    _metrics(request).errors.labels(kind=kind).inc()
    return _error_response(exc.status_code, kind, str(exc.detail), getattr(exc, "headers", None))


async def _client_gone(request: Request, exc: ClientGone) -> Response:
    # Nobody reads this answer; the status (nginx's 499) is for the logs and the metrics.
    log.info("%s %s: %s", request.method, request.url.path, exc)
    _metrics(request).errors.labels(kind="client_disconnected").inc()
    return Response(status_code=499)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s", request.url.path)
    _metrics(request).errors.labels(kind="internal").inc()
    return _error_response(500, "internal", "internal server error")


_ERROR_HANDLERS: dict[Any, Any] = {
    ApiError: _api_error,
    RequestValidationError: _validation_error,
    StarletteHTTPException: _http_error,
    ClientGone: _client_gone,
    Exception: _internal_error,
}


def _require_bearer_auth_in_openapi(app: FastAPI) -> None:
    """Declare the bearer API key in the OpenAPI schema, on the segmentation routes."""
    default_openapi = app.openapi

    def openapi_with_auth() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default_openapi()
            for path in SEGMENT_PATHS:
                schema["paths"][path]["post"]["security"] = [{"bearerAuth": []}]
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearerAuth"] = {
                "type": "http", "scheme": "bearer"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi_with_auth  # type: ignore[method-assign]


# --------------------------------------------------------------------------- metrics
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
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - start)
