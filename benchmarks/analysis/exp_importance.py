"""Feature importance against ground truth and against permutation importance.

``python benchmarks/analysis/exp_importance.py [--seeds 3] [--requests 3000] [--quick]``

1. Simulator (configs/simulator.yaml's DeepFM plus the context slots u_ctx0..6 of
   ``EFFECTS``: three irrelevant, four of increasing true effect), joined by the real
   joiner, per seed: trained on the first 75 % with online importance on (one step in 4);
   then on the last 25 %: gradient-times-variance importance (offline), permutation
   importance (AUC drop), and the online estimate (windows averaged). Reported: Spearman
   rank correlation of each with the true effects over the context slots, whether every
   strong slot ranks above every irrelevant one, the correlation of the gradient and the
   permutation rankings over all features, and the seconds each took.
2. MovieLens 100K (configs/movielens.yaml, skipped when absent): trained on the first 80 %
   in time, both methods on the last 20 %: their rank correlation and seconds.

Prints one JSON object (and a markdown table with --table).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from freshrec.analysis import trainer_importance
from freshrec.analysis.groundtruth import context_document, joined_examples, true_effects
from freshrec.analysis.permutation import permutation_importance, rank_correlation
from freshrec.analysis.select import averaged_importance
from freshrec.config import config_from_dict, load_config, read_document
from freshrec.data.simulate import SimulatorConfig
from freshrec.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
MOVIELENS = ROOT.parent / "shared" / "data" / "ml-100k"
EFFECTS = (0.0, 0.0, 0.0, 0.25, 0.5, 1.0, 1.5)
#: The runs are short (a few hundred steps): one step in 4 is scored online, not 1 in 20.
ONLINE_RATE = 0.25


def simulator(seed: int, requests: int) -> tuple[dict[str, Any], pa.Table, dict[str, float]]:
    sim = SimulatorConfig(seed=seed, n_users=5000, n_items=2000, candidates=20, bias=-2.5,
                          context_effects=EFFECTS)
    doc = context_document(read_document(ROOT / "configs" / "simulator.yaml"), sim)
    doc["train"]["importance_window_s"] = 60
    doc["train"]["importance_rate"] = ONLINE_RATE
    return doc, joined_examples(sim, requests), true_effects(sim)


def compare(doc: dict[str, Any], table: pa.Table, split: float,
            truth: dict[str, float] | None) -> dict[str, Any]:
    """Train on the first ``split`` of ``table``; both methods on the rest."""
    n = int(table.num_rows * split)
    train, test = table.slice(0, n), table.slice(n)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config_from_dict(doc, where="exp"), run_dir=run_dir)
        trainer.fit(train.to_batches(max_chunksize=8192))
        online = averaged_importance(Path(run_dir) / "metrics.jsonl")
    t0 = time.perf_counter()
    grad = trainer_importance(trainer, test.to_batches(max_chunksize=8192)).get()
    grad_s = time.perf_counter() - t0
    perm = permutation_importance(trainer, test, seed=0)
    out: dict[str, Any] = {
        "examples_train": n, "examples_test": test.num_rows, "auc_test": perm.base_auc,
        "gradient_s": grad_s, "permutation_s": perm.seconds,
        "rho_gradient_permutation": rank_correlation(grad, perm.drops),
        "rho_gradient_permutation_slots": rank_correlation(
            *({s.name: d[s.name] for s in trainer.config.features.slots}
              for d in (grad, perm.drops))),
        "gradient": grad, "permutation": perm.drops, "online": online,
    }
    if truth is not None:
        strong = [k for k, v in truth.items() if v > 0]
        weak = [k for k, v in truth.items() if v == 0]
        for name, scores in (("gradient", grad), ("permutation", perm.drops),
                             ("online", online)):
            ctx = {k: scores[k] for k in truth}
            out[f"rho_{name}_truth"] = rank_correlation(ctx, truth)
            out[f"{name}_strong_above_irrelevant"] = \
                min(ctx[k] for k in strong) > max(ctx[k] for k in weak)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="exp_importance")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--table", action="store_true", help="also print markdown tables")
    opts = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = 1 if opts.quick else opts.seeds
    requests = 600 if opts.quick else opts.requests
    result: dict[str, Any] = {"effects": dict(zip(true_effects(SimulatorConfig(
        context_effects=EFFECTS)), EFFECTS, strict=True)), "simulator": []}
    for seed in range(seeds):
        doc, table, truth = simulator(seed, requests)
        result["simulator"].append({"seed": seed, **compare(doc, table, 0.75, truth)})
    if MOVIELENS.is_dir():
        from freshrec.data.movielens import MovieLensReader

        doc = read_document(ROOT / "configs" / "movielens.yaml")
        doc["train"]["importance_window_s"] = 7 * 86400
        doc["train"]["importance_rate"] = ONLINE_RATE
        table = pa.Table.from_batches(list(MovieLensReader(str(MOVIELENS))))
        if opts.quick:
            table = table.slice(0, 20_000)
        load_config(ROOT / "configs" / "movielens.yaml")  # the document is valid as shipped
        result["movielens"] = compare(doc, table, 0.8, None)
    result["loadavg"] = os.getloadavg()[0]
    if opts.table:
        print(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    rows = ["| data | seed | test AUC | rho(gradient, truth) | rho(online, truth) | "
            "rho(permutation, truth) | strong > irrelevant (grad / online / perm) | "
            "rho(gradient, permutation): all / slots | gradient s | permutation s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["simulator"]:
        rows.append(
            f"| simulator | {r['seed']} | {r['auc_test']:.4f} | {r['rho_gradient_truth']:.3f} | "
            f"{r['rho_online_truth']:.3f} | {r['rho_permutation_truth']:.3f} | "
            f"{r['gradient_strong_above_irrelevant']} / {r['online_strong_above_irrelevant']} / "
            f"{r['permutation_strong_above_irrelevant']} | "
            f"{r['rho_gradient_permutation']:.3f} / {r['rho_gradient_permutation_slots']:.3f} | "
            f"{r['gradient_s']:.2f} | {r['permutation_s']:.2f} |")
    if "movielens" in result:
        m = result["movielens"]
        rows.append(f"| MovieLens 100K | - | {m['auc_test']:.4f} | - | - | - | - | "
                    f"{m['rho_gradient_permutation']:.3f} / "
                    f"{m['rho_gradient_permutation_slots']:.3f} | {m['gradient_s']:.2f} | "
                    f"{m['permutation_s']:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(json.dumps(main(), default=float))
