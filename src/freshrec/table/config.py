"""Configuration of an embedding table: dim, initializer, optimizer, admission, expiry.

All configs are frozen, keyword-only dataclasses validated when built, and can be built from
plain mappings (parsed YAML) with :func:`table_config_from_dict`, which rejects unknown keys.

Examples
--------
>>> cfg = TableConfig(name="user", dim=8, optimizer=OptimizerConfig(kind="adagrad", lr=0.05))
>>> cfg.state_dim
8
>>> table_config_from_dict({"name": "item", "dim": 4, "ttl_s": 3600}).ttl_s
3600
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum, unique
from typing import Any

from freshrec._validate import check_keys, is_int, is_number, require
from freshrec.errors import ConfigError
from freshrec.store.config import StoreConfig, TableBackend, store_config_from_dict

__all__ = [
    "InitKind",
    "OptimizerKind",
    "InitializerConfig",
    "OptimizerConfig",
    "AdmissionConfig",
    "TableConfig",
    "table_config_from_dict",
]


@unique
class InitKind(StrEnum):
    """How a new row is filled. Every kind is deterministic per (seed, fid)."""

    ZEROS = "zeros"
    """All zeros."""
    UNIFORM = "uniform"
    """Uniform in ``[-scale, scale)``."""
    NORMAL = "normal"
    """Normal with mean 0 and standard deviation ``std``."""


@unique
class OptimizerKind(StrEnum):
    """Per-row optimizers; their state is stored beside the row."""

    SGD = "sgd"
    """Plain SGD (no state)."""
    ADAGRAD = "adagrad"
    """Element-wise Adagrad, as ``torch.optim.Adagrad`` (state: ``dim`` floats)."""
    ROWWISE_ADAGRAD = "rowwise_adagrad"
    """Adagrad with one accumulator per row: the mean of squared gradients (state: 1 float)."""
    ADAM = "adam"
    """Adam with a step count per row (state: ``2 * dim + 1`` floats)."""
    FTRL = "ftrl"
    """FTRL-Proximal (McMahan et al. 2013), per element (state: ``2 * dim`` floats)."""


@dataclass(frozen=True, kw_only=True)
class InitializerConfig:
    """How new rows are initialised.

    Parameters
    ----------
    kind : InitKind
        ``zeros``, ``uniform`` or ``normal``.
    scale : float
        Half-width of the uniform range.
    std : float
        Standard deviation of the normal.
    seed : int
        Mixed with the fid, so one fid gets the same row in every process.
    """

    kind: InitKind = InitKind.UNIFORM
    scale: float = 0.01
    std: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", InitKind(self.kind))
        except ValueError as e:
            raise ConfigError(
                f"InitializerConfig: kind must be one of {[k.value for k in InitKind]}, "
                f"got {self.kind!r}"
            ) from e
        require(is_number(self.scale) and self.scale >= 0, "InitializerConfig", "scale",
                "a number >= 0", self.scale)
        require(is_number(self.std) and self.std >= 0, "InitializerConfig", "std",
                "a number >= 0", self.std)
        require(is_int(self.seed) and 0 <= self.seed < 2**63, "InitializerConfig", "seed",
                "an int in [0, 2**63)", self.seed)


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """A per-row optimizer and its hyper-parameters.

    Parameters
    ----------
    kind : OptimizerKind
        One of ``sgd``, ``adagrad``, ``rowwise_adagrad``, ``adam``, ``ftrl``.
    lr : float
        Learning rate (``alpha`` for FTRL).
    eps : float
        Added to denominators (Adagrad, Adam). Must be > 0 for Adam, and for Adagrad when
        ``initial_accumulator`` is 0: a zero gradient would divide 0 by 0 and write NaN.
    initial_accumulator : float
        Starting value of Adagrad's accumulator.
    beta1, beta2 : float
        Adam's moment decays.
    weight_decay : float
        L2 added to the gradient (SGD, Adagrad, Adam).
    l1, l2, beta : float
        FTRL's regularisation and ``beta``.
    """

    kind: OptimizerKind = OptimizerKind.ADAGRAD
    lr: float = 0.01
    eps: float = 1e-10
    initial_accumulator: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    beta: float = 1.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", OptimizerKind(self.kind))
        except ValueError as e:
            raise ConfigError(
                f"OptimizerConfig: kind must be one of {[k.value for k in OptimizerKind]}, "
                f"got {self.kind!r}"
            ) from e
        for name in ("lr", "eps", "initial_accumulator", "weight_decay", "l1", "l2", "beta"):
            v = getattr(self, name)
            require(is_number(v) and v >= 0, "OptimizerConfig", name, "a number >= 0", v)
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            require(is_number(v) and 0 <= v < 1, "OptimizerConfig", name, "a number in [0, 1)", v)
        zero_denominator = self.kind == OptimizerKind.ADAM or (
            self.kind in (OptimizerKind.ADAGRAD, OptimizerKind.ROWWISE_ADAGRAD)
            and self.initial_accumulator == 0)
        require(not zero_denominator or self.eps > 0, "OptimizerConfig", "eps",
                f"a number > 0 for {self.kind.value} (with initial_accumulator 0 a zero gradient "
                "would compute 0/0)", self.eps)

    def state_dim(self, dim: int) -> int:
        """Floats of optimizer state stored per row for rows of width ``dim``.

        >>> OptimizerConfig(kind="adam").state_dim(16)
        33
        """
        return {
            OptimizerKind.SGD: 0,
            OptimizerKind.ADAGRAD: dim,
            OptimizerKind.ROWWISE_ADAGRAD: 1,
            OptimizerKind.ADAM: 2 * dim + 1,
            OptimizerKind.FTRL: 2 * dim,
        }[OptimizerKind(self.kind)]


@dataclass(frozen=True, kw_only=True)
class AdmissionConfig:
    """When a new fid gets a row (Monolith's admission filter).

    A fid is admitted at the occurrence where both hold: it has been seen at least
    ``min_count`` times (counted in a count-min sketch of ``sketch_width`` x ``sketch_depth``
    counters), and a deterministic coin with probability ``probability`` (drawn per fid and
    occurrence) comes up. The defaults admit every fid at first sight.

    Parameters
    ----------
    min_count : int
        Occurrences needed before admission (1 = admit at once).
    probability : float
        Chance that an occurrence admits a fid that passed ``min_count``.
    sketch_width, sketch_depth : int
        Count-min sketch size (width is rounded up to a power of two).
    seed : int
        Seed of the sketch hashes and the admission coin.
    """

    min_count: int = 1
    probability: float = 1.0
    sketch_width: int = 1 << 20
    sketch_depth: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        require(is_int(self.min_count) and self.min_count >= 1, "AdmissionConfig",
                "min_count", "an int >= 1", self.min_count)
        require(is_number(self.probability) and 0 < self.probability <= 1, "AdmissionConfig",
                "probability", "a number in (0, 1]", self.probability)
        require(is_int(self.sketch_width) and 16 <= self.sketch_width <= 1 << 30,
                "AdmissionConfig", "sketch_width", "an int in [16, 2**30]", self.sketch_width)
        require(is_int(self.sketch_depth) and 1 <= self.sketch_depth <= 16, "AdmissionConfig",
                "sketch_depth", "an int in [1, 16]", self.sketch_depth)
        require(is_int(self.seed) and 0 <= self.seed < 2**63, "AdmissionConfig", "seed",
                "an int in [0, 2**63)", self.seed)

    @property
    def admits_all(self) -> bool:
        """True when every fid is admitted at first sight (no sketch needed)."""
        return self.min_count <= 1 and self.probability >= 1.0


@dataclass(frozen=True, kw_only=True)
class TableConfig:
    """One embedding table.

    Parameters
    ----------
    name : str
        Table name (several slots may share one table).
    dim : int
        Row width.
    initializer, optimizer, admission
        See :class:`InitializerConfig`, :class:`OptimizerConfig`, :class:`AdmissionConfig`.
    ttl_s : int or None
        Rows not looked up for longer than this (event time, seconds) are removed by
        ``expire(now)``; ``None`` keeps rows forever.
    capacity_hint : int
        Rows to reserve up front (the table grows past it as needed).
    max_load : float
        Index fill (entries + tombstones over slots) that triggers a rebuild/growth.
    backend : TableBackend
        ``memory`` (rows in the process) or ``redis`` (rows in Redis, shared by the trainer
        and the servers: see :mod:`freshrec.store`).
    store : StoreConfig
        Where and how a ``redis`` table keeps its rows (``store.url`` is required then).

    Examples
    --------
    >>> TableConfig(name="user", dim=0)
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: TableConfig 'user': dim must be an int in [1, 4096], got 0
    """

    name: str
    dim: int
    initializer: InitializerConfig = field(default_factory=InitializerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    ttl_s: int | None = None
    capacity_hint: int = 1024
    max_load: float = 0.7
    backend: TableBackend = TableBackend.MEMORY
    store: StoreConfig = field(default_factory=StoreConfig)

    def __post_init__(self) -> None:
        owner = f"TableConfig {self.name!r}"
        try:
            object.__setattr__(self, "backend", TableBackend(self.backend))
        except ValueError as e:
            raise ConfigError(f"{owner}: backend must be one of "
                              f"{[b.value for b in TableBackend]}, got {self.backend!r}") from e
        require(self.backend is TableBackend.MEMORY or bool(self.store.url), owner,
                "store.url", "a Redis URL for backend redis", self.store.url)
        require(isinstance(self.name, str) and self.name.isidentifier(), "TableConfig", "name",
                "an identifier string", self.name)
        require(is_int(self.dim) and 1 <= self.dim <= 4096, owner, "dim", "an int in [1, 4096]",
                self.dim)
        require(self.ttl_s is None or (is_int(self.ttl_s) and self.ttl_s >= 1), owner, "ttl_s",
                "an int >= 1 or null", self.ttl_s)
        require(is_int(self.capacity_hint) and 1 <= self.capacity_hint < 2**31, owner,
                "capacity_hint", "an int in [1, 2**31)", self.capacity_hint)
        require(is_number(self.max_load) and 0.2 <= self.max_load <= 0.9, owner, "max_load",
                "a number in [0.2, 0.9]", self.max_load)

    @property
    def state_dim(self) -> int:
        """Floats of optimizer state per row."""
        return self.optimizer.state_dim(self.dim)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (enums as strings); inverse of :func:`table_config_from_dict`."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=lambda e: e.value))

    def fingerprint(self) -> str:
        """Short hash of the settings that define the row layout (name, dim, optimizer kind).

        Snapshots and deltas carry it; loading refuses one written for another layout.
        """
        key = f"{self.name}|{self.dim}|{OptimizerKind(self.optimizer.kind).value}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]


_SECTIONS: dict[str, type] = {
    "initializer": InitializerConfig,
    "optimizer": OptimizerConfig,
    "admission": AdmissionConfig,
}


def table_config_from_dict(data: Mapping[str, Any], where: str = "table config") -> TableConfig:
    """Build a :class:`TableConfig` from a mapping, rejecting unknown keys with their location.

    Parameters
    ----------
    data : Mapping
        Parsed YAML/JSON.
    where : str
        Location used in error messages, e.g. ``"tables.user in model.yaml"``.

    Examples
    --------
    >>> table_config_from_dict({"name": "u", "dim": 4, "optimizer": {"kind": "sgd", "lrr": 1}})
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: table config.optimizer: unknown key 'lrr' (expected one of: beta, beta1, beta2, eps, initial_accumulator, kind, l1, l2, lr, weight_decay)
    """
    check_keys(data, {f.name for f in dataclasses.fields(TableConfig)}, where)
    kwargs = dict(data)
    for key, cls in _SECTIONS.items():
        if key in kwargs:
            sub = kwargs[key]
            check_keys(sub, {f.name for f in dataclasses.fields(cls)}, f"{where}.{key}")
            try:
                kwargs[key] = cls(**sub)
            except ConfigError as e:
                raise ConfigError(f"{where}.{key}: {e}") from e
    if "store" in kwargs:
        kwargs["store"] = store_config_from_dict(kwargs["store"], f"{where}.store")
    if "name" not in kwargs or "dim" not in kwargs:
        raise ConfigError(f"{where}: 'name' and 'dim' are required")
    try:
        return TableConfig(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
