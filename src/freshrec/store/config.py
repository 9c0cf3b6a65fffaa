"""Configuration of an embedding table kept in Redis (``backend: redis`` in a table's config).

A table's section in ``features.tables`` chooses where its rows live::

    features:
      tables:
        user:
          dim: 16
          backend: redis          # memory (the default): rows in the process
          store:
            url: redis://127.0.0.1:6379/0      # or redis+cluster://HOST:PORT/0
            prefix: freshrec
            ttl_s: 604800         # a row not written for a week expires (Redis TTL)
            cache_rows: 100000    # trainer's write-back cache, enforced at each flush
            serve_cache_ms: 200   # serving's local copy of a row is this fresh at most
            serve_timeout_ms: 5   # a request waits this long for Redis, then falls back

All configs here are frozen, keyword-only dataclasses validated when built.

Examples
--------
>>> cfg = StoreConfig(url="redis://127.0.0.1:6379/0", ttl_s=60)
>>> cfg.ttl_ms, cfg.serve_fallback.value
(60000, 'zeros')
>>> StoreConfig(url="http://x")
Traceback (most recent call last):
...
freshrec.errors.ConfigError: StoreConfig: url must be a redis://, rediss://, unix:// or redis+cluster:// URL, got 'http://x'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum, unique
from typing import Any

from freshrec._validate import build_config, is_int, is_number, require
from freshrec.errors import ConfigError

__all__ = [
    "TableBackend",
    "ServeFallback",
    "NewUserSource",
    "NewUserInitConfig",
    "UpdateRulesConfig",
    "StoreConfig",
    "store_config_from_dict",
]

_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://")


@unique
class TableBackend(StrEnum):
    """Where a table's rows live."""

    MEMORY = "memory"
    """In the process (:class:`~freshrec.table.EmbeddingTable`); serving gets rows from the
    registry."""
    REDIS = "redis"
    """In Redis, shared by the trainer (write-back cache) and the servers (read per request)."""


@unique
class ServeFallback(StrEnum):
    """What serving uses for a row it could not read from Redis in time."""

    ZEROS = "zeros"
    """The table's default row (zeros), or the last copy read if the local cache has one."""
    INIT = "init"
    """The row training would start the fid from: the ``fixed`` or ``table`` new-user source's
    when configured, else the initializer's (a ``history_mean`` start needs the trainer's
    batch: serving uses the initializer's row then)."""


@unique
class NewUserSource(StrEnum):
    """Where a row seen for the first time starts (instead of the table's initializer)."""

    NONE = "none"
    """The table's initializer (random or zeros)."""
    HISTORY_MEAN = "history_mean"
    """The mean of the rows of the items in the request's click history (a slot of another
    table, ``history_slot``); no history: the initializer."""
    TABLE = "table"
    """The row of the same fid in another model's table snapshot (``table_path``)."""
    FIXED = "fixed"
    """A fixed vector (``value``, of the table's dim)."""


@dataclass(frozen=True, kw_only=True)
class NewUserInitConfig:
    """How a table's new rows start (SmartNews: new users from another model's estimate).

    Parameters
    ----------
    source : NewUserSource
        ``none``, ``history_mean``, ``table`` or ``fixed``.
    history_slot : str
        For ``history_mean``: the multi-valued slot holding the clicked items' ids.
    table_path : str
        For ``table``: a table snapshot directory (``EmbeddingTable.save``) of the same dim.
    value : tuple of float
        For ``fixed``: the row.
    with_state : bool
        For ``table``: the row's optimizer state starts from the snapshot's too (the two
        tables must have the same optimizer), so its first updates are as small as they
        were there; otherwise the state starts fresh and a row-wise Adagrad row's first
        step moves it by ``lr * sqrt(dim)`` whatever the gradient.
    """

    source: NewUserSource = NewUserSource.NONE
    history_slot: str = ""
    table_path: str = ""
    value: tuple[float, ...] = ()
    with_state: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "source", NewUserSource(self.source))
        except ValueError as e:
            raise ConfigError(f"NewUserInitConfig: source must be one of "
                              f"{[s.value for s in NewUserSource]}, got {self.source!r}") from e
        object.__setattr__(self, "value", tuple(self.value))
        needs = {NewUserSource.HISTORY_MEAN: ("history_slot", self.history_slot),
                 NewUserSource.TABLE: ("table_path", self.table_path)}
        if self.source in needs:
            key, v = needs[self.source]
            require(isinstance(v, str) and bool(v), "NewUserInitConfig", key,
                    f"a non-empty string for source {self.source.value}", v)
        if self.source is NewUserSource.FIXED:
            require(bool(self.value) and all(is_number(x) for x in self.value),
                    "NewUserInitConfig", "value", "a non-empty list of numbers for source fixed",
                    self.value)
        require(self.with_state is False or (self.with_state is True
                                             and self.source is NewUserSource.TABLE),
                "NewUserInitConfig", "with_state", "false, or true for source table",
                self.with_state)


@dataclass(frozen=True, kw_only=True)
class UpdateRulesConfig:
    """Which rows a training step may change, applied on the trainer before the write
    (SmartNews' limited / conditional embedding updates).

    Parameters
    ----------
    min_events : int
        A row is updated only once its fid was seen in at least this many training examples
        (0 = always).
    dims : tuple of int
        Only these columns of a row change (empty = all).
    max_update_norm : float or None
        A step's change of a row is scaled down to at most this L2 norm.

    Examples
    --------
    >>> UpdateRulesConfig(dims=(0, 2)).active
    True
    >>> UpdateRulesConfig().active
    False
    """

    min_events: int = 0
    dims: tuple[int, ...] = ()
    max_update_norm: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(self.dims))
        require(is_int(self.min_events) and self.min_events >= 0, "UpdateRulesConfig",
                "min_events", "an int >= 0", self.min_events)
        require(all(is_int(d) and d >= 0 for d in self.dims)
                and len(set(self.dims)) == len(self.dims), "UpdateRulesConfig", "dims",
                "distinct ints >= 0", self.dims)
        require(self.max_update_norm is None
                or (is_number(self.max_update_norm) and self.max_update_norm > 0),
                "UpdateRulesConfig", "max_update_norm", "a number > 0 or null",
                self.max_update_norm)

    @property
    def active(self) -> bool:
        """Whether any rule limits updates."""
        return bool(self.min_events or self.dims or self.max_update_norm is not None)


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """Where and how a ``backend: redis`` table keeps its rows.

    Parameters
    ----------
    url : str
        ``redis://HOST:PORT/DB`` (one server) or ``redis+cluster://HOST:PORT/0`` (a Redis
        Cluster through any node).
    prefix : str
        Keys are ``PREFIX:TABLE:FID`` (FID in decimal).
    ttl_s : float or None
        A row not written for this long (wall clock) is removed by Redis; every flush of a
        row sets its TTL again. None keeps rows forever.
    cache_rows : int
        The trainer's write-back cache holds at most this many rows after each flush
        (least recently written rows leave first; dirty rows never leave before a flush).
    batch_keys : int
        Keys per MGET / pipeline round trip.
    serve_cache_ms : float
        Serving re-reads a row from Redis once its local copy is older than this.
    serve_cache_rows : int
        Rows serving keeps locally (the oldest leave first).
    serve_timeout_ms : float
        A request waits at most this long for Redis; then it uses the fallback, counted.
    serve_fallback : ServeFallback
        ``zeros`` or ``init``.
    retry_backoff_s : float
        The trainer waits for Redis with back-off starting here (a trainer never goes on
        with a row it could not read: that would restart the row).
    new_user : NewUserInitConfig
    update_rules : UpdateRulesConfig
    """

    url: str = ""
    prefix: str = "freshrec"
    ttl_s: float | None = None
    cache_rows: int = 1_000_000
    batch_keys: int = 2000
    serve_cache_ms: float = 200.0
    serve_cache_rows: int = 100_000
    serve_timeout_ms: float = 5.0
    serve_fallback: ServeFallback = ServeFallback.ZEROS
    retry_backoff_s: float = 0.05
    new_user: NewUserInitConfig = field(default_factory=NewUserInitConfig)
    update_rules: UpdateRulesConfig = field(default_factory=UpdateRulesConfig)

    def __post_init__(self) -> None:
        o = "StoreConfig"
        require(self.url == "" or (isinstance(self.url, str) and self.url.startswith(_SCHEMES)),
                o, "url", "a redis://, rediss://, unix:// or redis+cluster:// URL", self.url)
        require(isinstance(self.prefix, str) and bool(self.prefix)
                and not any(c in self.prefix for c in "{} "), o, "prefix",
                "a non-empty string without braces or spaces", self.prefix)
        require(self.ttl_s is None or (is_number(self.ttl_s) and self.ttl_s >= 0.001), o,
                "ttl_s", "a number >= 0.001 or null", self.ttl_s)
        for name in ("cache_rows", "batch_keys", "serve_cache_rows"):
            v = getattr(self, name)
            require(is_int(v) and v >= 1, o, name, "an int >= 1", v)
        for name in ("serve_cache_ms", "retry_backoff_s"):
            v = getattr(self, name)
            require(is_number(v) and v >= 0, o, name, "a number >= 0", v)
        require(is_number(self.serve_timeout_ms) and self.serve_timeout_ms > 0, o,
                "serve_timeout_ms", "a number > 0", self.serve_timeout_ms)
        try:
            object.__setattr__(self, "serve_fallback", ServeFallback(self.serve_fallback))
        except ValueError as e:
            raise ConfigError(f"{o}: serve_fallback must be one of "
                              f"{[s.value for s in ServeFallback]}, got "
                              f"{self.serve_fallback!r}") from e
        for name, cls in (("new_user", NewUserInitConfig), ("update_rules", UpdateRulesConfig)):
            v = getattr(self, name)
            require(isinstance(v, cls), o, name, f"a {cls.__name__}", v)

    @property
    def ttl_ms(self) -> int | None:
        """:attr:`ttl_s` in whole milliseconds (Redis ``PX``), None without a TTL."""
        return None if self.ttl_s is None else max(1, round(self.ttl_s * 1000))


def store_config_from_dict(data: Mapping[str, Any] | None, where: str = "store") -> StoreConfig:
    """Build a :class:`StoreConfig` from parsed YAML; unknown keys are errors naming ``where``.

    Examples
    --------
    >>> store_config_from_dict({"url": "redis://h:1/0", "update_rules": {"dims": [0]}}
    ...                        ).update_rules.dims
    (0,)
    >>> store_config_from_dict({"new_user": {"sorce": "fixed"}}, "tables.user.store")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: tables.user.store: new_user: unknown key 'sorce' (expected ...)
    """
    return build_config(StoreConfig, data, where)
