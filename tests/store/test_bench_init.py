"""benchmarks/store/bench_store_init.py: which impressions are trained on and scored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

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
