"""Distributed checkpoints: one shard checkpoint per rank, named by one atomic manifest.

Layout of a distributed run directory::

    run/
      rank-0/checkpoints/step-00000100/   rank 0's checkpoint (freshrec.train.checkpoint):
      rank-1/checkpoints/step-00000100/     its shard of every table, the dense part, the
      ...                                   input position and progressive metrics
      checkpoints/
        step-00000100.json                the manifest: world size, sharding, every shard
        LATEST                            name of the newest complete manifest (atomic)

Every rank writes its shard; after a barrier rank 0 writes the manifest and then ``LATEST``,
both atomically, so a kill at any moment leaves the previous manifest, whose shards are still
kept (a shard keeps one checkpoint more than the manifests do). A manifest written by N ranks
restores on M ranks: each new rank reads every old shard and keeps the rows it owns
(:func:`reshard_table`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from freshrec._io import atomic_write_bytes
from freshrec.dist.sharding import SHARD_SALT, owner_ranks
from freshrec.errors import IncompatibleFormatError, SnapshotCorruptError
from freshrec.table.config import TableConfig
from freshrec.table.delta import TableDelta
from freshrec.table.table import EmbeddingTable

__all__ = ["DistManifest", "write_manifest", "latest_manifest", "reshard_table"]

MANIFEST_FORMAT = "freshrec.dist.checkpoint"
MANIFEST_VERSION = 1
LATEST = "LATEST"


@dataclass(frozen=True)
class DistManifest:
    """A distributed checkpoint: its name, step, world size and each rank's shard."""

    path: Path
    name: str
    step: int
    world_size: int
    shards: tuple[Path, ...]

    @classmethod
    def read(cls, path: Path) -> DistManifest:
        """Read and check the manifest at ``path``; its shard paths are resolved."""
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != MANIFEST_FORMAT:
                raise IncompatibleFormatError(f"{path}: format {doc.get('format')!r}, expected "
                                              f"{MANIFEST_FORMAT!r}")
            if doc.get("version") != MANIFEST_VERSION:
                raise IncompatibleFormatError(f"{path}: version {doc.get('version')!r}, "
                                              f"expected {MANIFEST_VERSION}")
            if doc.get("salt") != int(SHARD_SALT):
                raise IncompatibleFormatError(f"{path}: sharded with another rule "
                                              f"(salt {doc.get('salt')})")
            shards = tuple(path.parent.parent / s for s in doc["shards"])
            if len(shards) != int(doc["world_size"]):
                raise SnapshotCorruptError(f"{path}: {len(shards)} shards for world size "
                                           f"{doc['world_size']}")
            return cls(path, str(doc["name"]), int(doc["step"]), int(doc["world_size"]), shards)
        except (KeyError, TypeError, ValueError, OSError) as e:
            if isinstance(e, IncompatibleFormatError | SnapshotCorruptError):
                raise
            raise SnapshotCorruptError(f"{path}: not a distributed checkpoint manifest "
                                       f"({type(e).__name__}: {e})") from e


def write_manifest(run_dir: Path, name: str, step: int, shards: list[Path],
                   keep: int) -> Path:
    """Write ``run_dir/checkpoints/<name>.json`` naming ``shards`` (one per rank, in rank
    order), point ``LATEST`` at it and keep the newest ``keep`` manifests."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    doc = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "name": name, "step": step,
           "world_size": len(shards), "sharding": "row_hash", "salt": int(SHARD_SALT),
           "shards": [str(s.relative_to(run_dir)) for s in shards]}
    path = root / f"{name}.json"
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
    atomic_write_bytes(root / LATEST, name.encode())
    for old in sorted(root.glob("*.json"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def latest_manifest(root: Path) -> DistManifest | None:
    """The manifest ``root/LATEST`` names (``root`` may also be a manifest file), or None."""
    if root.is_file():
        return DistManifest.read(root)
    ptr = root / LATEST
    if not ptr.is_file():
        return None
    return DistManifest.read(root / f"{ptr.read_text().strip()}.json")


def reshard_table(config: TableConfig, shard_dirs: list[Path], rank: int,
                  world: int) -> EmbeddingTable:
    """A new table holding the rows of the snapshots ``shard_dirs`` that ``rank`` of
    ``world`` owns: values, optimizer state and last-seen times exactly. Its version
    continues from the newest of theirs; admission counts of fids not yet admitted start
    again (a count-min sketch cannot be split by owner).

    Examples
    --------
    >>> import tempfile
    >>> from freshrec.table import TableConfig
    >>> cfg = TableConfig(name="item", dim=2)
    >>> old = EmbeddingTable(cfg)
    >>> _ = old.lookup(np.arange(100, dtype=np.uint64), now=3, train=True)
    >>> d = Path(tempfile.mkdtemp()) / "item"; old.save(d)
    >>> parts = [reshard_table(cfg, [d], r, 3) for r in range(3)]
    >>> sum(len(p) for p in parts), bool((parts[1].lookup([7]) == old.lookup([7])).all() or
    ...                                  (parts[1].lookup([7]) == 0).all())
    (100, True)
    """
    table = EmbeddingTable(config)
    version = 1
    for d in shard_dirs:
        old = EmbeddingTable.from_snapshot(d, config)
        version = max(version, old.version)
        rows = old.read_rows()
        mine = owner_ranks(rows.fids, world) == rank
        table.apply_delta(TableDelta(
            table=config.name, fingerprint=config.fingerprint(), from_version=0,
            to_version=0, fids=rows.fids[mine], values=rows.values[mine],
            last_seen=rows.last_seen[mine],
            states=rows.states[mine] if rows.states is not None else None,
            expired=np.empty(0, np.uint64)), check_version=False)
    while table.version < version:
        table.seal_version()
    return table
