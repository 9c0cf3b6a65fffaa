"""The publish gate in a real online trainer publishing to a real registry: a good model is
published with its holdout measures, a deliberately broken one is refused with the reason in
the registry, and held-back rows are never trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from freshrec.config import config_from_dict
from freshrec.ops.config import GateConfig
from freshrec.ops.gate import PublishGate, holdout_mask
from freshrec.stream.open import open_log
from freshrec.sync.registry import Registry
from freshrec.train.online import OnlineTrainer
from tests.ops.conftest import examples, model_doc

SLOTS = ["user_id", "item_id"]
GATE = {"enabled": True, "holdout_fraction": 0.2, "holdout_examples": 400, "min_examples": 100,
        "max_auc_drop": 0.05, "calibration_low": 0.5, "calibration_high": 2.0}


def test_gate_publishes_a_good_model_and_refuses_a_broken_one(tmp_path: Path) -> None:
    doc = model_doc(SLOTS, ops={"gate": GATE})
    doc["train"]["importance_rate"] = 0.0
    log = open_log(f"file:{tmp_path / 'examples'}")
    data = examples(4000, SLOTS)
    log.append(data[:3000])
    reg = Registry(tmp_path / "registry")
    t = OnlineTrainer(config_from_dict(doc), log, run_dir=tmp_path / "run", registry=reg)
    t.run(idle_timeout_s=0.0)
    head = reg.head()
    assert head is not None
    gate = reg.manifest(head).meta["gate"]
    assert gate["accepted"] and gate["examples"] >= GATE["min_examples"]
    assert gate["auc"] > 0.75  # the generated clicks depend on user_id: learnable
    assert t.gate is not None and t.gate.examples == pytest.approx(400, abs=64)
    # break the model: the dense parameters become noise
    good = {k: v.clone() for k, v in t.trainer.model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in t.trainer.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 3)
    log.append(data[3000:3500])
    t.run(idle_timeout_s=0.0)  # trains (a little) and tries to publish: refused
    assert reg.head() == head
    ev = reg.events()[-1]
    assert ev["kind"] == "gate_refused" and not ev["accepted"]
    assert "holdout AUC" in ev["reason"] and ev["reference_auc"] >= gate["auc"] - 1e-9
    assert ev["auc"] < gate["auc"] - GATE["max_auc_drop"]
    # the good model again: published
    t.trainer.model.load_state_dict(good)
    log.append(data[3500:])
    t.run(idle_timeout_s=0.0)
    assert reg.head() is not None and reg.head() > head
    assert reg.manifest().meta["gate"]["accepted"]


def test_held_back_rows_are_not_trained_and_are_the_newest() -> None:
    gate = PublishGate(GateConfig(enabled=True, holdout_examples=100, min_examples=10))
    for i in range(10):
        gate.hold(np.arange(i * 30, i * 30 + 30), np.ones(30))
    assert gate.examples == 120  # whole batches: at most one batch over the limit
    kept = [int(b[0]) for b, _ in gate._held]
    assert kept == [180, 210, 240, 270]
    mask = holdout_mask(0, 50_000, 0.2)
    assert abs(mask.mean() - 0.2) < 0.01
    assert np.array_equal(mask[1000:2000], holdout_mask(1000, 1000, 0.2))  # by position


def test_a_slow_slide_is_refused_against_the_median_of_accepted_checks() -> None:
    """Each candidate is within max_auc_drop of the one before, but not of the recent median."""
    gate = PublishGate(GateConfig(enabled=True, min_examples=10, max_auc_drop=0.05,
                                  reference_publishes=5, calibration_low=0.0,
                                  calibration_high=10.0))
    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.3).astype(float)
    gate.hold(np.arange(4000), y)
    noise = rng.normal(0, 1, 4000)
    decisions = []
    last = None
    for signal in np.linspace(1.2, 0.2, 12):  # the holdout AUC slides by ~0.02 per check
        d = gate.check(lambda rows, s=signal: 1 / (1 + np.exp(-(s * y[rows] + noise[rows]))),
                       reference_auc=last)
        decisions.append(d)
        if d.accepted:
            last = d.auc
    steps = [b.auc - a.auc for a, b in zip(decisions, decisions[1:], strict=False)]
    assert max(abs(x) for x in steps) < 0.05  # no single step would be refused
    assert decisions[0].accepted and not decisions[-1].accepted
    refused = decisions[-1]
    assert refused.reference_auc > refused.auc + 0.05


def test_gate_refuses_calibration_outside_the_range() -> None:
    gate = PublishGate(GateConfig(enabled=True, min_examples=10, calibration_high=1.5))
    y = (np.arange(100) % 5 == 0).astype(float)
    gate.hold(np.arange(100), y)
    d = gate.check(lambda rows: np.where(y[rows] > 0, 0.9, 0.5), reference_auc=None)
    assert not d.accepted and d.reason.startswith("calibration")
    d = gate.check(lambda rows: np.where(y[rows] > 0, 0.3, 0.15), reference_auc=None)
    assert d.accepted and d.auc == 1.0


def test_gate_refuses_a_model_whose_scores_are_not_finite() -> None:
    """A diverged candidate (NaN or infinite scores) is refused with the count; the gate
    raised the AUC's input error instead, which stopped the online trainer."""
    gate = PublishGate(GateConfig(enabled=True, min_examples=10))
    y = (np.arange(100) % 5 == 0).astype(float)
    gate.hold(np.arange(100), y)
    for bad in (np.nan, np.inf):
        d = gate.check(lambda rows, bad=bad: np.where(rows % 7 == 0, bad, 0.2),
                       reference_auc=0.7)
        assert not d.accepted
        assert d.reason == "candidate scores are NaN or infinite for 15 of 100 held-back examples"
    assert gate.refusals == 2
    assert gate.check(lambda rows: np.where(y[rows] > 0, 0.3, 0.15), reference_auc=None).accepted
