from __future__ import annotations

import json
import math
import re

import orjson
import pytest
import torch

from freshrec.analysis import concat_gradient
from freshrec.analysis.online import PROM_FILE, OnlineImportance
from freshrec.config import config_from_dict
from freshrec.demo.prometheus import parse_prometheus
from freshrec.errors import ConfigError, InputError
from freshrec.stream.open import open_log
from freshrec.train.online import OnlineTrainer
from freshrec.train.trainer import Trainer
from tests.analysis.test_importance import data, document


def _config(rate: float, window_s: int = 10_000, kind: str = "deepfm", **train):
    doc = document(kind)
    doc["train"].update({"importance_rate": rate, "importance_window_s": window_s,
                         "epochs": 1, **train})
    return config_from_dict(doc, where="test")


def _records(run_dir) -> list[dict]:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("kind") == "importance"]


def test_sampled_steps_are_evenly_spaced_at_the_rate():
    imp = OnlineImportance([], rate=0.05, window_s=1)
    assert [s for s in range(100) if imp.due(s)] == [19, 39, 59, 79, 99]
    assert all(OnlineImportance([], rate=1.0, window_s=1).due(s) for s in range(5))


@pytest.mark.parametrize(("rate", "window_s"), [(0.0, 1), (1.5, 1), (0.5, 0)])
def test_bad_rates_and_windows_are_refused(rate, window_s):
    with pytest.raises(InputError):
        OnlineImportance([], rate=rate, window_s=window_s)


def test_the_config_refuses_a_rate_outside_0_1():
    with pytest.raises(ConfigError, match="importance_rate"):
        _config(2.0)


def test_importance_does_not_change_training():
    """Scoring sampled batches (every step here) leaves predictions and parameters exactly
    as without it: eval-mode dense pass, no table access, no random draw."""
    runs = []
    for rate in (0.0, 1.0):
        trainer = Trainer(_config(rate))
        trainer.fit(data(0))
        runs.append(trainer)
    plain, scored = runs
    assert plain.importance is None and scored.importance is not None
    for (name, a), (_, b) in zip(plain.model.state_dict().items(),
                                 scored.model.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert plain.summary() == scored.summary()


def test_the_hook_scores_the_training_forwards_embeddings():
    """What a sampled step adds is concat_gradient of the batch at the same parameters."""
    trainer = Trainer(_config(1.0, kind="dcn_v2"))
    enc = trainer.schema.encode(data(0)[0].slice(0, 128))
    model, imp = trainer.model, trainer.importance
    model.train()
    model.embedding(enc.sparse, 5)          # the training forward's lookup (hook keeps it)
    imp.after_forward(model, enc.dense, now=5, step=0)
    assert model.training                   # the mode is restored
    x, g = concat_gradient(model, enc.sparse, torch.from_numpy(enc.dense))
    ref = OnlineImportance(imp.blocks, rate=1.0, window_s=10)
    ref.add(x, g, now=5, step=0)
    assert imp.current()[1] == pytest.approx(ref.current()[1], rel=1e-5)


def test_windows_close_into_records_and_the_open_one_is_written_at_the_end(tmp_path):
    """6000 examples at 10 per second, windows of 200 s: 3 windows; rate 0.25 of 47 steps."""
    trainer = Trainer(_config(0.25, window_s=200), run_dir=tmp_path)
    trainer.fit(data(0))
    recs = _records(tmp_path)
    windows = sorted({r["window"] for r in recs})
    assert windows == [0, 200, 400]
    names = [b.name for b in trainer.importance.blocks]
    for w in windows:
        per = [r for r in recs if r["window"] == w]
        assert [r["slot"] for r in per] == names
        assert {r["feature_kind"] for r in per if r["slot"].startswith("x_")} == {"dense"}
        assert all(r["final"] == (w != 400) and r["window_s"] == 200 for r in per)
    # steps 3, 7, ... were scored: a step's batch belongs to the window of its newest example
    sampled = [s for s in range(47) if trainer.importance.due(s)]
    counted = {w: next(r["examples"] for r in recs if r["window"] == w) for w in windows}
    expected: dict[int, int] = {}
    for s in sampled:
        newest = min((s + 1) * 128, 6000) - 1
        w = newest // 10 // 200 * 200
        expected[w] = expected.get(w, 0) + min(128, 6000 - s * 128)
    assert counted == expected
    # the informative features win in every window of a trained model's second half
    last = {r["slot"]: r["importance"] for r in recs if r["window"] == 400}
    assert last["signal"] > last["noise"] and last["x_signal"] > last["x_noise"]


def test_the_prometheus_file_holds_the_current_windows_estimate(tmp_path):
    trainer = Trainer(_config(0.5, window_s=200), run_dir=tmp_path)
    trainer.fit([data(0)[0].slice(0, 2500)])   # stops inside window 200
    text = (tmp_path / PROM_FILE).read_text()
    samples = dict(re.findall(r'^freshrec_feature_importance\{slot="(\w+)",kind="\w+"\} (\S+)$',
                              text, re.MULTILINE))
    last = {r["slot"]: r["importance"] for r in _records(tmp_path) if r["window"] == 200}
    assert parse_prometheus(text)["freshrec_feature_importance_window_start_seconds"] == 200
    assert set(samples) == set(last) == {"signal", "noise", "x_signal", "x_noise"}
    for name, value in last.items():
        assert float(samples[name]) == value


def test_the_online_trainer_writes_importance_records_and_gauges(tmp_path):
    src = open_log(f"file:{tmp_path / 'log'}")
    rows = data(0)[0].to_pylist()
    src.append([orjson.dumps(r) for r in rows])
    online = OnlineTrainer(_config(0.25, window_s=200), src, run_dir=tmp_path / "run")
    online.run(idle_timeout_s=0.0)
    recs = _records(tmp_path / "run")
    assert {r["window"] for r in recs} == {0, 200, 400}
    assert all(math.isfinite(r["importance"]) for r in recs)
    assert (tmp_path / "run" / PROM_FILE).exists()
    assert online.trainer.importance.current()[0] is None   # the open window was written
