"""save / load / from_snapshot: round trips, atomicity, corrupted and mismatched snapshots."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from freshrec._io import read_bundle, write_bundle
from freshrec.errors import IncompatibleFormatError, SnapshotCorruptError
from freshrec.table import (
    AdmissionConfig,
    EmbeddingTable,
    InitializerConfig,
    OptimizerConfig,
    TableConfig,
)
from tests.table._reference import ADVERSARIAL_FIDS, assert_tables_equal, dump, u64

CFG = TableConfig(name="user", dim=5, ttl_s=30,
                  initializer=InitializerConfig(kind="uniform", scale=0.2, seed=8),
                  optimizer=OptimizerConfig(kind="adam", lr=0.01),
                  admission=AdmissionConfig(min_count=2, sketch_width=1 << 10))


def _table() -> EmbeddingTable:
    t = EmbeddingTable(CFG)
    fids = u64(ADVERSARIAL_FIDS)
    for now in (0, 5):
        t.lookup(fids, now=now, train=True)
    t.apply_gradients(fids, np.linspace(-1, 1, fids.shape[0] * 5, dtype=np.float32)
                      .reshape(-1, 5))
    t.lookup(u64([77, 78]), now=40, train=True)       # counted once, not admitted
    t.lookup(fids[:3], now=40, train=True)
    assert t.expire(40) == fids.shape[0] - 3
    t.set_default_row(np.arange(5, dtype=np.float32))
    return t


def _snapshot(tmp_path: Path) -> tuple[EmbeddingTable, Path]:
    t = _table()
    path = tmp_path / "snap"
    t.save(path)
    return t, path


def test_round_trip_keeps_everything(tmp_path):
    t, path = _snapshot(tmp_path)
    u = EmbeddingTable.from_snapshot(path)
    assert u.config == CFG
    assert_tables_equal(t, u)
    assert (u.version, u.applied_version) == (t.version, t.applied_version)
    s, v = t.stats(), u.stats()
    assert (s.admitted, s.rejected, s.expired, s.nonfinite) == (
        v.admitted, v.rejected, v.expired, v.nonfinite)
    np.testing.assert_array_equal(u.lookup(u64([12345])), [np.arange(5)])
    # The admission sketch came along: 77 needs one more occurrence, 79 two.
    for tab in (t, u):
        tab.lookup(u64([77, 79]), now=41, train=True)
        assert (tab.find(u64([77, 79])) >= 0).tolist() == [True, False]
    # Training continues identically (Adam step counts included).
    for tab in (t, u):
        tab.apply_gradients(u64(ADVERSARIAL_FIDS[:3]), np.ones((3, 5), np.float32))
    assert_tables_equal(t, u)


def test_load_replaces_contents_of_an_existing_table(tmp_path):
    t, path = _snapshot(tmp_path)
    other = EmbeddingTable(CFG)
    for now in (0, 1):
        other.lookup(u64(range(1000, 1100)), now=now, train=True)
    epoch = other.epoch
    other.load(path)
    assert_tables_equal(t, other)
    assert len(other) == len(t) and other.epoch > epoch
    assert (other.find(u64(range(1000, 1100))) == -1).all()


def test_from_snapshot_takes_hyper_parameters_from_the_given_config(tmp_path):
    t, path = _snapshot(tmp_path)
    cfg = dataclasses.replace(CFG, ttl_s=1000, optimizer=OptimizerConfig(kind="adam", lr=0.5))
    u = EmbeddingTable.from_snapshot(path, cfg)
    assert u.config is cfg
    assert_tables_equal(t, u)


def test_save_is_atomic_and_replaces(tmp_path):
    t, path = _snapshot(tmp_path)
    t.lookup(u64([5, 6]), now=50, train=True)
    t.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap"]    # no temp dirs left
    assert_tables_equal(t, EmbeddingTable.from_snapshot(path))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "freshrec.table" and manifest["rows"] == len(t)
    assert {"keys.npy", "values.npy", "state.npy", "last_seen.npy"} <= manifest["files"].keys()


def test_empty_table_round_trip(tmp_path):
    t = EmbeddingTable(TableConfig(name="e", dim=2))
    t.save(tmp_path / "e")
    u = EmbeddingTable.from_snapshot(tmp_path / "e")
    assert len(u) == 0 and u.lookup(u64([1])).tolist() == [[0.0, 0.0]]
    u.lookup(u64([1]), now=0, train=True)
    assert len(u) == 1


def test_deltas_after_reload_carry_expiries_from_before_the_save(tmp_path):
    src, dst = _table(), EmbeddingTable(CFG)
    src.expire(0)
    d = src.export_delta(0)
    dst.apply_delta(d)
    src.lookup(u64(ADVERSARIAL_FIDS[:2]), now=60, train=True)
    src.expire(71)                               # third fid expires before the save
    src.save(tmp_path / "s")
    reloaded = EmbeddingTable.from_snapshot(tmp_path / "s")
    d2 = reloaded.export_delta(d.to_version)
    assert ADVERSARIAL_FIDS[2] in d2.expired.tolist()
    dst.apply_delta(d2)
    assert_tables_equal(reloaded, dst)


# ---------------------------------------------------------------------------- bad snapshots
def _expect_unchanged_after(target: EmbeddingTable, path: Path, exc: type, match: str) -> None:
    before = dump(target)
    with pytest.raises(exc, match=match):
        target.load(path)
    after = dump(target)
    assert after.keys() == before.keys()
    for fid, (row, seen) in before.items():
        np.testing.assert_array_equal(after[fid][0], row)
        assert after[fid][1] == seen
    with pytest.raises(exc, match=match):
        EmbeddingTable.from_snapshot(path)


def _victim() -> EmbeddingTable:
    t = EmbeddingTable(CFG)
    for now in (0, 1):
        t.lookup(u64([1, 2, 3]), now=now, train=True)
    return t


def test_flipped_bytes_are_detected(tmp_path):
    _, path = _snapshot(tmp_path)
    f = path / "values.npy"
    data = bytearray(f.read_bytes())
    data[-7] ^= 0xFF
    f.write_bytes(bytes(data))
    _expect_unchanged_after(_victim(), path, SnapshotCorruptError, r"values\.npy: checksum")


def test_truncated_file_is_detected(tmp_path):
    _, path = _snapshot(tmp_path)
    f = path / "keys.npy"
    f.write_bytes(f.read_bytes()[:-8])
    _expect_unchanged_after(_victim(), path, SnapshotCorruptError, r"keys\.npy: truncated")


@pytest.mark.parametrize("name", ["manifest.json", "state.npy"])
def test_missing_file_is_detected(tmp_path, name):
    _, path = _snapshot(tmp_path)
    (path / name).unlink()
    _expect_unchanged_after(_victim(), path, SnapshotCorruptError,
                            rf"{re.escape(name)}: .*missing")


def test_not_a_snapshot_directory(tmp_path):
    with pytest.raises(SnapshotCorruptError, match=r"nowhere/manifest\.json: manifest missing"):
        EmbeddingTable.from_snapshot(tmp_path / "nowhere")


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m: m.pop("rows"), r"manifest\.json: missing field\(s\) \['rows'\]"),
    (lambda m: m.pop("files"), r"manifest\.json: manifest has no 'files'"),
    (lambda m: m["files"]["keys.npy"].pop("crc32"), r"keys\.npy lacks"),
    (lambda m: m.update(rows=m["rows"] + 1), r"keys\.npy: expected shape"),
])
def test_inconsistent_manifest_is_detected(tmp_path, edit, match):
    _, path = _snapshot(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    exc = IncompatibleFormatError if "shape" in match else SnapshotCorruptError
    _expect_unchanged_after(_victim(), path, exc, match)


def test_garbled_manifest_is_detected(tmp_path):
    _, path = _snapshot(tmp_path)
    mpath = path / "manifest.json"
    mpath.write_text(mpath.read_text()[:40])
    _expect_unchanged_after(_victim(), path, SnapshotCorruptError,
                            r"manifest\.json: manifest is not valid JSON")


def test_other_format_version_is_refused(tmp_path):
    _, path = _snapshot(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    _expect_unchanged_after(_victim(), path, IncompatibleFormatError, "version 99")


def test_wrong_dim_on_load(tmp_path):
    _, path = _snapshot(tmp_path)
    other = dataclasses.replace(CFG, dim=6)
    with pytest.raises(IncompatibleFormatError,
                       match=r"snap: snapshot of table 'user' \(dim 5.*\(dim 6"):
        EmbeddingTable.from_snapshot(path, other)
    target = EmbeddingTable(other)
    for now in (0, 1):
        target.lookup(u64([1, 2]), now=now, train=True)
    before = dump(target)
    with pytest.raises(IncompatibleFormatError, match=r"dim 5.*dim 6"):
        target.load(path)
    assert dump(target).keys() == before.keys() and target.dim == 6


def test_wrong_optimizer_on_load(tmp_path):
    _, path = _snapshot(tmp_path)
    with pytest.raises(IncompatibleFormatError, match="optimizer adam.*optimizer adagrad"):
        EmbeddingTable.from_snapshot(path, dataclasses.replace(CFG, optimizer=OptimizerConfig()))


# ---------------------------------------------------------------------------- bundles
def test_bundle_round_trip_and_format_check(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": np.zeros(0, np.float32)}
    write_bundle(tmp_path / "b", "demo", 3, arrays, {"note": [1, 2]})
    meta, got = read_bundle(tmp_path / "b", "demo", 3)
    assert meta["note"] == [1, 2]
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype
        np.testing.assert_array_equal(got[k], v)
    with pytest.raises(IncompatibleFormatError, match="expected format 'other'"):
        read_bundle(tmp_path / "b", "other", 3)
    with pytest.raises(IncompatibleFormatError, match="version 4"):
        read_bundle(tmp_path / "b", "demo", 4)


def test_corrupt_npy_header_with_matching_manifest_is_a_clear_error(tmp_path):
    write_bundle(tmp_path / "b", "demo", 1, {"a": np.arange(4)}, {})
    f = tmp_path / "b" / "a.npy"
    f.write_bytes(b"garbage!" * (f.stat().st_size // 8) + b"x" * (f.stat().st_size % 8))
    with pytest.raises(SnapshotCorruptError, match=r"a\.npy"):
        read_bundle(tmp_path / "b", "demo", 1, verify=False)
