"""Errors a user can cause.

Every exception deriving from :class:`AnzooError` carries a message meant for a person:
the CLI prints it on one line (no traceback) and exits with ``exit_code``; the server maps
it to a 4xx answer. Programming errors stay ordinary Python exceptions.
"""
from __future__ import annotations


class AnzooError(Exception):
    """Base class of user-facing errors."""

    exit_code: int = 1


class UnknownModelError(AnzooError, KeyError):
    """An id that is not in the zoo (message suggests the closest ids)."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ZooSchemaError(AnzooError):
    """zoo.yaml (or an ANZOO_ZOO file) does not follow the schema."""


class DownloadError(AnzooError):
    """A weights file could not be fetched (network, Drive refusal, HTTP error)."""


class OfflineError(DownloadError):
    """ANZOO_OFFLINE=1 and the file is not in the cache."""


class IntegrityError(AnzooError):
    """A cached or downloaded file does not match its recorded sha256."""


class CheckpointError(AnzooError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""


class ImageError(AnzooError):
    """An input is not a readable image."""


class UnsupportedImageFormatError(ImageError):
    """An image in a format anzoo does not decode (EPS, ICO, PSD, ...); the message lists the accepted ones."""


class DatasetError(AnzooError):
    """A dataset folder or annotation file is missing or malformed."""


class CacheError(AnzooError):
    """The weights cache cannot be written (disk full, file too large, read-only, no permission)."""


class TrainingDiverged(AnzooError):
    """The training loss or the gradients became NaN or infinite."""
