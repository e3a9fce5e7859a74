"""The weights cache: download, lock, verify, unpack, import, offline.

Layout under :func:`cache_dir` (``$ANZOO_HOME``, default ``~/.cache/anzoo``)::

    models/<id>/<id>.pth                  a detector checkpoint as downloaded
    models/<id>/<id>.pth.sha256           its sha256, recorded on first download
    backbones/<id>/.../model_best.pth.tar the checkpoint unpacked from an archive
    backbones/<id>/.../config.yaml        (the archive's other files, kept beside it)
    models/.<id>.lock                     one lock file per entry

A download goes into a fresh ``.<id>.XXXXXXXX.partial`` folder beside the entry's folder and
is renamed into place only once it is complete, checked and unpacked: an interrupted
download never leaves anything that looks like a cached file. A file lock per entry makes a
second process wait for the first and then reuse its file. The sha256 of the usable
checkpoint is stored in a ``<file>.sha256`` sidecar (``sha256sum`` format) and checked on
every :func:`fetch_weights`; ``weights.sha256`` in ``zoo.yaml`` pins the file as served.

Google Drive files go through gdown; any other http(s) URL (``--url``, ``weights.url``,
``weights.mirrors``) goes through gdown's plain-HTTP path, with the same timeouts, retries
and progress bar. ``ANZOO_OFFLINE=1`` turns every network access into an
:class:`~anzoo.errors.OfflineError` that says which file is missing and where to put it.
Checkpoints are only ever read with ``torch.load(weights_only=True)``.

A cache that cannot be written (disk full, file too large, read-only, no permission) gives
one :class:`~anzoo.errors.CacheError` naming its folder; a read-only cache (a shared, mounted
one) still serves the files it holds and has verified, without a lock: nothing can change it.
"""
from __future__ import annotations

import errno
import hashlib
import inspect
import io
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import CacheError, CheckpointError, DownloadError, IntegrityError, OfflineError
from .schema import HF_URL_RE
from .zoo import WeightsSpec, get_backbone_entry, get_entry, list_backbone_entries, list_entries

__all__ = [
    "ENV_HOME",
    "ENV_OFFLINE",
    "CacheState",
    "cache_dir",
    "is_offline",
    "fetch_weights",
    "fetch_backbone_weights",
    "cached_weights",
    "cached_backbone_weights",
    "cache_state",
    "import_weights",
    "import_backbone_weights",
    "pack_cache",
    "unpack_cache",
    "set_import_validator",
    "sha256_file",
]

logger = logging.getLogger(__name__)

ENV_HOME = "ANZOO_HOME"
ENV_OFFLINE = "ANZOO_OFFLINE"

#: seconds to wait for a connection, and for the next bytes of an answer.
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0
#: further attempts after a transient network failure (gdown resumes the transfer).
DOWNLOAD_RETRIES = 2
#: how long a process waits for another one that is fetching the same entry.
LOCK_TIMEOUT = 2 * 3600.0

#: the oldest gdown whose download() takes every argument _transfer passes (hasher, timeout
#: and retries came in 6.3; progress in 6.0)
GDOWN_MIN_VERSION = "6.3"

#: errors of a cache that cannot take a write: reported as such, never as "try the next mirror"
_READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

_DOWNLOAD_NAME = ".download"  # the raw file inside a .partial folder
_SIDECAR_SUFFIX = ".sha256"

Validator = Callable[[str, Path], None]
_IMPORT_VALIDATORS: dict[str, Validator] = {}


# --------------------------------------------------------------------------- settings
def cache_dir() -> Path:
    """``$ANZOO_HOME`` or ``~/.cache/anzoo`` (not created here)."""
    home = os.environ.get(ENV_HOME, "").strip()
    return Path(home).expanduser() if home else Path.home() / ".cache" / "anzoo"


def is_offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


def set_import_validator(kind: str, validate: Validator | None) -> None:
    """Register the check :func:`import_weights` runs on every imported file by default.

    ``kind`` is ``'model'`` or ``'backbone'``; ``validate(entry_id, checkpoint_path)`` raises
    :class:`~anzoo.errors.CheckpointError` when the file does not fit the entry's architecture.
    """
    if kind not in ("model", "backbone"):
        raise ValueError(f"kind must be 'model' or 'backbone', not {kind!r}")
    if validate is None:
        _IMPORT_VALIDATORS.pop(kind, None)
    else:
        _IMPORT_VALIDATORS[kind] = validate


# --------------------------------------------------------------------------- cache items
@dataclass(frozen=True)
class _Item:
    """What the cache stores for one zoo entry (a detector or an ImageNet backbone)."""

    kind: str  # 'model' | 'backbone'
    id: str
    weights: WeightsSpec | None
    notes: str | None = None

    @property
    def root(self) -> Path:
        return cache_dir() / f"{self.kind}s"

    @property
    def folder(self) -> Path:
        return self.root / self.id

    @property
    def lock_path(self) -> Path:
        return self.root / f".{self.id}.lock"

    @property
    def filename(self) -> str:
        if self.weights is not None and self.weights.filename:
            return self.weights.filename
        return f"{self.id}.pth" if self.kind == "model" else f"{self.id}.zip"

    @property
    def label(self) -> str:
        return f"{self.kind} {self.id}"

    def command(self, verb: str, *extra: str) -> str:
        flag = " --imagenet" if self.kind == "backbone" else ""
        return " ".join(["anzoo", verb + flag, self.id, *extra])

    def manual_url(self, url: str | None = None) -> str | None:
        link = url or (self.weights.manual_url if self.weights is not None else None)
        hf = HF_URL_RE.fullmatch(link) if link else None
        if hf is not None:  # the file's page on the Hub, for a browser
            endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
            return f"{endpoint}/{hf['repo']}/resolve/{hf['revision'] or 'main'}/{hf['path']}"
        return link

    def by_hand(self, url: str | None = None) -> str:
        """The sentence telling a person how to get the file into the cache themselves."""
        link = self.manual_url(url)
        get = f"download {link} in a browser" if link else "get the checkpoint file"
        return f"{get}, then run `{self.command('import', 'FILE')}`"


def _model_item(model_id: str) -> _Item:
    entry = get_entry(model_id)
    return _Item("model", entry.id, entry.weights, entry.notes)


def _backbone_item(backbone_id: str) -> _Item:
    entry = get_backbone_entry(backbone_id)
    return _Item("backbone", entry.id, entry.weights, entry.notes)


@dataclass(frozen=True)
class _Source:
    """One place to download from."""

    gdrive_id: str | None = None
    url: str | None = None  # http(s)://... or hf://OWNER/REPO/PATH[@REVISION]

    @property
    def hf(self) -> re.Match[str] | None:
        return HF_URL_RE.fullmatch(self.url) if self.url else None

    def __str__(self) -> str:
        return f"Google Drive file {self.gdrive_id}" if self.gdrive_id else str(self.url)


def _sources(item: _Item, url: str | None) -> list[_Source]:
    if url is not None:
        if not (re.match(r"^https?://", url) or HF_URL_RE.fullmatch(url)):
            raise DownloadError(f"`url` must be an http(s) URL or hf://OWNER/REPO/PATH[@REVISION], got {url!r}")
        return [_Source(url=url)]
    w = item.weights
    assert w is not None
    sources = []
    if w.gdrive_id:
        sources.append(_Source(gdrive_id=w.gdrive_id))
    sources += [_Source(url=u) for u in (w.url, *w.mirrors) if u]
    return sources


# --------------------------------------------------------------------------- public API
@dataclass(frozen=True)
class CacheState:
    """What the cache holds for one entry (cheap to compute: nothing is hashed)."""

    folder: Path
    checkpoint: Path | None  # the usable checkpoint file, None when not cached
    sha256: str | None  # as recorded on download
    size: int | None

    @property
    def cached(self) -> bool:
        return self.checkpoint is not None


def fetch_weights(model_id: str, *, force: bool = False, url: str | None = None,
                  progress: bool = True) -> Path:
    """The path of a detector's checkpoint file, downloading it on first use.

    A cached file is verified against its recorded sha256 first (IntegrityError on
    mismatch: fetch again with ``force=True``). ``url`` replaces the zoo's sources.
    """
    return _fetch(_model_item(model_id), force=force, url=url, progress=progress)


def fetch_backbone_weights(backbone_id: str, *, force: bool = False, url: str | None = None,
                           progress: bool = True) -> Path:
    """Same as :func:`fetch_weights` for an ImageNet backbone (the ``backbones:`` section);
    the AOGNet-v2 archives are unpacked and the path of ``model_best.pth.tar`` returned."""
    return _fetch(_backbone_item(backbone_id), force=force, url=url, progress=progress)


def cached_weights(model_id: str) -> Path | None:
    """The cached checkpoint of a detector, or None. Does not verify (see fetch_weights)."""
    return _state(_model_item(model_id)).checkpoint


def cached_backbone_weights(backbone_id: str) -> Path | None:
    return _state(_backbone_item(backbone_id)).checkpoint


def cache_state(entry_id: str, *, backbone: bool = False) -> CacheState:
    return _state(_backbone_item(entry_id) if backbone else _model_item(entry_id))


def import_weights(model_id: str, file: str | os.PathLike[str],
                   validate: Validator | None = None) -> Path:
    """Check a checkpoint obtained by hand and put it into the cache (replacing any cached one).

    The file (or the checkpoint inside a zip archive) must load with
    ``torch.load(weights_only=True)``, match a sha256 pinned in the zoo, and pass
    ``validate(model_id, path)`` (default: the validator registered for models).
    """
    return _import(_model_item(model_id), file, validate)


def import_backbone_weights(backbone_id: str, file: str | os.PathLike[str],
                            validate: Validator | None = None) -> Path:
    return _import(_backbone_item(backbone_id), file, validate)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- the work
def _fetch(item: _Item, *, force: bool, url: str | None, progress: bool) -> Path:
    if item.weights is None and url is None:
        imported = None if force else _state(item).checkpoint
        if imported is not None:  # a row without released weights, given its checkpoint by `import`
            _verify(item, imported)
            return imported
        why = f" ({item.notes})" if item.notes else ""
        raise DownloadError(f"{item.label} has no released weights{why}; give a URL with `url`, "
                            f"or register your own checkpoint with `{item.command('import', 'FILE')}`")
    with _cache_errors(item), _locked(item) as writable:
        if writable:
            _remove_leftovers(item)
        if not force:
            checkpoint = _state(item).checkpoint
            if checkpoint is not None:
                _verify(item, checkpoint)
                if url is not None:
                    logger.warning("the cache already holds the weights of %s (%s), so %s was not used; "
                                   "to fetch them from it, add --force: `%s`", item.label, checkpoint, url,
                                   item.command("download", "--url", url, "--force"))
                return checkpoint
        if not writable:
            held = "" if force else " and holds no verified weights of " + item.label
            raise CacheError(f"the weights cache {item.root} is read-only{held}: "
                             f"set {ENV_HOME} to a folder you can write to")
        if not force:
            placed = item.folder / item.filename
            if placed.is_file():  # copied there by hand, e.g. on an offline machine
                logger.info("adding %s to the cache", placed)
                return _install_file(item, placed, validate=None)
        if is_offline():
            raise OfflineError(
                f"{ENV_OFFLINE} is set and the weights of {item.label} are not in the cache: "
                f"{item.folder / item.filename} is missing. To add them, {item.by_hand(url)} "
                f"(or copy the file to {item.folder / item.filename}).")
        return _download(item, url=url, progress=progress)


def _import(item: _Item, file: str | os.PathLike[str], validate: Validator | None) -> Path:
    path = Path(file).expanduser()
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    with _cache_errors(item), _locked(item) as writable:
        if not writable:
            raise CacheError(f"the weights cache {item.root} is read-only: set {ENV_HOME} to a folder "
                             "you can write to")
        _remove_leftovers(item)
        return _install_file(item, path, validate=validate or _IMPORT_VALIDATORS.get(item.kind))


def _download(item: _Item, *, url: str | None, progress: bool) -> Path:
    sources = _sources(item, url)
    failures: list[tuple[_Source, Exception]] = []
    for i, source in enumerate(sources):
        logger.info("downloading the weights of %s from %s", item.label, source)
        try:
            with _staging(item) as staging:
                raw = staging / _DOWNLOAD_NAME
                digest = _transfer(source, raw, label=item.id, progress=progress)
                path = _finish(item, staging, raw, digest, origin=str(source),
                               error=DownloadError, validate=None)
                logger.info("saved %s", path)
                return path
        except (DownloadError, IntegrityError, CheckpointError) as exc:
            failures.append((source, exc))
            if i + 1 < len(sources):
                logger.warning("%s; trying the next source", exc)
    reasons = "; ".join(str(exc).rstrip(".") for _, exc in failures)
    message = f"could not fetch the weights of {item.label}: {reasons}. To add them by hand, {item.by_hand(url)}."
    if all(isinstance(exc, IntegrityError) for _, exc in failures):
        raise IntegrityError(message)
    if all(isinstance(exc, OfflineError) for _, exc in failures):
        raise OfflineError(message)
    raise DownloadError(message)


def _install_file(item: _Item, file: Path, validate: Validator | None) -> Path:
    with _staging(item) as staging:
        raw = staging / _DOWNLOAD_NAME
        try:
            source = open(file, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise CheckpointError(f"cannot read {file}: {exc.strerror or exc}") from None
        with source, open(raw, "wb") as copy:  # write errors: CacheError (_cache_errors)
            shutil.copyfileobj(source, copy, 1 << 20)
        path = _finish(item, staging, raw, sha256_file(raw), origin=str(file),
                       error=CheckpointError, validate=validate)
        logger.info("imported %s as %s", file, path)
        return path


def _finish(item: _Item, staging: Path, raw: Path, digest: str, *, origin: str,
            error: type[Exception], validate: Validator | None) -> Path:
    """Check a complete raw file in ``staging``, unpack it, record its sha256 and move the
    folder into place. Returns the final path of the usable checkpoint."""
    kind = _sniff(raw)
    if kind == "html":
        raise error(f"{origin} gave a web page instead of the weights file{_html_title(raw)} "
                    "(Google Drive does this when the file's download quota is exceeded or it "
                    "is not shared publicly)")
    if kind == "unknown":
        raise error(f"{origin} is neither a PyTorch checkpoint nor a zip archive "
                    f"(it starts with {raw.read_bytes()[:16]!r})")
    pinned = item.weights.sha256 if item.weights is not None else None
    if pinned and digest != pinned:
        raise IntegrityError(f"{origin} has sha256 {digest}, but the zoo pins {pinned} for {item.label}")
    if kind == "archive":
        checkpoint = _unpack(raw, staging, origin)
        checkpoint_digest = sha256_file(checkpoint)
    else:
        checkpoint = raw.rename(staging / item.filename)
        checkpoint_digest = digest
    from .checkpoint import read_checkpoint  # torch is only needed once a file is in hand

    try:
        read_checkpoint(checkpoint)  # CheckpointError if it does not load (weights_only=True)
        if validate is not None:
            validate(item.id, checkpoint)
    except CheckpointError as exc:  # named as the person knows it, not as staged in the cache
        raise CheckpointError(str(exc).replace(str(checkpoint), origin)) from None
    _write_sidecar(checkpoint, checkpoint_digest)
    return _publish(item, staging, checkpoint)


def _sniff(path: Path) -> str:
    """'archive' (a plain zip), 'checkpoint' (torch.save, zip or legacy pickle), 'html' or
    'unknown': decided by the content, never by the name."""
    if zipfile.is_zipfile(path):
        from .checkpoint import is_torch_zip

        try:
            with zipfile.ZipFile(path) as zf:
                return "checkpoint" if is_torch_zip(zf) else "archive"
        except zipfile.BadZipFile:
            return "unknown"
    with open(path, "rb") as f:
        head = f.read(1024)
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text[:512]:
        return "html"
    if head[:1] == b"\x80":  # pickle protocol >= 2: the legacy torch.save format
        return "checkpoint"
    return "unknown"


def _html_title(path: Path) -> str:
    text = path.read_bytes()[:65536].decode("utf-8", "replace")
    m = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    title = " ".join(m.group(1).split()) if m else ""
    return f" (titled {title[:80]!r})" if title else ""


def _unpack(archive: Path, staging: Path, origin: str) -> Path:
    """Extract a zip archive into ``staging``; the path of the checkpoint inside it."""
    from .checkpoint import checkpoint_member, check_archive_bounds

    try:
        with zipfile.ZipFile(archive) as zf:
            size = check_archive_bounds(zf, origin)  # before a byte is written
            member = checkpoint_member(zf)  # CheckpointError when the archive holds none
            for name in zf.namelist():
                parts = Path(name).parts
                if Path(name).is_absolute() or ".." in parts or (parts and parts[0] == _DOWNLOAD_NAME):
                    raise CheckpointError(f"the archive holds an unsafe path: {name!r}")
            free = shutil.disk_usage(staging).free
            if size > free:
                raise OSError(errno.ENOSPC, f"the archive unpacks to {size / 2**20:.0f} MiB, "
                                            f"{free / 2**20:.0f} MiB are free", str(staging))
            zf.extractall(staging, members=[n for n in zf.namelist() if "__MACOSX" not in n])
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"{origin} is a damaged zip archive ({exc})") from None
    archive.unlink()
    return staging / member


def _write_sidecar(checkpoint: Path, digest: str) -> None:
    sidecar = checkpoint.with_name(checkpoint.name + _SIDECAR_SUFFIX)
    sidecar.write_text(f"{digest}  {checkpoint.name}\n", encoding="utf-8")


def _read_sidecar(sidecar: Path) -> str | None:
    try:
        digest = sidecar.read_text(encoding="utf-8").split()[0].lower()
    except (OSError, IndexError):
        return None
    return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None


def _state(item: _Item) -> CacheState:
    sidecars = sorted(item.folder.rglob(f"*{_SIDECAR_SUFFIX}")) if item.folder.is_dir() else []
    for sidecar in sidecars:
        checkpoint = sidecar.with_name(sidecar.name[: -len(_SIDECAR_SUFFIX)])
        if checkpoint.is_file():
            return CacheState(item.folder, checkpoint, _read_sidecar(sidecar), checkpoint.stat().st_size)
    return CacheState(item.folder, None, None, None)


def _verify(item: _Item, checkpoint: Path) -> None:
    recorded = _read_sidecar(checkpoint.with_name(checkpoint.name + _SIDECAR_SUFFIX))
    actual = sha256_file(checkpoint)
    if recorded != actual:
        raise IntegrityError(
            f"the cached weights of {item.label} do not match the sha256 recorded when they were "
            f"downloaded ({checkpoint} has {actual[:16]}..., recorded {str(recorded)[:16]}...); "
            f"fetch them again with `{item.command('download', '--force')}`")


def _publish(item: _Item, staging: Path, checkpoint: Path) -> Path:
    """Rename the finished staging folder to the entry's folder (replacing an old one)."""
    relative = checkpoint.relative_to(staging)
    old = None
    if item.folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{item.id}.", suffix=".old", dir=item.root))
        os.replace(item.folder, old / "previous")
    os.replace(staging, item.folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return item.folder / relative


@contextmanager
def _staging(item: _Item) -> Iterator[Path]:
    """A fresh ``.<id>.XXXXXXXX.partial`` folder beside the entry's folder, removed on exit
    unless :func:`_publish` renamed it into place."""
    item.root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{item.id}.", suffix=".partial", dir=item.root))
    # mkdtemp makes it private (0700); once published, it is as readable as the cache itself
    # (a shared, read-only cache serves other users too)
    staging.chmod(item.root.stat().st_mode & 0o777)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_leftovers(item: _Item) -> None:
    """Remove what a killed process left behind (called with the entry's lock held)."""
    pattern = re.compile(rf"^\.{re.escape(item.id)}\.[a-z0-9_]{{8}}\.(partial|old)$")
    for path in item.root.glob(f".{item.id}.*"):
        if pattern.match(path.name):
            logger.debug("removing the leftover %s", path)
            shutil.rmtree(path, ignore_errors=True)


def _read_only(item: _Item) -> bool:
    """Whether the cache cannot be written where the entry's lock lives (access(2) also
    answers so for root on a read-only mount)."""
    path = item.lock_path if item.lock_path.exists() else item.root
    while not path.exists() and path != path.parent:
        path = path.parent
    return not os.access(path, os.W_OK)


@contextmanager
def _cache_errors(item: _Item) -> Iterator[None]:
    """Turn an OSError of a cache that cannot take a write into one CacheError naming its folder."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _FULL_ERRNOS | _READ_ONLY_ERRNOS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        advice = (f"set {ENV_HOME} to a folder you can write to" if exc.errno in _READ_ONLY_ERRNOS else
                  f"free some space there, or set {ENV_HOME} to a folder on a disk with room")
        reason = exc.strerror or os.strerror(exc.errno)
        raise CacheError(f"cannot write to the weights cache {item.root}: {reason}{where}; {advice}") from None


@contextmanager
def _locked(item: _Item) -> Iterator[bool]:
    """Hold the entry's file lock and yield True; on a read-only cache, yield False without a
    lock (nothing can change there, so only its verified files can be served)."""
    from filelock import FileLock, Timeout

    if _read_only(item):
        yield False
        return
    lock = FileLock(str(item.lock_path))
    try:
        item.root.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0.2)
    except Timeout:  # (a TimeoutError, so an OSError: caught first)
        logger.info("waiting for another anzoo process that is fetching %s", item.label)
        try:
            lock.acquire(timeout=LOCK_TIMEOUT)
        except Timeout:
            raise DownloadError(f"gave up waiting for the lock {item.lock_path} after "
                                f"{LOCK_TIMEOUT:.0f} s; is another anzoo process stuck?") from None
    except OSError as exc:  # e.g. a read-only mount that access(2) did not report
        if exc.errno not in _READ_ONLY_ERRNOS:
            raise
        lock = None
    if lock is None:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


# --------------------------------------------------------------------------- transfers
def _gdown_download(**kwargs):
    """gdown.download (a seam for tests that must never reach Google Drive)."""
    import gdown

    return gdown.download(**kwargs)


def _check_gdown() -> None:
    """One clear error instead of a TypeError when an older gdown than the declared one is
    installed (anzoo passes timeouts and a hasher that gdown < 6.3 does not take)."""
    import gdown

    params = inspect.signature(gdown.download).parameters
    missing = [p for p in ("progress", "hasher", "timeout", "retries") if p not in params]
    if missing:
        version = getattr(gdown, "__version__", "?")
        raise DownloadError(f"gdown {version} is too old for anzoo (its download() takes no "
                            f"{', '.join(missing)}); upgrade it: pip install 'gdown>={GDOWN_MIN_VERSION}'")


def _transfer(source: _Source, dest: Path, *, label: str, progress: bool) -> str:
    """Download ``source`` to ``dest``; the sha256 of the bytes written."""
    import gdown.exceptions
    import requests

    if source.hf is not None:
        return _hf_transfer(source, dest, label=label, progress=progress)
    _check_gdown()
    hasher = hashlib.sha256()
    target = {"id": source.gdrive_id} if source.gdrive_id else {"url": source.url}
    with _progress_bar(label, enabled=progress) as report:
        try:
            _gdown_download(**target, output=str(dest), quiet=True, progress=report,
                            use_cookies=bool(source.gdrive_id), hasher=hasher,
                            timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), retries=DOWNLOAD_RETRIES)
        except gdown.exceptions.FileURLRetrievalError as exc:
            raise DownloadError(f"Google Drive refused the file {source.gdrive_id} "
                                f"({_drive_reason(exc)})") from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "error"
            reason = exc.response.reason if exc.response is not None else ""
            raise DownloadError(f"{source} answered HTTP {status} {reason}".rstrip()) from None
        except (requests.RequestException, gdown.exceptions.DownloadError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS | _READ_ONLY_ERRNOS:
                raise  # the cache, not the source: CacheError (no other mirror would help)
            raise DownloadError(f"downloading {source} failed ({_network_reason(exc)})") from None
    if not dest.is_file():
        raise DownloadError(f"downloading {source} produced no file")
    return hasher.hexdigest()


def _hf_transfer(source: _Source, dest: Path, *, label: str, progress: bool) -> str:
    """Download an hf:// source with huggingface_hub's downloader (HF_ENDPOINT, HF_TOKEN and
    HF_HUB_OFFLINE as it reads them, each also read at this call) into ``dest``."""
    match = source.hf
    assert match is not None
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise OfflineError(f"HF_HUB_OFFLINE is set, so {source} cannot be fetched")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DownloadError(f"{source} needs huggingface_hub: pip install 'anzoo[hf]'") from None
    with _progress_bar(label, enabled=progress) as report, \
            tempfile.TemporaryDirectory(prefix=".hf.", dir=dest.parent) as local_dir:
        try:
            path = hf_hub_download(match["repo"], match["path"], revision=match["revision"], local_dir=local_dir,
                                   endpoint=os.environ.get("HF_ENDPOINT") or None, token=os.environ.get("HF_TOKEN"),
                                   etag_timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS | _READ_ONLY_ERRNOS:
                raise  # the cache, not the source: CacheError
            raise DownloadError(f"downloading {source} failed ({_hf_reason(exc)})") from None
        except Exception as exc:  # huggingface_hub's HTTP, repository and revision errors
            raise DownloadError(f"downloading {source} failed ({_hf_reason(exc)})") from None
        os.replace(path, dest)
        if report is not None:
            report(dest.stat().st_size, dest.stat().st_size)
    return sha256_file(dest)


def _hf_reason(exc: BaseException) -> str:
    """The first line of huggingface_hub's message (the rest is advice about its own cache)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _network_reason(exc: BaseException) -> str:
    import requests

    cause = exc.__cause__ if isinstance(exc.__cause__, requests.RequestException) else exc
    # requests reports a read timeout in the middle of a body as a ConnectionError
    if isinstance(cause, requests.Timeout) or "timed out" in str(cause):
        return f"no answer within {READ_TIMEOUT:g} s"
    if isinstance(cause, requests.ConnectionError) and not isinstance(cause, requests.exceptions.ChunkedEncodingError):
        text = str(cause)
        if re.search(r"Failed to establish a new connection|Name or service not known|"
                     r"nodename nor servname|getaddrinfo failed|Connection refused", text):
            return "cannot connect to the server"
    return _first_sentence(exc)


def _drive_reason(exc: BaseException) -> str:
    """Why Google Drive would not hand out a file, in a few words (gdown's text is long)."""
    text = " ".join(str(exc).split())
    if re.search(r"too many users|quota", text, re.IGNORECASE):
        return "its download quota is exceeded for now; too many users fetched the file recently"
    if re.search(r"permission|public link|anyone with the link", text, re.IGNORECASE):
        return "it is not publicly shared, or Drive limits access to it for now"
    text = re.sub(r"^Failed to retrieve file url:\s*", "", text)
    text = re.split(r"\s*You may still be able to access", text)[0]
    return _first_sentence(text)


def _first_sentence(exc: BaseException | str) -> str:
    """gdown's message, on one line, without its advice about resuming its own partial files
    (anzoo removes them) or its FAQ link."""
    text = " ".join(str(exc).split())
    sentences = re.split(r"(?<=[.;])\s+", text)
    keep = [s for s in sentences
            if not re.search(r"partial file|kept in|--continue|resume|Check FAQ", s, re.IGNORECASE)]
    text = " ".join(keep).rstrip(" .;") or text
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)


@contextmanager
def _progress_bar(label: str, *, enabled: bool) -> Iterator[Callable[[int, int | None], None] | None]:
    """A rich progress bar on stderr, shown from the first bytes on (a source that fails
    before sending anything leaves no empty bar behind)."""
    if not enabled:
        yield None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    from .log import stderr_console

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn(), console=stderr_console())
    task = None

    def report(done: int, total: int | None) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(label, total=total)
        bar.update(task, completed=done, total=total)

    try:
        yield report
    finally:
        if task is not None:
            bar.stop()


# --------------------------------------------------------------------------- pack / unpack
#: the manifest, the archive's first member: each entry's files with their sizes and sha256
PACK_MANIFEST = "anzoo-cache.json"
PACK_FORMAT = "anzoo-cache/1"
#: bounds on what an archive may ask of unpack, checked before anything is written
_PACK_MAX_MANIFEST, _PACK_MAX_ENTRIES, _PACK_MAX_FILES = 1 << 20, 1000, 100
_PACK_PATH = re.compile(r"[\w.+-]+(/[\w.+-]+)*")


def pack_cache(out: str | os.PathLike[str], model_ids: list[str] | None = None,
               backbone_ids: list[str] | None = None) -> list[str]:
    """Write verified cache entries into the tar file ``out`` (atomically), to carry them to a
    machine without network (:func:`unpack_cache`). No ids at all: every cached entry. Returns
    the entries packed, as ``'model r50-an'``."""
    import json
    import tarfile

    from .fileio import atomic_path

    if model_ids is None and backbone_ids is None:
        items = [_model_item(e.id) for e in list_entries()] + [_backbone_item(b.id) for b in list_backbone_entries()]
        items = [item for item in items if _state(item).checkpoint is not None]
        if not items:
            raise CacheError(f"the weights cache {cache_dir()} holds nothing to pack")
    else:
        items = [_model_item(i) for i in model_ids or []] + [_backbone_item(i) for i in backbone_ids or []]
    manifest: dict[str, object] = {"format": PACK_FORMAT, "entries": []}
    for item in items:
        checkpoint = _state(item).checkpoint
        if checkpoint is None:
            raise CacheError(f"the cache holds no weights of {item.label}: `{item.command('download')}` first")
        _verify(item, checkpoint)
        files = sorted(p for p in item.folder.rglob("*") if p.is_file())
        manifest["entries"].append({  # type: ignore[attr-defined]
            "kind": item.kind, "id": item.id, "checkpoint": checkpoint.relative_to(item.folder).as_posix(),
            "files": [{"path": p.relative_to(item.folder).as_posix(), "size": p.stat().st_size,
                       "sha256": sha256_file(p)} for p in files]})
    data = json.dumps(manifest, indent=1).encode()
    with atomic_path(out) as tmp, tarfile.open(tmp, "w") as tar:
        info = tarfile.TarInfo(PACK_MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for item, entry in zip(items, manifest["entries"]):  # type: ignore[call-overload]
            for f in entry["files"]:
                tar.add(item.folder / f["path"], arcname=f"{item.kind}s/{item.id}/{f['path']}", recursive=False)
    return [item.label for item in items]


def unpack_cache(archive: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """Put the entries of a :func:`pack_cache` archive into this cache, each file's sha256
    checked against the manifest (and the checkpoint's against its recorded one) before the
    entry is published; an entry already cached with the same checkpoint is left as it is.
    Returns (label, checkpoint path) per entry."""
    import tarfile

    path = Path(archive)
    try:
        tar = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as exc:
        raise CheckpointError(f"{path} is not an anzoo cache archive (a tar file): {exc}") from None
    with tar:
        entries = _read_pack_manifest(tar, path)
        members = {m.name: m for m in tar.getmembers()}
        done = []
        for entry in entries:
            item = _model_item(entry["id"]) if entry["kind"] == "model" else _backbone_item(entry["id"])
            done.append((item.label, _unpack_entry(tar, members, item, entry, path)))
    return done


def _read_pack_manifest(tar: object, path: Path) -> list[dict]:
    import json

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is not an anzoo cache archive: {why}")

    member = tar.next()  # type: ignore[attr-defined]
    if member is None or member.name != PACK_MANIFEST or not member.isfile() or member.size > _PACK_MAX_MANIFEST:
        raise bad(f"its first member must be {PACK_MANIFEST}")
    try:
        manifest = json.loads(tar.extractfile(member).read())  # type: ignore[attr-defined]
        entries = manifest["entries"]
        assert manifest["format"] == PACK_FORMAT and isinstance(entries, list) and len(entries) <= _PACK_MAX_ENTRIES
        for entry in entries:
            assert entry["kind"] in ("model", "backbone") and isinstance(entry["id"], str)
            assert isinstance(entry["files"], list) and 0 < len(entry["files"]) <= _PACK_MAX_FILES
            for f in entry["files"]:
                assert _PACK_PATH.fullmatch(f["path"]) and ".." not in f["path"].split("/")
                assert isinstance(f["size"], int) and f["size"] >= 0 and re.fullmatch(r"[0-9a-f]{64}", f["sha256"])
            assert entry["checkpoint"] in {f["path"] for f in entry["files"]}
    except (ValueError, KeyError, TypeError, AssertionError):
        raise bad(f"{PACK_MANIFEST} is malformed") from None
    return entries


def _unpack_entry(tar: object, members: dict, item: _Item, entry: dict, path: Path) -> Path:
    files = {f["path"]: f for f in entry["files"]}
    wanted = files[entry["checkpoint"]]["sha256"]
    with _cache_errors(item), _locked(item) as writable:
        if not writable:
            raise CacheError(f"the weights cache {item.root} is read-only: set {ENV_HOME} to a folder you can write to")
        _remove_leftovers(item)
        held = _state(item)
        if held.checkpoint is not None and held.sha256 == wanted:
            _verify(item, held.checkpoint)
            return held.checkpoint
        with _staging(item) as staging:
            for name, f in files.items():
                member = members.get(f"{item.kind}s/{item.id}/{name}")
                if member is None or not member.isfile() or member.size != f["size"]:
                    raise CheckpointError(f"{path}: {item.label}'s file {name} is missing or not as listed")
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with tar.extractfile(member) as src, open(target, "wb") as dst:  # type: ignore[attr-defined]
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        dst.write(chunk)
                if digest.hexdigest() != f["sha256"]:
                    raise IntegrityError(f"{path}: {item.label}'s file {name} does not match its sha256 "
                                         f"(damaged in transit?); nothing was unpacked for it")
            checkpoint = staging / entry["checkpoint"]
            if _read_sidecar(checkpoint.with_name(checkpoint.name + _SIDECAR_SUFFIX)) != wanted:
                raise IntegrityError(f"{path}: {item.label}'s checkpoint does not match its recorded sha256")
            return _publish(item, staging, checkpoint)

