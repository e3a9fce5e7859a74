"""What a ``POST /segment`` request brings, read within the service's limits: its API key,
its options (query parameters or multipart fields) and its image (a multipart field or the
raw body), streamed under a size limit, a read deadline and the buffered-bytes pool.

Every problem is an :class:`~anzoo.server.service.ApiError` (4xx, or 503 when the pool is
full); a client that goes away is :class:`~anzoo.server.service.ClientGone`.
"""
from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from .limits import ByteBudget
from .schemas import SegmentOptions
from .service import ApiError, ClientGone, ServeSettings

__all__ = ["UploadBody", "check_auth", "describe_validation", "read_image", "read_options", "single_values",
           "validate_options"]

RAW_BODY_TYPES = ("application/octet-stream",)


def check_auth(request: Request, api_key: str) -> None:
    """401 unless the request carries ``Authorization: Bearer <api_key>`` (no key: no check)."""
    if not api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "this server needs an API key: send 'Authorization: Bearer <key>'",
                       {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "unauthorized", "invalid API key", {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def single_values(items: list[tuple[str, str]], source: str) -> dict[str, str]:
    """``items`` as a dict; 400 when a name is given twice."""
    values: dict[str, str] = {}
    for name, value in items:
        if name in values:
            raise ApiError(400, "bad_option", f"option '{name}' is given more than once in the {source}")
        values[name] = value
    return values


def validate_options(raw: dict[str, Any]) -> SegmentOptions:
    """The options, checked (422 naming each bad one)."""
    try:
        return SegmentOptions.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, "bad_option", describe_validation(exc.errors(), raw)) from exc


def read_options(query: dict[str, str], fields: dict[str, str]) -> SegmentOptions:
    """The options given in the query string and the form together (400 when one is in both)."""
    both = sorted(set(query) & set(fields))
    if both:
        raise ApiError(400, "bad_option", f"option(s) {', '.join(both)} given both in the query and the form")
    return validate_options({**query, **fields})


def describe_validation(errors: list[Any], raw: Mapping[str, Any] | None = None) -> str:
    """pydantic's validation errors as one sentence naming the options."""
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
class UploadBody:
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


async def read_image(request: Request, body: UploadBody) -> tuple[bytes, dict[str, str]]:
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
        return await _read_multipart(request, body)
    if media_type and not media_type.startswith("image/") and media_type not in RAW_BODY_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"unsupported Content-Type '{media_type}': send the image as the multipart field "
                       "'image', or as the raw body with Content-Type image/* (e.g. image/jpeg)")
    chunks = [chunk async for chunk in body.chunks(request)]
    return b"".join(chunks), {}


async def _read_multipart(request: Request, body: UploadBody) -> tuple[bytes, dict[str, str]]:
    """The ``image`` file and the plain option fields of a multipart/form-data body."""
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
        fields = single_values([(k, v) for k, v in form.multi_items() if k != "image"], "form")
        for name, value in fields.items():
            if not isinstance(value, str):
                raise ApiError(400, "bad_option", f"form field '{name}' must be a plain value, not a file")
        return data, fields
    finally:
        await form.close()
