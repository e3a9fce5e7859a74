"""Results on disk: per-image partial results while running, the COCO results files at the end.

While an evaluation runs, each process appends one line per finished image to its own file
``<out>/partial/<run>-rank<r>.jsonl``::

    {"image_id":139,"records":[{"image_id":139,"category_id":1,"bbox":[...],"score":0.99,"segmentation":{...}}, ...]}

flushed and fsynced after every batch. Every run (a fresh start or a ``--resume``) writes new
files and never appends to old ones, so a line torn by a crash can only be the last line of
some file; lines without their final newline are ignored. On resume the images that already
have a complete line are skipped; when several lines name the same image (it cannot happen
through :func:`anzoo.evaluation.evaluate`, but files may be copied around) the first one
counts, so no image is ever counted twice. ``partial/run.json`` records what the results were
made with; resuming with another model, weights, dataset or scale is refused.

At the end rank 0 streams the lines, in the dataset's image order, into ``results.segm.json``
(records with ``segmentation`` and ``bbox``) and ``results.bbox.json`` (without
``segmentation``), each written to a temporary file and renamed into place.
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

from ..errors import AnzooError
from ..fileio import atomic_open, atomic_write_json

__all__ = [
    "BBOX_FILE",
    "METRICS_FILE",
    "SEGM_FILE",
    "PartialWriter",
    "ResultStore",
    "result_line",
]

log = logging.getLogger(__name__)

BBOX_FILE = "results.bbox.json"
SEGM_FILE = "results.segm.json"
METRICS_FILE = "metrics.json"
PARTIAL_DIR = "partial"
RUN_FILE = "run.json"
LOCK_FILE = ".anzoo-eval.lock"

_LINE_ID = re.compile(rb'^\{"image_id":(-?\d+),')


def result_line(image_id: int, records: Sequence[Mapping[str, Any]]) -> bytes:
    """One partial-results line (compact JSON, newline-terminated)."""
    body = json.dumps(list(records), separators=(",", ":"), ensure_ascii=True)
    return b'{"image_id":%d,"records":%s}\n' % (int(image_id), body.encode("ascii"))


class PartialWriter:
    """Appends result lines to one file; thread-safe; flushed and fsynced per call."""

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


class ResultStore:
    """The files of one evaluation under ``out_dir`` (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir)
        self.partial_dir = self.out_dir / PARTIAL_DIR

    @property
    def bbox_file(self) -> Path:
        return self.out_dir / BBOX_FILE

    @property
    def segm_file(self) -> Path:
        return self.out_dir / SEGM_FILE

    @property
    def metrics_file(self) -> Path:
        return self.out_dir / METRICS_FILE

    # ------------------------------------------------------------------ locking
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock: one evaluation at a time writes into a folder."""
        from filelock import FileLock, Timeout

        self.out_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.out_dir / LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise AnzooError(f"another evaluation is writing to {self.out_dir}; wait for it, or use "
                             f"another --out folder") from None
        try:
            yield
        finally:
            lock.release()

    # ------------------------------------------------------------------ partial results
    def prepare(self, fingerprint: Mapping[str, Any], resume: bool) -> set[int]:
        """Get the partial folder ready; return the image ids already done (resume only).

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
            log.info("resuming: %d images already done in %s", len(done), self.partial_dir)
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
        """image id -> (file, offset, length) of its first complete line."""
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

    def remove_partial(self) -> None:
        if self.partial_dir.exists():
            shutil.rmtree(self.partial_dir)

    # ------------------------------------------------------------------ final files
    def write_results(self, image_ids: Sequence[int]) -> int:
        """Write the two results files from the partial lines of ``image_ids`` (in that order);
        return the number of records. AnzooError if an image has no result."""
        index = self.index()
        missing = [i for i in image_ids if i not in index]
        if missing:
            raise AnzooError(f"{len(missing)} images have no results in {self.partial_dir} (e.g. "
                             f"{missing[:5]}); run again with --resume")
        count = 0
        with atomic_open(self.segm_file) as segm, atomic_open(self.bbox_file) as bbox:
            segm.write(b"[")
            bbox.write(b"[")
            handles: dict[Path, BinaryIO] = {}
            try:
                for image_id in image_ids:
                    path, offset, length = index[image_id]
                    fh = handles.get(path)
                    if fh is None:
                        fh = handles[path] = open(path, "rb")  # noqa: SIM115 - closed below
                    fh.seek(offset)
                    line = fh.read(length)
                    try:
                        records = json.loads(line)["records"]
                    except (ValueError, KeyError) as exc:
                        raise AnzooError(f"the partial results of image {image_id} in {path} are damaged "
                                         f"({exc}); run again without --resume") from exc
                    for record in records:
                        sep = b",\n" if count else b"\n"
                        segm.write(sep + json.dumps(record).encode())
                        box_only = {k: v for k, v in record.items() if k != "segmentation"}
                        bbox.write(sep + json.dumps(box_only).encode())
                        count += 1
            finally:
                for fh in handles.values():
                    fh.close()
            segm.write(b"\n]\n")
            bbox.write(b"\n]\n")
        return count
