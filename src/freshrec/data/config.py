"""Column roles of the generic tabular reader: the ``data.options`` of a config document.

A CSV, TSV, JSON-lines, Parquet or Arrow file becomes training examples once the config says
what its columns are. The options (all optional, keys of ``data.options``):

``label_column``
    How the ``label`` column is made: a click column (``click``: values in [0, 1]), a
    threshold rule (``"rating >= 4"``; operators ``>= > <= < == !=``), or, with
    ``label_map``, a column whose values are mapped (``{buy: 1, view: 0}``). Without it a
    column already named ``label`` is used, else no label is made (``features.labels`` may
    name another column).
``time_column``
    The event-time column; ``time_format`` (``iso``, or a ``strptime`` format such as
    ``"%Y-%m-%d %H:%M:%S"``) for text times, ``time_unit`` (``s``, ``ms``, ``us``, ``ns``)
    for numbers. Without it a column named ``event_time`` is used; a file without one is an
    error unless ``time_column: row_order`` (the 0-based row number is the time).
``columns``
    Roles of other columns: ``id`` and ``categorical`` (kept as raw values; the feature
    layer hashes them), ``dense`` (a finite number; its normalisation is
    ``features.dense``), ``list`` (``{list: "|"}``: a string split on the separator),
    ``ignore`` (dropped). Columns not listed are kept as they are.
``weight_column``
    A column of example weights (finite, >= 0), emitted as ``weight``.
``history``
    ``{user: COL, item: COL, length: K, name: hist_items, positives_only: false}``: per row,
    the last ``K`` items this user interacted with strictly before the row's event time,
    oldest first (only rows labelled positive with ``positives_only``).
``max_sort_bytes``
    Files up to this total size are read whole and sorted by time; larger ones must already
    be in time order.
``delimiter``
    The field separator of text files (default ``,`` for ``.csv``, a tab for ``.tsv``).

Examples
--------
>>> cfg = tabular_config_from_options({"label_column": "rating >= 4", "time_column": "ts",
...     "columns": {"genres": {"list": "|"}, "age": "dense"},
...     "history": {"user": "user", "item": "movie", "length": 5}})
>>> cfg.label.column, cfg.label.op, cfg.label.threshold, cfg.history.length
('rating', '>=', 4.0, 5)
>>> [(c.name, c.role.value, c.sep) for c in cfg.columns]
[('genres', 'list', '|'), ('age', 'dense', '|')]
>>> tabular_config_from_options({"columns": {"age": "numbr"}})
Traceback (most recent call last):
...
freshrec.errors.ConfigError: data.options.columns.age: role must be one of id, categorical, dense, list, ignore, got 'numbr'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum, unique
from typing import Any

from freshrec._validate import check_keys, is_int, is_number
from freshrec.errors import ConfigError

__all__ = [
    "ColumnRole",
    "ColumnSpec",
    "LabelRule",
    "HistoryConfig",
    "TabularConfig",
    "ROW_ORDER",
    "TIME_UNITS",
    "tabular_config_from_options",
]

#: ``time_column: row_order``: the data has no time; the row number is the event time.
ROW_ORDER = "row_order"

#: Units of a numeric time column, per second.
TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}

#: Where the options live in the config document (named by every error).
WHERE = "data.options"

_RULE = re.compile(r"^\s*([^<>=!\s]+)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")


@unique
class ColumnRole(StrEnum):
    """What a column of the data is."""

    ID = "id"
    """An identifier (user, item): a raw value hashed by the feature layer."""
    CATEGORICAL = "categorical"
    """A categorical attribute (gender, country): a raw value hashed by the feature layer."""
    DENSE = "dense"
    """A number (a finite float); missing values stay null (``features.dense`` fills them)."""
    LIST = "list"
    """Several values in one field, split on a separator (``a|b|c``)."""
    IGNORE = "ignore"
    """Dropped."""


@dataclass(frozen=True, kw_only=True)
class ColumnSpec:
    """The role of one column (``sep``: the separator of a ``list`` column)."""

    name: str
    role: ColumnRole
    sep: str = "|"


@dataclass(frozen=True, kw_only=True)
class LabelRule:
    """How the ``label`` column is computed from ``column``.

    ``op`` empty: the column is the label (a click column, values in [0, 1]) or, with
    ``mapping``, its values are mapped to labels. Otherwise the label is
    ``column <op> threshold`` (1.0 or 0.0).

    Examples
    --------
    >>> LabelRule.parse("rating>=4.5", where="x")
    LabelRule(column='rating', op='>=', threshold=4.5, mapping=None)
    >>> LabelRule.parse("click", where="x").op
    ''
    """

    column: str
    op: str = ""
    threshold: float = 0.0
    mapping: Mapping[str, float] | None = None

    @classmethod
    def parse(cls, text: str, mapping: Mapping[Any, Any] | None = None, *,
              where: str = WHERE) -> LabelRule:
        """A rule from ``label_column`` text (and ``label_map``); errors name ``where``."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}.label_column: expected a column name or a rule "
                              f"such as 'rating >= 4', got {text!r}")
        m = _RULE.match(text)
        if m is None:
            if any(ch in text for ch in "<>=!"):
                raise ConfigError(f"{where}.label_column: {text!r} is not a rule of the form "
                                  "'COLUMN OP NUMBER' (OP one of >= > <= < == !=)")
            return cls(column=text.strip(), mapping=_label_map(mapping, where))
        if mapping is not None:
            raise ConfigError(f"{where}.label_map: not allowed with a rule ({text!r})")
        column, op, number = m.groups()
        try:
            threshold = float(number)
        except ValueError:
            raise ConfigError(f"{where}.label_column: {text!r}: {number!r} is not a number"
                              ) from None
        return cls(column=column, op=op, threshold=threshold)

    def __str__(self) -> str:
        if self.op:
            return f"{self.column} {self.op} {self.threshold:g}"
        return self.column if self.mapping is None else f"{self.column} mapped"


def _label_map(mapping: Mapping[Any, Any] | None, where: str) -> Mapping[str, float] | None:
    if mapping is None:
        return None
    if not isinstance(mapping, Mapping) or not mapping:
        raise ConfigError(f"{where}.label_map: expected a mapping of value -> label, "
                          f"got {mapping!r}")
    out = {}
    for k, v in mapping.items():
        if not is_number(v) or not 0 <= v <= 1:
            raise ConfigError(f"{where}.label_map.{k}: expected a label in [0, 1], got {v!r}")
        out[str(k)] = float(v)
    return out


@dataclass(frozen=True, kw_only=True)
class HistoryConfig:
    """The derived history column: the last ``length`` items of ``user`` before each row."""

    user: str
    item: str
    length: int = 20
    name: str = "hist_items"
    positives_only: bool = False

    def __post_init__(self) -> None:
        where = f"{WHERE}.history"
        for f in ("user", "item", "name"):
            if not isinstance(getattr(self, f), str) or not getattr(self, f):
                raise ConfigError(f"{where}.{f}: expected a column name, "
                                  f"got {getattr(self, f)!r}")
        if not is_int(self.length) or self.length < 1:
            raise ConfigError(f"{where}.length: expected an int >= 1, got {self.length!r}")
        if not isinstance(self.positives_only, bool):
            raise ConfigError(f"{where}.positives_only: expected true or false, "
                              f"got {self.positives_only!r}")


@dataclass(frozen=True, kw_only=True)
class TabularConfig:
    """Every role of the columns of a tabular data set (see the module docstring)."""

    label: LabelRule | None = None
    time_column: str = ""
    time_format: str = ""
    time_unit: str = "s"
    columns: tuple[ColumnSpec, ...] = ()
    weight_column: str = ""
    history: HistoryConfig | None = None
    max_sort_bytes: int = 1 << 30
    delimiter: str = ""
    file_format: str = ""

    def role(self, name: str) -> ColumnSpec | None:
        """The declared role of column ``name`` (None: not declared)."""
        return next((c for c in self.columns if c.name == name), None)


_KEYS = {"label_column", "label_map", "time_column", "time_format", "time_unit", "columns",
         "weight_column", "history", "max_sort_bytes", "delimiter", "file_format"}


def _column_spec(name: str, body: Any, where: str) -> ColumnSpec:
    here = f"{where}.columns.{name}"
    roles = ", ".join(r.value for r in ColumnRole)
    if isinstance(body, Mapping):
        if set(body) == {"list"}:
            sep = body["list"]
            if not isinstance(sep, str) or not sep:
                raise ConfigError(f"{here}.list: expected a separator string, got {sep!r}")
            return ColumnSpec(name=name, role=ColumnRole.LIST, sep=sep)
        check_keys(body, {"role", "sep"}, here)
        body_role, sep = body.get("role"), body.get("sep", "|")
        if not isinstance(sep, str) or not sep:
            raise ConfigError(f"{here}.sep: expected a separator string, got {sep!r}")
    else:
        body_role, sep = body, "|"
    try:
        role = ColumnRole(str(body_role))
    except ValueError:
        raise ConfigError(f"{here}: role must be one of {roles}, got {body_role!r}") from None
    return ColumnSpec(name=name, role=role, sep=sep)


def tabular_config_from_options(options: Mapping[str, Any], where: str = WHERE
                                ) -> TabularConfig:
    """Validate ``data.options`` into a :class:`TabularConfig`; errors name the key."""
    check_keys(options, _KEYS, where)
    o = dict(options)
    label = None
    if o.get("label_column") is not None:
        label = LabelRule.parse(o["label_column"], o.get("label_map"), where=where)
    elif o.get("label_map") is not None:
        raise ConfigError(f"{where}.label_map: needs label_column (the column it maps)")
    columns = o.get("columns") or {}
    if not isinstance(columns, Mapping):
        raise ConfigError(f"{where}.columns: expected a mapping of column -> role, "
                          f"got {columns!r}")
    specs = tuple(_column_spec(str(n), b, where) for n, b in columns.items())
    history = o.get("history")
    if history is not None:
        if not isinstance(history, Mapping):
            raise ConfigError(f"{where}.history: expected a mapping (user, item, length, "
                              f"name, positives_only), got {history!r}")
        check_keys(history, {"user", "item", "length", "name", "positives_only"},
                   f"{where}.history")
        if "user" not in history or "item" not in history:
            raise ConfigError(f"{where}.history: needs 'user' and 'item' (column names)")
        history = HistoryConfig(**history)
    for key in ("time_column", "time_format", "weight_column", "delimiter", "file_format"):
        if not isinstance(o.get(key, ""), str):
            raise ConfigError(f"{where}.{key}: expected a string, got {o[key]!r}")
    unit = o.get("time_unit", "s")
    if unit not in TIME_UNITS:
        raise ConfigError(f"{where}.time_unit: must be one of {', '.join(TIME_UNITS)}, "
                          f"got {unit!r}")
    max_sort = o.get("max_sort_bytes", 1 << 30)
    if not is_int(max_sort) or max_sort < 0:
        raise ConfigError(f"{where}.max_sort_bytes: expected an int >= 0, got {max_sort!r}")
    if len(o.get("delimiter", "")) > 1:
        raise ConfigError(f"{where}.delimiter: expected one character, got {o['delimiter']!r}")
    return TabularConfig(label=label, time_column=o.get("time_column", ""),
                         time_format=o.get("time_format", ""), time_unit=unit, columns=specs,
                         weight_column=o.get("weight_column", ""), history=history,
                         max_sort_bytes=max_sort, delimiter=o.get("delimiter", ""),
                         file_format=o.get("file_format", ""))
