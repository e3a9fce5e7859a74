"""``anzoo serve``: the HTTP service."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..data.defaults import DEFAULT_MAX_PIXELS, TEST_SCALE
from ..zoo import DEFAULT_MODEL
from . import base
from .base import (
    DeviceOpt,
    Fp16Opt,
    PrecisionOpt,
    TestScaleOpt,
    WeightsOpt,
    long_short,
    precision_flag,
    command,
    log,
)

#: the serve limits, in the units people type (ServeSettings holds them in bytes and seconds)
MaxBatchOpt = Annotated[int, typer.Option(
    "--max-batch", min=1, help="Most images per forward pass (1: no batching).")]
MaxWaitOpt = Annotated[float, typer.Option(
    "--max-wait-ms", min=0.0, help="How long an image may wait for batch mates.")]
MaxQueueOpt = Annotated[int, typer.Option(
    "--max-queue", min=1, help="Images that may wait for the model; beyond: 503 + Retry-After.")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=0.1, help="Seconds a request may take once its body is received: 504 past it, and 503 at "
                               "once when the queue's expected wait is longer.")]
MaxBodyOpt = Annotated[float, typer.Option(
    "--max-body-mb", min=0.001, help="Largest request body, in MB (10^6 bytes).")]
MaxPixelsOpt = Annotated[int, typer.Option(
    "--max-pixels", min=1, help="Largest image, in pixels (checked before decoding; the model sees at most "
                                "1333x800 of it).")]
ReadTimeoutOpt = Annotated[float, typer.Option(
    "--read-timeout", min=0.1, help="Seconds a request body may pause; it must also arrive within this plus "
                                    "its size at --read-min-rate. Else 408.")]
ReadMinRateOpt = Annotated[float, typer.Option(
    "--read-min-rate", min=0.001, help="Slowest average upload accepted, in kB/s.")]
MaxBufferedOpt = Annotated[float, typer.Option(
    "--max-buffered-mb", min=1.0, help="Request bodies held in memory at once (received, not yet decoded), "
                                       "MB; beyond: 503.")]
DecodeMemoryOpt = Annotated[float, typer.Option(
    "--decode-memory-mb", min=1.0, help="Memory for images being decoded at once (estimated from their "
                                        "headers), MB; other decodes wait.")]
MaxMaskOpt = Annotated[float, typer.Option(
    "--max-mask-mpx", min=0.001, help="Most mask pixels pasted per request, in Mpx (boxes clipped to the "
                                      "image); lower-scoring instances past it are left out.")]
DevicesOpt = Annotated[Optional[str], typer.Option(
    "--devices", help="One replica of every model per device, fed from one queue: cuda:0,cuda:1,... or all "
                      "(every GPU). Instead of --device.", show_default=False)]
ReplicasOpt = Annotated[int, typer.Option(
    "--replicas", min=1, help="Replicas per device; on the CPU they share out the torch threads (for "
                              "throughput on many cores).")]
CorsOpt = Annotated[Optional[list[str]], typer.Option(
    "--cors-origin", help="Allow browser pages from this origin (repeatable; '*' for any). "
                          "Off by default.", show_default=False)]


@command("serve")
def serve(
    models: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", help="Model id to serve; repeat for several (the first is the default). "
                              f"Default: {DEFAULT_MODEL}.", show_default=False)] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    devices: DevicesOpt = None,
    replicas: ReplicasOpt = 1,
    host: Annotated[str, typer.Option(
        "--host", help="Interface to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, envvar="ANZOO_PORT",
                                      help="TCP port (or $ANZOO_PORT).")] = 8000,
    max_batch: MaxBatchOpt = 8,
    max_wait_ms: MaxWaitOpt = 10.0,
    precision: PrecisionOpt = "fp32",
    fp16: Fp16Opt = False,
    max_queue: MaxQueueOpt = 64,
    timeout: TimeoutOpt = 60.0,
    max_body_mb: MaxBodyOpt = 20.0,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    read_timeout: ReadTimeoutOpt = 10.0,
    read_min_rate: ReadMinRateOpt = 50.0,
    max_buffered_mb: MaxBufferedOpt = 256.0,
    decode_memory_mb: DecodeMemoryOpt = 1000.0,
    max_mask_mpx: MaxMaskOpt = 200.0,
    cors_origins: CorsOpt = None,
    scale: TestScaleOpt = TEST_SCALE,
) -> None:
    """Serve instance segmentation over HTTP: POST /segment, a web page at /, /metrics.

    Set ANZOO_API_KEY to require 'Authorization: Bearer <key>' on /segment*.
    """
    import os

    import uvicorn

    from ..server.app import API_KEY_ENV, ServeSettings, create_app
    from ..server.replicas import parse_devices
    from ..server.runner import check_listen_address
    from ..zoo import get_entry

    model_ids = list(dict.fromkeys(get_entry(m).id for m in models or [DEFAULT_MODEL]))  # as the zoo spells them
    if weights is not None and len(model_ids) != 1:
        raise typer.BadParameter("--weights needs exactly one --model")
    settings = ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                             request_timeout_s=timeout, max_body_bytes=int(max_body_mb * 1_000_000),
                             max_pixels=max_pixels, cors_origins=tuple(cors_origins or ()),
                             read_timeout_s=read_timeout, read_min_rate=read_min_rate * 1000.0,
                             max_buffered_bytes=int(max_buffered_mb * 1_000_000),
                             decode_memory_bytes=int(decode_memory_mb * 1_000_000),
                             max_mask_pixels=int(max_mask_mpx * 1_000_000))
    precision = precision_flag(precision, fp16, device)
    placed = parse_devices(devices) if devices is not None else None
    check_listen_address(host, port)  # before minutes of downloading and loading
    if placed is not None:
        device = str(placed[0])  # loaded there; the other devices get copies
    loaded = {}
    for model_id in model_ids:
        log.info("loading %s", model_id)
        loaded[model_id] = base.load_model(model_id, weights, device)
    app = create_app(loaded, settings=settings, device=device, precision=precision, scale=long_short(scale),
                     devices=placed, replicas=replicas)
    loaded.clear()  # the predictors run their own (folded) copies: free the originals
    api_key = os.environ.get(API_KEY_ENV, "").strip()
    if not api_key and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without an API key: anyone who can reach it may use it "
                    "(set %s to require one)", host, API_KEY_ENV)
    on = [f"{r.device}" for r in app.state.service.replicas]
    log.info("serving %s on http://%s:%d (replicas: %s; max batch %d, max wait %g ms, queue %d%s)",
             ", ".join(model_ids), host, port, ", ".join(on), max_batch, max_wait_ms, max_queue,
             ", API key required" if api_key else "")
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_keep_alive=5,
                timeout_graceful_shutdown=max(5, int(timeout)))

