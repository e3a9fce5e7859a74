"""Per-process part files: results appended one JSON line per item, safe against crashes.

A long run (``anzoo eval``, ``anzoo predict`` over many images) has each process append one
line per finished item to its own file ``<out>/partial/<run>-rank<r>.jsonl``::

    {"image_id":139,"records":[...]}

flushed and fsynced after every batch. Every run (a fresh start or a resume) writes new files
and never appends to old ones, so a line torn by a crash can only be the last line of some
file; lines without their final newline are ignored. On resume the items that already have a
complete line are skipped; when several lines name the same item (files copied around) the
first one counts, so no item is ever counted twice. ``partial/run.json`` records what the
results were made with (a fingerprint); resuming with other settings is refused. At the end,
the process that writes the final files reads the lines back in item order (:meth:`PartFiles.read`).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import AnzooError
from .fileio import atomic_write_json

__all__ = ["PARTIAL_DIR", "PartFiles", "PartialWriter", "part_line"]

log = logging.getLogger(__name__)

PARTIAL_DIR = "partial"
RUN_FILE = "run.json"

_LINE_ID = re.compile(rb'^\{"image_id":(-?\d+)[,}]')


def part_line(item_id: int, fields: Mapping[str, Any]) -> bytes:
    """One part-file line, ``{"image_id":<id>, **fields}`` (compact JSON, newline-terminated);
    the id comes first so that an index can be built without parsing the rest."""
    body = json.dumps(dict(fields), separators=(",", ":"), ensure_ascii=True)
    rest = body[1:] if body == "{}" else "," + body[1:]
    return b'{"image_id":%d%s\n' % (int(item_id), rest.encode("ascii"))


class PartialWriter:
    """Appends lines to one file; thread-safe; flushed and fsynced per call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO | None = open(path, "ab")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def write(self, lines: Iterable[bytes]) -> None:
        data = b"".join(lines)
        if not data:
            return
        with self._lock:
            if self._fh is None:
                raise RuntimeError("PartialWriter is closed")
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


class PartFiles:
    """The part files of one run under ``out_dir`` (see the module docstring).

    Args:
        out_dir: the run's output folder; the part files go to ``out_dir/partial``.
        lock_name: the lock file that keeps a second run out of ``out_dir``.
        what: what the run is called in messages ("evaluation", "prediction").
    """

    def __init__(self, out_dir: str | os.PathLike[str], *, lock_name: str = ".anzoo.lock",
                 what: str = "run") -> None:
        self.out_dir = Path(out_dir)
        self.partial_dir = self.out_dir / PARTIAL_DIR
        self.lock_name = lock_name
        self.what = what

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock: one run at a time writes into a folder."""
        from filelock import FileLock, Timeout

        self.out_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.out_dir / self.lock_name))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise AnzooError(f"another {self.what} is writing to {self.out_dir}; wait for it, or use "
                             f"another --out folder") from None
        try:
            yield
        finally:
            lock.release()

    def prepare(self, fingerprint: Mapping[str, Any], resume: bool) -> set[int]:
        """Get the partial folder ready; return the item ids already done (resume only).

        Without ``resume`` earlier partial results are removed. With it, they must come from a
        run with the same ``fingerprint`` (AnzooError otherwise).
        """
        run_file = self.partial_dir / RUN_FILE
        if resume and self.partial_dir.is_dir():
            try:
                previous = json.loads(run_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("%s is missing or unreadable: cannot check that the partial results were made "
                            "with the same settings", run_file)
                previous = None
            if previous is not None and previous != json.loads(json.dumps(dict(fingerprint))):
                changed = sorted(k for k in set(previous) | set(fingerprint)
                                 if previous.get(k) != fingerprint.get(k))
                raise AnzooError(f"the partial results in {self.partial_dir} were made with other settings "
                                 f"({', '.join(changed)} differ); run without --resume to start over")
            done = set(self.index())
            log.info("resuming: %d items already done in %s", len(done), self.partial_dir)
        else:
            if resume:
                log.info("nothing to resume in %s; starting from the first image", self.out_dir)
            elif self.partial_dir.is_dir():
                log.info("removing the partial results of an earlier run in %s (use --resume to continue it)",
                         self.partial_dir)
            self.remove_partial()
            done = set()
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_file, dict(fingerprint))
        return done

    def writer(self, run_token: str, rank: int) -> PartialWriter:
        return PartialWriter(self.partial_dir / f"{run_token}-rank{rank}.jsonl")

    def partial_files(self) -> list[Path]:
        return sorted(self.partial_dir.glob("*.jsonl")) if self.partial_dir.is_dir() else []

    def index(self) -> dict[int, tuple[Path, int, int]]:
        """item id -> (file, offset, length) of its first complete line."""
        found: dict[int, tuple[Path, int, int]] = {}
        for path in self.partial_files():
            offset = 0
            with open(path, "rb") as fh:
                for line in fh:
                    length = len(line)
                    match = _LINE_ID.match(line)
                    if match and line.endswith(b"\n"):
                        found.setdefault(int(match.group(1)), (path, offset, length))
                    elif line.strip():
                        log.debug("ignoring an incomplete line at byte %d of %s", offset, path)
                    offset += length
        return found

    def read(self, item_ids: Sequence[int],
             index: Mapping[int, tuple[Path, int, int]] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(id, line as a dict)`` for ``item_ids``, in that order (``index``: :meth:`index`'s,
        when already built). AnzooError, at once, if an item has no line; while reading, if a
        line is damaged."""
        index = self.index() if index is None else index
        missing = [i for i in item_ids if i not in index]
        if missing:
            raise AnzooError(f"{len(missing)} items have no results in {self.partial_dir} (e.g. "
                             f"{missing[:5]}); run again with --resume")
        return self._lines(item_ids, index)

    @staticmethod
    def _lines(item_ids: Sequence[int],
               index: Mapping[int, tuple[Path, int, int]]) -> Iterator[tuple[int, dict[str, Any]]]:
        handles: dict[Path, BinaryIO] = {}
        try:
            for item_id in item_ids:
                path, offset, length = index[item_id]
                fh = handles.get(path)
                if fh is None:
                    fh = handles[path] = open(path, "rb")  # noqa: SIM115 - closed below
                fh.seek(offset)
                try:
                    fields = json.loads(fh.read(length))
                except ValueError as exc:
                    raise AnzooError(f"the partial results of item {item_id} in {path} are damaged "
                                     f"({exc}); run again without --resume") from exc
                yield item_id, fields
        finally:
            for fh in handles.values():
                fh.close()

    def remove_partial(self) -> None:
        if self.partial_dir.exists():
            shutil.rmtree(self.partial_dir)
