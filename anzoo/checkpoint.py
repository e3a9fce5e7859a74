"""Reading checkpoints safely, recognising their layout, and fitting them to a model.

Three layouts reach anzoo:

* ``mmdet_v1``: the released detectors, ``{'meta', 'state_dict', 'optimizer'}`` saved by
  mmdetection v1 (keys ``backbone.*``, ``neck.*``, ``rpn_head.*``, ``bbox_head.*``, ...);
* ``aognet_v2``: the released ImageNet backbones, ``{'state_dict', ...}`` with keys prefixed
  ``module.`` (DataParallel), usually inside a zip next to ``config.yaml``;
* ``anzoo``: what anzoo saves, ``{'format': 'anzoo', 'model_id', 'state_dict', ...}``;

plus a bare state dict. Checkpoints are only read with ``torch.load(weights_only=True)``:
a file can hold tensors and plain data, never code.
"""
from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .fileio import atomic_path

__all__ = [
    "ANZOO_FORMAT",
    "is_torch_zip",
    "checkpoint_member",
    "read_checkpoint",
    "checkpoint_format",
    "extract_state_dict",
    "strip_prefix",
    "rename_keys",
    "load_state_dict_strict",
    "save_checkpoint",
    "check_archive_bounds",
    "MAX_ARCHIVE_BYTES",
    "MAX_ARCHIVE_MEMBERS",
]

ANZOO_FORMAT = "anzoo"
_CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar", ".ckpt", ".bin")

#: What a checkpoint archive may unpack to, checked from its directory before a byte is
#: extracted (zipfile never writes more than a member declares). The released AOGNet-v2
#: archives hold 2 files and at most ~0.5 GB; a zip bomb declares far more than it weighs.
MAX_ARCHIVE_BYTES = 4 << 30
MAX_ARCHIVE_MEMBERS = 1000


def is_torch_zip(zf: zipfile.ZipFile) -> bool:
    """torch.save (>= 1.6) writes a zip whose entries are ``<name>/data.pkl`` etc."""
    return any(n.endswith("/data.pkl") or n == "data.pkl" for n in zf.namelist())


def checkpoint_member(zf: zipfile.ZipFile) -> str:
    """The checkpoint inside a plain archive (e.g. ``model_best.pth.tar`` beside ``config.yaml``)."""
    names = [n for n in zf.namelist() if not n.endswith("/") and "__MACOSX" not in n]
    candidates = [n for n in names if n.lower().endswith(_CHECKPOINT_SUFFIXES)]
    if not candidates:
        raise CheckpointError(
            f"the archive holds no checkpoint file (looked for {', '.join(_CHECKPOINT_SUFFIXES)}); "
            f"it contains: {', '.join(names[:10]) or 'nothing'}")
    # Prefer the best model when an archive holds several.
    candidates.sort(key=lambda n: (not Path(n).name.startswith("model_best"), len(n)))
    return candidates[0]


def check_archive_bounds(zf: zipfile.ZipFile, where: str) -> int:
    """Raise CheckpointError when an archive holds more files or bytes than a checkpoint
    archive can; the total uncompressed size otherwise."""
    infos = zf.infolist()
    if len(infos) > MAX_ARCHIVE_MEMBERS:
        raise CheckpointError(f"{where} holds {len(infos)} files; a checkpoint archive may hold at most "
                              f"{MAX_ARCHIVE_MEMBERS}")
    total = sum(info.file_size for info in infos)
    if total > MAX_ARCHIVE_BYTES:
        raise CheckpointError(f"{where} unpacks to {_size(total)}; a checkpoint archive may unpack to at most "
                              f"{_size(MAX_ARCHIVE_BYTES)}")
    return total


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _torch_load(source: Any, where: str) -> Any:
    # numpy scalars (e.g. a saved best accuracy) are plain data; allow their reconstruction.
    safe: list[Any] = []
    try:
        import numpy as np

        safe = [np.dtype, np.ndarray, type(np.dtype("float64")), type(np.dtype("float32")),
                type(np.dtype("int64"))]
        try:
            from numpy.core.multiarray import scalar as _np_scalar  # numpy < 2 name
        except Exception:  # pragma: no cover - numpy 2 keeps both names, this is a fallback
            _np_scalar = None
        if _np_scalar is not None:
            safe.append(_np_scalar)
        try:
            from numpy._core.multiarray import _reconstruct, scalar  # numpy >= 2

            safe += [scalar, _reconstruct]
        except Exception:
            pass
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure here means "not a usable checkpoint"
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{where} is not a readable PyTorch checkpoint ({msg})") from exc


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Load a checkpoint file (or the checkpoint inside a zip archive) onto the CPU, safely."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file is empty: {path}")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                if not is_torch_zip(zf):
                    check_archive_bounds(zf, str(path))  # the member is read into memory
                    member = checkpoint_member(zf)
                    return _torch_load(io.BytesIO(zf.read(member)), f"{path}!{member}")
        except zipfile.BadZipFile as exc:
            raise CheckpointError(f"{path} is a damaged zip archive ({exc})") from exc
    return _torch_load(path, str(path))


def checkpoint_format(obj: Any) -> str:
    """Recognise a loaded checkpoint: 'anzoo', 'mmdet_v1', 'aognet_v2' or 'state_dict'."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(obj).__name__}")
    if obj.get("format") == ANZOO_FORMAT and "state_dict" in obj:
        return "anzoo"
    sd = obj.get("state_dict")
    if isinstance(sd, Mapping):
        keys = list(sd.keys())
        if any(k.startswith(("backbone.", "neck.", "rpn_head.")) for k in keys):
            return "mmdet_v1"
        return "aognet_v2"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "state_dict"
    raise CheckpointError("unrecognised checkpoint layout: no 'state_dict' and not a state dict "
                          f"(top-level keys: {', '.join(map(str, list(obj)[:8]))})")


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint of any known layout, with DataParallel prefixes removed."""
    fmt = checkpoint_format(obj)
    sd = obj if fmt == "state_dict" else obj["state_dict"]
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    return strip_prefix(sd, "module.")


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from the keys that start with it (others unchanged)."""
    n = len(prefix)
    return {(k[n:] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def rename_keys(state_dict: Mapping[str, torch.Tensor],
                rename: Callable[[str], str | None]) -> dict[str, torch.Tensor]:
    """Apply a key mapping; ``rename`` returns None for keys to drop deliberately."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = rename(key)
        if new is None:
            continue
        if new in out:
            raise CheckpointError(f"two checkpoint keys map to {new!r} (the second is {key!r})")
        out[new] = value
    return out


def _listing(title: str, items: list[str], limit: int = 3) -> str:
    """The count and the first few: enough to tell another architecture, short enough to read."""
    shown = ", ".join(items[:limit])
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} {title}: {shown}{more}"


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor],
                           what: str = "checkpoint") -> None:
    """Load with every key used and every shape equal, or raise one CheckpointError listing
    the missing keys, the unexpected keys and the shape mismatches."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    mismatched = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if mismatched:
            parts.append(_listing("shape mismatches (checkpoint vs model)", mismatched))
        raise CheckpointError(f"{what} does not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(dict(state_dict), strict=True)


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """torch.save to a temporary file beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(dict(obj), tmp)
    return path
