"""Which registry versions can be served: each version's files checked, and what damage breaks.

A version is *servable* when it and every version its state is built from (back to a full
snapshot) pass their checks: manifest readable and unaltered, every part's files present,
of the listed sizes and (with ``checksums``) of the listed CRC-32s. A damaged delta breaks the
versions after it up to the next full snapshot; :attr:`RegistryHealth.newest_servable` is
what a server started now would serve (see :class:`~freshrec.sync.Subscriber`).

Examples
--------
>>> import tempfile, numpy as np
>>> from freshrec.sync import Publisher, Registry
>>> from freshrec.table import EmbeddingTable, TableConfig
>>> reg = Registry(tempfile.mkdtemp())
>>> table = EmbeddingTable(TableConfig(name="item", dim=2))
>>> pub = Publisher(reg, [table])
>>> for t in range(3):
...     _ = table.lookup(np.array([t], np.uint64), now=t, train=True)
...     _ = pub.publish_full() if t == 0 else pub.publish_sparse()
>>> (reg.path_of(2) / "delta" / "item" / "values.npy").write_bytes(b"garbage")
7
>>> health = check_registry(reg)
>>> for h in health.versions:
...     print(h.version, h.status)  # doctest: +ELLIPSIS
1 ok
2 damaged: .../000000000002/delta/item/values.npy: truncated or altered: 7 bytes, ...
3 needs version 2 (damaged)
>>> health.head, health.newest_servable
(3, 1)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freshrec._io import MANIFEST
from freshrec.sync._format import dir_bytes
from freshrec.sync.registry import DAMAGE_ERRORS, Registry, VersionKind, VersionManifest

__all__ = ["RegistryHealth", "VersionHealth", "check_registry"]


@dataclass(frozen=True, kw_only=True)
class VersionHealth:
    """The checks of one version.

    Parameters
    ----------
    version : int
    manifest : VersionManifest or None
        ``None`` when the manifest itself is missing or damaged.
    damage : str or None
        Why the version's own files fail their checks (the first failure, naming the file).
    needs : int or None
        For a version whose own files pass: the damaged or missing version its state is built
        from, which keeps it from being served.
    needs_missing : bool
        ``needs`` is missing from the registry (rather than damaged).
    salvaged : dict
        Without a manifest: what the files on disk still show (``kind`` guessed from the
        parts present, ``rows``, ``dense``, ``bytes``, ``created_unix_s``).
    """

    version: int
    manifest: VersionManifest | None
    damage: str | None = None
    needs: int | None = None
    needs_missing: bool = False
    salvaged: dict[str, Any] = field(default_factory=dict)

    @property
    def servable(self) -> bool:
        """Whether a subscriber can load this version."""
        return self.damage is None and self.needs is None

    @property
    def status(self) -> str:
        """``ok``, ``damaged: <why>`` or ``needs version <n> (damaged|missing)``."""
        if self.damage is not None:
            return f"damaged: {self.damage}"
        if self.needs is not None:
            return f"needs version {self.needs} ({'missing' if self.needs_missing else 'damaged'})"
        return "ok"


@dataclass(frozen=True, kw_only=True)
class RegistryHealth:
    """The checks of every published version, ascending, and ``HEAD``."""

    head: int | None
    versions: tuple[VersionHealth, ...]
    checksums: bool

    @property
    def newest_servable(self) -> int | None:
        """The newest version a subscriber can load (``None``: none)."""
        return max((h.version for h in self.versions if h.servable), default=None)

    @property
    def damaged(self) -> list[int]:
        """Versions whose own files fail their checks."""
        return [h.version for h in self.versions if h.damage is not None]

    @property
    def ok(self) -> bool:
        """Whether ``HEAD`` is servable (an empty registry is ok)."""
        return self.newest_servable == self.head


def _salvage(path: Path) -> dict[str, Any]:
    """What a version directory whose manifest is unreadable still shows."""
    parts = {p for p in ("full", "delta", "dense") if (path / p).is_dir()}
    kind = "full" if "full" in parts else "delta" if parts else "unknown"
    rows = 0
    for m in sorted([*path.glob(f"delta/*/{MANIFEST}"), *path.glob(f"delta/*/part-*/{MANIFEST}")]):
        try:
            rows += int(json.loads(m.read_text())["rows"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return {"kind": kind, "rows": rows, "dense": "dense" in parts, "bytes": dir_bytes(path),
            "created_unix_s": path.stat().st_mtime}


def check_registry(registry: Registry, *, checksums: bool = True) -> RegistryHealth:
    """Check every published version of ``registry``.

    Parameters
    ----------
    registry : Registry
    checksums : bool
        Also compute every file's CRC-32 (reads every byte); without, only manifests and file
        sizes are checked (finds missing, truncated and deleted files quickly).
    """
    found: dict[int, VersionHealth] = {}
    for v in registry.versions():
        m = None
        try:
            m = registry.manifest(v)
            registry.verify(v, checksums=checksums)
        except DAMAGE_ERRORS as e:
            found[v] = VersionHealth(version=v, manifest=m, damage=str(e),
                                     salvaged={} if m else _salvage(registry.path_of(v)))
            continue
        needs = None
        if m.kind is not VersionKind.FULL:
            assert m.base is not None
            base = found.get(m.base)
            needs = m.base if base is None or base.damage is not None else base.needs
        found[v] = VersionHealth(version=v, manifest=m, needs=needs,
                                 needs_missing=needs is not None and needs not in found)
    return RegistryHealth(head=registry.head(), versions=tuple(found.values()),
                          checksums=checksums)
