"""The one progress-bar helper (downloads, evaluation, training)."""
from __future__ import annotations

import pytest
from rich.console import Console

from anzoo import log


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Console:
    console = Console(record=True, width=120, force_terminal=False)
    monkeypatch.setattr(log, "stderr_console", lambda: console)
    return console


def test_count_bar_shows_the_mean_rate_and_info(captured: Console) -> None:
    with log.progress_bar("r50-bn", 4, unit="images") as bar:
        for _ in range(4):
            bar.update(advance=1, info="loss 0.5")
    text = captured.export_text()
    assert "r50-bn" in text and "4/4" in text and "images/s" in text and "loss 0.5" in text


def test_bar_appears_only_after_the_first_update(captured: Console) -> None:
    with log.progress_bar("never-started", 100, kind="bytes"):
        pass
    assert captured.export_text() == ""
    with log.progress_bar("dl", 2_000_000, kind="bytes") as bar:
        bar.update(completed=2_000_000)
    assert "2.0/2.0 MB" in captured.export_text()


def test_disabled_bar_prints_nothing(captured: Console) -> None:
    with log.progress_bar("quiet", 3, enabled=False) as bar:
        bar.update(advance=3)
    assert captured.export_text() == ""


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        with log.progress_bar("x", kind="percent"):
            pass


def test_the_rate_counts_the_time_before_the_first_update(captured: Console) -> None:
    """The bar's final rate is the mean since the bar was made, as in eval's summary line (which
    counts the first batch's wait), not since it appeared at the first update."""
    import time

    with log.progress_bar("r50-bn", 10, unit="images") as bar:
        time.sleep(0.5)  # the first batch: DataLoader workers starting, the first forward pass
        bar.update(advance=10)
    rate = float(captured.export_text().split(" images/s")[0].split()[-1])
    assert 10 <= rate <= 20.5, rate  # 10 images in 0.5 s (and a little more), never 10 / 0.001 s
