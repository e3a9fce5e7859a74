"""Logging for the command line: anzoo's messages through rich, on stderr.

Library modules only ever call ``logging.getLogger(__name__)``; the CLI (or a user's own
script) calls :func:`setup_logging` once to decide what is shown.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

__all__ = ["Progress", "progress_bar", "setup_logging", "stderr_console"]

_HANDLER_NAME = "anzoo-rich"
_stderr_console: Console | None = None


def stderr_console() -> Console:
    """The console anzoo writes progress bars and log lines to (stderr, shared)."""
    global _stderr_console
    if _stderr_console is None:
        _stderr_console = Console(stderr=True)
    return _stderr_console


def setup_logging(verbose: bool = False) -> None:
    """Show anzoo's INFO messages (DEBUG with ``verbose``) and other libraries' warnings.

    Calling it again only changes the level: the handler is installed once.
    """
    level = logging.DEBUG if verbose else logging.INFO
    logger = logging.getLogger("anzoo")
    logger.setLevel(level)
    handler = next((h for h in logger.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = RichHandler(console=stderr_console(), show_time=verbose, show_path=verbose,
                              show_level=True, markup=False, rich_tracebacks=False,
                              log_time_format="[%X]")
        handler.set_name(_HANDLER_NAME)
        # Records still propagate to the root logger (pytest's caplog, a user's own handlers);
        # the root has no handler of its own unless the user added one.
        logger.addHandler(handler)
    handler.setLevel(level)


class Progress:
    """One progress bar on stderr (rich), or nothing when disabled: downloads, evaluation and
    training all show theirs through :func:`progress_bar`.

    The bar appears on the first :meth:`update` (a download that fails before its first byte
    leaves no empty bar behind) and is removed from the live display by the context manager.
    """

    def __init__(self, label: str, total: float | None, *, kind: str, completed: float = 0,
                 unit: str = "it", enabled: bool = True) -> None:
        self.label, self.total, self.kind, self.unit = label, total, kind, unit
        self.completed = completed
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        # the rate's clock runs from here, not from the first update (the bar's appearance):
        # the work before the first update (a DataLoader's first batch) counts, as in a summary
        self._t0 = time.perf_counter()
        self._t_end: float | None = None

    def _start(self) -> None:
        from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, ProgressColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        unit, progress = self.unit, self

        class Rate(ProgressColumn):
            # the average since the bar was made: the final figure then agrees with a summary line
            def render(self, task: Any) -> Text:
                elapsed = (progress._t_end or time.perf_counter()) - progress._t0
                if elapsed <= 0 or not task.completed:
                    return Text(f"-- {unit}/s")
                return Text(f"{task.completed / elapsed:.2f} {unit}/s")

        if self.kind == "bytes":
            columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn()]
        else:
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                       TextColumn("{task.fields[info]}")]
        self._bar = RichProgress(*columns, console=stderr_console())
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=self.total, completed=self.completed, info="")

    def update(self, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, description: str | None = None, info: str | None = None) -> None:
        """Move the bar (``advance`` or ``completed``), and optionally change its total,
        description or the free text after it."""
        if not self.enabled:
            return
        if self._bar is None:
            self._start()
        fields: dict[str, Any] = {}
        if info is not None:
            fields["info"] = info
        self._bar.update(self._task, advance=advance, completed=completed, total=total,
                         description=description, **fields)

    def close(self) -> None:
        self._t_end = time.perf_counter()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@contextmanager
def progress_bar(label: str, total: float | None = None, *, kind: str = "count", unit: str = "it",
                 completed: float = 0, enabled: bool = True) -> Iterator[Progress]:
    """``with progress_bar("r50-bn", 5000, unit="images") as bar: bar.update(advance=4)``.

    ``kind='count'`` shows done/total, the mean rate in ``unit``/s, elapsed time, ETA and a
    free ``info`` text; ``kind='bytes'`` shows sizes, transfer speed and ETA (downloads).
    """
    if kind not in ("count", "bytes"):
        raise ValueError(f"kind must be 'count' or 'bytes', not {kind!r}")
    bar = Progress(label, total, kind=kind, completed=completed, unit=unit, enabled=enabled)
    try:
        yield bar
    finally:
        bar.close()
