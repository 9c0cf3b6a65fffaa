"""The registry directory: versioned full snapshots, a chain of deltas and a ``HEAD`` pointer.

Layout
------
::

    <root>/
      registry.json           format, format version, model fingerprint, table configs,
                              dense parameter names/dtypes/shapes (written once)
      HEAD                    {"version": N}: the newest published version (replaced atomically)
      .lock                   flock'ed by writers (publish, rollback, gc)
      events.jsonl            operational events with their reasons, one JSON object a line:
                              publishes the gate refused, rollbacks (:meth:`Registry.record`)
      versions/
        000000000007/         one directory per version, renamed into place when complete
          manifest.json       kind, base, table versions, parts, checksums, event time, meta
          full/<table>/       EmbeddingTable.save() snapshot            (kind full)
          delta/<table>/      rows written + fids expired since base    (full with base, delta)
          dense/              the dense state dict as .npy arrays       (when dense is included)

A model trained on several ranks (``freshrec.dist``) publishes each table in *parts*, one
per shard, written by the rank that holds it: ``full/<table>/part-R/`` and
``delta/<table>/part-R/`` for ``R`` in ``0 .. parts - 1`` (the manifest's ``parts``; the
shards hold disjoint fids, so a table is the union of its parts). Readers treat a part like
any other: listed with its checksum in the version manifest, a missing or altered one makes
the version damaged.

Every part is a :mod:`freshrec._io` bundle whose ``manifest.json`` lists each file's size and
CRC-32; the version manifest lists the size and CRC-32 of each part's manifest and a CRC of
itself. A version is written under ``versions/.tmp-*`` and renamed into place, then ``HEAD``
is replaced, so a reader following ``HEAD`` never sees a half-written version; whatever a crash
leaves behind (temporary directories, a complete version that ``HEAD`` never reached) is
removed by the next writer.

Version semantics: ``state(v) = state(base) + parts(v)``. A *full* version can also be loaded
on its own; a *delta* needs its base; a *rollback* version has no parts and ``base`` is the
version rolled back to.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum, unique
from pathlib import Path
from typing import Any

from freshrec._io import MANIFEST, atomic_write_bytes
from freshrec.errors import (
    FreshrecError,
    IncompatibleFormatError,
    InputError,
    RegistryWriteError,
    SnapshotCorruptError,
    StaleDeltaError,
)
from freshrec.sync._format import check_file, verify_bundle_files

__all__ = ["Registry", "VersionKind", "VersionManifest", "part_name", "writing"]

log = logging.getLogger(__name__)

REGISTRY_FORMAT = "freshrec.registry"
REGISTRY_FORMAT_VERSION = 1
VERSION_FORMAT = "freshrec.registry.version"
VERSION_FORMAT_VERSION = 1
INFO = "registry.json"
HEAD = "HEAD"
LOCK = ".lock"
VERSIONS = "versions"
EVENTS = "events.jsonl"

#: What reading a damaged version raises (a file fails its checks, or its manifest is
#: missing, altered or of another format).
DAMAGE_ERRORS = (SnapshotCorruptError, IncompatibleFormatError)


@unique
class VersionKind(StrEnum):
    """What a registry version holds."""

    FULL = "full"
    """Every table (with optimizer state) and the dense parameters; loadable on its own. When
    ``base`` is set it also holds the delta from ``base``, so subscribers need not reload."""
    DELTA = "delta"
    """Rows written and fids expired since ``base`` and/or the dense parameters."""
    ROLLBACK = "rollback"
    """No data: the state equals that of ``base``, the version rolled back to."""


@dataclass(frozen=True, kw_only=True)
class VersionManifest:
    """The manifest of one registry version (``versions/<v>/manifest.json``).

    Parameters
    ----------
    version : int
        Registry version, increasing by one per publish.
    kind : VersionKind
    base : int or None
        ``state(version) = state(base) + parts``; ``None`` for a full snapshot without delta.
    fingerprint : str
        Model fingerprint (tables' layouts and dense shapes), equal to the registry's.
    table_versions : dict
        Per table, the table version this state corresponds to; the next delta of that table
        starts there.
    deltas : dict
        Per table in ``delta/``: ``from_version``, ``to_version``, ``rows``, ``expired``,
        ``with_state``.
    full : bool
        ``full/<table>/`` snapshots present.
    dense : bool
        ``dense/`` present.
    created_unix_s : float
        Wall time of publication (for measuring only).
    event_time : int or None
        Event-time watermark of the newest training data in this state, as passed in.
    meta : dict
        Small JSON metadata passed in by the trainer (model config, offsets, ...).
    files : dict
        Relative path of each part's manifest -> ``{"bytes", "crc32"}``.
    delta_bytes, full_bytes, dense_bytes : int
        Bytes on disk of each kind of part.
    rolled_back_from : int or None
        For a rollback, the ``HEAD`` it replaced.
    parts : int
        Parts of each table's delta and full snapshot (one per rank of a sharded model;
        1, the single-directory layout, is left out of the JSON as before).

    Examples
    --------
    >>> m = VersionManifest(version=3, kind=VersionKind.DELTA, base=2, fingerprint="ab",
    ...                     table_versions={"user": 5})
    >>> VersionManifest.from_json(m.to_json(), "demo") == m
    True
    """

    version: int
    kind: VersionKind
    base: int | None
    fingerprint: str
    table_versions: dict[str, int]
    deltas: dict[str, dict[str, Any]] = field(default_factory=dict)
    full: bool = False
    dense: bool = False
    created_unix_s: float = 0.0
    event_time: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, int]] = field(default_factory=dict)
    delta_bytes: int = 0
    full_bytes: int = 0
    dense_bytes: int = 0
    rolled_back_from: int | None = None
    parts: int = 1

    @property
    def delta_rows(self) -> int:
        """Rows written by this version's table deltas."""
        return sum(int(d["rows"]) for d in self.deltas.values())

    @property
    def nbytes(self) -> int:
        """Bytes of every part."""
        return self.delta_bytes + self.full_bytes + self.dense_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (without the format fields and checksum)."""
        d = asdict(self)
        d["kind"] = self.kind.value
        if self.parts == 1:
            del d["parts"]
        return d

    def to_json(self) -> bytes:
        """Serialised manifest with format, format version and a CRC-32 of its content.

        Keys keep their order (the CRC does not depend on it): ``meta`` may hold a model
        config, whose slot and dense feature order is the model's input order.
        """
        body = {"format": VERSION_FORMAT, "format_version": VERSION_FORMAT_VERSION,
                **self.to_dict()}
        body["checksum"] = _crc_json(body)
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> VersionManifest:
        """Parse and check a manifest; ``where`` names it in errors.

        Raises
        ------
        SnapshotCorruptError
            Not JSON, missing fields or a checksum mismatch.
        IncompatibleFormatError
            Another format version.
        """
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise SnapshotCorruptError(f"{where}: manifest is not valid JSON ({e})") from e
        if not isinstance(body, dict):
            raise SnapshotCorruptError(f"{where}: manifest is not a JSON object")
        if (body.get("format"), body.get("format_version")) != (VERSION_FORMAT,
                                                                VERSION_FORMAT_VERSION):
            raise IncompatibleFormatError(
                f"{where}: expected format {VERSION_FORMAT!r} version {VERSION_FORMAT_VERSION}, "
                f"got {body.get('format')!r} version {body.get('format_version')!r}"
            )
        checksum = body.pop("checksum", None)
        if checksum != _crc_json(body):
            raise SnapshotCorruptError(f"{where}: manifest checksum mismatch (file altered)")
        body.pop("format")
        body.pop("format_version")
        try:
            body["kind"] = VersionKind(body["kind"])
            parts = body.get("parts", 1)
            if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
                raise ValueError(f"parts must be an int >= 1, got {parts!r}")
            return cls(**body)
        except (KeyError, TypeError, ValueError) as e:
            raise SnapshotCorruptError(f"{where}: manifest fields are invalid ({e})") from e


def part_name(kind: str, table: str, part: int, parts: int) -> str:
    """Where part ``part`` of ``parts`` of a table's ``kind`` (``full``, ``delta``) lives in
    a version directory.

    >>> part_name("delta", "user", 0, 1), part_name("delta", "user", 1, 2)
    ('delta/user', 'delta/user/part-1')
    """
    return f"{kind}/{table}" if parts == 1 else f"{kind}/{table}/part-{part}"


def _crc_json(body: Mapping[str, Any]) -> int:
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


def _dirname(version: int) -> str:
    """Name of a version's directory under ``versions/``."""
    return f"{int(version):012d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def writing(root: Path, path: Path) -> Iterator[None]:
    """Raise an ``OSError`` of the block (disk full, no permission) as a
    :class:`RegistryWriteError` naming registry ``root`` and ``path`` (or the file the error
    names), keeping its ``errno``.

    Examples
    --------
    >>> from pathlib import Path
    >>> try:
    ...     with writing(Path("/r"), Path("/r/v/new")):
    ...         raise OSError(28, "No space left on device")
    ... except RegistryWriteError as e:
    ...     for line in (e.errno, *str(e).split("; ")):
    ...         print(line)
    28
    registry /r: could not write /r/v/new (OSError: [Errno 28] No space left on device)
    nothing was published (HEAD is unchanged) and the next publish retries
    """
    try:
        yield
    except FreshrecError:
        raise
    except OSError as e:
        err = RegistryWriteError(
            f"registry {root}: could not write {e.filename or path} ({type(e).__name__}: "
            f"{e}); nothing was published (HEAD is unchanged) and the next publish retries"
        )
        err.errno = e.errno
        raise err from e


def describe_mismatch(have: Mapping[str, Any], want: Mapping[str, Any]) -> str:
    """Human-readable differences between two registry infos (tables and dense specs)."""
    diffs = []
    ht, wt = have.get("tables", {}), want.get("tables", {})
    for name in sorted(set(ht) | set(wt)):
        if name not in wt:
            diffs.append(f"table {name!r} only in the registry")
        elif name not in ht:
            diffs.append(f"table {name!r} not in the registry")
        elif ht[name]["fingerprint"] != wt[name]["fingerprint"]:
            a, b = ht[name], wt[name]
            diffs.append(f"table {name!r} is dim {a['dim']} {a['optimizer']} in the registry, "
                         f"dim {b['dim']} {b['optimizer']} here")
    hd, wd = have.get("dense", {}), want.get("dense", {})
    for name in sorted(set(hd) | set(wd)):
        if hd.get(name) != wd.get(name):
            diffs.append(f"dense {name!r} is {hd.get(name)} in the registry, {wd.get(name)} here")
    return "; ".join(diffs) or "fingerprints differ"


class Registry:
    """A registry directory (see the module docstring for its layout).

    Readers need no lock; writers (:class:`~freshrec.sync.Publisher`, :meth:`rollback`,
    :meth:`gc`) serialise on ``<root>/.lock``. Version manifests are immutable and cached.

    Parameters
    ----------
    root : path
        The directory; created by the first publish.

    Examples
    --------
    >>> import tempfile
    >>> reg = Registry(tempfile.mkdtemp() + "/reg")
    >>> reg.head() is None, reg.versions()
    (True, [])
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._cache: dict[int, VersionManifest] = {}

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r}, head={self.head()})"

    @property
    def _versions_dir(self) -> Path:
        return self.root / VERSIONS

    def path_of(self, version: int) -> Path:
        """Directory of ``version``."""
        return self._versions_dir / _dirname(version)

    # ------------------------------------------------------------------ reading
    def info(self) -> dict[str, Any] | None:
        """Contents of ``registry.json`` (format, fingerprint, tables, dense), or ``None``."""
        path = self.root / INFO
        try:
            info = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as e:
            raise SnapshotCorruptError(f"{path}: not valid JSON ({e})") from e
        if (info.get("format"), info.get("format_version")) != (REGISTRY_FORMAT,
                                                                REGISTRY_FORMAT_VERSION):
            raise IncompatibleFormatError(
                f"{path}: expected format {REGISTRY_FORMAT!r} version "
                f"{REGISTRY_FORMAT_VERSION}, got {info.get('format')!r} version "
                f"{info.get('format_version')!r}"
            )
        return info  # type: ignore[no-any-return]

    def head(self) -> int | None:
        """The newest published version, ``None`` for an empty registry."""
        path = self.root / HEAD
        try:
            data = json.loads(path.read_text())
            return int(data["version"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise SnapshotCorruptError(f"{path}: not a valid HEAD pointer ({e})") from e

    def _present(self) -> list[int]:
        try:
            names = os.listdir(self._versions_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def versions(self) -> list[int]:
        """Published versions on disk, ascending (never newer than ``HEAD``)."""
        head = self.head()
        if head is None:
            return []
        return [v for v in self._present() if v <= head]

    def has(self, version: int) -> bool:
        """Whether ``version`` is published and still on disk."""
        head = self.head()
        return head is not None and version <= head and self.path_of(version).is_dir()

    def manifest(self, version: int | None = None) -> VersionManifest:
        """The manifest of ``version`` (``HEAD`` when ``None``).

        Raises
        ------
        InputError
            The version was never published or was garbage-collected.
        SnapshotCorruptError
            The manifest is damaged.
        """
        if version is None:
            version = self.head()
            if version is None:
                raise InputError(f"registry {self.root}: empty (no version published)")
        version = int(version)
        cached = self._cache.get(version)
        if cached is not None:
            return cached
        m = self._read_manifest(version)
        self._cache[version] = m
        return m

    def _read_manifest(self, version: int) -> VersionManifest:
        """``version``'s manifest as it is on disk now (not from the cache)."""
        path = self.path_of(version) / MANIFEST
        if not self.has(version):
            have = self.versions()
            span = f"{have[0]}..{have[-1]}" if have else "none"
            raise InputError(f"registry {self.root}: no version {version} (have {span})")
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise SnapshotCorruptError(f"{path}: version manifest missing") from e
        m = VersionManifest.from_json(data, str(path))
        if m.version != version:
            raise SnapshotCorruptError(f"{path}: manifest says version {m.version}")
        return m

    def manifests(self) -> list[VersionManifest]:
        """Manifests of every published version, ascending."""
        return [self.manifest(v) for v in self.versions()]

    def chain(self, version: int | None = None) -> list[VersionManifest]:
        """Versions to load to rebuild ``version``: its nearest full snapshot, then the rest.

        Raises
        ------
        StaleDeltaError
            A version on the way was garbage-collected before a full snapshot was reached.
        """
        out = []
        m = self.manifest(version)
        while True:
            out.append(m)
            if m.kind is VersionKind.FULL:
                break
            assert m.base is not None
            if not self.has(m.base):
                raise StaleDeltaError(
                    f"registry {self.root}: version {m.version} needs version {m.base}, which "
                    f"is gone (garbage-collected) before any full snapshot"
                )
            m = self.manifest(m.base)
        return out[::-1]

    def part_path(self, version: int, rel: str) -> Path:
        """Path of a part (``full/<t>``, ``delta/<t>``, ``dense``) after checking its manifest's
        size and CRC against the version manifest."""
        m = self.manifest(version)
        key = f"{rel}/{MANIFEST}"
        if key not in m.files:
            raise SnapshotCorruptError(
                f"{self.path_of(version) / MANIFEST}: lists no part {rel!r}"
            )
        path = self.path_of(version) / rel
        check_file(path / MANIFEST, m.files[key])
        return path

    def table_parts(self, version: int, kind: str, table: str) -> list[Path]:
        """The parts of ``table``'s ``kind`` (``"full"`` or ``"delta"``) in ``version``, each
        checked as :meth:`part_path` does: one directory, or one per shard of a model
        published in parts (:func:`part_name`).

        Raises
        ------
        SnapshotCorruptError
            A part is not listed in the version manifest, or its manifest is missing or
            altered (the message names it).
        """
        parts = self.manifest(version).parts
        return [self.part_path(version, part_name(kind, table, r, parts)) for r in range(parts)]

    def verify(self, version: int | None = None, *, checksums: bool = True) -> VersionManifest:
        """Check every file of ``version`` (default ``HEAD``) as it is on disk now: its manifest
        (read again), and each part's files against their sizes and, unless ``checksums`` is
        false, their CRC-32s. Returns the manifest.

        Raises
        ------
        SnapshotCorruptError
            A file is missing, truncated or altered (the message names it).
        IncompatibleFormatError
            The manifest is of another format version.
        """
        m = self.manifest(version)
        m = self._cache[m.version] = self._read_manifest(m.version)
        for key in m.files:
            verify_bundle_files(self.part_path(m.version, key.rsplit("/", 1)[0]),
                                checksums=checksums)
        return m

    def check_chain(self, version: int) -> None:
        """Check, quickly, that the versions ``version`` is built on (back to its full
        snapshot) still have their manifests: one ``stat`` each, no file is read.

        Raises
        ------
        SnapshotCorruptError
            Names the first missing manifest (or version directory).
        """
        vdir = os.fspath(self._versions_dir)
        m = self.manifest(version)
        while m.kind is not VersionKind.FULL and m.base is not None:
            path = os.path.join(vdir, _dirname(m.base), MANIFEST)
            if not os.path.isfile(path):
                raise SnapshotCorruptError(f"{path}: version manifest missing (version "
                                           f"{m.version} is built on version {m.base})")
            m = self.manifest(m.base)

    def published_meta(self, key: str, version: int | None = None) -> Any:
        """``meta[key]`` of ``version`` (default ``HEAD``) or, when that version lacks it or its
        manifest is damaged, of the newest older version that has it; ``None`` if none has.

        Examples
        --------
        >>> import tempfile
        >>> Registry(tempfile.mkdtemp()).published_meta("config") is None
        True
        """
        vs = self.versions()
        top = int(version) if version is not None else vs[-1] if vs else 0
        for v in reversed([v for v in vs if v <= top]):
            try:
                meta = self.manifest(v).meta
            except DAMAGE_ERRORS:
                continue
            if key in meta:
                return meta[key]
        return None

    def events(self) -> list[dict[str, Any]]:
        """The events :meth:`record` appended, oldest first (a torn last line is skipped).

        Examples
        --------
        >>> import tempfile
        >>> reg = Registry(tempfile.mkdtemp())
        >>> reg.record({"kind": "gate_refused", "reason": "auc 0.61 < 0.70 - 0.02"})
        >>> [e["kind"] for e in reg.events()]
        ['gate_refused']
        """
        out = []
        with contextlib.suppress(FileNotFoundError), open(self.root / EVENTS) as fh:
            for line in fh:
                with contextlib.suppress(ValueError):
                    e = json.loads(line)
                    if isinstance(e, dict):
                        out.append(e)
        return out

    # ------------------------------------------------------------------ writing
    def record(self, event: Mapping[str, Any]) -> None:
        """Append ``event`` (JSON-able; ``unix_s`` is added when missing) to ``events.jsonl``
        under the writers' lock: why a publish was refused or a version rolled back."""
        body = {"unix_s": round(time.time(), 3), **event}
        line = json.dumps(body, default=str) + "\n"
        with writing(self.root, self.root / EVENTS), self._lock(), \
                open(self.root / EVENTS, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write_head(self, version: int) -> None:
        atomic_write_bytes(self.root / HEAD, json.dumps({"version": version}).encode())
        _fsync_dir(self.root)

    def _repair(self) -> None:
        """Remove what crashed writers left (lock held): temporary directories and versions
        that ``HEAD`` never reached."""
        for leftover in self.root.glob(".*.tmp-*"):  # atomic_write_bytes cut short
            leftover.unlink(missing_ok=True)
        vdir = self._versions_dir
        if not vdir.is_dir():
            return
        head = self.head()
        for name in os.listdir(vdir):
            if name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(vdir / name, ignore_errors=True)
                log.info("registry=%s removed_leftover=%s", self.root, name)
        orphans = [v for v in self._present() if head is None or v > head]
        if head is None and any(v != 1 for v in orphans):
            raise SnapshotCorruptError(
                f"{self.root / HEAD}: missing while versions {orphans} exist; restore HEAD "
                f"(a JSON file {{\"version\": N}}) before publishing"
            )
        for v in orphans:
            self._remove_version(v)
            log.warning("registry=%s removed_unpublished_version=%d", self.root, v)

    def _remove_version(self, version: int) -> None:
        trash = self._versions_dir / f".trash-{uuid.uuid4().hex[:8]}"
        os.replace(self.path_of(version), trash)
        shutil.rmtree(trash, ignore_errors=True)
        self._cache.pop(version, None)

    def _ensure_info(self, info: Mapping[str, Any] | None) -> None:
        current = self.info()
        if info is None:
            if current is None:
                raise InputError(f"registry {self.root}: empty (no version published)")
            return
        if current is None:
            body = {"format": REGISTRY_FORMAT, "format_version": REGISTRY_FORMAT_VERSION,
                    "created_unix_s": time.time(), **info}
            with writing(self.root, self.root / INFO):
                atomic_write_bytes(self.root / INFO, json.dumps(body, indent=1, sort_keys=True)
                                   .encode())
        elif current["fingerprint"] != info["fingerprint"]:
            raise IncompatibleFormatError(
                f"registry {self.root} holds model {current['fingerprint']}, this model is "
                f"{info['fingerprint']}: {describe_mismatch(current, info)}; publish to a new "
                f"registry directory"
            )

    def _commit(
        self,
        build: Callable[[Path, int, int | None], VersionManifest | None],
        info: Mapping[str, Any] | None,
    ) -> VersionManifest | None:
        """Publish one version: ``build(tmp_dir, version, head)`` writes the parts and returns
        the manifest (or ``None`` to publish nothing); then rename, then move ``HEAD``.

        A failure at any point leaves ``HEAD`` and the published versions as they were and
        removes what it wrote; an ``OSError`` (disk full) is raised as a
        :class:`RegistryWriteError` naming the file.
        """
        with writing(self.root, self.root), self._lock():
            self._repair()
            self._ensure_info(info)
            head = self.head()
            version = (head or 0) + 1
            tmp = self._versions_dir / f".tmp-{uuid.uuid4().hex[:8]}"
            placed = False
            try:
                with writing(self.root, tmp):
                    tmp.mkdir(parents=True)
                manifest = build(tmp, version, head)
                if manifest is None:
                    shutil.rmtree(tmp)
                    return None
                with writing(self.root, tmp / MANIFEST):
                    atomic_write_bytes(tmp / MANIFEST, manifest.to_json())
                with writing(self.root, self.path_of(version)):
                    os.replace(tmp, self.path_of(version))
                    placed = True
                    _fsync_dir(self._versions_dir)
                with writing(self.root, self.root / HEAD):
                    self._write_head(version)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                if placed and self.head() != version:  # HEAD never reached it: unpublish
                    with contextlib.suppress(OSError):  # else the next writer removes it
                        self._remove_version(version)
                raise
            self._cache[version] = manifest
        log.info("registry=%s published version=%d kind=%s base=%s rows=%d bytes=%d",
                 self.root, version, manifest.kind.value, manifest.base, manifest.delta_rows,
                 manifest.nbytes)
        return manifest

    def rollback(self, version: int, *, reason: str = "") -> VersionManifest:
        """Publish a rollback version whose state is that of ``version``, and point ``HEAD``
        at it. Subscribers reload that state (a full snapshot + deltas up to ``version``).
        A ``reason`` is kept in the version's ``meta["rollback_reason"]`` and, with the
        versions, in :meth:`events`.

        A publisher that finds ``HEAD`` moved publishes a full snapshot next, so stop (or
        restore) the trainer to keep serving on the rolled-back state. Rolling back to the
        state ``HEAD`` already holds publishes nothing and returns ``HEAD``'s manifest.

        Raises
        ------
        InputError
            ``version`` is not in the registry.
        StaleDeltaError
            ``version`` cannot be rebuilt (its history was garbage-collected).
        SnapshotCorruptError
            A file of ``version`` or of a version its state is built from is damaged.
        """
        target = self.manifest(int(version))
        for link in self.chain(target.version):
            self.verify(link.version)

        def build(tmp: Path, new: int, head: int | None) -> VersionManifest | None:
            if head == target.version:
                return None
            if head is not None:
                try:
                    cur = self.manifest(head)
                except DAMAGE_ERRORS:
                    cur = None
                if cur is not None and cur.kind is VersionKind.ROLLBACK \
                        and cur.base == target.version:
                    return None
            return VersionManifest(
                version=new, kind=VersionKind.ROLLBACK, base=target.version,
                fingerprint=target.fingerprint, table_versions=dict(target.table_versions),
                created_unix_s=time.time(), event_time=target.event_time,
                meta={**target.meta, **({"rollback_reason": reason} if reason else {})},
                rolled_back_from=head,
            )

        m = self._commit(build, None)
        if m is None:
            log.info("registry=%s rollback to %d: HEAD already holds it", self.root, version)
            return self.manifest()
        log.warning("registry=%s rolled back to version=%d as version=%d%s", self.root,
                    target.version, m.version, f" reason={reason!r}" if reason else "")
        if reason:
            self.record({"kind": "rollback", "version": m.version, "to": target.version,
                         "from": m.rolled_back_from, "reason": reason})
        return m

    def gc(self, keep_full: int) -> list[int]:
        """Keep the newest ``keep_full`` full snapshots and every version after the oldest
        kept one (plus whatever ``HEAD`` needs, e.g. after a rollback); remove the rest.

        Returns the removed versions. Subscribers at a removed version reload from the newest
        full snapshot. Only full snapshots that verify (every file, checksums included; the
        newest ones first, until ``keep_full`` are found) count as kept ones, so a damaged
        snapshot never causes the removal of the older good ones.

        Examples
        --------
        >>> import tempfile
        >>> Registry(tempfile.mkdtemp()).gc(keep_full=2)
        []
        """
        if isinstance(keep_full, bool) or not isinstance(keep_full, int) or keep_full < 1:
            raise InputError(f"Registry.gc: keep_full must be an int >= 1, got {keep_full!r}")
        if self.head() is None:
            return []
        with self._lock():
            self._repair()
            head = self.head()
            vs = self.versions()
            fulls = [v for v in vs if self._kind(v) is VersionKind.FULL]
            if head is None or len(fulls) <= keep_full:
                return []
            good = list(itertools.islice(
                (v for v in reversed(fulls) if self._kind(v, verify=True)), keep_full))
            if len(good) < keep_full:
                log.warning("registry=%s gc: fewer than %d full snapshots verify, nothing "
                            "removed", self.root, keep_full)
                return []
            cutoff = good[-1]
            keep = {v for v in vs if v >= cutoff}
            try:
                keep |= {m.version for m in self.chain(head)}
            except (StaleDeltaError, *DAMAGE_ERRORS) as e:
                log.warning("registry=%s HEAD %d cannot be rebuilt: %s", self.root, head, e)
            removed = [v for v in vs if v not in keep]
            for v in removed:
                self._remove_version(v)
            if removed:
                _fsync_dir(self._versions_dir)
        log.info("registry=%s gc removed=%d kept_from=%d", self.root, len(removed), cutoff)
        return removed

    def _kind(self, version: int, *, verify: bool = False) -> VersionKind | None:
        """The kind of ``version``; ``None`` when its manifest (or, with ``verify``, any of its
        files) is damaged."""
        try:
            return (self.verify(version) if verify else self.manifest(version)).kind
        except DAMAGE_ERRORS:
            return None
