"""Atomic, checksummed array files: the on-disk building block of snapshots and deltas.

A *bundle* is a directory holding ``.npy`` arrays and a ``manifest.json`` that lists every
file with its byte size and CRC-32, plus a ``format`` name, a ``format_version`` and any
metadata. It is written to a temporary sibling and renamed into place, so a reader sees
either the old bundle or the whole new one. :func:`read_bundle` checks sizes and checksums
and names the first bad file.

Examples
--------
>>> import tempfile, numpy as np
>>> d = tempfile.mkdtemp()
>>> write_bundle(d + "/b", "demo", 1, {"x": np.arange(3)}, {"note": "hi"})
>>> meta, arrays = read_bundle(d + "/b", "demo", 1)
>>> meta["note"], arrays["x"].tolist()
('hi', [0, 1, 2])
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from zlib_ng.zlib_ng import crc32  # zlib's CRC-32, 2.5-10x faster (SIMD)

from freshrec.errors import IncompatibleFormatError, SnapshotCorruptError

__all__ = ["write_bundle", "read_bundle", "atomic_write_bytes", "crc32_file"]

MANIFEST = "manifest.json"
_CHUNK = 1 << 24


def crc32_file(path: Path) -> int:
    """CRC-32 of a file, read in 16 MiB chunks."""
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            crc = crc32(chunk, crc)
    return crc


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_bundle(
    path: str | os.PathLike[str],
    fmt: str,
    format_version: int,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
) -> None:
    """Write arrays and metadata as a bundle at ``path`` atomically (replacing any old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    files = {}
    for name, arr in arrays.items():
        fname = f"{name}.npy"
        with open(tmp / fname, "wb") as fh:
            np.save(fh, np.asarray(arr, order="C"), allow_pickle=False)  # 0-d stays 0-d
            fh.flush()
            os.fsync(fh.fileno())
        files[fname] = {"bytes": (tmp / fname).stat().st_size, "crc32": crc32_file(tmp / fname)}
    manifest = {"format": fmt, "format_version": format_version, "files": files, **meta}
    atomic_write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_bundle(
    path: str | os.PathLike[str], fmt: str, format_version: int, *, verify: bool = True
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a bundle; return ``(manifest, arrays)``.

    Raises
    ------
    SnapshotCorruptError
        The manifest or an array file is missing, truncated or fails its checksum.
    IncompatibleFormatError
        The bundle has another format or format version.
    """
    path = Path(path)
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError as e:
        raise SnapshotCorruptError(f"{mpath}: manifest missing (not a {fmt} bundle?)") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SnapshotCorruptError(f"{mpath}: manifest is not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise SnapshotCorruptError(f"{mpath}: manifest has no 'files' table")
    if manifest.get("format") != fmt or manifest.get("format_version") != format_version:
        raise IncompatibleFormatError(
            f"{mpath}: expected format {fmt!r} version {format_version}, got "
            f"{manifest.get('format')!r} version {manifest.get('format_version')!r}"
        )
    arrays = {}
    for fname, info in manifest["files"].items():
        fpath = path / fname
        if not isinstance(info, dict) or not {"bytes", "crc32"} <= info.keys():
            raise SnapshotCorruptError(f"{mpath}: entry of {fname} lacks 'bytes'/'crc32'")
        if not fpath.exists():
            raise SnapshotCorruptError(f"{fpath}: file listed in the manifest is missing")
        size = fpath.stat().st_size
        if size != info["bytes"]:
            raise SnapshotCorruptError(
                f"{fpath}: truncated or altered: {size} bytes, manifest says {info['bytes']}"
            )
        if verify and crc32_file(fpath) != info["crc32"]:
            raise SnapshotCorruptError(f"{fpath}: checksum mismatch (file corrupted)")
        try:
            arrays[fname[: -len(".npy")]] = np.load(fpath, allow_pickle=False)
        except ValueError as e:
            raise SnapshotCorruptError(f"{fpath}: not a readable .npy array ({e})") from e
    return manifest, arrays
