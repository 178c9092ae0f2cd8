"""The one exception family of dro-sfm: every error a user can cause or fix is a ``DroSfmError``."""

from __future__ import annotations


class DroSfmError(Exception):
    """Base class. The message must say what went wrong and what the user can do about it."""


class InputError(DroSfmError):
    """Unreadable, missing or inconsistent input data (images, calibration, poses, folders)."""


class ConfigError(DroSfmError):
    """An invalid configuration file or option combination."""


class CheckpointError(DroSfmError):
    """A checkpoint file that is missing, corrupt, truncated or does not match the model."""


class DownloadError(DroSfmError):
    """A download that failed (offline, HTTP error, checksum mismatch)."""


class OutputError(DroSfmError):
    """An output location that cannot be written."""
