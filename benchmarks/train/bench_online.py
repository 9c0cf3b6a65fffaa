"""Cost of streaming: online trainer examples/s vs the batch trainer on the same examples.

``freshrec bench online --json [--quick] [--examples N]``

Builds simulated examples (the joiner's columns, configs/simulator.yaml), then trains the
same model on them twice in one run: the batch trainer over in-memory Arrow batches, and the
online trainer reading them from a file log (Arrow example records, as the joiner writes them)
with checkpoints every 30 s and a sparse publish to a registry every 2 s (wall); and the
batch trainer again with ``train.pipeline_lookup=false`` (no background resolve of the next
batch's ids: the cost of the pipeline's absence). Interleaved order: batch, online, plain
batch, per round; medians reported.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from freshrec.benchinfo import machine_info
from freshrec.config import load_config
from freshrec.stream.events import encode_examples
from freshrec.stream.open import open_log
from freshrec.sync import Registry
from freshrec.train.online import OnlineTrainer
from freshrec.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]


def examples(n: int, seed: int = 0) -> pa.Table:
    """Synthetic joined examples with the simulator's columns and a learnable rule."""
    rng = np.random.default_rng(seed)
    users, items = rng.zipf(1.2, n) % 20000, rng.zipf(1.2, n) % 5000
    p = 1 / (1 + np.exp(-(-2.5 + 0.8 * np.sin(users) + 0.8 * np.cos(items))))
    hist = [rng.integers(0, 5000, rng.integers(0, 10)).tolist() for _ in range(n)]
    return pa.table({
        "user_id": users, "item_id": items, "position": rng.integers(0, 20, n),
        "event_time": 1_700_000_000 + np.arange(n) // 100,
        "click": (rng.random(n) < p).astype(np.float32), "sample_rate": np.ones(n, np.float32),
        "u_gender": rng.integers(0, 3, n), "u_age": rng.integers(0, 8, n),
        "u_region": rng.integers(0, 20, n), "u_recent_clicks": hist,
        "i_category": items % 50, "i_brand": items % 300, "i_price": rng.random(n) * 100,
    })


def main(argv: list[str], verbose: bool = True) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="freshrec bench online")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--examples", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=2)
    opts = ap.parse_args(argv)
    n = opts.examples or (50_000 if opts.quick else 200_000)
    torch.set_num_threads(1)
    say = print if verbose else (lambda *a, **k: None)
    cfg = load_config(ROOT / "configs" / "simulator.yaml", ["train.threads=1"])
    data = examples(n)
    plain_cfg = load_config(ROOT / "configs" / "simulator.yaml",
                            ["train.threads=1", "train.pipeline_lookup=false"])
    batch_rates, online_rates, plain_rates = [], [], []
    Trainer(cfg).fit(examples(2000, seed=1).to_batches())  # compile the kernels first
    for r in range(opts.rounds):
        trainer = Trainer(cfg)
        t0 = time.perf_counter()
        trainer.fit(data.to_batches(max_chunksize=4096))
        batch_rates.append(n / (time.perf_counter() - t0))
        with tempfile.TemporaryDirectory() as tmp:
            log = open_log(f"file:{tmp}/examples")
            log.append([encode_examples(b) for b in data.to_batches(max_chunksize=4096)])
            online = OnlineTrainer(cfg, log, run_dir=f"{tmp}/run", registry=Registry(f"{tmp}/reg"))
            t0 = time.perf_counter()
            summary = online.run(idle_timeout_s=0.0)
            online_rates.append(n / (time.perf_counter() - t0))
            assert summary["examples"] == n
            log.close()
        plain = Trainer(plain_cfg)
        t0 = time.perf_counter()
        plain.fit(data.to_batches(max_chunksize=4096))
        plain_rates.append(n / (time.perf_counter() - t0))
        say(f"round {r}: batch {batch_rates[-1]:,.0f} ex/s, online {online_rates[-1]:,.0f} "
            f"ex/s, batch without pipelined lookup {plain_rates[-1]:,.0f} ex/s")
    result: dict[str, object] = {
        "bench": "online", "examples": n, "threads": 1, "model": "deepfm simulator.yaml",
        "batch_examples_per_s": float(np.median(batch_rates)),
        "online_examples_per_s": float(np.median(online_rates)),
        "online_vs_batch_ratio": float(np.median(online_rates) / np.median(batch_rates)),
        "batch_no_pipeline_examples_per_s": float(np.median(plain_rates)),
        "pipeline_vs_plain_ratio": float(np.median(batch_rates) / np.median(plain_rates)),
        **machine_info(),
    }
    say(result)
    return result
