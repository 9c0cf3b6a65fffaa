"""Adding a feature: warm start from the old model vs training from scratch.

``python benchmarks/analysis/exp_warm.py [--requests 3000] [--chunks 6] [--plot PNG]``

Per data set, the examples are cut in time into A (50 %), B (30 %) and a test set (20 %).
The old model (the config without one feature) trains on A. The new config adds the
feature; one copy is warm-started from the old checkpoint
(:func:`~freshrec.train.warm.warm_start`), one starts cold; both then train on B in
``chunks`` equal parts and are scored on the test set before the first part and after each.
Reported: the AUC curves, the old model's test AUC, and the examples of B each needed to
reach it.

- MovieLens 100K (configs/movielens.yaml; the feature added: ``genres``), when present;
- the simulator (configs/simulator.yaml plus the context slots of
  ``exp_importance.EFFECTS``; the feature added: the strongest, ``u_ctx6``), joined.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from exp_importance import simulator  # beside this script (its folder is on sys.path)

from freshrec.analysis.permutation import score_auc
from freshrec.config import config_from_dict, read_document
from freshrec.train.trainer import Trainer
from freshrec.train.warm import warm_start

ROOT = Path(__file__).resolve().parents[2]
MOVIELENS = ROOT.parent / "shared" / "data" / "ml-100k"


def _without(doc: dict[str, Any], slot: str) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    del out["features"]["slots"][slot]
    return out


def curve(new_doc: dict[str, Any], old_doc: dict[str, Any], table: pa.Table,
          chunks: int) -> dict[str, Any]:
    n = table.num_rows
    a, b, test = table.slice(0, n // 2), table.slice(n // 2, n * 3 // 10), \
        table.slice(n * 4 // 5)
    for doc in (new_doc, old_doc):
        doc["train"]["importance_rate"] = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        old = Trainer(config_from_dict(old_doc, where="old"), run_dir=tmp)
        old.fit(a.to_batches(max_chunksize=8192))
        old.save()
        out: dict[str, Any] = {"old_auc": score_auc(old, test), "examples_a": a.num_rows,
                               "examples_b": b.num_rows}
        size = -(-b.num_rows // chunks)
        for name in ("warm", "cold"):
            trainer = Trainer(config_from_dict(new_doc, where=name))
            if name == "warm":
                warm_start(trainer, Path(tmp) / "checkpoints", previous=old.config)
            points = [(0, score_auc(trainer, test))]
            for i in range(chunks):
                part = b.slice(i * size, size)
                trainer.fit(part.to_batches(max_chunksize=8192))
                trainer.position = {"epoch": 0, "batches": 0}   # next part: a new pass
                points.append((min((i + 1) * size, b.num_rows), score_auc(trainer, test)))
            out[name] = points
            out[f"{name}_examples_to_old_auc"] = next(
                (e for e, auc in points if auc >= out["old_auc"]), None)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="exp_warm")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--plot", default=None, help="write the AUC curves to this PNG")
    opts = ap.parse_args(argv)
    torch.set_num_threads(1)
    result: dict[str, Any] = {}
    if MOVIELENS.is_dir():
        from freshrec.data.movielens import MovieLensReader

        doc = read_document(ROOT / "configs" / "movielens.yaml")
        table = pa.Table.from_batches(list(MovieLensReader(str(MOVIELENS))))
        if opts.quick:
            table = table.slice(0, 20_000)
        result["movielens"] = {"added": "genres", **curve(
            doc, _without(doc, "genres"), table, 2 if opts.quick else opts.chunks)}
    doc, table, _ = simulator(0, 600 if opts.quick else opts.requests)
    result["simulator"] = {"added": "u_ctx6", **curve(
        doc, _without(doc, "u_ctx6"), table, 2 if opts.quick else opts.chunks)}
    result["loadavg"] = os.getloadavg()[0]
    if opts.plot:
        plot(result, opts.plot)
    return result


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in ("movielens", "simulator") if k in result]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        r = result[name]
        for kind, style in (("warm", "o-"), ("cold", "s--")):
            xs, ys = zip(*r[kind], strict=True)
            ax.plot(xs, ys, style, label=f"{kind} start")
        ax.axhline(r["old_auc"], color="grey", linestyle=":", label="old model (without it)")
        ax.set_title(f"{name}: adding {r['added']}")
        ax.set_xlabel("examples trained after the change")
        ax.set_ylabel("test AUC")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    print(json.dumps(main()))
