from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from freshrec.cli import main
from freshrec.config import config_from_dict
from freshrec.train.trainer import Trainer
from tests.analysis.test_importance import data, document


def test_analyze_importance_ranks_a_checkpoints_features(tmp_path, capsys):
    doc = document("wide_deep")
    run_dir = tmp_path / "run"
    trainer = Trainer(config_from_dict(doc, where="test"), run_dir=run_dir)
    trainer.fit(data(0))
    trainer.save()
    pq.write_table(pa.Table.from_batches(data(1)), tmp_path / "eval.parquet")
    (tmp_path / "doc.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert main(["analyze", "importance", "--config", str(tmp_path / "doc.yaml"),
                 "--checkpoint", str(run_dir / "checkpoints"),
                 "--data", str(tmp_path / "eval.parquet"), "--format", "parquet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == trainer.step and out["examples"] == 6000
    names = [f["name"] for f in out["features"]]
    assert sorted(names) == ["noise", "signal", "x_noise", "x_signal"]
    assert names.index("signal") < names.index("noise"), out
    assert names.index("x_signal") < names.index("x_noise"), out
    assert {f["name"]: f["kind"] for f in out["features"]}["x_noise"] == "dense"


def test_analyze_importance_needs_a_config_and_a_checkpoint(tmp_path, capsys):
    assert main(["analyze", "importance", "--checkpoint", str(tmp_path)]) == 2
    assert "needs --config" in capsys.readouterr().err
    (tmp_path / "doc.yaml").write_text(yaml.safe_dump(document("deepfm")))
    assert main(["analyze", "importance", "--config", str(tmp_path / "doc.yaml"),
                 "--checkpoint", str(tmp_path / "none")]) == 2
    assert "no checkpoint found at" in capsys.readouterr().err


def _trained_run(tmp_path):
    doc = document("wide_deep")
    doc["train"]["importance_rate"] = 0.5
    doc["train"]["importance_window_s"] = 200
    run_dir = tmp_path / "run"
    Trainer(config_from_dict(doc, where="test"), run_dir=run_dir).fit(data(0))
    pq.write_table(pa.Table.from_batches(data(1)), tmp_path / "eval.parquet")
    (tmp_path / "doc.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return ["--config", str(tmp_path / "doc.yaml"), "--checkpoint", str(run_dir / "checkpoints"),
            "--data", str(tmp_path / "eval.parquet"), "--format", "parquet"]


def test_analyze_select_and_permutation(tmp_path, capsys):
    common = _trained_run(tmp_path)
    out_doc = tmp_path / "proposed.yaml"
    # the two slots share table ids (20 rows of 56 bytes each): 1.5 kB holds one of them
    assert main(["analyze", "select", *common, "--budget", "1.5kB",
                 "--metrics", str(tmp_path / "run" / "metrics.jsonl"), "--windows", "2",
                 "--out", str(out_doc)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "memory" and out["budget"] == 1500
    assert out["removed"] == ["noise"] and out["kept_cost"] <= 1500 < out["total_cost"]
    assert out["costs"]["noise"]["memory_bytes"] == out["costs"]["signal"]["memory_bytes"] > 0
    proposed = config_from_dict(yaml.safe_load(out_doc.read_text()), where="proposed")
    assert [s.name for s in proposed.features.slots] == ["signal"]
    assert [d.name for d in proposed.features.dense] == ["x_signal", "x_noise"]
    assert main(["analyze", "permutation", *common]) == 0
    perm = json.loads(capsys.readouterr().out)
    assert perm["features"][0]["name"] == "signal" and perm["base_auc"] > 0.9
    assert main(["analyze", "select", *common, "--budget", "3 parsecs"]) == 2
    assert "expected a number and a unit" in capsys.readouterr().err
