"""``freshrec registry ls|show|verify|repair|rollback|gc`` on a real registry directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from freshrec.cli import main
from freshrec.sync import Publisher, PublisherConfig, Registry, Subscriber, VersionKind
from freshrec.table import EmbeddingTable, TableConfig
from tests.serve._helpers import make_config, train_and_publish, train_more
from tests.sync._helpers import assert_dense_equal, assert_tables_equal, damage


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


def test_ls_marks_damage_and_lists_a_version_without_manifest(tmp_path, capsys):
    reg = _registry(tmp_path)
    rows_2 = reg.manifest(2).delta_rows
    damage(reg, 2, "no_manifest")
    assert main(["registry", "ls", "--dir", str(reg.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6  # HEAD 5 is servable (full snapshot 4): no verdict line
    cols = lines[2].split()  # version kind base rows expired dense bytes event_time ...
    assert cols[:6] + cols[7:8] == ["2", "delta", "?", str(rows_2), "?", "no", "?"]
    assert lines[2].endswith("000000000002/manifest.json: version manifest missing")
    assert lines[3].endswith("needs version 2 (damaged)") and lines[4].endswith("  ok")
    damage(reg, 5, "truncate")
    assert main(["registry", "ls", "--dir", str(reg.root), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["version"], r["servable"], r["salvaged"]) for r in rows] == [
        (1, True, False), (2, False, True), (3, False, False), (4, True, False),
        (5, False, False)]
    assert rows[-1]["status"].startswith("damaged: ") and "truncated" in rows[-1]["status"]
    assert main(["registry", "ls", "--dir", str(reg.root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "HEAD 5 cannot be served: newest servable version is 4; damaged: [2, 5].")


def test_verify_checks_checksums_and_fails_when_head_cannot_be_served(tmp_path, capsys):
    reg = _registry(tmp_path)
    assert main(["registry", "verify", "--dir", str(reg.root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "HEAD 5 is servable; 5 versions checked (with checksums)"
    path = damage(reg, 5, "corrupt")        # same size: only the checksum finds it
    assert main(["registry", "ls", "--dir", str(reg.root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("  ok")
    assert main(["registry", "verify", "--dir", str(reg.root)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2].endswith(f"damaged: {path}: checksum mismatch (file corrupted)")
    assert out[-1].startswith("HEAD 5 cannot be served: newest servable version is 4; "
                              "damaged: [5].")
    assert f"freshrec registry repair --dir {reg.root} --checkpoint RUN_DIR" in out[-1]
    assert main(["registry", "verify", "--dir", str(reg.root), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["head"], report["newest_servable"], report["damaged"]) == (
        False, 5, 4, [5])
    assert main(["registry", "verify", "--dir", str(tmp_path / "none")]) == 0
    assert "empty registry" in capsys.readouterr().out


def test_help_of_verify_and_repair(capsys):
    for action, says in [("verify", "exit status 1 when HEAD cannot be served"),
                         ("repair", "full snapshot of the trainer's checkpoint")]:
        with pytest.raises(SystemExit) as e:
            main(["registry", action, "--help"])
        assert e.value.code == 0
        assert says in " ".join(capsys.readouterr().out.split())


def test_repair_publishes_the_trainers_checkpoint_as_a_full_snapshot(tmp_path, capsys):
    cfg = make_config()
    reg = Registry(tmp_path / "reg")
    trainer, pub = train_and_publish(reg, cfg)          # version 1, with the config
    trainer.run_dir = tmp_path / "run"
    ckpt = trainer.save()
    saved = Subscriber(reg).materialize(1)
    for seed in (1, 2):
        train_more(trainer, seed)
        pub.publish_sparse()                            # 2, 3
    assert main(["registry", "repair", "--dir", str(reg.root), "--checkpoint",
                 str(tmp_path / "run")]) == 2            # nothing damaged: refused
    assert "HEAD 3 is servable, nothing to repair" in capsys.readouterr().err
    damage(reg, 2, "truncate")
    assert main(["registry", "repair", "--dir", str(reg.root), "--checkpoint",
                 str(tmp_path / "nowhere")]) == 2
    assert "--checkpoint " + str(tmp_path / "nowhere") + ": no checkpoint there" in \
        capsys.readouterr().err
    assert main(["registry", "repair", "--dir", str(reg.root), "--checkpoint",
                 str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"published version 4: a full snapshot of checkpoint {ckpt} (step ")
    assert "HEAD was 3, newest servable 1" in out
    assert main(["registry", "verify", "--dir", str(reg.root)]) == 0
    capsys.readouterr()
    state = Subscriber(Registry(reg.root)).materialize()
    assert state.version == 4 and state.meta["repaired_from"] == str(ckpt)
    assert_tables_equal(saved.tables, state.tables, with_state=True)
    assert_dense_equal(saved.dense, state.dense)
