"""Rank 0's cost of publishing a sharded model: its memory and the seconds of each publish.

    python benchmarks/sync/exp_sharded_publish.py --rows 2000000 --rounds 5

Starts ``--ranks`` real processes joined by gloo (no torchrun needed). Every rank fills its
shard of two tables (dim 16, row-wise Adagrad) with the fids it owns of ``--rows`` per table,
then publishes through :class:`freshrec.dist.ShardedPublisher`: one full snapshot, then
``--rounds`` deltas, each after a gradient step on ``--touch`` of its rows. Rank 0 prints
one JSON object: its resident memory (``VmRSS``) after filling its shard and after
publishing, its peak (``VmHWM``), and the seconds of the full publish and of each delta
(the time of the collective call on rank 0, writing included). Run it on two commits to
compare (the numbers of docs/distributed.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rank_main(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from freshrec.dist import ShardedPublisher, SparseExchange, owner_ranks
    from freshrec.sync import PublisherConfig, Registry
    from freshrec.table import EmbeddingTable, TableConfig
    from freshrec.table.config import OptimizerConfig

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    rank, world = dist.get_rank(), dist.get_world_size()
    rng = np.random.default_rng(rank)
    tables = {}
    for name in ("user", "item"):
        cfg = TableConfig(name=name, dim=16, optimizer=OptimizerConfig(kind="rowwise_adagrad", lr=0.1))
        t = EmbeddingTable(cfg)
        fids = np.arange(1, args.rows + 1, dtype=np.uint64)
        mine = fids[owner_ranks(fids, world) == rank]
        for start in range(0, mine.shape[0], 1 << 18):
            t.lookup(mine[start:start + (1 << 18)], now=1, train=True)
        tables[name] = t
    filled = _status_mib("VmRSS")
    pub = ShardedPublisher(Registry(args.registry), tables, lambda: {}, SparseExchange(),
                           PublisherConfig(auto_gc=False))
    dist.barrier()
    t0 = time.perf_counter()
    pub.publish_full(event_time=1)
    full_s = time.perf_counter() - t0
    delta_s = []
    for r in range(args.rounds):
        for t in tables.values():
            rows = t.read_rows(with_state=False).fids
            touched = rng.choice(rows, max(1, int(rows.shape[0] * args.touch)), replace=False)
            t.apply_gradients(touched, rng.normal(size=(touched.shape[0], 16))
                              .astype(np.float32), now=2 + r)
        dist.barrier()
        t0 = time.perf_counter()
        pub.publish_sparse(event_time=2 + r)
        delta_s.append(time.perf_counter() - t0)
    if rank == 0:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
        print(json.dumps({
            "git": git, "ranks": world, "rows_per_table": args.rows,
            "rank0_rows": sum(len(t) for t in tables.values()),
            "rank0_rss_filled_mib": round(filled, 1),
            "rank0_rss_after_publish_mib": round(_status_mib("VmRSS"), 1),
            "rank0_peak_rss_mib": round(_status_mib("VmHWM"), 1),
            "full_publish_s": round(full_s, 3),
            "delta_publish_s": [round(s, 3) for s in delta_s],
            "delta_publish_s_median": round(float(np.median(delta_s)), 3),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--rows", type=int, default=2_000_000, help="fids per table, all ranks")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--touch", type=float, default=0.05,
                   help="share of a shard's rows written before each delta")
    p.add_argument("--registry", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if "RANK" in os.environ:
        rank_main(args)
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "WORLD_SIZE": str(args.ranks), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": f"{ROOT / 'src'}"}
        cmd = [sys.executable, __file__, "--ranks", str(args.ranks), "--rows", str(args.rows),
               "--rounds", str(args.rounds), "--touch", str(args.touch),
               "--registry", str(Path(tmp) / "registry")]
        procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r)}) for r in range(args.ranks)]
        codes = [p.wait() for p in procs]
    sys.exit(max(codes))


if __name__ == "__main__":
    main()
