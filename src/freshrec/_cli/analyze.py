"""``freshrec analyze importance --config CFG --checkpoint DIR --data PATH [--format F]``.

Scores every sparse slot and dense feature of a trained model by gradient times variance at
the concat (:mod:`freshrec.analysis.importance`) over a data set, and prints one JSON object:
the checkpoint's step, the examples read and the features from the most important down, each
``{"name", "kind", "importance"}``. The model and tables are only read.
"""

from __future__ import annotations

import argparse
import json

from freshrec._cli.evaluate import add_arguments as add_checkpoint_arguments
from freshrec._cli.evaluate import resumed_trainer
from freshrec._cli.train import open_data
from freshrec.analysis import trainer_importance


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    help_ = "feature importance (gradient x variance at the concat) of a checkpoint on data"
    add_checkpoint_arguments(sub.add_parser("importance", help=help_, description=help_))


def run(args: argparse.Namespace) -> int:
    trainer = resumed_trainer(args, f"analyze {args.action}")
    imp = trainer_importance(trainer, open_data(trainer.config)())
    scores = imp.get()
    ranked = sorted(imp.blocks, key=lambda b: -scores[b.name])
    features = [{"name": b.name, "kind": b.kind, "importance": scores[b.name]} for b in ranked]
    print(json.dumps({"step": trainer.step, "examples": imp.examples, "features": features}))
    return 0
