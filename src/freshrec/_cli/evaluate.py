"""``freshrec evaluate --config CFG --checkpoint DIR [--data PATH] [--format F]``."""

from __future__ import annotations

import argparse
import json

from freshrec._cli.options import DATA_SHORTHANDS, add_config_arguments, config
from freshrec._cli.process import configure_training
from freshrec._cli.train import open_data
from freshrec.errors import ConfigError
from freshrec.train.trainer import Trainer


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, DATA_SHORTHANDS,
                         config_help="the config document the model was trained with")
    p.add_argument("--checkpoint", required=True, help="a checkpoint or a checkpoints/ folder")


def resumed_trainer(args: argparse.Namespace, command: str) -> Trainer:
    """A trainer of ``--config`` resumed from ``--checkpoint``, the process configured for it.

    Raises
    ------
    ConfigError
        No ``--config``, or no checkpoint at ``--checkpoint``.
    """
    if not args.config:
        raise ConfigError(f"freshrec {command} needs --config (the document the model was "
                          "trained with)")
    cfg = config(args)
    configure_training(cfg.train)
    trainer = Trainer(cfg)
    if not trainer.resume(args.checkpoint):
        raise ConfigError(f"no checkpoint found at {args.checkpoint!r}")
    return trainer


def run(args: argparse.Namespace) -> int:
    trainer = resumed_trainer(args, "evaluate")
    metrics = trainer.evaluate(open_data(trainer.config)())
    print(json.dumps({"step": trainer.step, **metrics}))
    return 0
