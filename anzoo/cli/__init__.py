"""The ``anzoo`` command line (typer + rich).

The commands are thin shells over the library: parse, call, format. Each one is registered
with :func:`command`, which turns every :class:`~anzoo.errors.AnzooError` into one red line
``error: <message>`` on stderr (the parameters a library message names in backquotes
written as the flags that set them: :func:`as_flags`) and the error's exit code (no
traceback), and Ctrl-C into exit code 130. One module per command (or family of commands):

* :mod:`.base` - the typer ``app``, :func:`command`, output helpers, shared option types;
* :mod:`.zoo_commands` - ``list``, ``info``, ``download``, ``import``, ``pack``, ``unpack``;
* :mod:`.predict`, :mod:`.evaluate`, :mod:`.serve`, :mod:`.train`, :mod:`.export`, :mod:`.synth`
  (``synth-coco``) - one command each.

Add a command as a function in a module of its own, decorated with
:func:`~anzoo.cli.base.command`, using the shared option types (``ModelIdArg``, ``JsonOpt``,
...) and output helpers (``console``, ``print_json``), and import the module below.
"""
from __future__ import annotations

# Importing a command module registers its commands on the app, in the order `--help` lists them.
from . import zoo_commands, predict, evaluate, serve, train, export, synth  # noqa: F401,E402  isort: skip
from .base import app, command, main

__all__ = ["app", "command", "main"]

if __name__ == "__main__":  # pragma: no cover
    main()
