"""How far the tests' compared quantities move with the CPU kernels torch picks.

oneDNN, MKL and ATen choose their kernels by the CPU's instruction set (and oneDNN also by
the thread count and the shapes), and each sums in its own order: float32 results move in
their last bits from one machine to the next. This script runs the same comparisons under
several kernel choices, each in a fresh subprocess (the choice is read once, at start-up),
and prints the largest difference seen per setting, so that a test's tolerance can be set
from the spread with a margin (and the figure written next to it).

    python tools/kernel_spread.py                          # parity rows (tests/models/test_parity.py)
    python tools/kernel_spread.py --rows r50-bn r50-an-gn  # some rows
    python tools/kernel_spread.py --tests tests/models/test_layers.py tests/inference/test_fast_paths.py
    python tools/kernel_spread.py --settings default,onednn-sse41 --json spread.json

``--tests`` runs pytest on the files under each setting with this module as a plugin: every
``torch.testing.assert_close``, ``np.testing.assert_allclose``, ``torch.allclose`` and
``pytest.approx`` comparison made in a test file records its largest absolute difference and
the share of its tolerance used (``max |a - b| / (atol + rtol |b|)``, 1.0 is the limit; above
it for an ``assert not ...allclose``), per call site and tolerance.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

#: name -> environment. Each is one kernel choice this machine can make (an AVX-512 machine
#: adds its own: see README, "Parity with mmdetection v1").
SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "1-thread": {"OMP_NUM_THREADS": "1"},
    "2-threads": {"OMP_NUM_THREADS": "2"},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "onednn-sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "mkl-sse42": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "ci-second-run": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "default"},
}
_KERNEL_VARIABLES = sorted({k for env in SETTINGS.values() for k in env})
_RECORD_ENV = "KERNEL_SPREAD_RECORD"  # the plugin's output file (JSON lines)


def _environment(setting: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _KERNEL_VARIABLES}
    env.update(SETTINGS[setting])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tools"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.2g}" if value < 1e-2 or value >= 1e3 else f"{value:.3g}"


def _table(title: str, rows: dict[str, dict[str, Any]], settings: list[str]) -> str:
    width = max([len(r) for r in rows] + [len(title)])
    cols = [max(len(s), 8) for s in settings]
    lines = [f"{title:<{width}}  " + "  ".join(f"{s:>{c}}" for s, c in zip(settings, cols)) + "       max"]
    for name, cells in rows.items():
        values = [cells.get(s) for s in settings]
        numbers = [v for v in values if isinstance(v, (int, float))]
        peak = _fmt(max(numbers)) if numbers else "-"
        shown = [v if isinstance(v, str) else _fmt(v) for v in values]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{v:>{c}}" for v, c in zip(shown, cols)) + f"  {peak:>8}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- parity
def parity_spread(settings: list[str], rows: list[str]) -> dict[str, Any]:
    """Per setting and parity row: the largest score, box and mask differences to the
    reference detections (``tools/parity/report.py`` run in a subprocess)."""
    out: dict[str, Any] = {}
    for setting in settings:
        with subprocess.Popen([sys.executable, str(ROOT / "tools" / "parity" / "report.py"), *rows],
                              env=_environment(setting), stdout=subprocess.PIPE, text=True) as proc:
            lines = []
            for line in proc.stdout:  # one JSON line per row and image, as they come
                lines.append(line)
                d = json.loads(line)
                print(f"[{setting}] {d['row']} {d['image']}: score {_fmt(d.get('max_score_diff'))}, "
                      f"box {_fmt(d.get('max_box_diff'))}", file=sys.stderr, flush=True)
        if proc.returncode != 0:
            raise SystemExit(f"[{setting}] report.py failed (exit {proc.returncode})")
        for line in lines:
            d = json.loads(line)
            cell = out.setdefault(d["row"], {}).setdefault(setting, {})
            if d["detections"] != d["reference"] or not d.get("same_labels", False):
                cell["mismatch"] = f"{d['image']}: {d['detections']} vs {d['reference']}"
                continue
            for key in ("max_score_diff", "max_box_diff", "max_mask_pixels_diff"):
                cell[key] = max(cell.get(key, 0), d[key])
    return out


def print_parity(result: dict[str, Any], settings: list[str]) -> None:
    for key, title in (("max_score_diff", "score diff"), ("max_box_diff", "box diff (px)"),
                       ("max_mask_pixels_diff", "mask pixels")):
        rows = {row: {s: (c.get("mismatch") and "MISMATCH") or c.get(key) for s, c in cells.items()}
                for row, cells in result.items()}
        print(_table(title, rows, settings), end="\n\n")
    bad = [(row, s, c["mismatch"]) for row, cells in result.items() for s, c in cells.items() if "mismatch" in c]
    for row, setting, what in bad:
        print(f"MISMATCH {row} [{setting}]: detections {what}")


# --------------------------------------------------------------------------- test files
def tests_spread(settings: list[str], files: list[str]) -> dict[str, Any]:
    """Per setting and call site: the largest difference and share of tolerance used."""
    out: dict[str, Any] = defaultdict(dict)
    for setting in settings:
        print(f"[{setting}] pytest {' '.join(files)} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            record = Path(tmp) / "record.jsonl"
            env = _environment(setting)
            env[_RECORD_ENV] = str(record)
            command = [sys.executable, "-m", "pytest", "-q", "-p", "kernel_spread", "-p", "no:cacheprovider", *files]
            proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
            tail = proc.stdout.strip().splitlines()[-1:] or ["(no output)"]
            print(f"[{setting}] {tail[0]}", file=sys.stderr, flush=True)
            if proc.returncode != 0:
                failed = [l for l in proc.stdout.splitlines() if l.startswith(("FAILED", "ERROR"))]
                out["__failed__"][setting] = failed
            lines = record.read_text().splitlines() if record.exists() else []
        for line in lines:
            d = json.loads(line)
            cell = out[f"{d['site']} ({d['tol']})"].setdefault(setting, {"diff": 0.0, "used": 0.0})
            cell["diff"] = max(cell["diff"], d["diff"])
            cell["used"] = max(cell["used"], d["used"])
    return dict(out)


def print_tests(result: dict[str, Any], settings: list[str]) -> None:
    sites = {k: v for k, v in sorted(result.items(), key=lambda kv: _site_key(kv[0])) if k != "__failed__"}
    print(_table("max |a - b|", {s: {k: c["diff"] for k, c in cells.items()} for s, cells in sites.items()},
                 settings), end="\n\n")
    print(_table("share of tolerance", {s: {k: c["used"] for k, c in cells.items()} for s, cells in sites.items()},
                 settings), end="\n\n")
    for setting, failed in result.get("__failed__", {}).items():
        for line in failed:
            print(f"[{setting}] {line}")


def _site_key(key: str) -> tuple[str, int, str]:
    site, _, tol = key.partition(" ")
    path, _, line = site.rpartition(":")
    return path, int(line) if line.isdigit() else 0, tol


# --------------------------------------------------------------------------- pytest plugin
def _caller_site() -> str | None:
    for frame in inspect.stack()[2:]:
        path = Path(frame.filename).resolve()
        if TESTS in path.parents and path.name.startswith("test_"):
            return f"{path.relative_to(TESTS.parent)}:{frame.lineno}"
    return None


def _record(actual: Any, expected: Any, rtol: float, atol: float) -> None:
    import numpy as np
    import torch

    site = _caller_site()
    if site is None:
        return
    def as_array(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().double().numpy()
        return np.asarray(x, dtype=np.float64)

    try:
        a, b = np.broadcast_arrays(as_array(actual), as_array(expected))
    except (TypeError, ValueError, RuntimeError):
        return
    finite = np.isfinite(a) & np.isfinite(b)
    diff = np.abs(a - b)[finite]
    limit = (atol + rtol * np.abs(b))[finite]
    used = float(np.max(np.where(limit > 0, diff / np.where(limit > 0, limit, 1), np.where(diff > 0, np.inf, 0)),
                        initial=0.0))
    line = {"site": site, "diff": float(diff.max(initial=0.0)), "used": used, "tol": f"rtol={rtol:.3g} atol={atol:.3g}"}
    with open(os.environ[_RECORD_ENV], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def _torch_default_tolerances(actual: Any) -> tuple[float, float]:
    import torch

    dtype = actual.dtype if isinstance(actual, torch.Tensor) else torch.float64
    return {torch.float16: (1e-3, 1e-5), torch.bfloat16: (1.6e-2, 1e-5),
            torch.float32: (1.3e-6, 1e-5)}.get(dtype, (1e-7, 1e-7))


def pytest_configure(config: Any) -> None:  # pragma: no cover - runs inside the subprocesses
    if not os.environ.get(_RECORD_ENV):
        return
    import numpy as np
    import torch

    assert_close, assert_allclose, allclose = torch.testing.assert_close, np.testing.assert_allclose, torch.allclose

    def recording_assert_close(actual, expected, *args, **kwargs):
        rtol, atol = kwargs.get("rtol"), kwargs.get("atol")
        if rtol is None or atol is None:
            rtol, atol = _torch_default_tolerances(actual)
        _record(actual, expected, rtol, atol)
        return assert_close(actual, expected, *args, **kwargs)

    def recording_assert_allclose(actual, desired, rtol=1e-7, atol=0, *args, **kwargs):
        _record(actual, desired, rtol, atol)
        return assert_allclose(actual, desired, rtol, atol, *args, **kwargs)

    def recording_allclose(input, other, rtol=1e-5, atol=1e-8, equal_nan=False):
        _record(input, other, rtol, atol)
        return allclose(input, other, rtol=rtol, atol=atol, equal_nan=equal_nan)

    torch.testing.assert_close = recording_assert_close
    np.testing.assert_allclose = recording_assert_allclose
    torch.allclose = recording_allclose
    import pytest

    approx = pytest.approx

    class RecordingApprox:
        """pytest.approx's object, recording what it is compared with."""

        __array_ufunc__ = None  # numpy defers ``array == this`` to __eq__, as for approx itself
        __array_priority__ = 100

        def __init__(self, expected, rel=None, abs=None, nan_ok=False):  # noqa: A002 - pytest's names
            self.approx = approx(expected, rel=rel, abs=abs, nan_ok=nan_ok)
            # pytest: only an absolute tolerance when only abs is given, else max(rel |e|, abs)
            self.rtol = 0.0 if rel is None and abs is not None else (1e-6 if rel is None else rel)
            self.atol = 1e-12 if abs is None else abs

        def __eq__(self, actual):
            if not isinstance(self.approx.expected, Mapping):
                _record(actual, self.approx.expected, self.rtol, self.atol)
            return self.approx == actual

        def __ne__(self, actual):
            return not self == actual

        __hash__ = None

        def __repr__(self):
            return repr(self.approx)

    pytest.approx = RecordingApprox


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated, from: {', '.join(SETTINGS)}")
    parser.add_argument("--rows", nargs="*", default=[], help="parity rows (default: all)")
    parser.add_argument("--tests", nargs="*", default=None, help="test files to run under the plugin instead")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    import torch

    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{os.cpu_count()} CPUs", flush=True)
    if args.tests is not None:
        result = tests_spread(settings, args.tests)
        print_tests(result, settings)
    else:
        result = parity_spread(settings, args.rows)
        print_parity(result, settings)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
