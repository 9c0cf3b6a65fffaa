"""``freshrec analyze importance|permutation|select --config CFG --checkpoint DIR --data PATH``.

- ``importance``: scores every sparse slot and dense feature of a trained model by gradient
  times variance at the concat (:mod:`freshrec.analysis.importance`) over a data set, and
  prints one JSON object: the checkpoint's step, the examples read and the features from
  the most important down, each ``{"name", "kind", "importance"}``.
- ``permutation``: the AUC drop when each feature's column is shuffled
  (:mod:`freshrec.analysis.permutation`), with the base AUC and the seconds it took.
- ``select --budget B``: the cost of each feature on the data (:mod:`freshrec.analysis.cost`)
  and a cost-performance ranking (:mod:`freshrec.analysis.select`) from its importance
  averaged over the last ``--windows`` windows of ``--metrics`` (a run's metrics.jsonl), or
  computed on the data without ``--metrics``; prints the ranking and the features removed
  to fit ``B`` (``64MiB`` of tables, or ``3us`` of lookup per example), and writes the
  proposed config to ``--out``.

The model and tables are only read.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable

import pyarrow as pa
import yaml

from freshrec._cli.evaluate import add_arguments as add_checkpoint_arguments
from freshrec._cli.evaluate import resumed_trainer
from freshrec._cli.train import open_data
from freshrec.analysis import trainer_importance
from freshrec.train.trainer import Trainer


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    help_ = "feature importance (gradient x variance at the concat) of a checkpoint on data"
    add_checkpoint_arguments(sub.add_parser("importance", help=help_, description=help_))
    help_ = "permutation importance: the AUC drop when a feature's column is shuffled"
    perm = sub.add_parser("permutation", help=help_, description=help_)
    add_checkpoint_arguments(perm)
    perm.add_argument("--repeats", type=int, default=1, help="shuffles per feature")
    perm.add_argument("--seed", type=int, default=0)
    help_ = "rank features by importance per cost and propose a config within a budget"
    sel = sub.add_parser("select", help=help_, description=help_)
    add_checkpoint_arguments(sel)
    sel.add_argument("--budget", required=True,
                     help="table memory (e.g. 64MiB, 500kB) or lookup time per example "
                          "(e.g. 3us)")
    sel.add_argument("--metrics", default=None,
                     help="a run's metrics.jsonl: importance averaged over its windows "
                          "(default: computed on --data)")
    sel.add_argument("--windows", type=int, default=None,
                     help="average the last N windows of --metrics (default: all)")
    sel.add_argument("--out", default=None, help="write the proposed config document here")


def run(args: argparse.Namespace) -> int:
    trainer = resumed_trainer(args, f"analyze {args.action}")
    data = open_data(trainer.config)
    if args.action == "permutation":
        from freshrec.analysis.permutation import permutation_importance

        res = permutation_importance(trainer, pa.Table.from_batches(list(data())),
                                     repeats=args.repeats, seed=args.seed)
        ranked = sorted(res.drops.items(), key=lambda kv: -kv[1])
        print(json.dumps({"step": trainer.step, "base_auc": res.base_auc,
                          "seconds": res.seconds,
                          "features": [{"name": n, "auc_drop": v} for n, v in ranked]}))
        return 0
    if args.action == "select":
        return _select(trainer, data, args)
    imp = trainer_importance(trainer, data())
    scores = imp.get()
    ranked_blocks = sorted(imp.blocks, key=lambda b: -scores[b.name])
    features = [{"name": b.name, "kind": b.kind, "importance": scores[b.name]}
                for b in ranked_blocks]
    print(json.dumps({"step": trainer.step, "examples": imp.examples, "features": features}))
    return 0


def _select(trainer: Trainer, data: Callable[[], Iterable[pa.RecordBatch]],
            args: argparse.Namespace) -> int:
    from freshrec.analysis.cost import feature_costs
    from freshrec.analysis.select import (
        averaged_importance,
        parse_budget,
        proposed_document,
        select_features,
    )
    budget, kind = parse_budget(args.budget)
    importance = (averaged_importance(args.metrics, args.windows) if args.metrics
                  else trainer_importance(trainer, data()).get())
    costs = feature_costs(trainer, data())
    sel = select_features(importance, costs, budget=budget, kind=kind)
    if args.out:
        with open(args.out, "w") as fh:
            yaml.safe_dump(proposed_document(trainer.config.raw, sel.removed), fh,
                           sort_keys=False)
    print(json.dumps({"kind": sel.kind, "budget": sel.budget, "total_cost": sel.total_cost,
                      "kept_cost": sel.kept_cost, "removed": list(sel.removed),
                      "ranking": [{**r, "value": r["value"] if math.isfinite(r["value"])
                                   else None} for r in sel.ranking],
                      "costs": {n: {"memory_bytes": c.memory_bytes, "lookup_us": c.lookup_us,
                                    "length": c.length} for n, c in costs.items()},
                      "out": args.out}))
    return 0
