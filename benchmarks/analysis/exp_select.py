"""Feature selection under a memory budget: importance per cost vs importance alone vs random.

``python benchmarks/analysis/exp_select.py [--seeds 3] [--requests 3000] [--budget 0.6]``

Simulator (configs/simulator.yaml's DeepFM plus the context slots of
``exp_importance.EFFECTS``), joined; per seed the examples are cut in time into A (50 %),
B (25 %) and a test set (25 %). The full model trains on A with online importance on; its
importance averaged over the windows of metrics.jsonl and its feature costs measured on A
(:func:`~freshrec.analysis.cost.feature_costs`) give three ways of removing features until
the table memory fits ``budget`` x the full model's:

- ``ranking``: :func:`~freshrec.analysis.select.select_features` (lowest importance per
  byte first);
- ``importance``: lowest importance first, whatever the cost;
- ``random``: a random order (seeded).

Each proposed config (and the full one) is warm-started from the full model's checkpoint
(:func:`~freshrec.train.warm.warm_start`), trained on B and scored on the test set.
Reported per variant: test AUC, memory kept, memory saved, AUC lost against the full model,
and bytes saved per 0.001 AUC lost.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from exp_importance import simulator  # beside this script (its folder is on sys.path)

from freshrec.analysis.cost import FeatureCost, feature_costs
from freshrec.analysis.permutation import score_auc
from freshrec.analysis.select import averaged_importance, proposed_document, select_features
from freshrec.config import config_from_dict
from freshrec.train.trainer import Trainer
from freshrec.train.warm import warm_start


def _remove_in_order(order: list[str], costs: dict[str, FeatureCost],
                     budget: float) -> tuple[str, ...]:
    """Remove features in ``order`` (skipping free ones) until the rest fit ``budget``."""
    left = sum(c.memory_bytes for c in costs.values())
    removed = []
    for name in order:
        if left <= budget:
            break
        if costs[name].memory_bytes > 0:
            removed.append(name)
            left -= costs[name].memory_bytes
    return tuple(removed)


def one_seed(seed: int, requests: int, fraction: float) -> list[dict[str, Any]]:
    doc, table, _ = simulator(seed, requests)
    n = table.num_rows
    a, b, test = table.slice(0, n // 2), table.slice(n // 2, n // 4), table.slice(n * 3 // 4)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        full = Trainer(config_from_dict(doc, where="full"), run_dir=tmp)
        full.fit(a.to_batches(max_chunksize=8192))
        full.save()
        importance = averaged_importance(Path(tmp) / "metrics.jsonl")
        costs = feature_costs(full, a.to_batches(max_chunksize=8192))
        total = sum(c.memory_bytes for c in costs.values())
        budget = fraction * total
        rng = np.random.default_rng(seed)
        variants: dict[str, tuple[str, ...]] = {
            "full": (),
            "ranking": select_features(importance, costs, budget=budget,
                                       kind="memory").removed,
            "importance": _remove_in_order(sorted(costs, key=lambda k: importance[k]),
                                           costs, budget),
            "random": _remove_in_order(list(rng.permutation(sorted(costs))), costs, budget),
        }
        for name, removed in variants.items():
            new_doc = proposed_document(doc, removed)
            trainer = Trainer(config_from_dict(new_doc, where=name))
            warm_start(trainer, Path(tmp) / "checkpoints", previous=full.config)
            trainer.fit(b.to_batches(max_chunksize=8192))
            kept = total - sum(costs[r].memory_bytes for r in removed)
            rows.append({"seed": seed, "variant": name, "removed": list(removed),
                         "auc": score_auc(trainer, test), "memory_kept": kept,
                         "memory_saved": total - kept})
    base = rows[0]["auc"]
    for r in rows:
        r["auc_lost"] = base - r["auc"]
        # None where no AUC was lost (the full model, or a variant as good)
        r["bytes_saved_per_milli_auc"] = (r["memory_saved"] / (r["auc_lost"] * 1e3)
                                          if r["auc_lost"] > 0 else None)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| seed | variant | removed | test AUC | AUC lost | memory kept (kB) | "
           "memory saved (kB) | kB saved per 0.001 AUC lost |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per = r["bytes_saved_per_milli_auc"]
        out.append(f"| {r['seed']} | {r['variant']} | {', '.join(r['removed']) or '-'} | "
                   f"{r['auc']:.4f} | {r['auc_lost']:+.4f} | {r['memory_kept'] / 1e3:.1f} | "
                   f"{r['memory_saved'] / 1e3:.1f} | "
                   f"{'no loss' if per is None else f'{per / 1e3:.1f}'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="exp_select")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--budget", type=float, default=0.6,
                    help="memory budget as a share of the full model's tables")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--table", action="store_true", help="also print a markdown table")
    opts = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for seed in range(1 if opts.quick else opts.seeds):
        rows += one_seed(seed, 600 if opts.quick else opts.requests, opts.budget)
    summary = {}
    for v in ("full", "ranking", "importance", "random"):
        sel = [r for r in rows if r["variant"] == v]
        summary[v] = {"auc": float(np.mean([r["auc"] for r in sel])),
                      "auc_lost": float(np.mean([r["auc_lost"] for r in sel])),
                      "memory_saved": float(np.mean([r["memory_saved"] for r in sel]))}
    if opts.table:
        print(markdown(rows))
    return {"budget": opts.budget, "rows": rows, "mean": summary,
            "loadavg": os.getloadavg()[0]}


if __name__ == "__main__":
    print(json.dumps(main(), default=float))
