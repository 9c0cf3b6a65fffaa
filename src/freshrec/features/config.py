"""Feature schema configuration: slots, dense fields and labels.

Examples
--------
>>> cfg = feature_config_from_dict({
...     "tables": {"item": {"dim": 8}},
...     "slots": {"item_id": {"table": "item"},
...               "hist": {"table": "item", "kind": "multi", "max_len": 5, "pooling": "mean"}},
...     "dense": {"age": {"norm": "standard", "mean": 30, "std": 10}},
...     "labels": ["click"]}, where="model.yaml")
>>> [s.name for s in cfg.slots], cfg.tables[0].name
(['item_id', 'hist'], 'item')
>>> feature_config_from_dict({"tables": {}, "slots": {"x": {"table": "nope"}}}, where="m.yaml")
Traceback (most recent call last):
...
freshrec.errors.ConfigError: m.yaml: slots.x.table: table 'nope' is not defined (tables: [])
>>> feature_config_from_dict({"tables": {"t": {"dim": 2}},
...                           "slots": {"genre": {"table": "t", "dtype": "float"}}}, where="m.yaml")
Traceback (most recent call last):
...
freshrec.errors.ConfigError: m.yaml: slots.genre: SlotConfig 'genre': dtype must be 'int64' or \
'string', got 'float'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum, unique
from typing import Any

from freshrec._validate import check_keys, is_int, is_number, require
from freshrec.errors import ConfigError
from freshrec.table.config import TableConfig, table_config_from_dict

__all__ = [
    "SlotKind",
    "SlotDtype",
    "DenseNorm",
    "SlotConfig",
    "DenseConfig",
    "FeatureConfig",
    "feature_config_from_dict",
]


@unique
class SlotKind(StrEnum):
    """Shape of a categorical slot."""

    CATEGORICAL = "categorical"
    """One value per example (a missing value gives an empty bag)."""
    MULTI = "multi"
    """A list of values per example, truncated to ``max_len``."""


@unique
class SlotDtype(StrEnum):
    """What a categorical slot's raw values are (what serving's metadata advertises).

    Ids hash by one rule whatever their type (:mod:`freshrec.features.hashing`: ``7`` and
    ``"7"`` are one id), so the value type changes no fid; it tells a client which
    type to send: the KServe v2 metadata lists an ``int64`` slot as ``INT64`` and a
    ``string`` slot as ``BYTES``, and a v2 request is checked against it.
    """

    INT64 = "int64"
    """Integer ids (``item_id``, a history of item ids, a year)."""
    STRING = "string"
    """Strings (a genre name, a hashed Criteo category, ``"M"``/``"F"``)."""


@unique
class DenseNorm(StrEnum):
    """Normalisation of a dense field."""

    NONE = "none"
    """Used as is."""
    STANDARD = "standard"
    """``(x - mean) / std``."""
    LOG = "log"
    """``log1p(max(x, 0))`` (Criteo's integer counts)."""
    MINMAX = "minmax"
    """``(x - min) / (max - min)``."""


@dataclass(frozen=True, kw_only=True)
class SlotConfig:
    """A categorical slot: which column it reads and which table embeds it.

    Parameters
    ----------
    name : str
        Slot name; also the hashing salt, so two slots never share fids.
    table : str
        Embedding table name.
    column : str
        Input column (defaults to ``name``).
    kind : SlotKind
        ``categorical`` or ``multi``.
    max_len : int
        For ``multi``: keep at most the last ``max_len`` values.
    pooling : str
        ``sum`` or ``mean``.
    id_space : str
        Name hashed with the values (defaults to ``name``). Slots holding the same kind of
        id (``item_id`` and the history ``hist_items``) set one id space so that an item
        has one fid, and one row, in both.
    dtype : SlotDtype
        ``int64`` (default) or ``string``: what the raw values are (:class:`SlotDtype`).
    """

    name: str
    table: str
    column: str = ""
    kind: SlotKind = SlotKind.CATEGORICAL
    max_len: int = 50
    pooling: str = "sum"
    id_space: str = ""
    dtype: SlotDtype = SlotDtype.INT64

    def __post_init__(self) -> None:
        owner = f"SlotConfig {self.name!r}"
        try:
            object.__setattr__(self, "dtype", SlotDtype(self.dtype))
        except ValueError as e:
            raise ConfigError(f"{owner}: dtype must be 'int64' or 'string', "
                              f"got {self.dtype!r}") from e
        if not self.column:
            object.__setattr__(self, "column", self.name)
        if not self.id_space:
            object.__setattr__(self, "id_space", self.name)
        try:
            object.__setattr__(self, "kind", SlotKind(self.kind))
        except ValueError as e:
            raise ConfigError(f"{owner}: kind must be 'categorical' or 'multi', "
                              f"got {self.kind!r}") from e
        require(is_int(self.max_len) and self.max_len >= 1, owner, "max_len", "an int >= 1",
                self.max_len)
        require(self.pooling in ("sum", "mean"), owner, "pooling", "'sum' or 'mean'",
                self.pooling)


@dataclass(frozen=True, kw_only=True)
class DenseConfig:
    """A dense float field, normalised; nulls become ``fill`` before normalisation."""

    name: str
    column: str = ""
    norm: DenseNorm = DenseNorm.NONE
    mean: float = 0.0
    std: float = 1.0
    min: float = 0.0
    max: float = 1.0
    fill: float = 0.0

    def __post_init__(self) -> None:
        owner = f"DenseConfig {self.name!r}"
        if not self.column:
            object.__setattr__(self, "column", self.name)
        try:
            object.__setattr__(self, "norm", DenseNorm(self.norm))
        except ValueError as e:
            raise ConfigError(f"{owner}: norm must be one of "
                              f"{[n.value for n in DenseNorm]}, got {self.norm!r}") from e
        for f in ("mean", "std", "min", "max", "fill"):
            require(is_number(getattr(self, f)), owner, f, "a number", getattr(self, f))
        require(self.std > 0, owner, "std", "> 0", self.std)
        require(self.max > self.min, owner, "max", f"> min ({self.min})", self.max)


@dataclass(frozen=True, kw_only=True)
class FeatureConfig:
    """Tables, slots, dense fields and label columns of a model.

    ``weight_column`` and ``sample_rate_column`` are read when present in the data
    (example weight; keep-rate of negative down-sampling applied upstream).
    """

    tables: tuple[TableConfig, ...]
    slots: tuple[SlotConfig, ...]
    dense: tuple[DenseConfig, ...] = ()
    labels: tuple[str, ...] = ("label",)
    time_column: str = "event_time"
    weight_column: str = "weight"
    sample_rate_column: str = "sample_rate"

    def __post_init__(self) -> None:
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            raise ConfigError(f"FeatureConfig: duplicate table name in {names}")
        slot_names = [s.name for s in self.slots]
        if len(set(slot_names)) != len(slot_names):
            raise ConfigError(f"FeatureConfig: duplicate slot name in {slot_names}")
        for s in self.slots:
            if s.table not in names:
                raise ConfigError(f"slots.{s.name}.table: table {s.table!r} is not defined "
                                  f"(tables: {sorted(names)})")
        if not self.labels:
            raise ConfigError("FeatureConfig: labels must list at least one column")

    def table(self, name: str) -> TableConfig:
        """The table config called ``name``."""
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)


def _section(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key, {}) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {key} must be a mapping of name -> settings, "
                          f"got {type(value).__name__}")
    return value


def _build(cls: type, name: str, body: Any, where: str) -> Any:
    body = {} if body is None else body
    check_keys(body, {f.name for f in dataclasses.fields(cls)} - {"name"}, where)
    try:
        return cls(name=name, **body)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def feature_config_from_dict(data: Mapping[str, Any], where: str = "config") -> FeatureConfig:
    """Build a :class:`FeatureConfig` from parsed YAML; errors name the key and ``where``.

    Keys: ``tables`` (name -> table settings), ``slots`` (name -> slot settings), ``dense``
    (name -> dense settings), ``labels`` (list), ``time_column``, ``weight_column``,
    ``sample_rate_column``.
    """
    check_keys(data, {f.name for f in dataclasses.fields(FeatureConfig)}, where)
    tables = []
    for name, body in _section(data, "tables", where).items():
        body = dict(body or {})
        body.setdefault("name", name)
        tables.append(table_config_from_dict(body, where=f"{where}: tables.{name}"))
    slots = tuple(_build(SlotConfig, n, b, f"{where}: slots.{n}")
                  for n, b in _section(data, "slots", where).items())
    dense = tuple(_build(DenseConfig, n, b, f"{where}: dense.{n}")
                  for n, b in _section(data, "dense", where).items())
    labels = data.get("labels", ["label"])
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ConfigError(f"{where}: labels must be a list of column names, got {labels!r}")
    extra = {k: data[k] for k in ("time_column", "weight_column", "sample_rate_column")
             if k in data}
    try:
        return FeatureConfig(tables=tuple(tables), slots=slots, dense=dense,
                             labels=tuple(labels), **extra)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
