from __future__ import annotations

import json
import math

import pytest

from freshrec.analysis.cost import FeatureCost
from freshrec.analysis.select import (
    averaged_importance,
    parse_budget,
    proposed_document,
    select_features,
)
from freshrec.config import config_from_dict
from freshrec.errors import InputError
from tests.analysis.test_importance import document


def _costs(**memory: int) -> dict[str, FeatureCost]:
    return {n: FeatureCost(name=n, kind="slot" if m else "dense", memory_bytes=m,
                           lookup_us=m / 100, length=1.0) for n, m in memory.items()}


def test_features_go_from_the_lowest_importance_per_cost_until_the_budget_fits():
    costs = _costs(a=100, b=300, c=1000, d=50, x=0)
    importance = {"a": 1.0, "b": 6.0, "c": 5.0, "d": 0.01, "x": 0.0}
    # value per byte: a .01, b .02, c .005, d .0002, x free
    sel = select_features(importance, costs, budget=500, kind="memory")
    assert sel.removed == ("d", "c")
    assert sel.kept_cost == 400 and sel.total_cost == 1450
    assert [r["name"] for r in sel.ranking] == ["x", "b", "a", "c", "d"]
    assert sel.kept == ("x", "b", "a") and math.isinf(sel.ranking[0]["value"])
    # by importance alone c (5.0) would stay and a (1.0) go; the ranking keeps the cheap a
    # the budget already met: nothing is removed
    assert select_features(importance, costs, budget=2000, kind="memory").removed == ()
    # a latency budget counts lookup time
    sel = select_features(importance, costs, budget=4.0, kind="latency")
    assert sel.removed == ("d", "c") and sel.kept_cost == pytest.approx(4.0)


def test_selection_refusals():
    costs = _costs(a=100, x=0)
    with pytest.raises(InputError, match=r"no importance for \['x'\]"):
        select_features({"a": 1.0}, costs, budget=10, kind="memory")
    with pytest.raises(InputError, match="no selection fits"):
        select_features({"a": 1.0, "x": 1.0}, _costs(a=100, x=0), budget=-1, kind="memory")


def test_the_proposed_document_is_a_valid_config_without_the_removed_features():
    doc = document("deepfm")
    doc["features"]["tables"]["solo"] = {"dim": 4}
    doc["features"]["slots"]["extra"] = {"table": "solo"}
    proposed = proposed_document(doc, ("extra", "x_noise"))
    cfg = config_from_dict(proposed, where="test")
    assert [s.name for s in cfg.features.slots] == ["signal", "noise"]
    assert [d.name for d in cfg.features.dense] == ["x_signal"]
    assert [t.name for t in cfg.features.tables] == ["ids"]
    assert "extra" in doc["features"]["slots"]       # the original is unchanged


def test_importance_is_averaged_over_the_last_windows(tmp_path):
    def rec(window, slot, value):
        return {"kind": "importance", "window": window, "window_s": 10, "slot": slot,
                "importance": value}
    lines = [{"step": 5, "auc": 0.7}, rec(0, "a", 1.0), rec(0, "b", 9.0),
             rec(10, "a", 3.0), rec(10, "b", 5.0), rec(20, "a", 100.0),
             rec(20, "a", 5.0), rec(20, "b", float("nan"))]   # window 20 rewritten: 5 counts
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert averaged_importance(path) == {"a": 3.0, "b": 7.0}
    assert averaged_importance(path, windows=2) == {"a": 4.0, "b": 5.0}
    path.write_text('{"step": 1}\n')
    with pytest.raises(InputError, match="no importance records"):
        averaged_importance(path)
    with pytest.raises(InputError, match="nope.jsonl: no such file"):
        averaged_importance(tmp_path / "nope.jsonl")
    path.write_text("{oops\n")
    with pytest.raises(InputError, match=r"metrics.jsonl:1: not a JSON line"):
        averaged_importance(path)


@pytest.mark.parametrize("text", ["12", "3 parsecs", "MiB", "-1MB"])
def test_budgets_need_a_number_and_a_unit(text):
    with pytest.raises(InputError, match="expected a number and a unit"):
        parse_budget(text)
