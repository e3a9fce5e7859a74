"""Peak memory of ``anzoo serve`` per request: a 512x512 and a 4096x4096 photo at ``score_thr=0``.

The memory a request costs must grow with what is returned, not with the image's size times
the number of detections. For each photo size the script starts a fresh server in a child
process on 127.0.0.1 (random weights biased to detect, ``anzoo.testing.confident_model``, 100
detections with masks per image), waits until it is warm, and sends, one after the other:

* ``POST /segment?score_thr=0`` (all 100 instances, RLE masks),
* ``POST /segment?score_thr=0&max_instances=1``,
* ``POST /segment/render?score_thr=0`` (the PNG with every mask drawn).

Before each request the child's peak-RSS mark is reset (Linux ``/proc/PID/clear_refs``), so
each figure is the peak resident memory during that request alone; without that facility
the figures are cumulative peaks (printed with a note). The photo is scikit-image's
astronaut (``.[demo]``), enlarged with OpenCV and sent as a JPEG.

    python benchmarks/serve_memory.py                       # 512 and 4096, r50-bn at (1333, 800)
    python benchmarks/serve_memory.py --sizes 512 2048 --model r50-an

It exits with status 1 when a request's peak for the largest photo is 512 MB or more above
the smallest photo's.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
LIMIT_MB = 512
REQUESTS = [
    ("segment, score_thr=0", "/segment?score_thr=0"),
    ("segment, score_thr=0, max_instances=1", "/segment?score_thr=0&max_instances=1"),
    ("render, score_thr=0", "/segment/render?score_thr=0"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="r50-bn", help="zoo model id (random weights)")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 4096], help="square photo sides")
    p.add_argument("--scale", type=int, nargs=2, default=(1333, 800), metavar=("LONG", "SHORT"))
    p.add_argument("--detections", type=int, default=100, help="detections per image (masks)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads in the server")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for start-up and per request")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child
    return p.parse_args(argv)


# --------------------------------------------------------------------------- the server (child)
def serve(args: argparse.Namespace) -> None:
    import torch

    from anzoo.server.app import create_app
    from anzoo.server.runner import BackgroundServer
    from anzoo.testing import confident_model

    torch.set_num_threads(args.threads)
    model = confident_model(args.model, proposals=10 * args.detections, max_per_img=args.detections)
    app = create_app({args.model: model}, device="cpu", scale=tuple(args.scale), api_key="",
                     max_batch=1, request_timeout_s=args.timeout)
    with BackgroundServer(app) as server:
        print(server.url, flush=True)
        sys.stdin.readline()  # the parent closes stdin when done


# --------------------------------------------------------------------------- measuring (parent)
def photo_jpeg(side: int) -> bytes:
    import cv2
    import numpy as np
    from PIL import Image
    from skimage import data

    rgb = np.ascontiguousarray(data.astronaut())
    if rgb.shape[:2] != (side, side):
        rgb = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_CUBIC)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def post(url: str, body: bytes, timeout: float) -> tuple[int, int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "image/jpeg"}, method="POST")
    try:
        with opener.open(request, timeout=timeout) as response:
            payload = response.read()
            count = response.headers.get("X-Instances")
            if count is None:
                count = len(json.loads(payload)["instances"])
            return response.status, int(count), ""
    except urllib.error.HTTPError as exc:
        return exc.code, 0, exc.read()[:200].decode(errors="replace")


def measure(args: argparse.Namespace, side: int) -> dict[str, object]:
    body = photo_jpeg(side)
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", "--model", args.model,
           "--scale", *map(str, args.scale), "--detections", str(args.detections),
           "--threads", str(args.threads), "--timeout", str(args.timeout)]
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = child.stdout.readline().strip()  # the child prints its URL once warm
        if not url.startswith("http://"):
            raise RuntimeError("the server did not start")
        rows: dict[str, object] = {"side": side, "jpeg_kb": len(body) / 1e3,
                                   "ready_mb": status_kb(child.pid, "VmRSS") / 1024}
        exact = True
        for name, path in REQUESTS:
            exact &= reset_peak(child.pid)
            before = status_kb(child.pid, "VmRSS")
            start = time.perf_counter()
            status, count, error = post(f"{url}{path}", body, args.timeout)
            seconds = time.perf_counter() - start
            peak = status_kb(child.pid, "VmHWM")
            rows[name] = {"status": status, "instances": count, "seconds": round(seconds, 2),
                          "peak_mb": round(peak / 1024, 1), "above_start_mb": round((peak - before) / 1024, 1),
                          "error": error}
        rows["exact_peaks"] = exact
        return rows
    finally:
        if child.stdin:
            child.stdin.close()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args)
        return 0
    results = [measure(args, side) for side in args.sizes]
    print(f"peak RSS of the server per request ({args.model}, random weights, {args.detections} "
          f"detections, scale {args.scale[0]}x{args.scale[1]})")
    for res in results:
        note = "" if res["exact_peaks"] else " (cumulative peaks: clear_refs unavailable)"
        print(f"{res['side']}x{res['side']} photo ({res['jpeg_kb']:.0f} kB JPEG), {res['ready_mb']:.0f} MB "
              f"when ready{note}:")
        for name, _ in REQUESTS:
            row = res[name]
            print(f"  {name:40s} HTTP {row['status']} {row['instances']:4d} instances  "
                  f"peak {row['peak_mb']:8.1f} MB  (+{row['above_start_mb']:.1f} MB)  {row['seconds']:.1f} s "
                  f"{row['error']}")
    worst = 0.0
    for name, _ in REQUESTS:
        diff = results[-1][name]["peak_mb"] - results[0][name]["peak_mb"]
        worst = max(worst, diff)
        print(f"difference {results[-1]['side']} vs {results[0]['side']}, {name}: {diff:.1f} MB")
    print(f"largest difference: {worst:.1f} MB (limit {LIMIT_MB} MB): {'ok' if worst < LIMIT_MB else 'OVER'}")
    return 0 if worst < LIMIT_MB else 1


if __name__ == "__main__":
    sys.exit(main())
