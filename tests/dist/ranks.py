"""Real multi-process runs for the tests of freshrec.dist: data, configs, a launcher, and
the scenarios each rank runs (``python -m tests.dist.ranks SCENARIO OUT_DIR``, with
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set by :func:`run_ranks` or
``torchrun``)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from freshrec.config import FreshrecConfig, config_from_dict
from freshrec.table.table import EmbeddingTable

ROOT = Path(__file__).resolve().parents[2]


def config(optimizer: str, **train: Any) -> FreshrecConfig:
    """A small model: users with admission (min_count 2) and a TTL, items and a history."""
    return config_from_dict({
        "features": {
            "tables": {
                "user": {"dim": 4, "ttl_s": 30,
                         "optimizer": {"kind": optimizer, "lr": 0.1},
                         "admission": {"min_count": 2}},
                "item": {"dim": 4, "ttl_s": 60, "optimizer": {"kind": optimizer, "lr": 0.05}},
            },
            "slots": {"user_id": {"table": "user"}, "item_id": {"table": "item"},
                      "hist": {"table": "item", "kind": "multi", "pooling": "mean"}},
            "dense": {"x": {}},
            "labels": ["click"],
        },
        "model": {"kind": "deepfm", "mlp": [8]},
        "train": {"batch_size": 60, "expire_every_s": 10, "seed": 3, "prefetch": 1,
                  "log_every_steps": 0, **train},
    }, where="tests.dist")


def batches(n: int, seed: int = 0) -> list[pa.RecordBatch]:
    """``n`` rows in chunks of 50 (not the batch size), event time growing 1 s per 10 rows."""
    rng = np.random.default_rng(seed)
    users = rng.zipf(1.3, n) % 400
    items = rng.integers(0, 150, n)
    hist = [rng.integers(0, 150, rng.integers(0, 4)).tolist() for _ in range(n)]
    click = ((users + items) % 3 == 0).astype(np.float64)
    rb = pa.RecordBatch.from_pydict({
        "user_id": users, "item_id": items, "hist": hist,
        "x": rng.normal(size=n), "click": click, "event_time": np.arange(n) // 10})
    return [rb.slice(i, 50) for i in range(0, n, 50)]


def table_state(tables: dict[str, EmbeddingTable]) -> dict[str, np.ndarray]:
    """Every row of every table, by fid: values, state, last-seen time."""
    out = {}
    for name, t in tables.items():
        rows = t.read_rows()
        out[f"{name}.fids"] = rows.fids
        out[f"{name}.values"] = rows.values
        out[f"{name}.states"] = rows.states if rows.states is not None else np.zeros(0)
        out[f"{name}.last_seen"] = rows.last_seen
    return out


def merged(parts: list[dict[str, np.ndarray]], name: str) -> dict[str, np.ndarray]:
    """The rows of table ``name`` over all shards, sorted by fid."""
    fids = np.concatenate([p[f"{name}.fids"] for p in parts])
    order = np.argsort(fids)
    return {k: np.concatenate([p[f"{name}.{k}"] for p in parts])[order]
            for k in ("fids", "values", "states", "last_seen")}


def run_ranks(n: int, scenario: str, out: Path, *args: str, timeout: float = 120) -> list[str]:
    """Run ``scenario`` on ``n`` real processes joined by gloo; their outputs (stderr)."""
    from tests.conftest import free_ports

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_ports(1)[0]),
           "WORLD_SIZE": str(n), "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.dist.ranks", scenario, str(out),
                               *args], cwd=ROOT, env={**env, "RANK": str(r)},
                              stderr=subprocess.PIPE, text=True) for r in range(n)]
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        errs.append(err)
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return errs


# ---------------------------------------------------------------------- scenarios (per rank)
def _equivalence(out: Path, rank: int) -> None:
    from freshrec.dist import DistTrainer

    for opt in ("sgd", "rowwise_adagrad"):
        trainer = DistTrainer(config(opt))
        summary = trainer.fit(batches(600))
        np.savez(out / f"{opt}-rank{rank}.npz", **table_state(trainer.tables),
                 **{f"dense.{k}": v.numpy() for k, v in trainer.model.state_dict().items()})
        (out / f"{opt}-rank{rank}.json").write_text(json.dumps(summary))


SCENARIOS = {"equivalence": _equivalence}


def main() -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    scenario, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    try:
        SCENARIOS[scenario](out, dist.get_rank())
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
