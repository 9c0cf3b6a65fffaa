"""Cost of online feature importance: training examples/s with and without it, same run.

``freshrec bench importance --json [--quick] [--examples N] [--rounds R]``

Trains DeepFM of configs/simulator.yaml (one thread) on the same simulated examples
(``bench online``'s generator) with ``train.importance_rate`` at 0 (the baseline), at its
default (one step in 20) and at 1 (every step), one after the other in each round, the order
rotated between rounds. ``importance_overhead_ratio`` is the median over rounds of the
default rate's time over the baseline's of the same round, minus 1 (the issue's target:
<= 0.05). On a loaded machine that difference of two noisy times is itself noisy, so the
time the trainer spent in the importance pass is also measured directly
(``OnlineImportance.seconds``): ``importance_time_share`` is its share of the default
run's time (median over rounds), and ``every_step_time_share`` the same at rate 1.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from freshrec.benchinfo import load_script, machine_info
from freshrec.config import load_config
from freshrec.train.config import TrainConfig
from freshrec.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]


def _bench_online() -> ModuleType:
    """``benchmarks/train/bench_online.py``, for its example generator."""
    return load_script(Path(__file__).resolve().parents[1] / "train" / "bench_online.py",
                       "bench_online")


def main(argv: list[str], verbose: bool = True) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="freshrec bench importance")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--examples", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    opts = ap.parse_args(argv)
    n = opts.examples or (40_000 if opts.quick else 200_000)
    torch.set_num_threads(1)
    say = print if verbose else (lambda *a, **k: None)
    examples = _bench_online().examples
    default_rate = TrainConfig().importance_rate
    rates = {"baseline": 0.0, "default": default_rate, "every_step": 1.0}
    configs = {k: load_config(ROOT / "configs" / "simulator.yaml",
                              ["train.threads=1", f"train.importance_rate={r}"])
               for k, r in rates.items()}
    data = examples(n)
    Trainer(configs["every_step"]).fit(examples(2000, seed=1).to_batches())  # warm up
    seconds: dict[str, list[float]] = {k: [] for k in rates}
    share: dict[str, list[float]] = {k: [] for k in rates}
    sampled = 0
    names = list(configs)
    for r in range(opts.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            trainer = Trainer(configs[name])
            t0 = time.perf_counter()
            trainer.fit(data.to_batches(max_chunksize=4096))
            seconds[name].append(time.perf_counter() - t0)
            imp = trainer.importance
            share[name].append(imp.seconds / seconds[name][-1] if imp is not None else 0.0)
            if name == "default" and imp is not None:
                sampled = sum(imp.due(s) for s in range(trainer.step))
        say(f"round {r}: " + ", ".join(f"{k} {n / v[-1]:,.0f} ex/s" for k, v in seconds.items()))
    med = {k: float(np.median(v)) for k, v in seconds.items()}
    ratio = {k: float(np.median(np.array(seconds[k]) / np.array(seconds["baseline"])))
             for k in rates}
    result: dict[str, object] = {
        "bench": "importance", "examples": n, "threads": 1, "rounds": opts.rounds,
        "model": "deepfm simulator.yaml", "importance_rate": default_rate,
        "sampled_steps": sampled,
        "baseline_examples_per_s": n / med["baseline"],
        "importance_examples_per_s": n / med["default"],
        "importance_overhead_ratio": ratio["default"] - 1,
        "importance_time_share": float(np.median(share["default"])),
        "every_step_examples_per_s": n / med["every_step"],
        "every_step_overhead_ratio": ratio["every_step"] - 1,
        "every_step_time_share": float(np.median(share["every_step"])),
        "loadavg": os.getloadavg()[0],
        **machine_info(),
    }
    say(result)
    return result
