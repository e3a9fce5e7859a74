"""Logging for the command line: anzoo's messages through rich, on stderr.

Library modules only ever call ``logging.getLogger(__name__)``; the CLI (or a user's own
script) calls :func:`setup_logging` once to decide what is shown.
"""
from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

__all__ = ["setup_logging", "stderr_console"]

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
