"""The publish gate on 2 ranks: every rank scores its share of the held-back examples, the
ranks judge the union and take the decision one process takes on the same examples; a
broken model is refused by both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from freshrec.ops.config import GateConfig
from freshrec.ops.gate import GateDecision, PublishGate
from freshrec.train.trainer import Trainer
from tests.dist.ranks import batches, config, run_ranks

GATE = GateConfig(enabled=True, min_examples=100, holdout_examples=5000)


def _holdout_owner(i: int) -> int:
    """Rank holding held-back chunk ``i`` of 2: a third of the chunks on rank 1, so the ranks
    score different numbers of batches."""
    return 1 if i % 3 == 0 else 0


def _break(model: torch.nn.Module) -> None:
    """The same damage on every copy of the model: noise on every dense parameter."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 2.0)


def _decisions(gate: PublishGate, predict: Any, model: torch.nn.Module) -> dict[str, Any]:
    good = gate.check(predict, reference_auc=None)
    _break(model)
    bad = gate.check(predict, reference_auc=good.auc)
    return {"good": good.meta(), "bad": bad.meta()}


def _gate_ranks(out: Path, rank: int) -> None:
    """(per rank) Train 2 ranks on 600 rows, hold back this rank's chunks of another 600,
    check the model, break it and check again."""
    from freshrec.dist import DistTrainer
    from freshrec.dist.gate import ShardedPublishGate

    trainer = DistTrainer(config("rowwise_adagrad"))
    trainer.fit(batches(600))
    gate = ShardedPublishGate(GATE, trainer.exchange, trainer.empty_batch)
    for i, rb in enumerate(batches(600, seed=1)):
        if _holdout_owner(i) == rank:
            enc = trainer.schema.encode(rb)
            gate.hold(enc, enc.labels[:, 0])
    result = _decisions(gate, trainer.predict_batch, trainer.model)
    (out / f"rank{rank}.json").write_text(json.dumps({**result, "held": gate.examples}))
    trainer.exchange.barrier()  # leave together (freshrec.dist.run.train_rank says why)


def test_two_ranks_take_the_gate_decision_of_one_process(tmp_path: Path) -> None:
    run_ranks(2, "tests.dist.test_publish_gate:_gate_ranks", tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["held"] == 400 and ranks[1]["held"] == 200  # 8 and 4 batches
    single = Trainer(config("rowwise_adagrad"))
    single.fit(batches(600))
    gate = PublishGate(GATE)
    for rb in batches(600, seed=1):
        enc = single.schema.encode(rb)
        gate.hold(enc, enc.labels[:, 0])
    want = _decisions(gate, single.predict_batch, single.model)
    assert want["good"]["accepted"] and not want["bad"]["accepted"]  # the broken one
    assert "holdout AUC" in want["bad"]["reason"]
    for got in ranks:  # every rank took the one decision, on all 600 examples
        for check in ("good", "bad"):
            g, w = got[check], want[check]
            assert g["accepted"] == w["accepted"] and g["examples"] == w["examples"] == 600
            assert g["auc"] == pytest.approx(w["auc"], abs=1e-3)
            assert g["calibration"] == pytest.approx(w["calibration"], rel=1e-4)
            assert g["reason"].split(" ")[:3] == w["reason"].split(" ")[:3]
    assert ranks[0] == {**ranks[1], "held": ranks[0]["held"]}


def test_a_check_below_min_examples_counts_every_rank() -> None:
    gate = PublishGate(GateConfig(enabled=True, min_examples=10))
    d = gate.judge(np.empty(0), np.empty(0), reference_auc=0.9, examples=7)
    assert isinstance(d, GateDecision) and d.accepted and d.examples == 7
    assert "7 < 10" in d.reason


def _online_refusing(out: Path, rank: int) -> None:
    """(per rank) 2-rank online training over a log with a gate no model passes (its
    calibration range excludes every model): every check refuses, nothing is published."""
    from freshrec.config import config_from_dict
    from freshrec.dist import DistOnlineTrainer
    from freshrec.stream.open import open_log
    from freshrec.sync import Registry

    raw = {**config("rowwise_adagrad").raw, "online": {"max_records": 8},
           "sync": {"sparse_interval_s": 0},
           "ops": {"gate": {"enabled": True, "holdout_fraction": 0.2, "min_examples": 20,
                            "calibration_low": 50.0, "calibration_high": 60.0}}}
    online = DistOnlineTrainer(config_from_dict(raw, where="test"),
                               open_log(f"file:{out / 'log'}"), run_dir=out / "run",
                               registry=Registry(out / "registry"))
    online.run(idle_timeout_s=0.5)
    assert online.gate is not None
    (out / f"online{rank}.json").write_text(json.dumps({
        "checks": online.gate.checks, "refusals": online.gate.refusals,
        "held": online.gate.examples, "last": online.last_gate.meta()
        if online.last_gate is not None else None}))
    online.exchange.barrier()  # leave together (freshrec.dist.run.train_rank says why)


def test_an_online_run_on_two_ranks_is_refused_once_per_check(tmp_path: Path) -> None:
    from freshrec.sync import Registry
    from tests.dist.ranks import write_examples_log

    write_examples_log(tmp_path / "log", 1200)
    run_ranks(2, "tests.dist.test_publish_gate:_online_refusing", tmp_path)
    ranks = [json.loads((tmp_path / f"online{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["checks"] == ranks[1]["checks"] == ranks[0]["refusals"] > 1
    assert ranks[0]["last"] == ranks[1]["last"]  # one decision, on both ranks' examples
    assert ranks[0]["last"]["examples"] == ranks[0]["held"] + ranks[1]["held"]
    assert ranks[1]["held"] > 0 and "calibration" in ranks[0]["last"]["reason"]
    reg = Registry(tmp_path / "registry")
    assert reg.head() is None  # nothing got out
    refused = [e for e in reg.events() if e["kind"] == "gate_refused"]
    assert len(refused) == ranks[0]["refusals"]  # recorded once (by rank 0), not per rank
