"""New-user init on the simulator: AUC on each user's first K impressions, init vs random.

``freshrec bench store_init --json [--quick] [--requests N] [--k K] [--seed S]``

One simulated stream (:func:`~freshrec.data.simulate.simulated_examples`, 2,000 users, 500
items, 20 candidates per request; 8,000 requests, ``--quick`` 3,000) is trained on once, in
event-time order, by the simulator's DeepFM (configs/simulator.yaml) with the user table in
Redis, once per arm: ``random`` (the table's uniform initializer, the baseline),
``history_mean`` (a user new to the table starts from the mean of the item rows of the
clicks in their history, ``u_recent_clicks``) and ``zeros`` (a fixed zero vector). Every
batch is scored before it is trained on (progressive validation), and the AUC is taken over
the impressions that are among their user's first K (default 20). Same stream, same seed,
same model: the arms differ only in where new user rows start. The JSON also states how
many users had a non-empty history at their first impression (the only ones
``history_mean`` can help).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.benchinfo import machine_info
from freshrec.config import config_from_dict
from freshrec.data.simulate import SimulatorConfig, simulated_examples
from freshrec.train.trainer import Trainer, rebatch

ARMS: dict[str, dict[str, Any]] = {"random": {"source": "none"},
        "history_mean": {"source": "history_mean", "history_slot": "u_recent_clicks"},
        "zeros": {"source": "fixed", "value": [0.0] * 16}}


def _bench_log() -> Any:
    """benchmarks/stream/bench_log.py (its private redis-server)."""
    path = Path(__file__).resolve().parents[1] / "stream" / "bench_log.py"
    spec = importlib.util.spec_from_file_location("bench_log", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_log", mod)
    spec.loader.exec_module(mod)
    return mod


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN without both classes."""
    pos, neg = int((y > 0).sum()), int((y <= 0).sum())
    if not pos or not neg:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), np.float64)
    sp = p[order]
    i = 0
    while i < len(sp):  # average ranks of ties
        j = i
        while j + 1 < len(sp) and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y > 0].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def model_config(url: str, prefix: str, new_user: dict[str, Any]) -> dict[str, Any]:
    opt = {"kind": "rowwise_adagrad", "lr": 0.05}
    return {
        "features": {
            "tables": {
                "user": {"dim": 16, "optimizer": opt, "backend": "redis",
                         "store": {"url": url, "prefix": prefix, "new_user": new_user}},
                "item": {"dim": 16, "optimizer": opt},
                "attr": {"dim": 16, "optimizer": {"kind": "adagrad", "lr": 0.05}}},
            "slots": {"user_id": {"table": "user"}, "item_id": {"table": "item"},
                      "u_recent_clicks": {"table": "item", "kind": "multi", "max_len": 20,
                                          "pooling": "mean", "id_space": "item_id"},
                      "u_gender": {"table": "attr"}, "u_age": {"table": "attr"},
                      "u_region": {"table": "attr"}, "i_category": {"table": "attr"},
                      "i_brand": {"table": "attr"}, "position": {"table": "attr"}},
            "dense": {"i_price": {"norm": "none"}},
            "labels": ["click"]},
        "model": {"kind": "deepfm", "mlp": [64, 32]},
        "train": {"batch_size": 512, "dense_lr": 0.002, "seed": 0},
    }


def main(argv: list[str], verbose: bool = True) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="freshrec bench store_init")
    ap.add_argument("--quick", action="store_true", help="3,000 requests")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--k", type=int, default=20, help="first K impressions of each user")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--redis", default=None, help="a Redis URL (default: a private server)")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args(argv)
    say = print if verbose else (lambda *a, **k: None)
    n_req = opts.requests or (3000 if opts.quick else 8000)
    t0 = time.perf_counter()
    table = simulated_examples(SimulatorConfig(
        seed=opts.seed, n_users=2000, n_items=500, candidates=20, bias=-2.0,
        malformed_rate=0.0, duplicate_rate=0.0), n_requests=n_req)
    users = table.column("user_id").to_pylist()
    hist = table.column("u_recent_clicks").to_pylist()
    seen: dict[Any, int] = {}
    first_k = np.zeros(len(users), bool)
    history_at_first = 0
    for i, u in enumerate(users):
        c = seen.get(u, 0)
        if c == 0 and hist[i]:
            history_at_first += 1
        first_k[i] = c < opts.k
        seen[u] = c + 1
    y = table.column("click").to_numpy(zero_copy_only=False).astype(np.float64)
    say(f"{table.num_rows:,} impressions, {len(seen):,} users, "
        f"{int(first_k.sum()):,} among their user's first {opts.k} "
        f"({time.perf_counter() - t0:.1f}s)")
    out: dict[str, object] = {"requests": n_req, "impressions": table.num_rows,
                              "users": len(seen), "k": opts.k,
                              "first_k_impressions": int(first_k.sum()),
                              "users_with_history_at_first_sight": history_at_first}
    with _bench_log().redis_server(opts.redis) as url:
        if url is None:
            raise SystemExit("bench store_init needs redis-server (scripts/ensure-redis)")
        for arm, new_user in ARMS.items():
            t = time.perf_counter()
            cfg = config_from_dict(model_config(url, f"init-{uuid.uuid4().hex[:8]}", new_user))
            trainer = Trainer(cfg)
            probs = [trainer.learn_batch(trainer.schema.encode(rb))
                     for rb in rebatch(table.to_batches(), cfg.train.batch_size)]
            p = np.concatenate(probs)
            out[f"init_first_k_auc_{arm}"] = round(auc(y[first_k], p[first_k]), 4)
            out[f"init_auc_all_{arm}"] = round(auc(y, p), 4)
            trainer.tables["user"].close()  # type: ignore[attr-defined]
            say(f"{arm:>13}: first-{opts.k} AUC {out[f'init_first_k_auc_{arm}']}, all "
                f"{out[f'init_auc_all_{arm}']} ({time.perf_counter() - t:.1f}s)")
    base = float(out["init_first_k_auc_random"])  # type: ignore[arg-type]
    for arm in ARMS:
        if arm != "random":
            out[f"init_first_k_auc_gain_{arm}"] = round(
                float(out[f"init_first_k_auc_{arm}"]) - base, 4)  # type: ignore[arg-type]
    out["machine"] = machine_info()
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(main(sys.argv[1:], verbose=False)))
