"""anzoo.distributed: the process-group context shared by evaluation and training."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from anzoo.distributed import DistContext, init_distributed

WORKER = textwrap.dedent("""
    import json, os, sys
    from anzoo.distributed import init_distributed

    ctx = init_distributed("cpu")
    got = {
        "rank": ctx.rank, "world": ctx.world_size, "main": ctx.is_main, "device": str(ctx.device),
        "gathered": ctx.all_gather({"rank": ctx.rank}),
        "broadcast": ctx.broadcast("from rank %d" % ctx.rank),
        "mean": ctx.all_reduce_mean({"loss": float(ctx.rank + 1), "n": 10.0 * ctx.rank}),
    }
    ctx.barrier()
    ctx.close()
    import torch.distributed as dist
    got["closed"] = not dist.is_initialized()
    with open(os.path.join(sys.argv[1], "rank%d.json" % ctx.rank), "w") as f:
        json.dump(got, f)
""")


def test_one_process_context_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert ctx.device == torch.device("cpu")
    assert ctx.all_gather(3) == [3] and ctx.broadcast("x") == "x"
    assert ctx.all_reduce_mean({"loss": 2.5}) == {"loss": 2.5}
    ctx.barrier()
    ctx.close()
    assert not torch.distributed.is_initialized()
    assert DistContext().is_main


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
@pytest.mark.slow
def test_two_processes_exchange_objects_and_means(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(tmp_path)], capture_output=True, text=True, timeout=180, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, got in enumerate(ranks):
        assert (got["rank"], got["world"], got["main"], got["device"]) == (r, 2, r == 0, "cpu")
        assert got["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert got["broadcast"] == "from rank 0"
        assert got["mean"] == {"loss": 1.5, "n": 5.0}
        assert got["closed"]

