"""On-disk formats of the parts of a registry version (private).

A table delta and the dense parameters are each one :mod:`freshrec._io` bundle (``.npy``
arrays + a manifest with per-file CRC-32). Full table snapshots use
:meth:`EmbeddingTable.save`'s own format. A table published in parts (one per shard of a
distributed model) is read back as one (:func:`read_delta_parts`, :func:`load_table_parts`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freshrec._io import MANIFEST, crc32_file, read_bundle, write_bundle
from freshrec.errors import InputError, SnapshotCorruptError
from freshrec.table import EmbeddingTable, TableDelta

TABLE_DELTA_FORMAT = "freshrec.sync.table_delta"
TABLE_DELTA_VERSION = 1
DENSE_FORMAT = "freshrec.sync.dense"
DENSE_VERSION = 1

_DELTA_KEYS = ("fids", "values", "last_seen", "expired")
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def write_table_delta(path: Path, delta: TableDelta) -> None:
    """Write ``delta`` as a bundle at ``path``."""
    arrays: dict[str, np.ndarray] = {
        "fids": delta.fids, "values": delta.values, "last_seen": delta.last_seen,
        "expired": delta.expired,
    }
    if delta.states is not None:
        arrays["states"] = delta.states
    meta = {
        "table": delta.table, "fingerprint": delta.fingerprint,
        "from_version": delta.from_version, "to_version": delta.to_version,
        "rows": delta.num_rows, "with_state": delta.states is not None,
    }
    write_bundle(path, TABLE_DELTA_FORMAT, TABLE_DELTA_VERSION, arrays, meta)


def read_table_delta(path: Path) -> TableDelta:
    """Read and verify a table delta bundle; :class:`SnapshotCorruptError` names a bad file."""
    meta, arrays = read_bundle(path, TABLE_DELTA_FORMAT, TABLE_DELTA_VERSION)
    missing = [k for k in _DELTA_KEYS if k not in arrays]
    if missing:
        raise SnapshotCorruptError(f"{path}: table delta lacks {missing[0]}.npy")
    try:
        return TableDelta(
            table=str(meta["table"]), fingerprint=str(meta["fingerprint"]),
            from_version=int(meta["from_version"]), to_version=int(meta["to_version"]),
            fids=arrays["fids"], values=arrays["values"], last_seen=arrays["last_seen"],
            states=arrays.get("states"), expired=arrays["expired"],
        )
    except (InputError, KeyError, TypeError, ValueError) as e:
        raise SnapshotCorruptError(f"{path}/{MANIFEST}: inconsistent table delta ({e})") from e


def read_delta_parts(paths: Sequence[Path]) -> TableDelta:
    """Read the parts of one table's delta (:func:`read_table_delta` each) as one delta.

    The parts of a sharded model hold disjoint fids and cover the same table versions; a
    part that disagrees on the table, its layout or the versions is reported by path.
    """
    parts = [read_table_delta(p) for p in paths]
    first = parts[0]
    if len(parts) == 1:
        return first
    for path, d in zip(paths[1:], parts[1:], strict=True):
        if (d.table, d.fingerprint, d.from_version, d.to_version) != (
                first.table, first.fingerprint, first.from_version, first.to_version):
            raise SnapshotCorruptError(
                f"{path}: part of table {d.table!r} versions ({d.from_version}, "
                f"{d.to_version}], {paths[0]} is of table {first.table!r} versions "
                f"({first.from_version}, {first.to_version}]")
    states = [d.states for d in parts if d.states is not None]
    return TableDelta(
        table=first.table, fingerprint=first.fingerprint, from_version=first.from_version,
        to_version=first.to_version, fids=np.concatenate([d.fids for d in parts]),
        values=np.concatenate([d.values for d in parts]),
        last_seen=np.concatenate([d.last_seen for d in parts]),
        states=np.concatenate(states) if len(states) == len(parts) else None,
        expired=np.concatenate([d.expired for d in parts]))


def load_table_parts(table: EmbeddingTable, paths: Sequence[Path], *,
                     chunk_rows: int = 4096) -> None:
    """Replace ``table``'s contents with the snapshot parts ``paths`` (one per shard): the
    first is loaded (:meth:`EmbeddingTable.load`), the rows of the others added to it."""
    table.load(paths[0])
    _add_parts(table, paths[1:], chunk_rows)


def table_from_parts(paths: Sequence[Path]) -> EmbeddingTable:
    """A new table holding the snapshot parts ``paths`` (see :func:`load_table_parts`)."""
    table = EmbeddingTable.from_snapshot(paths[0])
    _add_parts(table, paths[1:], 4096)
    return table


def _add_parts(table: EmbeddingTable, paths: Sequence[Path], chunk_rows: int) -> None:
    for path in paths:
        rows = EmbeddingTable.from_snapshot(path, table.config).read_rows()
        table.apply_delta(TableDelta(
            table=table.name, fingerprint=table.config.fingerprint(), from_version=0,
            to_version=0, fids=rows.fids, values=rows.values, last_seen=rows.last_seen,
            states=rows.states, expired=np.empty(0, np.uint64)),
            chunk_rows=chunk_rows, check_version=False)


def dense_spec(state: Mapping[str, Any], owner: str) -> dict[str, dict[str, Any]]:
    """``{name: {"dtype": "float32", "shape": [..]}}`` of a state dict, validating its values."""
    spec = {}
    for name, t in state.items():
        if not isinstance(name, str) or not name:
            raise InputError(f"{owner}: dense parameter names must be non-empty strings, "
                             f"got {name!r}")
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{owner}: dense parameter {name!r} must be a torch.Tensor, "
                             f"got {type(t).__name__}")
        if t.is_sparse or t.layout != torch.strided:
            raise InputError(f"{owner}: dense parameter {name!r} must be a strided tensor, "
                             f"got layout {t.layout}")
        spec[name] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
    return spec


def write_dense(path: Path, state: Mapping[str, torch.Tensor], owner: str) -> None:
    """Write a state dict as a bundle: arrays ``p0, p1, ...`` and their names in the manifest.

    Tensors whose dtype numpy lacks (``bfloat16``, float8) are stored bit-exactly as an
    integer view of the same width.
    """
    spec = dense_spec(state, owner)
    arrays = {}
    params = []
    for i, (name, t) in enumerate(state.items()):
        t = t.detach().to("cpu").contiguous()
        view = False
        try:
            arr = t.numpy()
        except TypeError:
            arr = t.view(_INT_VIEW[t.element_size()]).numpy()
            view = True
        arrays[f"p{i}"] = arr
        params.append({"name": name, "file": f"p{i}", "view": view, **spec[name]})
    write_bundle(path, DENSE_FORMAT, DENSE_VERSION, arrays, {"params": params})


def read_dense(path: Path) -> dict[str, torch.Tensor]:
    """Read and verify a dense bundle back into a state dict (same names, dtypes, shapes)."""
    meta, arrays = read_bundle(path, DENSE_FORMAT, DENSE_VERSION)
    out = {}
    try:
        for p in meta["params"]:
            arr = arrays[p["file"]]
            dtype = getattr(torch, p["dtype"])
            if not isinstance(dtype, torch.dtype):
                raise TypeError(f"{p['dtype']!r} is not a torch dtype")
            t = torch.from_numpy(np.asarray(arr, order="C"))  # (ascontiguousarray: 0-d -> 1-d)
            if p["view"]:
                t = t.view(dtype)
            if t.dtype != dtype or list(t.shape) != list(p["shape"]):
                raise ValueError(f"parameter {p['name']!r} reads as {t.dtype} {list(t.shape)}, "
                                 f"manifest says {p['dtype']} {p['shape']}")
            out[str(p["name"])] = t
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SnapshotCorruptError(f"{path}/{MANIFEST}: inconsistent dense bundle ({e})") from e
    return out


def dir_bytes(path: Path) -> int:
    """Total bytes of the files under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def file_record(path: Path) -> dict[str, int]:
    """``{"bytes": size, "crc32": crc}`` of one file."""
    return {"bytes": path.stat().st_size, "crc32": crc32_file(path)}


def check_file(path: Path, record: Mapping[str, Any], *, checksum: bool = True) -> None:
    """Raise :class:`SnapshotCorruptError` naming ``path`` if it differs from ``record``
    (its size, and its CRC-32 unless ``checksum`` is false)."""
    if not path.is_file():
        raise SnapshotCorruptError(f"{path}: file listed in the version manifest is missing")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise SnapshotCorruptError(
            f"{path}: truncated or altered: {size} bytes, version manifest says "
            f"{record['bytes']}"
        )
    if checksum and crc32_file(path) != record["crc32"]:
        raise SnapshotCorruptError(f"{path}: checksum mismatch (file corrupted)")


def verify_bundle_files(path: Path, *, checksums: bool = True) -> None:
    """Check every file a bundle's manifest lists without loading arrays: sizes, and CRC-32s
    unless ``checksums`` is false (a quick check that finds missing and truncated files)."""
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except FileNotFoundError as e:
        raise SnapshotCorruptError(f"{mpath}: manifest missing") from e
    except (ValueError, KeyError, TypeError) as e:
        raise SnapshotCorruptError(f"{mpath}: manifest is not valid ({e})") from e
    for fname, info in files.items():
        check_file(path / fname, info, checksum=checksums)
