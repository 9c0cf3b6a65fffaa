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
