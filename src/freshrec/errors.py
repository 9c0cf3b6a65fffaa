"""Exceptions raised by freshrec.

Every error inherits :class:`FreshrecError` and the built-in exception it refines, so callers
may catch either. Messages name the object, what was expected and what arrived.

Examples
--------
>>> from freshrec.errors import ConfigError
>>> try:
...     raise ConfigError("TableConfig 'user': dim must be an int >= 1, got 0")
... except ValueError as e:
...     print(e)
TableConfig 'user': dim must be an int >= 1, got 0
"""

from __future__ import annotations

import reprlib

__all__ = [
    "brief",
    "FreshrecError",
    "ConfigError",
    "InputError",
    "FieldError",
    "SnapshotCorruptError",
    "StaleDeltaError",
    "IncompatibleFormatError",
    "RegistryWriteError",
    "LogWriteError",
    "TrainingDivergedError",
    "MissingExtraError",
]


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxdict = 2, 4, 4
_BRIEF.maxstring, _BRIEF.maxlong, _BRIEF.maxother = 60, 40, 60


def brief(value: object, width: int = 60) -> str:
    """A short repr of ``value`` for an error message, whatever its size or depth (a list
    nested 1,000 deep, a 3 MB string): at most ``width`` characters, never recursing deep.

    Examples
    --------
    >>> brief([[[[1]]]]), brief("x" * 100)[:12], len(brief("x" * 100)) <= 60
    ('[[[...]]]', "'xxxxxxxxxxx", True)
    >>> deep: list[object] = []
    >>> for _ in range(5000):
    ...     deep = [deep]
    >>> brief(deep)
    '[[[...]]]'
    """
    try:
        text = _BRIEF.repr(value)
    except (ValueError, RecursionError):  # an int past the str digit limit, a deep object
        text = f"<{type(value).__name__}>"
    return text[:width]


class FreshrecError(Exception):
    """Base class of every freshrec error."""


class ConfigError(FreshrecError, ValueError):
    """A configuration value or file is invalid (names the key and the file)."""


class InputError(FreshrecError, ValueError):
    """Arrays or records handed to an API have the wrong dtype, shape or values."""


class FieldError(InputError):
    """A value of a named field has the wrong type or range (a feature of a request, a line of
    an item catalogue): ``field`` names it (``user.gender``, ``candidates[3].cat``),
    ``message`` says what was expected and what arrived.

    >>> e = FieldError("user.age", "must be a number (a dense feature), got 'old'")
    >>> str(e), e.field
    ("user.age: must be a number (a dense feature), got 'old'", 'user.age')
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SnapshotCorruptError(FreshrecError, OSError):
    """A snapshot or delta on disk is truncated or fails its checksum (names the file)."""


class RegistryWriteError(FreshrecError, OSError):
    """Writing a registry version failed (disk full, no permission): the message names the
    registry and the file, ``errno`` is the cause's. Nothing was published."""


class LogWriteError(FreshrecError, OSError):
    """Appending records to a log failed (disk full, file too large, I/O error): the message
    names the log, the partition and how many records; ``errno`` is the cause's. None of
    the records of that append was written, and the log is as before it."""


class TrainingDivergedError(FreshrecError, ArithmeticError):
    """The model's output became NaN or infinite in training: its parameters diverged (the
    message names the step). Training stops; resume from an earlier checkpoint with smaller
    learning rates."""


class IncompatibleFormatError(FreshrecError, ValueError):
    """A file was written with another format version, dim or config than expected."""


class StaleDeltaError(FreshrecError, ValueError):
    """A delta does not start at the version the receiver holds."""


class MissingExtraError(FreshrecError, ImportError):
    """A command needs an optional dependency that is not installed (names the extra)."""
