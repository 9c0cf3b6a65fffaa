"""``freshrec train``: batch training on a data set, or ``--online`` from a log of examples.

    freshrec train --config CFG --data PATH [--format F] [--run-dir DIR] [--resume]
    freshrec train --config NEW --data PATH --warm-start CKPT [--warm-start-config OLD]
    freshrec train --online --config CFG --source LOG [--registry DIR] [--run-dir DIR]

Every flag but ``--online``, ``--resume`` and ``--no-progress`` is a shorthand for a key of
the config document: ``--data``/``--format`` for ``data.path``/``data.format``, ``--run-dir``
for ``train.run_dir``, ``--source``, ``--partitions``, ``--registry`` and ``--idle-timeout``
for ``online.source``, ``online.partitions``, ``online.registry`` and
``online.idle_timeout_s``. Batch runs keep their checkpoints in ``runs/train`` and online
runs in ``runs/online`` unless ``--run-dir`` (``train.run_dir``) says otherwise, so an
online run never resumes a batch checkpoint by accident (it may start from one:
``--set online.init_from=runs/train/checkpoints``).

Online training resumes from its own last checkpoint (model and input offsets together) or
starts from ``online.init_from`` (a batch checkpoint); it publishes to ``--registry`` per the
``sync`` section and stops after ``--idle-timeout`` seconds without new examples (``0``
waits forever; Ctrl-C checkpoints, publishes and stops). It starts by printing its input
offsets and its lag: the records (each one holds many examples) not yet trained on.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path
from typing import Any

from freshrec._cli.options import DATA_SHORTHANDS, Shorthand, add_config_arguments, config
from freshrec._cli.process import configure_training
from freshrec.config import FreshrecConfig
from freshrec.errors import ConfigError
from freshrec.train.trainer import Trainer

#: Where a run keeps its checkpoints unless --run-dir says otherwise: batch (False) and online
#: (True) runs apart, so that an online run never resumes a batch checkpoint by accident.
RUN_DIRS = {False: "runs/train", True: "runs/online"}


#: The run's flags: shorthands for keys of the ``train`` and ``online`` sections.
SHORTHANDS = [
    Shorthand("--run-dir", "train.run_dir", f"checkpoints and metrics.jsonl (empty: "
              f"{RUN_DIRS[False]}; with --online {RUN_DIRS[True]})"),
    Shorthand("--source", "online.source",
              "online: the examples log (file:DIR, redis://HOST:PORT#NAME)"),
    Shorthand("--partitions", "online.partitions",
              "online: partitions of --source (null: those the log has)", int),
    Shorthand("--registry", "online.registry",
              "online: publish updates to this registry directory"),
    Shorthand("--idle-timeout", "online.idle_timeout_s",
              "online: stop after this many seconds without examples (0: never)", float),
    Shorthand("--nproc", "dist.nproc",
              "train on N ranks of this machine (torchrun; see docs/distributed.md)", int),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, [*DATA_SHORTHANDS, *SHORTHANDS],
                         config_help="the config document (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--online", action="store_true",
                   help="train from a log of joined examples (see --source)")
    p.add_argument("--warm-start", metavar="CHECKPOINT", default="",
                   help="start from another run's checkpoint though the features differ "
                        "(freshrec.train.warm; ignored when --resume finds a checkpoint)")
    p.add_argument("--warm-start-config", metavar="YAML", default=None,
                   help="the config document --warm-start's checkpoint was trained with "
                        "(default: --config)")


def run_dir_of(cfg: FreshrecConfig, online: bool) -> str:
    """The run directory: ``train.run_dir``, else the default of batch or online runs."""
    return cfg.train.run_dir or RUN_DIRS[online]


def open_data(cfg: FreshrecConfig) -> Any:
    """A callable returning a fresh reader over the ``data`` section's data set."""
    from freshrec.data.readers import open_reader

    path, fmt = cfg.data.path, cfg.data.format
    if not path or not fmt:
        raise ConfigError("no data: pass --data and --format, or set data.path/data.format")
    opts = dict(cfg.data.options)
    return lambda: open_reader(fmt, path, chunk_rows=cfg.data.chunk_rows, **opts)


def run(args: argparse.Namespace) -> int:
    if not args.config:
        raise ConfigError("freshrec train needs --config (the model's document, see configs/)")
    cfg = config(args)
    configure_training(cfg.train)
    if cfg.dist.nproc > 1 or _under_torchrun():
        return _run_distributed(cfg, args)
    if args.online:
        return _run_online(cfg, run_dir_of(cfg, online=True))
    make_reader = open_data(cfg)
    run_dir = run_dir_of(cfg, online=False)
    trainer = Trainer(cfg, run_dir=run_dir)
    if args.resume and trainer.resume():
        print(f"resumed at step {trainer.step} (epoch {trainer.position['epoch']}, "
              f"batch {trainer.position['batches']})")
    elif args.warm_start:
        from freshrec.train.warm import REPORT_FILE, warm_start_run

        report = warm_start_run(trainer, args.warm_start, args.warm_start_config)
        print(f"warm start from {args.warm_start} (report: {Path(run_dir) / REPORT_FILE})\n"
              f"{report.describe()}")
    summary = _fit_with_progress(trainer, make_reader, show=not args.no_progress)
    print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v)
                      for k, v in summary.items()}))
    print(f"checkpoint: {Path(run_dir) / 'checkpoints'}")
    return 0


def _under_torchrun() -> bool:
    from freshrec.dist.launch import under_torchrun

    return under_torchrun()


def _run_distributed(cfg: FreshrecConfig, args: argparse.Namespace) -> int:
    """``--nproc N``: torchrun N ranks of this command; under torchrun: train one rank
    (batch, or ``--online`` on its partitions of the examples log)."""
    from freshrec.dist.launch import launch_local
    from freshrec.dist.run import online_rank, train_rank, write_run_config

    run_dir = run_dir_of(cfg, online=args.online)
    if not _under_torchrun():
        flags = [f for f, on in (("--resume", args.resume), ("--online", args.online),
                                 ("--no-progress", True)) if on]
        return launch_local(cfg.dist.nproc, ["train", "--config",
                                             str(write_run_config(cfg, run_dir)), *flags],
                            max_restarts=cfg.dist.max_restarts)
    if args.online:
        trainer, summary = online_rank(cfg, run_dir)
    else:
        trainer, summary = train_rank(cfg, run_dir, open_data(cfg), resume=args.resume)
    if trainer.rank == 0:
        print(json.dumps({"ranks": trainer.world, **{
            k: (round(v, 5) if isinstance(v, float) else v) for k, v in summary.items()}},
            default=str))
        print(f"checkpoint: {Path(run_dir) / 'checkpoints'}")
    # free the rank's process groups now, not while the interpreter shuts down: gloo then
    # sometimes aborted a rank ("terminate called without an active exception", 2 in 6 two-rank
    # runs; none in 10 with this and the barrier of freshrec.dist.run)
    del trainer
    gc.collect()
    return 0


def _fit_with_progress(trainer: Trainer, make_reader: Any, show: bool) -> dict[str, Any]:
    if not show:
        return trainer.fit(make_reader)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("[bold]train"), BarColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn()]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("train", total=None, info="")
        state = {"t0": None, "n0": 0}

        def on_step(t: Trainer, m: dict[str, float]) -> None:
            import time

            if state["t0"] is None:
                state["t0"], state["n0"] = time.perf_counter(), t.examples
            rate = (t.examples - state["n0"]) / max(time.perf_counter() - state["t0"], 1e-9)
            sizes = " ".join(f"{n}={len(tb):,}" for n, tb in t.tables.items())
            bar.update(task, advance=1, info=(
                f"step {t.step} | {rate:,.0f} ex/s | AUC {m.get('auc', float('nan')):.4f} | "
                f"logloss {m.get('logloss', float('nan')):.4f} | {sizes}"))

        return trainer.fit(make_reader, on_step=on_step)


def _run_online(cfg: FreshrecConfig, run_dir: str) -> int:
    from freshrec.stream.open import open_log
    from freshrec.sync import Registry
    from freshrec.train.online import OnlineTrainer

    o = cfg.online
    if not o.source:
        raise ConfigError("--online needs --source (or online.source: the joined-examples log)")
    online = OnlineTrainer(cfg, open_log(o.source, partitions=o.partitions), run_dir=run_dir,
                           registry=Registry(o.registry) if o.registry else None)
    print(f"online: offsets {online.offsets}, lag {online.lag()} records")
    idle = o.idle_timeout_s if o.idle_timeout_s > 0 else float("inf")
    try:
        summary = online.run(idle_timeout_s=idle)
    except KeyboardInterrupt:
        online.checkpoint()
        online.publish()
        summary = {**online.trainer.summary(), "offsets": online.offsets, "interrupted": True}
    print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v)
                      for k, v in summary.items()}, default=str))
    return 0
