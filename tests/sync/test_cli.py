"""``freshrec registry ls|show|rollback|gc`` on a real registry directory."""

from __future__ import annotations

import json

import numpy as np
import torch

from freshrec.cli import main
from freshrec.sync import Publisher, PublisherConfig, Registry, Subscriber, VersionKind
from freshrec.table import EmbeddingTable, TableConfig


def _registry(tmp_path):
    table = EmbeddingTable(TableConfig(name="user", dim=4, ttl_s=5))
    reg = Registry(tmp_path / "reg")
    pub = Publisher(reg, [table], lambda: {"w": torch.ones(2)}, PublisherConfig(auto_gc=False))
    for i, kind in enumerate("FSSFS"):
        table.lookup(np.array([i, 10 + i], np.uint64), now=10 * i, train=True)
        table.expire(now=10 * i)
        pub.publish_full(event_time=10 * i) if kind == "F" else pub.publish_sparse(
            event_time=10 * i)
    return reg


def test_ls(tmp_path, capsys):
    reg = _registry(tmp_path)
    assert main(["registry", "ls", "--dir", str(reg.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and lines[0].split()[:3] == ["version", "kind", "base"]
    assert lines[-1].split()[:4] == ["*", "5", "delta", "4"]
    assert lines[1].split()[:3] == ["1", "full", "-"]
    assert main(["registry", "ls", "--dir", str(reg.root), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["kind"] for r in rows] == ["full", "delta", "delta", "full", "delta"]
    assert rows[2]["rows"] == 2 and rows[2]["expired"] == 2 and rows[-1]["head"]


def test_show_and_verify(tmp_path, capsys):
    reg = _registry(tmp_path)
    assert main(["registry", "show", "--dir", str(reg.root)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == 5 and out["head"] and out["event_time"] == 40
    assert main(["registry", "show", "2", "--verify", "--dir", str(reg.root)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verified"] and out["kind"] == "delta" and not out["head"]
    bad = reg.path_of(4) / "full" / "user" / "values.npy"
    bad.write_bytes(bad.read_bytes()[:-4] + b"\0\0\0\1")
    assert main(["registry", "show", "4", "--verify", "--dir", str(reg.root)]) == 2
    err = capsys.readouterr().err
    assert "000000000004/full/user/values.npy: checksum mismatch" in err
    assert main(["registry", "show", "9", "--dir", str(reg.root)]) == 2
    assert "no version 9 (have 1..5)" in capsys.readouterr().err


def test_rollback_and_gc(tmp_path, capsys):
    reg = _registry(tmp_path)
    assert main(["registry", "rollback", "2", "--dir", str(reg.root)]) == 0
    assert "HEAD is version 6 (the state of version 2)" in capsys.readouterr().out
    m = Registry(reg.root).manifest()
    assert (m.kind, m.base, m.rolled_back_from) == (VersionKind.ROLLBACK, 2, 5)
    state = Subscriber(reg).materialize()
    assert (state.tables["user"].find([1, 11]) >= 0).all()       # written at version 2
    assert (state.tables["user"].find([0, 10, 2, 12]) == -1).all()  # expired / written later
    assert main(["registry", "gc", "--keep", "1", "--dir", str(reg.root)]) == 0
    assert "removed 1 versions: [3]" in capsys.readouterr().out  # 1, 2 are what HEAD needs
    assert Registry(reg.root).versions() == [1, 2, 4, 5, 6]


def test_empty_registry(tmp_path, capsys):
    assert main(["registry", "ls", "--dir", str(tmp_path / "none")]) == 0
    assert "empty registry" in capsys.readouterr().out
    assert main(["registry", "show", "--dir", str(tmp_path / "none")]) == 2
