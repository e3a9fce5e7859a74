"""Commands under torchrun against the same command in one process (the tests that
distributed runs equal one process's).

Released configs keep 1000 RPN proposals, too slow for a test on a CPU: these make
``create_model`` keep 10, in this process (:func:`keep_few_proposals`, :func:`run_here`) or in
the processes a test starts through :data:`LAUNCHER` (a script: ``python launch_anzoo.py
<anzoo args>``, also under torchrun: :func:`run_under_torchrun`)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

LAUNCHER = textwrap.dedent("""
    import sys
    from dataclasses import replace

    import anzoo.factory

    _create_model = anzoo.factory.create_model


    def create_model(*args, **kwargs):
        model = _create_model(*args, **kwargs)
        cfg = model.rpn.test_cfg
        model.rpn.test_cfg = replace(cfg, nms_pre=40, nms_post=10, max_num=10)
        return model


    anzoo.factory.create_model = create_model
    if __name__ == "__main__":
        from anzoo.cli import main

        main(sys.argv[1:])
""")


def keep_few_proposals(monkeypatch: Any) -> None:
    """``anzoo.factory.create_model`` keeps 10 proposals for the rest of the test."""
    import anzoo.factory

    real = anzoo.factory.create_model

    def create_model(*a: Any, **k: Any) -> Any:
        model = real(*a, **k)
        model.rpn.test_cfg = replace(model.rpn.test_cfg, nms_pre=40, nms_post=10, max_num=10)
        return model

    monkeypatch.setattr(anzoo.factory, "create_model", create_model)


def launcher_env(launcher_dir: Path) -> dict[str, str]:
    """The environment for :data:`LAUNCHER` in ``launcher_dir``: one thread per process, the
    anzoo under test importable (a checkout that is not the one installed), no torchrun
    variables of a caller."""
    import anzoo

    paths = [str(launcher_dir), str(Path(anzoo.__file__).resolve().parents[1])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}
    env.pop("WORLD_SIZE", None)
    return env


def run_under_torchrun(launcher_dir: Path, args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """``anzoo <args>`` in ``nproc`` processes under torchrun, through :data:`LAUNCHER`
    (written to ``launcher_dir``); their output captured."""
    launcher = launcher_dir / "launch_anzoo.py"
    launcher.write_text(LAUNCHER)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(launcher),
         *args], capture_output=True, text=True, timeout=300, env=launcher_env(launcher_dir), check=False)


def run_here(monkeypatch: Any, args: list[str]) -> Any:
    """The same command in this process on one thread (as each torchrun process has), with
    the launcher's few proposals; the CliRunner result."""
    import torch
    from typer.testing import CliRunner

    from anzoo.cli import app

    keep_few_proposals(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return CliRunner().invoke(app, args)
    finally:
        torch.set_num_threads(threads)
