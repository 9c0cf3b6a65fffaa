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
from freshrec.stream.base import Log
from freshrec.table.table import EmbeddingTable
from freshrec.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]


def config(optimizer: str, min_count: int = 2, **train: Any) -> FreshrecConfig:
    """A small model: users with admission (``min_count``) and a TTL, items and a history."""
    return config_from_dict({
        "features": {
            "tables": {
                "user": {"dim": 4, "ttl_s": 30,
                         "optimizer": {"kind": optimizer, "lr": 0.1},
                         "admission": {"min_count": min_count}},
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


def write_inputs(root: Path, cfg: FreshrecConfig, rows: int) -> tuple[Path, Path]:
    """The config document and a Parquet file of ``batches(rows)`` under ``root``."""
    import pyarrow.parquet as pq
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_batches(batches(rows)), root / "data.parquet")
    (root / "cfg.yaml").write_text(yaml.safe_dump(dict(cfg.raw), sort_keys=False))
    return root / "cfg.yaml", root / "data.parquet"


def cli(args: list[str], *, torchrun: int = 0, timeout: float = 240
        ) -> subprocess.CompletedProcess[str]:
    """``python -m freshrec ARGS`` (under ``torchrun`` with that many ranks when ``torchrun``
    > 0), its output captured."""
    from tests.conftest import free_ports

    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={torchrun}",
                 "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_ports(1)[0]}"]
                if torchrun else [sys.executable])
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, "-m", "freshrec", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def train_cli(cfg: Path, data: Path, run_dir: Path, *flags: str, torchrun: int = 0,
              timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m freshrec train`` on ``data`` (see :func:`cli`)."""
    return cli(["train", "--config", str(cfg), "--data", str(data), "--format", "parquet",
                "--run-dir", str(run_dir), "--no-progress", *flags], torchrun=torchrun,
               timeout=timeout)


#: Partition of each record of :func:`write_examples_log`, in turn: partition 0 gets half the
#: records, 2 three eighths, 1 an eighth and 3 none (rank 0 of 2 reads 7/8 of the examples).
LOG_PATTERN = (0, 0, 2, 1, 0, 2, 0, 2)


def write_examples_log(root: Path, rows: int) -> Log:
    """A 4-partition file log of joined-example records (10 examples of ``batches(rows)``
    each), spread over the partitions by :data:`LOG_PATTERN`."""
    from freshrec.stream.events import encode_examples
    from freshrec.stream.open import open_log

    table = pa.Table.from_batches(batches(rows)).combine_chunks()
    log = open_log(f"file:{root}", partitions=4)
    for i in range(0, rows, 10):
        log.append([encode_examples(table.slice(i, 10).to_batches()[0])],
                   partition=LOG_PATTERN[i // 10 % len(LOG_PATTERN)])
    return log


def train_in_step(single: Trainer, per_rank: list[list[pa.RecordBatch]]) -> None:
    """Train ``single`` on the global batches of ranks stepping together: step ``k`` trains
    every rank's ``k``-th batch (of those that have one), in rank order."""
    for k in range(max((len(b) for b in per_rank), default=0)):
        parts = [b[k] for b in per_rank if k < len(b)]
        single.learn_batch(single.schema.encode(pa.Table.from_batches(parts)))


def online_reference(cfg: FreshrecConfig, source: Log, world: int) -> Trainer:
    """One process trained on the global batches ``world`` online ranks make of ``source``:
    in each round every rank reads ``online.max_records`` records of each partition it owns
    (round-robin), in batches of ``batch_size // world`` examples (:func:`train_in_step`)."""
    from freshrec.stream.events import decode_examples
    from freshrec.train.trainer import rebatch

    single = Trainer(cfg)
    offsets = [0] * source.partitions
    while True:
        per_rank: list[list[pa.RecordBatch]] = []
        for r in range(world):
            values = []
            for p in range(r, source.partitions, world):
                recs = source.read(p, offsets[p], cfg.online.max_records)
                offsets[p] += len(recs)
                values += [rec.value for rec in recs]
            rb = decode_examples(values)[0] if values else None
            per_rank.append([] if rb is None else
                            list(rebatch([rb], cfg.train.batch_size // world)))
        if not any(per_rank):
            return single
        train_in_step(single, per_rank)


def checkpoint_state(run_dir: Path) -> tuple[list[dict[str, np.ndarray]], dict[str, Any], int]:
    """The newest distributed checkpoint of ``run_dir``: each shard's rows (as
    :func:`table_state`), rank 0's dense parameters, and its world size."""
    from freshrec.dist.checkpoint import latest_manifest
    from freshrec.train.checkpoint import load_checkpoint

    manifest = latest_manifest(run_dir / "checkpoints")
    assert manifest is not None
    parts = [table_state({name: EmbeddingTable.from_snapshot(s / "tables" / name)
                          for name in ("user", "item")}) for s in manifest.shards]
    dense, _, state = load_checkpoint(manifest.shards[0], {})
    return parts, {k: v.numpy() for k, v in dense.items()}, manifest.world_size


def assert_same_model(parts: list[dict[str, np.ndarray]], dense: dict[str, Any],
                      single: Any) -> None:
    """Shards ``parts`` together and ``dense`` equal the single-process ``single`` trainer."""
    assert_same_tables(parts, single.tables)
    for k, v in single.model.state_dict().items():
        np.testing.assert_allclose(dense[k], v.numpy(), atol=1e-5, rtol=0)


def assert_same_tables(parts: list[dict[str, np.ndarray]],
                       tables: dict[str, EmbeddingTable]) -> None:
    """Shards ``parts`` together hold the rows of the tables ``user`` and ``item`` of
    ``tables``: the same fids and last-seen times, values and states within 1e-5."""
    want = table_state(tables)
    for name in ("user", "item"):
        got = merged(parts, name)
        np.testing.assert_array_equal(got["fids"], want[f"{name}.fids"])
        np.testing.assert_array_equal(got["last_seen"], want[f"{name}.last_seen"])
        np.testing.assert_allclose(got["values"], want[f"{name}.values"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(got["states"], want[f"{name}.states"], atol=1e-5, rtol=1e-6)


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
        (out / f"{opt}-rank{rank}.json").write_text(json.dumps(
            {**summary, "pipelined": trainer.embedding.pipelined}))


def _stall(out: Path, rank: int) -> None:
    """Rank 1 never joins the collective: rank 0's times out (DIST_TIMEOUT_S) and says so."""
    import time

    from freshrec.dist import SparseExchange

    if rank == 1:
        time.sleep(float(os.environ["DIST_TIMEOUT_S"]) * 4)
        return
    start = time.monotonic()
    try:
        SparseExchange().max(1.0)
    except RuntimeError as e:
        (out / "stall.json").write_text(json.dumps({"waited_s": time.monotonic() - start,
                                                    "error": str(e)}))


#: The slots of the pipelining scenario: two tables, the item table's slots not next to each
#: other (its pooled columns come out of order), the user table counting admissions.
PIPE_SLOTS = {"item_id": ("item", "sum"), "user_id": ("user", "sum"), "hist": ("item", "mean")}


def pipeline_tables() -> dict[str, EmbeddingTable]:
    """Fresh tables of the pipelining scenario (the same on every rank and in the test)."""
    from freshrec.table import AdmissionConfig, OptimizerConfig, TableConfig

    return {"user": EmbeddingTable(TableConfig(
                name="user", dim=4, ttl_s=3, optimizer=OptimizerConfig(kind="sgd", lr=0.1),
                admission=AdmissionConfig(min_count=2))),
            "item": EmbeddingTable(TableConfig(
                name="item", dim=4, ttl_s=4,
                optimizer=OptimizerConfig(kind="rowwise_adagrad", lr=0.05)))}


def pipeline_batch(step: int, rank: int) -> dict[str, list[list[int]]]:
    """Rank ``rank``'s examples of step ``step`` (a slot -> id lists dict)."""
    rng = np.random.default_rng(1000 * step + rank)
    n = 7 + rank
    return {"item_id": [[int(i)] for i in rng.integers(0, 40, n)],
            "user_id": [[int(u % 30)] for u in rng.zipf(1.5, n)],
            "hist": [rng.integers(0, 40, rng.integers(0, 4)).tolist() for _ in range(n)]}


#: Steps of the pipelining scenario, and the step after which the tables expire (no
#: prefetch crosses it).
PIPE_STEPS, PIPE_EXPIRE_AFTER = 12, 5


def _pipeline(out: Path, rank: int) -> None:
    """ShardedPooledEmbedding trained with the next request started ahead (rank 0 at every
    step it may, rank 1 at odd steps only: a rank may skip a prefetch the others make)."""
    from freshrec.dist import ShardedPooledEmbedding, SparseExchange
    from freshrec.features.jagged import JaggedBatch
    from freshrec.nn.pooled import SlotSpec

    emb = ShardedPooledEmbedding(
        pipeline_tables(), {s: SlotSpec(table=t, pooling=p) for s, (t, p) in PIPE_SLOTS.items()},
        SparseExchange())
    batches = [JaggedBatch.from_dict(pipeline_batch(k, rank)) for k in range(PIPE_STEPS)]
    prefetched = 0
    for k, batch in enumerate(batches):
        pooled = emb(batch, now=k)
        if k + 1 < PIPE_STEPS and k != PIPE_EXPIRE_AFTER and (rank == 0 or k % 2):
            emb.prefetch(batches[k + 1], now=k + 1)
            prefetched += 1
        (0.5 * (pooled * pooled).sum()).backward()
        if k == PIPE_EXPIRE_AFTER:
            for table in emb.tables.values():
                table.expire(k)
    np.savez(out / f"pipeline-rank{rank}.npz", **table_state(emb.tables),
             pipelined=np.array([emb.pipelined, prefetched]))


SCENARIOS = {"equivalence": _equivalence, "stall": _stall, "pipeline": _pipeline}


def main() -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    scenario, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo", timeout=datetime.timedelta(
        seconds=float(os.environ.get("DIST_TIMEOUT_S", "60"))))
    if ":" in scenario:  # MODULE:FUNCTION, a scenario kept beside its test
        import importlib

        module, name = scenario.split(":")
        getattr(importlib.import_module(module), name)(out, dist.get_rank())
    else:
        SCENARIOS[scenario](out, dist.get_rank())
    if scenario == "stall":  # a group that timed out cannot be torn down: leave at once
        os._exit(0)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
