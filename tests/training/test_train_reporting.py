"""What training reports (issue 14): time_per_iter counts the steps, not the evaluations and
checkpoint writes between them; an epoch's evaluation is a small table, counts as integers."""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import torch

from anzoo.training.hooks import MetricsHook, eval_table


class _Writer:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)


class _OneProcess:
    is_main = True

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        return values

    def all_gather(self, value: Any) -> list[Any]:
        return [value]


def test_time_per_iter_excludes_what_runs_between_steps() -> None:
    writer = _Writer()
    hook = MetricsHook(writer, log_every=2)  # type: ignore[arg-type]
    loss = torch.tensor(1.0)
    t = SimpleNamespace(iteration=0, end_iter=100, batch_in_epoch=0, iters_per_epoch=2, epoch=0, lr=0.01,
                        data_time=0.001, iter_time=0.01, skipped_images=0, info=_OneProcess(),
                        device=torch.device("cpu"), batch=SimpleNamespace(skipped=[]),
                        step=SimpleNamespace(losses={"loss_cls": loss}, loss=loss, grad_norm=1.0))
    hook.trainer = t  # type: ignore[assignment]
    hook.before_train()
    for _ in range(4):  # two epochs of two steps of 10 ms each, a 0.3 s checkpoint + evaluation between
        t.iteration += 1
        t.batch_in_epoch += 1
        hook.before_step()
        hook.after_step()
        if t.batch_in_epoch == t.iters_per_epoch:
            t.epoch, t.batch_in_epoch = t.epoch + 1, 0
            time.sleep(0.3)  # what after_epoch's other hooks do
    assert [r["iter"] for r in writer.records] == [2, 4]
    assert [r["time_per_iter"] for r in writer.records] == [0.01, 0.01]  # the 0.3 s is not a step's


def test_epoch_evaluation_is_a_small_table() -> None:
    names = ("ap", "ap50", "ap75", "aps", "apm", "apl", "ar1", "ar10", "ar100", "ars", "arm", "arl")
    scores: dict[str, Any] = {"images": 5, **{f"bbox_{n}": 0.5 for n in names}, **{f"segm_{n}": 0.25 for n in names}}
    assert eval_table(3, scores).splitlines() == [
        "epoch 3 evaluation of 5 images:",
        "             AP    AP50    AP75     APs     APm     APl",
        "  bbox   0.5000  0.5000  0.5000  0.5000  0.5000  0.5000",
        "  segm   0.2500  0.2500  0.2500  0.2500  0.2500  0.2500"]
