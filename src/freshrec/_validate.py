"""Small validation helpers shared by the config dataclasses (private)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from freshrec.errors import ConfigError


def require(cond: bool, owner: str, field: str, expected: str, got: object) -> None:
    """Raise :class:`ConfigError` ``"<owner>: <field> must be <expected>, got <got!r>"``.

    Examples
    --------
    >>> require(True, "TableConfig 'user'", "dim", "an int >= 1", 16)
    >>> require(False, "TableConfig 'user'", "dim", "an int >= 1", 0)
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: TableConfig 'user': dim must be an int >= 1, got 0
    """
    if not cond:
        raise ConfigError(f"{owner}: {field} must be {expected}, got {got!r}")


def is_int(v: object) -> bool:
    """True for Python/numpy ints but not bools."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    """True for ints and floats but not bools."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """Raise :class:`ConfigError` naming the first key of ``data`` not in ``allowed``.

    Examples
    --------
    >>> check_keys({"dim": 8}, {"dim", "name"}, "table 'user' in model.yaml")
    >>> check_keys({"dimm": 8}, {"dim", "name"}, "table 'user' in model.yaml")
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: table 'user' in model.yaml: unknown key 'dimm' (expected one of: dim, name)
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown key {key!r} (expected one of: {', '.join(sorted(allowed))})"
            )
