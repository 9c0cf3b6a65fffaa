"""Tests of benchmarks/train/exp_collision_scale.py: the drifting-Zipf stream, the capped
table and the factorisation machine on small generated streams, and a whole tiny run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "train"))
import exp_collision_scale as S  # noqa: E402
from exp_collision import auc  # noqa: E402


def test_power_law_ranks_follow_zipf():
    rng = np.random.default_rng(0)
    for s in (0.9, 1.0, 1.05):
        r = S.power_law_ranks(rng, 10_000, s, 400_000)
        assert r.min() >= 0 and r.max() < 10_000
        counts = np.bincount(r, minlength=10_000).astype(float)
        # P(r) ~ (r + 1)^-s: the ratio of ranks 0-9 to ranks 100-999 in the continuous law
        lo = ((11 ** (1 - s) - 1) if s != 1 else np.log(11)) / (1 - s if s != 1 else 1)
        hi = (((1001 ** (1 - s) - 101 ** (1 - s)) / (1 - s)) if s != 1
              else np.log(1001 / 101))
        assert counts[:10].sum() / counts[100:1000].sum() == pytest.approx(lo / hi, rel=0.05)


def test_drifting_zipf_moves_popularity_and_births_items():
    rng = np.random.default_rng(1)
    z = S.DriftingZipf(rng, alive=5_000, phases=4, birth=1_000, s=1.05)
    start = z.draw(rng, np.zeros(50_000))
    end = z.draw(rng, np.ones(50_000))  # the end of the run: the last phase only
    assert start.min() >= 0 and start.max() < 5_000
    assert end.min() >= 4 * 1_000 and end.max() < 4 * 1_000 + 5_000
    top_start = np.bincount(start).argmax()
    top_end = np.bincount(end).argmax()
    assert top_start != top_end
    # half way between phases 1 and 2, ids come from both rankings in equal shares
    mid = z.draw(rng, np.full(50_000, 0.375))
    assert (mid == z.perms[1][0] + 1_000).mean() == pytest.approx(
        (mid == z.perms[2][0] + 2_000).mean(), rel=0.15)


def _world(**kw) -> S.WorldConfig:
    base = dict(users=300, items_alive=200, item_phases=2, item_birth=50, user_phases=2,
                examples=80_000, days=2.0, seed=0)
    return S.WorldConfig(**{**base, **kw})


def test_stream_is_time_ordered_and_labels_follow_the_true_probability():
    data = S.World(_world()).stream(chunk=50_000)
    assert (np.diff(data["t"]) >= 0).all()
    assert data["y"].mean() == pytest.approx(data["p"].mean(), abs=0.005)
    assert auc(data["y"], data["p"]) > 0.75
    # taste drift: the same (user, item) pair has another probability days later
    w = S.World(_world())
    u, i = np.arange(50), np.arange(50)
    p0 = w.true_p(np.zeros(50), u, i)
    p1 = w.true_p(np.full(50, 2 * S.DAY_S), u, i)
    assert np.abs(p1 - p0).mean() > 0.02
    p0_again = w.true_p(np.zeros(50), u, i)
    np.testing.assert_array_equal(p0, p0_again)


def test_variants_learn_and_keep_their_row_budgets():
    cfg = _world()
    data = S.World(cfg).stream()
    n_ids = {"user": cfg.users, "item": cfg.items}
    distinct = {n: int(len(np.unique(data[n]))) for n in ("user", "item")}
    model = S.ModelConfig(batch=32)  # a batch meets fewer distinct ids than the caps
    late = np.arange(len(data["y"])) >= len(data["y"]) // 2
    results = {}
    for v in S.variants_for(distinct, [0.25]):
        r = S.train_variant(data, v, model, salt=3, n_ids=n_ids)
        results[v.name] = (r, auc(data["y"][late], r["pred"][late]))
    full, auc_full = results["collisionless"]
    assert full["peak_rows"] == distinct
    hashed, _ = results["hashed_1/4"]
    capped, _ = results["capped_1/4"]
    for name in ("user", "item"):
        assert hashed["peak_rows"][name] <= distinct[name] // 4
        assert capped["peak_rows"][name] <= distinct[name] // 4
        assert capped["final_rows"][name] >= distinct[name] // 8
    # a few hundred ids seen hundreds of times each: the model gets near the ceiling (the
    # tastes drift, which a one-pass model follows with a lag)
    ceiling = auc(data["y"][late], data["p"][late])
    assert auc_full > ceiling - 0.08
    assert auc_full > results["hashed_1/4"][1] > 0.6


def test_capped_ids_expire_the_least_recently_seen():
    from freshrec.table import EmbeddingTable, TableConfig

    table = EmbeddingTable(TableConfig(name="user", dim=2, ttl_s=1))
    capped = S.CappedIds(100, cap=10, batch=2)
    sizes = []
    for now, ids in enumerate(([0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [0, 2]), start=1):
        fids = np.array(ids, np.uint64) + np.uint64(1)
        table.resolve(fids, now=now, train=True)
        capped.after_batch(table, np.array(ids), now)
        sizes.append(len(table))
    # at 10 rows (> cap - batch) the 6 most recently seen stay (cap - 2 batches); 0 and 2
    # come back as new rows, 1 and 3 (seen least recently) stay out
    assert sizes == [2, 4, 6, 8, 6, 8]
    kept = sorted(int(f) - 1 for f in table.read_rows(with_state=False).fids)
    assert kept == [0, 2, 4, 5, 6, 7, 8, 9]


def test_a_tiny_run_writes_its_json_and_page(tmp_path):
    S.main(["--out", str(tmp_path), "--seeds", "2", "--users", "2000", "--items-alive",
            "500", "--item-birth", "100", "--examples", "30000", "--batch", "1024",
            "--window-s", "43200", "--points", "5"])
    res = json.loads((tmp_path / "collision-scale.json").read_text())
    assert res["seeds"] == 2 and len(res["runs"]) == 2 * 7
    assert {r["variant"] for r in res["runs"]} == {
        "collisionless", "hashed_1/2", "capped_1/2", "hashed_1/4", "capped_1/4",
        "hashed_1/16", "capped_1/16"}
    assert len(res["runs"][0]["curve_time"]) == 14  # 7 days in 12 h windows
    page = (tmp_path / "collision.md").read_text()
    assert "| hashed_1/16 |" in page and "paired by seed" in page


def test_prior_count_matches_a_loop():
    ids = np.random.default_rng(2).integers(0, 50, 2_000)
    seen: dict[int, int] = {}
    expected = []
    for i in ids.tolist():
        expected.append(seen.get(i, 0))
        seen[i] = seen.get(i, 0) + 1
    assert S.prior_count(ids).tolist() == expected
