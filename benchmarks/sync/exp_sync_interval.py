"""Sync interval vs serving quality (Monolith, Algorithm 1 / Table 2).

    python benchmarks/sync/exp_sync_interval.py --seeds 3            # simulator with drift
    python benchmarks/sync/exp_sync_interval.py --obd ../shared/data/obd/random/all --seeds 3

A model is batch-trained (one pass) on the first ``--batch-frac`` of a time-ordered stream;
the rest is replayed in event-time order. The trainer keeps learning from every batch and a
:class:`~freshrec.sync.Publisher` publishes its touched rows and dense parameters to a
registry every ``T`` seconds of event time; a serving-side model follows the registry with a
:class:`~freshrec.sync.Subscriber`, exactly as ``freshrec serve`` does. Every replayed batch
is scored by the serving-side model *before* the trainer learns from it, and the AUC of those
scores is computed per event-time window and averaged. ``never`` is batch-only: the serving
model stays at the batch checkpoint. Expected: shorter T >= longer T >= never.

Writes docs/sync-interval.md (and .png) with the table; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from freshrec.config import load_config
from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig
from freshrec.stream.events import decode
from freshrec.sync import PublisherConfig, Registry, Subscriber
from freshrec.sync.publisher import Publisher
from freshrec.train.metrics import AUC
from freshrec.train.trainer import Trainer, rebatch

ROOT = Path(__file__).resolve().parents[2]
NEVER = float("inf")


def simulated_examples(seed: int, n_requests: int) -> pa.Table:
    """Flat examples (one per shown candidate, label = clicked) in event-time order."""
    sim = ClickStreamSimulator(SimulatorConfig(
        seed=seed, n_users=2000, n_items=1000, candidates=20, requests_per_s=10.0, bias=-2.5,
        drift_per_s=0.01, new_items_per_s=1.0, item_churn_per_s=1.0, new_users_per_s=0.5,
        duplicate_rate=0.0, malformed_rate=0.0))
    imps, clicks = [], set()
    for _, payload in sim.records(n_requests=n_requests):
        ev = decode(payload)
        if ev["type"] == "impression":
            imps.append(ev)
        elif ev["type"] == "action" and ev["action"] == "click":
            clicks.add((ev["request_id"], ev["item_id"]))
    rows = []
    for ev in imps:
        u = ev["user"]
        for c in ev["candidates"]:
            f = c["features"]
            rows.append({"user_id": ev["user_id"], "item_id": c["item_id"],
                         "position": c["position"], "event_time": int(ev["timestamp"]),
                         "click": float((ev["request_id"], c["item_id"]) in clicks),
                         "u_gender": u["gender"], "u_age": u["age"], "u_region": u["region"],
                         "u_recent_clicks": u["recent_clicks"], "i_category": f["category"],
                         "i_brand": f["brand"], "i_price": float(f["price"])})
    table = pa.Table.from_pylist(rows)
    return table.take(pa.array(np.argsort(table["event_time"].to_numpy(), kind="stable")))


def obd_examples(path: str) -> pa.Table:
    from freshrec.data.obd import OpenBanditReader

    return pa.Table.from_batches(list(OpenBanditReader(path)))


def run_one(cfg, table: pa.Table, interval: float, batch_frac: float, batch: int,
            window_s: int) -> tuple[float, list[float], int]:
    """Average per-window AUC of the serving-side model for one sync interval."""
    split = int(table.num_rows * batch_frac)
    trainer = Trainer(cfg)
    for rb in rebatch(table.slice(0, split).to_batches(), cfg.train.batch_size):
        trainer.learn_batch(trainer.schema.encode(rb))
    with tempfile.TemporaryDirectory() as tmp:
        reg = Registry(tmp)
        big = 10**9
        pcfg = PublisherConfig(sparse_interval_s=min(interval, big),
                               dense_interval_s=min(interval, big), full_interval_s=big)
        pub = Publisher(reg, trainer.tables, trainer.model.state_dict, pcfg)
        t_start = int(table["event_time"][split].as_py())
        pub.maybe_publish(t_start)
        serving = Trainer(cfg)
        sub = Subscriber(reg)
        sub.update(serving.tables, serving.model.load_state_dict)
        windows: dict[int, AUC] = {}
        syncs = 0
        for rb in rebatch(table.slice(split).to_batches(), batch):
            enc = trainer.schema.encode(rb)
            p = serving.predict_batch(enc)
            w = int(enc.event_time.min()) // window_s
            windows.setdefault(w, AUC()).update(enc.labels[:, 0], p)
            trainer.learn_batch(enc)
            now = int(enc.event_time.max())
            if interval != NEVER and pub.maybe_publish(now) is not None:
                sub.update(serving.tables, serving.model.load_state_dict)
                syncs += 1
    aucs = [a.get() for a in windows.values()]
    aucs = [a for a in aucs if np.isfinite(a)]
    return float(np.mean(aucs)), aucs, syncs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=15000)
    ap.add_argument("--intervals", default="5,60,300,never",
                    help="sync intervals in event-time seconds")
    ap.add_argument("--batch-frac", type=float, default=0.3)
    ap.add_argument("--batch", type=int, default=200, help="replay batch (examples)")
    ap.add_argument("--window-s", type=int, default=300)
    ap.add_argument("--obd", help="replay an Open Bandit campaign directory instead")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    opts = ap.parse_args()
    intervals = [NEVER if x == "never" else float(x) for x in opts.intervals.split(",")]
    cfg_path = ROOT / "configs" / ("obd.yaml" if opts.obd else "simulator.yaml")
    results: dict[str, list[float]] = {}
    t0 = time.time()
    for seed in range(opts.seeds):
        overrides = [f"train.seed={seed}"]
        cfg = load_config(cfg_path, overrides + ["train.negative_sample_rate=1.0"])
        table = obd_examples(opts.obd) if opts.obd else simulated_examples(seed, opts.requests)
        for interval in intervals:
            name = "never" if interval == NEVER else f"{int(interval)}s"
            mean, _, syncs = run_one(cfg, table, interval, opts.batch_frac, opts.batch,
                                     opts.window_s)
            results.setdefault(name, []).append(mean)
            print(f"seed={seed} interval={name} rows={table.num_rows} syncs={syncs} "
                  f"mean_window_auc={mean:.4f} ({time.time() - t0:.0f}s)", file=sys.stderr)
    summary = {"bench": "sync_interval", "data": "obd" if opts.obd else "simulator",
               "seeds": opts.seeds, "window_s": opts.window_s}
    for name, vals in results.items():
        summary[f"auc_mean_{name}"] = float(np.mean(vals))
        summary[f"auc_std_{name}"] = float(np.std(vals))
    _write_docs(Path(opts.out), results, opts, summary)
    print(json.dumps(summary))


def _write_docs(out: Path, results: dict[str, list[float]], opts, summary) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = "sync-interval-obd" if opts.obd else "sync-interval"
    cmd = "python benchmarks/sync/exp_sync_interval.py " + " ".join(
        a for a in sys.argv[1:])
    lines = [f"# Sync interval vs serving AUC ({summary['data']})", "", "Command:", "",
             f"```\n{cmd}\n```", "",
             f"Mean over event-time windows of {opts.window_s} s of the serving-side model's "
             f"AUC on the replayed stream (scored before training), mean +- std over "
             f"{opts.seeds} seeds. Batch stage: first {opts.batch_frac:.0%} of the stream.", "",
             "| sync interval | AUC (mean +- std) |", "|---|---|"]
    for name, vals in results.items():
        lines.append(f"| {name} | {np.mean(vals):.4f} +- {np.std(vals):.4f} |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        names = list(results)
        ax.bar(names, [np.mean(results[n]) for n in names],
               yerr=[np.std(results[n]) for n in names], capsize=4)
        lo = min(np.mean(v) for v in results.values())
        ax.set_ylim(lo - 0.02, None)
        ax.set_xlabel("sync interval (event time)")
        ax.set_ylabel("mean window AUC")
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png", dpi=100)
        lines += ["", f"![AUC per sync interval]({stem}.png)"]
    except ImportError:
        pass
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
