"""``freshrec evaluate --config CFG --checkpoint DIR --data PATH [--format F]``."""

from __future__ import annotations

import argparse
import json

from freshrec._cli.train import open_data
from freshrec.config import load_config
from freshrec.errors import ConfigError
from freshrec.train.trainer import Trainer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the YAML config the model was trained with")
    p.add_argument("--checkpoint", required=True, help="a checkpoint or a checkpoints/ folder")
    p.add_argument("--data", help="data path")
    p.add_argument("--format", help="reader: criteo, movielens, obd, parquet, arrow")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    trainer = Trainer(cfg)
    if not trainer.resume(args.checkpoint):
        raise ConfigError(f"no checkpoint found at {args.checkpoint!r}")
    metrics = trainer.evaluate(open_data(cfg, args.data, args.format)())
    print(json.dumps({"step": trainer.step, **metrics}))
    return 0
