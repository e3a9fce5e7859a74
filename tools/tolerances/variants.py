"""The kernel choices a tolerance is measured under, each in a fresh process: the command line
shared by the ``*_spread.py`` scripts of this folder."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable

VARIANTS = {
    "default, 1 thread": {"ANZOO_THREADS": "1"},
    "default, 2 threads": {"ANZOO_THREADS": "2"},
    "ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default", "ANZOO_THREADS": "1"},
    "ATEN_CPU_CAPABILITY=avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ANZOO_THREADS": "1"},
    "ONEDNN_MAX_CPU_ISA=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ANZOO_THREADS": "1"},
}


def spread_main(script: str, doc: str, measure: Callable[[], dict], header: str,
                row: Callable[[str, dict], str]) -> None:
    """``script --one``: ``measure()`` in this process, as JSON; ``script``: every variant in its
    own process, one ``row(variant, result)`` each under ``header``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", action="store_true", help="measure in this process only")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure()))
        return
    print(header)
    for name, env in VARIANTS.items():
        out = subprocess.run([sys.executable, script, "--one"],
                             env={**os.environ, **env, "OMP_NUM_THREADS": env["ANZOO_THREADS"]},
                             capture_output=True, text=True, check=True).stdout
        print(row(name, json.loads(out.strip().splitlines()[-1])), flush=True)
