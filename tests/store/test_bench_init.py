"""benchmarks/store/bench_store_init.py: which impressions are trained on and scored, and its diagnostics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from freshrec.benchinfo import load_script


def _bench() -> Any:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "store" / "bench_store_init.py"
    return load_script(path, "bench_store_init")


def test_returning_users_are_left_out_of_the_first_half_and_scored_after() -> None:
    rng = np.random.default_rng(0)
    n = 400
    users = rng.integers(0, 20, n)
    hist = [[] if rng.random() < 0.5 else [int(rng.integers(0, 9))] for _ in range(n)]
    table = pa.table({"user_id": users, "u_recent_clicks": hist})
    k, seed = 3, 7
    m = _bench()._groups(table, k, 0.3, seed)
    first, second = np.arange(n) < n // 2, np.arange(n) >= n // 2
    held = {int(u) for u in np.unique(users) if not m["train"][users == u][first[users == u]]
            .all()}
    assert len(held) == 6  # 30 % of the 20 users
    is_held = np.isin(users, list(held))
    # held-out users' first-half rows are the only ones not trained on
    np.testing.assert_array_equal(m["train"], ~(is_held & first))
    np.testing.assert_array_equal(m["held"], is_held)
    # brute force: each user's first k trained rows, split by held-out or not
    want_ret, want_new, want_hist = (np.zeros(n, bool) for _ in range(3))
    for u in np.unique(users):
        rows = np.flatnonzero((users == u) & m["train"])[:k]
        if int(u) in held:
            want_ret[rows] = True
            want_hist[rows] = bool(hist[rows[0]])
        else:
            want_new[rows] = True
    np.testing.assert_array_equal(m["returning"], want_ret)
    np.testing.assert_array_equal(m["returning_with_history"], want_hist)
    np.testing.assert_array_equal(m["new"], want_new)
    assert not (m["returning"] & first).any() and (m["returning"] & second).any()


def test_diagnose_measures_rows_against_brute_force() -> None:
    from freshrec.config import config_from_dict
    from freshrec.data.simulate import SimulatorConfig, simulated_examples
    from freshrec.features import hash_array

    b = _bench()
    table = simulated_examples(SimulatorConfig(seed=3, n_users=40, n_items=60, candidates=10,
                                               bias=-1.0, malformed_rate=0.0,
                                               duplicate_rate=0.0), n_requests=300)
    trainer, p = b._train(config_from_dict(b.model_config(None, "", {}, 0, mlp=())), table)
    assert p.shape == (table.num_rows,) and ((p > 0) & (p < 1)).all()
    users = hash_array("user_id", np.unique(table.column("user_id").to_numpy()))
    d = b.diagnose(trainer, table, users, {"previous_model": trainer.tables["user"]},
                   min_impressions=30)
    # the same table as the "previous model": every row has cosine 1 with itself
    assert d["cos_row_previous_model"] == pytest.approx(1.0, abs=1e-5)
    assert d["cos_row_previous_model_other"] < 0.99
    assert d["init_row_norm"] == pytest.approx(0.01 * np.sqrt(16 / 3), rel=0.05)  # uniform
    # brute force over users with >= 30 impressions and a history at their last one
    ids = table.column("user_id").to_pylist()
    hist = table.column("u_recent_clicks").to_pylist()
    last = {u: i for i, u in enumerate(ids)}
    sel = [u for u in last if ids.count(u) >= 30 and hist[last[u]]]
    assert d["users"] == len(sel) > 5
    once = [u for u in last if ids.count(u) <= 20]
    assert d["one_request_row_norm"] == pytest.approx(np.linalg.norm(
        trainer.tables["user"].lookup(hash_array("user_id", once)), axis=1).mean(), rel=1e-5)
    rows = trainer.tables["user"].lookup(hash_array("user_id", sel))
    means = np.stack([trainer.tables["item"].lookup(hash_array("item_id", hist[last[u]]))
                      .mean(axis=0) for u in sel])
    assert d["user_row_norm"] == pytest.approx(np.linalg.norm(rows, axis=1).mean(), rel=1e-5)
    assert d["history_mean_norm"] == pytest.approx(np.linalg.norm(means, axis=1).mean(),
                                                   rel=1e-5)
    cos = (rows * means).sum(1) / np.linalg.norm(rows, axis=1) / np.linalg.norm(means, axis=1)
    assert d["cos_row_history_mean"] == pytest.approx(cos.mean(), abs=1e-5)


def test_shuffled_gives_each_fid_another_fids_row() -> None:
    from freshrec.table import EmbeddingTable, OptimizerConfig, TableConfig

    t = EmbeddingTable(TableConfig(name="user", dim=3,
                                   optimizer=OptimizerConfig(kind="rowwise_adagrad")))
    fids = np.arange(1, 51, dtype=np.uint64)
    t.lookup(fids, now=0, train=True)
    t.apply_gradients(fids, np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32))
    s = _bench().shuffled(t, 0)
    a, b = t.read_rows(fids), s.read_rows(fids)
    assert a.states is not None and b.states is not None
    # the same rows, with their states, on other fids
    key = lambda r, st: sorted(map(tuple, np.hstack([r, st]).tolist()))  # noqa: E731
    assert key(a.values, a.states) == key(b.values, b.states)
    moved = (a.values != b.values).any(axis=1)
    assert moved.sum() >= 45
    # each fid's new row and state belong to one fid of the original
    src = {tuple(v): tuple(st) for v, st in zip(a.values.tolist(), a.states.tolist(),
                                                strict=True)}
    assert all(src[tuple(v)] == tuple(st) for v, st in zip(b.values.tolist(),
                                                           b.states.tolist(), strict=True))
