"""Load test of ``anzoo serve``: throughput and p50/p95 latency of ``POST /segment`` for 1, 8
and 32 concurrent clients, with dynamic batching (``--max-batch N``) and without (1), on one or
more model replicas (``--replicas 1 2``: the server's ``--replicas``, which share out the CPU
threads on a CPU; with ``--devices cuda:0,cuda:1`` one replica per GPU).

For each mode and replica count the script starts its own server in a child process on
127.0.0.1 (a free port; nothing else is contacted), waits until it is warm, then sends a fixed
number of requests per concurrency level (a duration cap bounds every level) and stops the server.

    # random weights, small images: a quick run on a CPU
    python benchmarks/serve_load.py --random-weights --scale 320 224 --image-size 240 320
    # released weights (downloaded and cached), COCO-sized images, on a GPU
    python benchmarks/serve_load.py --model r50-an --device cuda --image-size 480 640 --requests 256
    # 1 vs 2 CPU replicas at 8 and 32 clients
    python benchmarks/serve_load.py --random-weights --scale 320 224 --image-size 240 320 \
        --modes batched --replicas 1 2 --clients 8 32
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

HOST = "127.0.0.1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="r50-an", help="zoo model id")
    p.add_argument("--weights", default=None, help="checkpoint file (default: the cached release)")
    p.add_argument("--random-weights", action="store_true",
                   help="random weights biased to detect a few classes (anzoo.testing.confident_model)")
    p.add_argument("--max-dets", type=int, default=10,
                   help="with --random-weights: detections (masks) per image")
    p.add_argument("--device", default="auto")
    p.add_argument("--devices", default=None, help="the server's --devices (one replica per device)")
    p.add_argument("--replicas", type=int, nargs="+", default=[1],
                   help="replicas per device; one server per value")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--scale", type=int, nargs=2, default=(1333, 800), metavar=("LONG", "SHORT"))
    p.add_argument("--image-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=None,
                   help="requests per concurrency level (default: max(16, 2 x clients))")
    p.add_argument("--max-seconds", type=float, default=120.0,
                   help="stop sending new requests of a level after this long")
    p.add_argument("--max-batch", type=int, default=8, help="the batched mode's --max-batch")
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--modes", nargs="+", choices=["batched", "unbatched"], default=["unbatched", "batched"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in the server")
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--serve-port", type=int, default=None, help=argparse.SUPPRESS)  # the child
    return p.parse_args(argv)


# --------------------------------------------------------------------------- the server (child)
def serve(args: argparse.Namespace) -> None:
    import torch
    import uvicorn

    from anzoo.server.app import create_app
    from anzoo.server.replicas import parse_devices

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.random_weights:
        from anzoo.factory import resolve_device
        from anzoo.testing import confident_model

        model = confident_model(args.model, proposals=max(50, args.max_dets), max_per_img=args.max_dets)
        model = model.to(resolve_device(args.device))
    else:
        from anzoo.factory import create_model

        model = create_model(args.model, pretrained=args.weights or True, device=args.device)
    app = create_app({args.model: model}, device=args.device, precision=args.precision, scale=tuple(args.scale),
                     api_key="", max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                     max_queue=max(64, 2 * max(args.clients)), request_timeout_s=600,
                     devices=parse_devices(args.devices) if args.devices else None, replicas=args.replicas[0])
    uvicorn.run(app, host=HOST, port=args.serve_port, log_level="warning")


# --------------------------------------------------------------------------- the clients
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def sample_image(height: int, width: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    # smooth colour blobs compress like a photo (noise would make huge PNGs)
    small = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


async def run_level(url: str, image: bytes, clients: int, requests: int, max_seconds: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors: dict[str, int] = {}
    sent = 0
    deadline = time.perf_counter() + max_seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            start = time.perf_counter()
            try:
                response = await client.post(f"{url}/segment", content=image,
                                             headers={"Content-Type": "image/jpeg"})
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)
                batch_sizes.append(response.json()["timing"]["batch_size"])
            else:
                errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(trust_env=False, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    ms = sorted(1000 * v for v in latencies)
    return {
        "clients": clients, "requests": sent, "ok": len(latencies), "errors": errors,
        "seconds": round(elapsed, 3),
        "images_per_s": round(len(latencies) / elapsed, 3) if elapsed > 0 else 0.0,
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if ms else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 1) if ms else None,
        "mean_batch": round(statistics.fmean(batch_sizes), 2) if batch_sizes else None,
    }


def wait_ready(url: str, child: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"the server exited with code {child.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the server was not ready after {timeout:g} s")


def bench_mode(args: argparse.Namespace, mode: str, replicas: int, image: bytes,
               argv: list[str]) -> list[dict[str, Any]]:
    port = free_port()
    max_batch = args.max_batch if mode == "batched" else 1
    child_argv = [sys.executable, os.path.abspath(__file__), *argv, "--serve-port", str(port),
                  "--max-batch", str(max_batch), "--replicas", str(replicas)]
    child = subprocess.Popen(child_argv)
    url = f"http://{HOST}:{port}"
    results = []
    try:
        wait_ready(url, child, args.startup_timeout)
        asyncio.run(run_level(url, image, 1, 2, args.max_seconds))  # untimed warm-up
        for clients in args.clients:
            requests = args.requests or max(16, 2 * clients)
            row = asyncio.run(run_level(url, image, clients, requests, args.max_seconds))
            row.update(mode=mode, max_batch=max_batch, replicas=replicas)
            results.append(row)
            print(format_row(row), flush=True)
    finally:
        child.terminate()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)
    return results


HEADER = (f"{'mode':<10} {'batch':>5} {'replicas':>8} {'clients':>7} {'ok/sent':>9} {'img/s':>8} {'p50 ms':>9} "
          f"{'p95 ms':>9} {'mean batch':>10}")


def format_row(row: dict[str, Any]) -> str:
    errors = f"  errors: {row['errors']}" if row["errors"] else ""
    return (f"{row['mode']:<10} {row['max_batch']:>5} {row['replicas']:>8} {row['clients']:>7} "
            f"{row['ok']:>4}/{row['requests']:<4} {row['images_per_s']:>8.2f} {row['p50_ms'] or 0:>9.1f} "
            f"{row['p95_ms'] or 0:>9.1f} {row['mean_batch'] or 0:>10.2f}{errors}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.serve_port is not None:
        serve(args)
        return
    image = sample_image(*args.image_size)
    print(f"model {args.model} ({'random weights' if args.random_weights else 'released weights'}), "
          f"device {args.devices or args.device}, torch threads {args.threads or 'default'}, "
          f"scale {tuple(args.scale)}, image {args.image_size[1]}x{args.image_size[0]} "
          f"JPEG ({len(image)} bytes), max wait {args.max_wait_ms:g} ms", flush=True)
    print(HEADER, flush=True)
    results = []
    for mode in args.modes:
        for replicas in args.replicas:
            results += bench_mode(args, mode, replicas, image, argv)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "serve_port"},
                       "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
