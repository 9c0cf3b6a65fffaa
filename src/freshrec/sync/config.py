"""Configuration of the publisher (what is published, how often) and the subscriber.

Intervals are wall-clock seconds: they drive scheduling only. Monolith syncs sparse rows every
minute and dense parameters daily; freshrec's defaults are much shorter because the registry is
a local directory and the freshness target is seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from freshrec._validate import check_keys, is_int, is_number, require
from freshrec.errors import ConfigError

__all__ = [
    "PublisherConfig",
    "SubscriberConfig",
    "publisher_config_from_dict",
    "subscriber_config_from_dict",
]


@dataclass(frozen=True, kw_only=True)
class PublisherConfig:
    """When and what a :class:`~freshrec.sync.Publisher` publishes.

    Parameters
    ----------
    sparse_interval_s : float
        Wall seconds between sparse deltas (rows written and fids expired since the last
        publish). Monolith: one minute.
    dense_interval_s : float
        Wall seconds between publishes of the dense parameters. Monolith: one day. A dense
        publish also carries the sparse rows written since the last publish.
    full_interval_s : float
        Wall seconds between full snapshots (every table, optimizer state included, and the
        dense parameters). Must be >= ``sparse_interval_s``.
    keep_full : int
        Full snapshots kept by garbage collection (with every version after the oldest kept
        one); see :meth:`Registry.gc`.
    auto_gc : bool
        Collect garbage after each full snapshot.
    with_state : bool
        Include the optimizer state of written rows in deltas. Off by default: serving needs
        only the rows; full snapshots always carry the state.
    skip_empty : bool
        Publish no sparse delta when no row was written and no fid expired.

    Examples
    --------
    >>> PublisherConfig(sparse_interval_s=1.0).dense_interval_s
    60.0
    >>> PublisherConfig(full_interval_s=0.5, sparse_interval_s=1.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: PublisherConfig: full_interval_s must be a number >= ..., got 0.5
    """

    sparse_interval_s: float = 2.0
    dense_interval_s: float = 60.0
    full_interval_s: float = 3600.0
    keep_full: int = 3
    auto_gc: bool = True
    with_state: bool = False
    skip_empty: bool = True

    def __post_init__(self) -> None:
        owner = "PublisherConfig"
        for name in ("sparse_interval_s", "dense_interval_s", "full_interval_s"):
            v = getattr(self, name)
            require(is_number(v) and v >= 0, owner, name, "a number of seconds >= 0", v)
        require(self.full_interval_s >= self.sparse_interval_s, owner, "full_interval_s",
                f"a number >= sparse_interval_s ({self.sparse_interval_s})",
                self.full_interval_s)
        require(is_int(self.keep_full) and self.keep_full >= 1, owner, "keep_full",
                "an int >= 1", self.keep_full)
        for name in ("auto_gc", "with_state", "skip_empty"):
            v = getattr(self, name)
            require(isinstance(v, bool), owner, name, "a bool", v)


@dataclass(frozen=True, kw_only=True)
class SubscriberConfig:
    """How a :class:`~freshrec.sync.Subscriber` applies updates.

    Parameters
    ----------
    chunk_rows : int
        Rows written per short lock when applying a delta (concurrent readers wait at most
        one chunk).
    prefer : str
        ``"bytes"`` (default): when both a chain of deltas and a newer full snapshot lead to
        the newest version, take the one with fewer bytes to read, ties going to the deltas.
        ``"deltas"``: always apply deltas when the local version is on the chain.

    Examples
    --------
    >>> SubscriberConfig(chunk_rows=0)
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: SubscriberConfig: chunk_rows must be an int >= 1, got 0
    """

    chunk_rows: int = 4096
    prefer: str = "bytes"

    def __post_init__(self) -> None:
        require(is_int(self.chunk_rows) and self.chunk_rows >= 1, "SubscriberConfig",
                "chunk_rows", "an int >= 1", self.chunk_rows)
        require(self.prefer in ("bytes", "deltas"), "SubscriberConfig", "prefer",
                "'bytes' or 'deltas'", self.prefer)


def _from_dict(cls: type, data: Mapping[str, Any], where: str) -> Any:
    check_keys(data, {f.name for f in dataclasses.fields(cls)}, where)
    try:
        return cls(**data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def publisher_config_from_dict(
    data: Mapping[str, Any], where: str = "sync.publisher"
) -> PublisherConfig:
    """Build a :class:`PublisherConfig` from parsed YAML, naming unknown keys and ``where``.

    Examples
    --------
    >>> publisher_config_from_dict({"sparse_interval_s": 5}).sparse_interval_s
    5
    >>> publisher_config_from_dict({"sparse_every": 5})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: sync.publisher: unknown key 'sparse_every' (expected one of: ...)
    """
    return _from_dict(PublisherConfig, data, where)  # type: ignore[no-any-return]


def subscriber_config_from_dict(
    data: Mapping[str, Any], where: str = "sync.subscriber"
) -> SubscriberConfig:
    """Build a :class:`SubscriberConfig` from parsed YAML, naming unknown keys and ``where``."""
    return _from_dict(SubscriberConfig, data, where)  # type: ignore[no-any-return]
