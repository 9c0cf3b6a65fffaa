"""Registry: layout, manifests, atomic publishing under crashes, garbage collection."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from freshrec.errors import (
    IncompatibleFormatError,
    InputError,
    RegistryWriteError,
    SnapshotCorruptError,
)
from freshrec.sync import (
    Publisher,
    PublisherConfig,
    Registry,
    Subscriber,
    VersionKind,
)
from freshrec.sync import publisher as publisher_mod
from freshrec.sync.registry import VersionManifest
from freshrec.table import EmbeddingTable, TableConfig
from tests.sync._helpers import (
    assert_tables_equal,
    contents,
    damage,
    make_tables,
    train_step,
)

ROOT = Path(__file__).resolve().parents[2]


def _published(tmp_path, n_sparse=2):
    tables = make_tables()
    reg = Registry(tmp_path / "reg")
    pub = Publisher(reg, tables, config=PublisherConfig(auto_gc=False))
    rng = np.random.default_rng(3)
    pub.publish_full(event_time=10)
    for i in range(n_sparse):
        train_step(rng, tables, 20 + i)
        pub.publish_sparse(event_time=20 + i, meta={"offset": i})
    return reg, pub, tables, rng


def test_layout_and_manifest(tmp_path):
    reg, pub, tables, _ = _published(tmp_path)
    root = reg.root
    assert json.loads((root / "HEAD").read_text()) == {"version": 3}
    info = reg.info()
    assert info["format"] == "freshrec.registry" and set(info["tables"]) == set(tables)
    assert sorted(os.listdir(root / "versions")) == ["000000000001", "000000000002",
                                                     "000000000003"]
    full = reg.manifest(1)
    assert full.kind is VersionKind.FULL and full.base is None and full.dense
    assert sorted(os.listdir(reg.path_of(1) / "full")) == ["ad", "item", "user"]
    m = reg.manifest()
    assert (m.version, m.kind, m.base, m.event_time, m.meta) == (3, VersionKind.DELTA, 2, 21,
                                                                {"offset": 1})
    assert m.fingerprint == info["fingerprint"] and not m.dense and not m.full
    assert set(m.files) == {f"delta/{n}/manifest.json" for n in tables}
    assert m.delta_rows == sum(d["rows"] for d in m.deltas.values()) > 0
    assert all(d["from_version"] == reg.manifest(2).table_versions[n]
               for n, d in m.deltas.items())
    assert reg.verify(3) == m


def test_manifest_checksum_detects_edits(tmp_path):
    reg, *_ = _published(tmp_path)
    path = reg.path_of(2) / "manifest.json"
    body = json.loads(path.read_text())
    body["event_time"] = 999
    path.write_text(json.dumps(body))
    with pytest.raises(SnapshotCorruptError, match="000000000002/manifest.json: manifest "
                                                   "checksum mismatch"):
        Registry(reg.root).manifest(2)


def test_manifest_refuses_another_format_version():
    m = VersionManifest(version=1, kind=VersionKind.FULL, base=None, fingerprint="x",
                        table_versions={})
    body = json.loads(m.to_json())
    body["format_version"] = 99
    with pytest.raises(IncompatibleFormatError, match="expected format .* version 1, got"):
        VersionManifest.from_json(json.dumps(body).encode(), "m.json")


def test_one_process_writes_one_part_per_table_and_no_parts_key(tmp_path):
    # the layout older readers read: a sharded model's parts (freshrec.dist) are the only
    # versions whose manifest says "parts"
    reg, *_ = _published(tmp_path)
    for v in reg.versions():
        body = json.loads((reg.path_of(v) / "manifest.json").read_text())
        assert "parts" not in body and reg.manifest(v).parts == 1
    assert reg.table_parts(1, "full", "user") == [reg.path_of(1) / "full" / "user"]
    sharded = VersionManifest(version=1, kind=VersionKind.FULL, base=None, fingerprint="x",
                              table_versions={}, parts=3)
    assert VersionManifest.from_json(sharded.to_json(), "m.json").parts == 3
    body = json.loads(sharded.to_json())
    body["parts"] = 0
    body["checksum"] = zlib.crc32(json.dumps({k: v for k, v in body.items()
                                              if k != "checksum"}, sort_keys=True).encode())
    with pytest.raises(SnapshotCorruptError, match="parts must be an int >= 1, got 0"):
        VersionManifest.from_json(json.dumps(body).encode(), "m.json")


def test_unknown_version_is_a_clear_error(tmp_path):
    reg, *_ = _published(tmp_path)
    with pytest.raises(InputError, match=r"no version 7 \(have 1..3\)"):
        reg.manifest(7)


def test_injected_failure_mid_publish_leaves_previous_version_and_loses_nothing(
        tmp_path, monkeypatch):
    reg, pub, tables, rng = _published(tmp_path)
    train_step(rng, tables, 40)
    calls = []
    real = publisher_mod.write_table_delta

    def failing(path, delta):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        real(path, delta)

    monkeypatch.setattr(publisher_mod, "write_table_delta", failing)
    with pytest.raises(OSError, match="injected"):
        pub.publish_sparse()
    assert reg.head() == 3 and reg.versions() == [1, 2, 3]
    assert [p for p in os.listdir(reg.root / "versions") if p.startswith(".")] == []
    monkeypatch.setattr(publisher_mod, "write_table_delta", real)
    m = pub.publish_sparse()   # the rows of the failed publish are in this one
    assert m.version == 4 and m.base == 3
    state = Subscriber(reg).materialize()
    assert_tables_equal(tables, state.tables, with_state=False)


CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from freshrec import _io
    from freshrec.sync import Publisher, PublisherConfig, Registry, registry as registry_mod
    from tests.sync._helpers import contents, make_tables, train_step

    root, point = sys.argv[1], sys.argv[2]
    tables = make_tables()
    pub = Publisher(Registry(root), tables, config=PublisherConfig(auto_gc=False))
    rng = np.random.default_rng(5)
    pub.publish_full(event_time=1)
    train_step(rng, tables, 2)
    pub.publish_sparse(event_time=2)
    for name, t in tables.items():
        c = contents(t)
        np.save(os.path.join(root, "expect_" + name + ".npy"), c["values"])
    train_step(rng, tables, 3)

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if point.startswith("array:"):
        limit, real = int(point[6:]), _io.np.save
        count = [0]
        def save(*a, **k):
            count[0] += 1
            if count[0] == limit:
                die()
            return real(*a, **k)
        _io.np.save = save
    elif point == "rename":
        real_replace = os.replace
        def replace(src, dst):
            if os.path.basename(str(src)).startswith(".tmp-") and str(dst)[-12:].isdigit():
                die()
            return real_replace(src, dst)
        registry_mod.os.replace = replace
    elif point == "head":
        registry_mod.Registry._write_head = lambda self, v: die()
    pub.publish_full(event_time=3)
    print("not killed")
""")


@pytest.mark.parametrize("point", ["array:2", "array:15", "rename", "head"])
def test_sigkill_mid_publish_leaves_the_previous_version_readable(tmp_path, point):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT)))
    root = tmp_path / "reg"
    root.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(root), point], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    reg = Registry(root)
    assert reg.head() == 2 and reg.versions() == [1, 2]
    leftovers = [p for p in os.listdir(root / "versions") if not p.isdigit() or int(p) > 2]
    assert leftovers  # the crash did leave something behind ...
    reg.verify(1)
    reg.verify(2)
    state = Subscriber(reg).materialize()  # ... that readers never see
    assert state.version == 2
    for name, t in state.tables.items():
        expect = np.load(root / f"expect_{name}.npy", allow_pickle=False)
        np.testing.assert_array_equal(contents(t)["values"], expect)
    # the next writer removes the leftovers and publishes the next version
    tables = make_tables()
    m = Publisher(reg, tables).publish_full()
    assert m.version == 3 and m.kind is VersionKind.FULL
    assert sorted(os.listdir(root / "versions")) == ["000000000001", "000000000002",
                                                     "000000000003"]
    assert Subscriber(reg).materialize().version == 3


def test_gc_keeps_the_last_full_snapshots_and_the_deltas_after_them(tmp_path):
    table = EmbeddingTable(TableConfig(name="u", dim=2))
    reg = Registry(tmp_path)
    pub = Publisher(reg, [table], config=PublisherConfig(auto_gc=False))
    kinds = "FSSFSFSS"
    for i, k in enumerate(kinds):
        table.lookup(np.array([i], np.uint64), now=i, train=True)
        pub.publish_full() if k == "F" else pub.publish_sparse()
    assert reg.gc(keep_full=5) == []
    assert reg.gc(keep_full=2) == [1, 2, 3]
    assert reg.versions() == [4, 5, 6, 7, 8]
    assert reg.gc(keep_full=1) == [4, 5]
    state = Subscriber(reg).materialize()
    assert sorted(contents(state.tables["u"])["keys"].tolist()) == list(range(8))
    with pytest.raises(InputError, match="keep_full must be an int >= 1"):
        reg.gc(keep_full=0)


def test_auto_gc_after_full_snapshots(tmp_path):
    table = EmbeddingTable(TableConfig(name="u", dim=2))
    reg = Registry(tmp_path)
    pub = Publisher(reg, [table], config=PublisherConfig(keep_full=2))
    for i in range(4):
        table.lookup(np.array([i], np.uint64), now=i, train=True)
        pub.publish_full()
        table.lookup(np.array([100 + i], np.uint64), now=i, train=True)
        pub.publish_sparse()
    assert reg.versions() == [5, 6, 7, 8]


def test_missing_head_with_versions_is_refused(tmp_path):
    reg, pub, tables, _ = _published(tmp_path)
    (reg.root / "HEAD").unlink()
    assert reg.head() is None and reg.versions() == []
    with pytest.raises(SnapshotCorruptError, match="HEAD: missing while versions"):
        pub.publish_full()
    assert sorted(os.listdir(reg.root / "versions"))[-1] == "000000000003"


FULL_DISK_CHILD = textwrap.dedent("""
    import errno, json, os, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from freshrec import _io
    from freshrec.errors import RegistryWriteError
    from freshrec.sync import Publisher, PublisherConfig, Registry, Subscriber, check_registry
    from freshrec.table import EmbeddingTable, TableConfig
    from tests.sync._helpers import assert_tables_equal

    place, mode = sys.argv[1], sys.argv[2]
    reg = Registry(os.path.join(place, "reg"))
    tables = {{n: EmbeddingTable(TableConfig(name=n, dim=8)) for n in ("user", "item")}}
    pub = Publisher(reg, tables, config=PublisherConfig(auto_gc=False))
    rng = np.random.default_rng(0)

    def train(now):
        for t in tables.values():
            fids = rng.integers(0, 5000, 300).astype(np.uint64)
            t.lookup(fids, now=now, train=True)
            t.apply_gradients(fids, rng.standard_normal((300, 8)).astype(np.float32), now=now)

    train(1)
    pub.publish_full()
    train(2)
    pub.publish_sparse()
    ballast = os.path.join(place, "ballast")
    if mode == "tmpfs":  # fill the file system: every write from now on fails with ENOSPC
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"x" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
        os.close(fd)
    else:  # no private mount namespace here: the array writes fail as on a full disk
        real_save = _io.np.save
        def save(*a, **k):
            if os.path.exists(ballast):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_save(*a, **k)
        _io.np.save = save
        open(ballast, "w").close()
    train(3)
    out = {{}}
    try:
        pub.publish_sparse()
    except RegistryWriteError as e:
        out["error"], out["errno"] = str(e), e.errno
    out["head"], out["versions"] = reg.head(), reg.versions()
    out["leftovers"] = sorted(n for n in os.listdir(reg.root / "versions") if not n.isdigit())
    out["ok"] = check_registry(Registry(reg.root)).ok
    os.unlink(ballast)  # space is back
    m = pub.publish_sparse()
    out["next"] = [m.version, m.base, m.kind.value]
    state = Subscriber(Registry(reg.root)).materialize()
    assert_tables_equal(tables, state.tables, with_state=False)  # the rows of the failed one
    out["materialized"] = state.version
    print(json.dumps(out))
""")


def _private_tmpfs() -> bool:
    """Whether this machine lets a process mount a tmpfs in its own mount namespace."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                            "/mnt"], capture_output=True)
    return probe.returncode == 0


def test_a_full_disk_fails_the_publish_naming_the_file_and_the_next_one_works(tmp_path):
    """A real full file system: a 4 MiB tmpfs in the child's own mount namespace, filled up
    (where mounting is not allowed, the array writes raise ENOSPC instead)."""
    script = tmp_path / "child.py"
    script.write_text(FULL_DISK_CHILD.format(root=str(ROOT)))
    place = tmp_path / "disk"
    place.mkdir()
    if _private_tmpfs():
        cmd = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=4m tmpfs "$1" && '
               'exec "$2" "$3" "$1" tmpfs', "sh", str(place), sys.executable, str(script)]
    else:  # pragma: no cover - containers without CAP_SYS_ADMIN or user namespaces
        cmd = [sys.executable, str(script), str(place), "inject"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["errno"] == errno.ENOSPC
    reg_dir = str(place / "reg")
    assert out["error"].startswith(f"registry {reg_dir}: could not write {reg_dir}/versions/")
    assert "No space left on device" in out["error"] and "nothing was published" in out["error"]
    assert (out["head"], out["versions"], out["leftovers"], out["ok"]) == (2, [1, 2], [], True)
    assert out["next"] == [3, 2, "delta"] and out["materialized"] == 3


def test_a_failure_writing_head_unpublishes_the_version(tmp_path, monkeypatch):
    reg, pub, tables, rng = _published(tmp_path)
    train_step(rng, tables, 40)

    def full(self, version):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Registry, "_write_head", full)
    with pytest.raises(RegistryWriteError, match=f"could not write {reg.root / 'HEAD'} "
                                                 r"\(OSError: \[Errno 28\]"):
        pub.publish_sparse()
    assert reg.head() == 3 and sorted(os.listdir(reg.root / "versions"))[-1] == "000000000003"
    monkeypatch.undo()
    m = pub.publish_sparse()
    assert (m.version, m.base) == (4, 3)
    assert_tables_equal(tables, Subscriber(Registry(reg.root)).materialize().tables,
                        with_state=False)


@pytest.mark.parametrize("how", ["corrupt", "no_manifest"])
def test_gc_never_counts_a_damaged_full_snapshot(tmp_path, how):
    table = EmbeddingTable(TableConfig(name="u", dim=2))
    reg = Registry(tmp_path)
    pub = Publisher(reg, [table], config=PublisherConfig(auto_gc=False))
    for i, k in enumerate("FSFSFS"):
        table.lookup(np.array([i], np.uint64), now=i, train=True)
        pub.publish_full() if k == "F" else pub.publish_sparse()
    damage(reg, 5, how)
    assert reg.gc(keep_full=1) == [1, 2]  # 5 does not count: 3 is the newest good snapshot
    assert Subscriber(Registry(reg.root)).materialize().version == 4


def test_meta_keeps_its_key_order_on_disk(tmp_path):
    """A model config in meta lists slots and dense features in input order."""
    table = EmbeddingTable(TableConfig(name="u", dim=2))
    reg = Registry(tmp_path)
    meta = {"config": {"features": {"dense": {"u_age": {}, "i_price": {}}}}, "b": 1, "a": 2}
    Publisher(reg, [table]).publish_full(meta=meta)
    fresh = Registry(tmp_path).manifest()   # read from disk
    assert list(fresh.meta) == ["config", "b", "a"]
    assert list(fresh.meta["config"]["features"]["dense"]) == ["u_age", "i_price"]


def test_rollback_to_a_version_built_on_damage_is_refused(tmp_path):
    reg, *_ = _published(tmp_path, n_sparse=3)
    path = damage(reg, 2, "corrupt")
    with pytest.raises(SnapshotCorruptError, match=f"{path}: checksum mismatch"):
        reg.rollback(3)                     # 3 is a delta on 2
    assert reg.head() == 4
    assert reg.rollback(1).version == 5
