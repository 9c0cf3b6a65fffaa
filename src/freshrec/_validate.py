"""Small validation helpers shared by the config dataclasses (private)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from freshrec.errors import ConfigError

T = TypeVar("T")


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


def build_config(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build the config dataclass ``cls`` from a parsed YAML mapping (``None``: all defaults).

    Every key must be a field of ``cls`` and every field without a default must be given;
    a list given for a tuple field becomes a tuple, and a mapping given for a field whose type
    is a config dataclass (``X`` or ``X | None``) is built the same way. Errors name the key
    and ``where``; the dataclass's own validation errors are prefixed with ``where``.

    Examples
    --------
    >>> from freshrec.stream.config import JoinerConfig
    >>> cfg = build_config(JoinerConfig, {"actions": ["click", "like"],
    ...                                   "validation": {"window_s": 30}}, "a.yaml: join")
    >>> cfg.actions, cfg.validation.window_s
    (('click', 'like'), 30)
    >>> build_config(JoinerConfig, {"validation": {"windw_s": 30}}, "a.yaml: join")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: a.yaml: join: validation: unknown key 'windw_s' (expected one of: ...)
    >>> build_config(JoinerConfig, {"window_s": -1}, "a.yaml: join")
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: a.yaml: join: JoinerConfig: window_s must be an int >= 0, got -1
    """
    data = {} if data is None else data
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    check_keys(data, {f.name for f in fields}, where)
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in data:
            raise ConfigError(f"{where}: missing required key {f.name!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _convert(hints[k], v, f"{where}: {k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from e


def _convert(hint: Any, value: Any, where: str) -> Any:
    """``value`` as field type ``hint`` wants it: lists -> tuples, mappings -> dataclasses."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    for option in typing.get_args(hint) if union else (hint,):
        if isinstance(value, Mapping) and dataclasses.is_dataclass(option):
            return build_config(option, value, where)  # type: ignore[arg-type]
        if isinstance(value, list) and typing.get_origin(option) is tuple:
            return tuple(value)
    return value
