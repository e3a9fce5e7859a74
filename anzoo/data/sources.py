"""What ``anzoo predict`` reads: image files, folders, globs, list files and video frames.

:func:`expand_inputs` turns the command line's arguments into :class:`Source` items, each an
image file or one frame of a video, with a **key**: its path relative to the folder all inputs
share (``a/x.jpg`` and ``b/x.jpg`` stay apart), which names its outputs. Arguments may be

* a file (kept whatever its extension: reading it tells whether it is an image);
* a folder: its files with an image or video extension, hidden ones skipped, with
  ``recursive`` also those of its subfolders (hidden folders skipped), sorted by their path
  in it;
* a glob (``photos/**/*.jpg``; ``**`` matches any depth);
* ``@list.txt``: a text file with one of the above per line (blank lines and lines starting
  with ``#`` skipped), relative paths from the current folder, as on the command line;
* a video (:data:`VIDEO_EXTENSIONS`, read through OpenCV): one item per frame, or every
  ``every``-th frame, keyed by its index.

:class:`SourceWindows` is the Dataset DataLoader workers read them with: item ``w`` is a
window of consecutive sources, decoded (with the pixel limit of :func:`load_image`, checked
from the header before decoding; for videos from the stream's frame size) and preprocessed.
A source that cannot be read (whatever the error) comes back with its error, not as an
exception: the other images go on. A worker reads a video's frames forward from where it stopped (grabbing the
frames in between), never by seeking, which is exact on every codec.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import AnzooError, ImageError
from .coco import dataloader_worker_init
from .defaults import DEFAULT_MAX_PIXELS, TEST_SCALE
from .images import IMAGE_EXTENSIONS, load_image
from .transforms import ImageMeta, preprocess_image

__all__ = ["VIDEO_EXTENSIONS", "LoadedSource", "Source", "SourceWindows", "build_source_loader",
           "expand_inputs", "video_frame_count"]

#: File extensions read as videos (lower case), frame by frame, through OpenCV's FFmpeg backend.
VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


class Source(NamedTuple):
    """One image to predict: a file, or frame ``frame`` of a video file."""

    key: str  # the file's path relative to the inputs' common folder, with '/'
    path: str
    frame: int | None = None


def expand_inputs(args: Iterable[str], *, recursive: bool = False, every: int = 1,
                  exclude: str | os.PathLike[str] | None = None) -> tuple[list[Source], list[tuple[str, str]]]:
    """The sources named by ``args`` (see the module docstring), in argument order, each file
    once, and the arguments that name nothing readable, with why (``(argument, message)``).
    ``exclude``: a folder whose files are left out of folders and globs (the output folder: a
    rerun must not read the pictures the last run drew); a file named on its own is kept."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    failures: list[tuple[str, str]] = []
    skip = None if exclude is None else os.path.join(os.path.abspath(exclude), "")
    found: dict[str, str] = {}  # absolute file path -> the folder its key is relative to
    for arg in _arguments(args, failures):
        try:
            for path, root in _expand(arg, recursive):
                if skip is None or not path.startswith(skip) or os.path.isfile(arg):  # named: kept
                    found.setdefault(path, root)
        except ImageError as exc:
            failures.append((arg, str(exc)))
    if not found:
        return [], failures
    base = os.path.commonpath(list(found.values()))
    sources: list[Source] = []
    for path in found:
        key = Path(os.path.relpath(path, base)).as_posix()
        if Path(path).suffix.lower() not in VIDEO_EXTENSIONS:
            sources.append(Source(key, path))
            continue
        try:
            count = video_frame_count(path)
        except ImageError as exc:
            failures.append((key, str(exc)))
            continue
        sources.extend(Source(key, path, frame) for frame in range(0, count, every))
    return sources, failures


def _arguments(args: Iterable[str], failures: list[tuple[str, str]]) -> Iterable[str]:
    """The arguments with each ``@list.txt`` replaced by its lines."""
    for arg in args:
        arg = str(arg)
        if not arg.startswith("@") or os.path.exists(arg):
            yield arg
            continue
        try:
            with open(arg[1:], encoding="utf-8") as fh:
                for line in fh:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        yield line
        except (OSError, UnicodeDecodeError) as exc:
            failures.append((arg, f"{arg[1:]}: cannot read the list of inputs ({exc.__class__.__name__})"))


def _expand(arg: str, recursive: bool) -> list[tuple[str, str]]:
    """(absolute file path, the folder its key is relative to) for one argument."""
    path = os.path.abspath(arg)
    if os.path.isdir(path):
        return [(f, path) for f in _folder_files(path, recursive)]
    if os.path.exists(path):
        return [(path, os.path.dirname(path))]
    if glob.has_magic(arg):
        matches = sorted(os.path.abspath(m) for m in glob.glob(arg, recursive=True))
        root = _glob_root(arg)
        files = [(m, root) for m in matches if os.path.isfile(m) and _is_media(m)]
        for folder in (m for m in matches if os.path.isdir(m)):
            files.extend((f, root) for f in _folder_files(folder, recursive))
        if not files:
            raise ImageError(f"{arg}: no image or video files match")
        return files
    raise ImageError(f"no such file or directory: {arg}")


def _glob_root(pattern: str) -> str:
    """The folder a glob's matches are relative to: its parts before the first wildcard."""
    parts: list[str] = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return os.path.abspath(os.path.join(*parts)) if parts else os.getcwd()


def _is_media(path: str) -> bool:
    suffix = os.path.splitext(path)[1].lower()
    return suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS


def _folder_files(folder: str, recursive: bool) -> list[str]:
    """A folder's image and video files sorted by their path in it, folder by folder (as
    ``find | sort`` would, ``a/x.jpg`` before ``b.jpg``), hidden files and folders skipped."""
    out: list[tuple[tuple[str, ...], str]] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        rel = Path(os.path.relpath(root, folder)).parts if root != folder else ()
        out.extend(((*rel, f), os.path.join(root, f)) for f in files if not f.startswith(".") and _is_media(f))
    return [path for _, path in sorted(out)]


# ------------------------------------------------------------------------------------ videos
def _open_video(path: str) -> Any:
    import cv2

    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise ImageError(f"{path}: cannot be read as a video")
    return cap


def video_frame_count(path: str) -> int:
    """Frames in a video: from its header, or counted (by grabbing them) when the header does
    not say or says more frames than the file has bytes: a 100 kB file claiming a billion
    frames would otherwise make a billion sources."""
    import cv2

    cap = _open_video(path)
    try:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0 or count > os.path.getsize(path):
            count = 0
            while cap.grab():
                count += 1
        return count
    finally:
        cap.release()


class _VideoReader:
    """The frames of one video at a time, read forward (a later frame is reached by grabbing
    the ones before it; an earlier one by reopening)."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.cap: Any = None
        self.next = 0

    def read(self, path: str, frame: int, max_pixels: int | None) -> np.ndarray:
        import cv2

        if path != self.path or frame < self.next:
            self.close()
            self.cap = _open_video(path)
            self.path, self.next = path, 0
            width, height = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            if max_pixels is not None and width * height > max_pixels:
                self.close()
                raise ImageError(f"{path}: frames of {width}x{height} pixels are larger than the limit of "
                                 f"{max_pixels} pixels")
        while self.next < frame:
            if not self.cap.grab():
                break
            self.next += 1
        ok, bgr = self.cap.read() if self.next == frame else (False, None)
        self.next += 1
        if not ok or bgr is None:
            raise ImageError(f"{path}: frame {frame} cannot be read")
        return np.ascontiguousarray(bgr[..., ::-1])

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
        self.cap, self.path, self.next = None, None, 0


# ------------------------------------------------------------------------------------ loading
@dataclass
class LoadedSource:
    """Source ``index`` decoded and preprocessed, or why it could not be."""

    index: int
    tensor: torch.Tensor | None = None
    meta: ImageMeta | None = None
    image: np.ndarray | None = None  # the RGB image, kept for drawing
    error: str | None = None


class SourceWindows(Dataset):
    """Windows of sources, decoded and preprocessed (item ``w``: a list of :class:`LoadedSource`
    for ``windows[w]``, in that order). ``keep_images``: return the decoded images too."""

    def __init__(self, sources: Sequence[Source], windows: Sequence[Sequence[int]], *,
                 scale: Sequence[int] = TEST_SCALE, keep_images: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.sources = sources
        self.windows = windows
        self.scale = tuple(scale)
        self.keep_images = keep_images
        self.max_pixels = max_pixels
        self._video = _VideoReader()

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, w: int) -> list[LoadedSource]:
        return [self.load(i) for i in self.windows[w]]

    def load(self, index: int) -> LoadedSource:
        source = self.sources[index]
        try:
            if source.frame is None:
                image = load_image(source.path, max_pixels=self.max_pixels)
            else:
                image = self._video.read(source.path, source.frame, self.max_pixels)
            tensor, meta = preprocess_image(image, self.scale)
        except AnzooError as exc:
            return LoadedSource(index, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - one odd file must not end a run over millions
            return LoadedSource(index, error=f"{source.path}: cannot be read ({type(exc).__name__}: {exc})")
        return LoadedSource(index, tensor, meta, image if self.keep_images else None)

    def close(self) -> None:
        self._video.close()


def _as_is(window: list[LoadedSource]) -> list[LoadedSource]:
    return window


def build_source_loader(dataset: SourceWindows, num_workers: int = 2) -> DataLoader:
    """A DataLoader yielding ``dataset``'s windows in order, read by ``num_workers`` processes
    (0: in this one)."""
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_as_is,
                      worker_init_fn=dataloader_worker_init if num_workers > 0 else None)
