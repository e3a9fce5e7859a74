"""The HTTP routes of the service; each handler gets the app's :class:`SegmentService`
through ``Depends(get_service)``.

Request path of ``POST /segment``::

    auth -> options (query) -> ready? -> body (streamed: size limit, read deadline, buffered-bytes
      pool) -> options (form) -> model -> admission -> SegmentService.segment -> JSON / PNG

The body is read before admission, under its own deadline and the buffered-bytes pool: a
slow or stalled upload never holds a place in the model's queue.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from ..data.images import ACCEPTED_FORMATS
from .request import UploadBody, check_auth, read_image, read_options, single_values, validate_options
from .schemas import ErrorResponse, Health, ModelsResponse, Readiness, SegmentResponse, options_openapi_parameters
from .service import ApiError, SegmentService

__all__ = ["ERROR_RESPONSES", "IMAGE_BODY", "SEGMENT_PATHS", "STATIC_DIR", "get_service", "router"]

STATIC_DIR = Path(__file__).with_name("static")

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

#: the routes that need the API key (when the server has one): the app marks them in its OpenAPI schema
SEGMENT_PATHS = ("/segment", "/segment/render")


async def get_service(request: Request) -> SegmentService:
    """The app's service (``async``: resolved on the event loop, not in the threadpool)."""
    return request.app.state.service


Service = Annotated[SegmentService, Depends(get_service)]

router = APIRouter()


# ---------------------------------------------------------------- segmentation
async def run_segmentation(request: Request, service: SegmentService, render: bool) -> Response:
    """One request from its first byte to its answer (see the module docstring)."""
    t0 = time.perf_counter()
    check_auth(request, service.settings.api_key or "")
    query = single_values(list(request.query_params.multi_items()), "query string")
    validate_options(query)  # fail fast, before reading the body
    service.check_ready()
    body = UploadBody(service.settings, service.buffered)
    try:
        body.data, fields = await read_image(request, body)
        options = read_options(query, fields)
        model_id = service.model_for(options)
        if not body.data:
            raise ApiError(400, "empty_body", "no image data: the image is empty (0 bytes)")
        with service.admit() as admission:
            answer = await service.segment(body, options, model_id, render, t0, admission)
        return Response(answer.content, media_type=answer.media_type, headers=answer.headers)
    finally:
        body.release()


SEGMENT_OPENAPI = {"parameters": options_openapi_parameters(), "requestBody": IMAGE_BODY}


@router.post("/segment", response_model=SegmentResponse, responses=ERROR_RESPONSES,
             openapi_extra=SEGMENT_OPENAPI, summary="Segment the instances in one image")
async def segment(request: Request, service: Service) -> Response:
    """The image as the multipart field ``image`` or as the raw body (``image/*``);
    options as query parameters (or multipart fields). Masks are COCO RLE or polygons."""
    return await run_segmentation(request, service, render=False)


@router.post("/segment/render", response_class=Response, openapi_extra=SEGMENT_OPENAPI,
             responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "The image with masks, boxes and labels drawn."},
                        **ERROR_RESPONSES},
             summary="Segment one image and return it with the masks drawn (PNG)")
async def segment_render(request: Request, service: Service) -> Response:
    return await run_segmentation(request, service, render=True)


# ---------------------------------------------------------------- info, health, metrics
@router.get("/models", response_model=ModelsResponse, summary="The loaded models")
async def models_route(service: Service) -> ModelsResponse:
    return ModelsResponse(models=service.models_info())


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
            summary="The models are loaded and warmed up")
async def readyz(service: Service) -> JSONResponse:
    body = service.readiness()
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics_route(request: Request, service: Service) -> Response:
    body, content_type = service.render_metrics(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


# ---------------------------------------------------------------- the web page
@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    """For clients that ask for /favicon.ico without reading the page's <link rel="icon">."""
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")
