"""Store benchmark: Redis as the embedding store against the in-process table, same run.

``freshrec bench store --json [--quick] [--redis URL] [--requests N] [--examples N]
[--rounds N]``

- **Serving** (``store_added_p99_ms``): one request's lookup of a user's row (the user table,
  dim 16, 10,000 users written by a trainer) as the predictor does it (``find`` then
  ``pool``), timed per request for the in-process table and for
  served tables (:class:`~freshrec.store.served.ServedRedisTable`) reading Redis every request
  (``serve_cache_ms: 0``, the worst case: one ``MGET`` per request): ``redis``, as serving
  reads (the lean :class:`~freshrec.store.wire.WireClient`, spinning ``--spin-us`` before it
  sleeps), ``redis_nospin`` (the same client, no spin) and ``redis_redispy`` (redis-py's
  client, the path before the WireClient); ``redis_cached`` with the default 200 ms local
  copy; and two bare round trips of one row-sized value on connections of their own:
  ``roundtrip`` (a redis-py ``GET``) and ``roundtrip_wire`` (the WireClient's ``MGET``, with
  the spin). Every request runs the arms in a new random order (the first Redis read after
  other work finds redis-server asleep and pays more: a fixed order would charge that to one
  arm). p50/p99/p99.9 of each, its mean thread CPU time per request (``_cpu_us``), the
  added latency (Redis minus in-process: ``store_added_*``, and ``store_added_*_redispy``,
  ``_nospin``, ``_cached``) and what the table adds over its own bare round trip
  (``store_over_roundtrip_*``), per round (``serve_rounds``, 3 by default) and their medians;
  ``serve_timeouts``/``serve_fallback_rows`` count requests cut by the 5 ms budget.
- **Training** (``store_train_ratio``): examples/s of the simulator's DeepFM
  (configs/simulator.yaml) on one simulated stream, user table in the process vs in Redis
  (write-back cache, flushed after each checkpoint; both arms checkpoint every 20 steps).
  The two trainers learn the first 5 batches untimed (kernel compilation, first page
  faults), then take turns batch by batch in a random order, so both see the same machine
  load; ``store_train_ratio_chunk_median``/``_min``/``_max`` give the ratio per 10 batches.
- **Freshness** (``store_write_to_read_p99_s``): a trainer's flush of a changed row to the
  moment a server polling every 5 ms (default 200 ms local copy) reads the new value, 40
  times. Rows reach Redis when the trainer checkpoints, so end-to-end freshness adds the
  checkpoint interval (``online.checkpoint_every_s``).
- **Optimizer state** (``state_*_read_ms`` / ``_write_ms``): 512 rows of dim 16 read and
  written with no state, row-wise Adagrad's, Adagrad's and Adam's beside the row.

Redis is a private ``redis-server`` on loopback unless ``--redis`` names one. The machine
is shared: compare the same-run ratios, and read absolute figures with the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.benchinfo import load_script, machine_info
from freshrec.config import config_from_dict
from freshrec.data.simulate import SimulatorConfig, simulated_examples
from freshrec.store import RedisTable, StoreConfig, TableBackend
from freshrec.store.client import RowKeys, open_client
from freshrec.store.served import ServedRedisTable
from freshrec.store.wire import DEFAULT_SPIN_US, WireClient
from freshrec.table import EmbeddingTable, OptimizerConfig, OptimizerKind, TableConfig
from freshrec.train.trainer import Trainer, rebatch


def _load(rel: str, name: str) -> Any:
    return load_script(Path(__file__).resolve().parents[1] / rel, name)


def _ms(a: np.ndarray, q: float) -> float:
    return round(float(np.quantile(a, q)) * 1000.0, 4)


def user_config(url: str, prefix: str, **store: Any) -> TableConfig:
    return TableConfig(name="user", dim=16, backend=TableBackend.REDIS,
                       optimizer=OptimizerConfig(kind=OptimizerKind.ROWWISE_ADAGRAD, lr=0.05),
                       store=StoreConfig(url=url, prefix=prefix, **store))


def _pool_one(table: EmbeddingTable, f: np.ndarray) -> None:
    """What the predictor does per table and request: ``find`` then ``pool``."""
    table.pool(table.find(f), _ONE_BAG, _ONE_SCALE)


_ONE_BAG = np.array([0, 1], np.int64)
_ONE_SCALE = np.ones(1, np.float32)
_QUANTILES = {"p50": 0.5, "p99": 0.99, "p999": 0.999}


def serving_round(url: str, prefix: str, users: np.ndarray, requests: int,
                  rng: np.random.Generator, spin_us: float = DEFAULT_SPIN_US
                  ) -> dict[str, float]:
    """One round of the serving arms (see the module docstring), interleaved request by
    request in a new random order each time (load changes hit every arm alike). Each arm
    makes 200 untimed requests first (connections opened, code paths warm)."""
    memory = EmbeddingTable(TableConfig(name="user", dim=16))
    memory.lookup(users, now=0, train=True)
    uncached = user_config(url, prefix, serve_cache_ms=0.0)
    served = {"redis": ServedRedisTable(uncached, spin_us=spin_us),
              "redis_nospin": ServedRedisTable(uncached, spin_us=0.0),
              "redis_redispy": ServedRedisTable(uncached, wire=False),
              "redis_cached": ServedRedisTable(user_config(url, prefix), spin_us=spin_us)}
    bare = open_client(url, "bench-bare")
    wire = WireClient(url, timeout_s=5.0, spin_us=spin_us)
    key = RowKeys(prefix, "user").row(int(users[0]))

    def roundtrip(_: np.ndarray) -> None:
        bare.get(key)

    def roundtrip_wire(_: np.ndarray) -> None:
        wire.mget([key])

    arms: dict[str, Callable[[np.ndarray], None]] = {
        "memory": partial(_pool_one, memory),
        **{arm: partial(_pool_one, t) for arm, t in served.items()},
            "roundtrip": roundtrip, "roundtrip_wire": roundtrip_wire}
    calls = list(arms.values())
    for fid in rng.choice(users, size=200):
        for call in calls:
            call(np.array([fid], np.uint64))
    # The served tables' counters are per table name in the process: all served arms add.
    errors0, fallback0 = (served["redis"].counters[k] for k in ("redis_errors",
                                                               "fallback_rows"))
    times = np.zeros((len(arms), requests))
    cpu = np.zeros(len(arms))
    clock, cpu_clock = time.perf_counter, time.thread_time
    orders = np.argsort(rng.random((requests, len(arms))), axis=1).tolist()
    for i, fid in enumerate(rng.choice(users, size=requests)):
        f = np.array([fid], np.uint64)
        for j in orders[i]:
            c0 = cpu_clock()
            t0 = clock()
            calls[j](f)
            times[j, i] = clock() - t0
            cpu[j] += cpu_clock() - c0
    out: dict[str, float] = {}
    for j, arm in enumerate(arms):
        for q, p in _QUANTILES.items():
            out[f"serve_{arm}_{q}_ms"] = _ms(times[j], p)
        out[f"serve_{arm}_cpu_us"] = round(cpu[j] / requests * 1e6, 1)
    for q in _QUANTILES:
        for arm, suffix in (("redis", ""), ("redis_nospin", "_nospin"),
                            ("redis_redispy", "_redispy"), ("redis_cached", "_cached")):
            out[f"store_added_{q}_ms{suffix}"] = round(
                out[f"serve_{arm}_{q}_ms"] - out[f"serve_memory_{q}_ms"], 4)
        out[f"store_over_roundtrip_{q}_ms"] = round(
            out[f"serve_redis_{q}_ms"] - out[f"serve_roundtrip_wire_{q}_ms"], 4)
        out[f"store_over_roundtrip_{q}_ms_redispy"] = round(
            out[f"serve_redis_redispy_{q}_ms"] - out[f"serve_roundtrip_{q}_ms"], 4)
    out["serve_timeouts"] = served["redis"].counters["redis_errors"] - errors0
    out["serve_fallback_rows"] = served["redis"].counters["fallback_rows"] - fallback0
    reader = served["redis"].rows_store.client
    if isinstance(reader, WireClient):
        out["serve_replies_while_spinning"] = round(
            reader.spun / max(reader.spun + reader.slept, 1), 4)
    for c in (*served.values(), bare, wire):
        c.close()
    return out


def bench_serving(url: str, requests: int, rounds: int, rng: np.random.Generator,
                  spin_us: float = DEFAULT_SPIN_US) -> dict[str, Any]:
    """Serving arms (:func:`serving_round`) over ``rounds`` rounds of ``requests`` requests
    for 10,000 users a trainer wrote. Headline figures are the medians over rounds; each
    round's p50/p99/p99.9 are kept under ``serve_rounds``."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    users = np.arange(1, 10_001, dtype=np.uint64)
    writer = RedisTable(user_config(url, prefix))
    writer.lookup(users, now=0, train=True)
    writer.flush()
    writer.close()
    per = []
    for _ in range(rounds):
        per.append(serving_round(url, prefix, users, requests, rng, spin_us))
        per[-1]["loadavg"] = os.getloadavg()[0]
    out: dict[str, Any] = {k: round(float(np.median([r[k] for r in per])), 4)
                           for k in per[0] if k != "loadavg"}
    out["serve_rounds"] = per
    return out


def train_config(url: str | None) -> dict[str, Any]:
    mod = _load("store/bench_store_init.py", "bench_store_init")
    raw: dict[str, Any] = mod.model_config(url or "redis://127.0.0.1:1/0",
                                           f"bench-{uuid.uuid4().hex[:8]}", {"source": "none"})
    if url is None:
        user = raw["features"]["tables"]["user"]
        user.pop("backend")
        user.pop("store")
    raw["train"]["checkpoint_every_steps"] = 20
    raw["train"]["threads"] = 1
    return raw


def bench_training(url: str, examples: int, rng: np.random.Generator,
                   warmup_batches: int = 5, chunk_batches: int = 10) -> dict[str, float]:
    table = simulated_examples(SimulatorConfig(
        seed=0, n_users=20_000, n_items=2000, candidates=20, bias=-2.0, malformed_rate=0.0,
        duplicate_rate=0.0), n_requests=max(1, examples // 20))
    arms = {"memory": None, "redis": url}
    with tempfile.TemporaryDirectory() as run:
        trainers = {arm: Trainer(config_from_dict(train_config(u)), run_dir=f"{run}/{arm}")
                    for arm, u in arms.items()}
        size = trainers["memory"].config.train.batch_size
        encoded = [trainers["memory"].schema.encode(rb)
                   for rb in rebatch(table.to_batches(), size)]
        # both arms learn the first batches untimed (the first calls compile kernels and
        # fault pages in: timed, they would be charged to whichever arm ran first); then the
        # arms take turns batch by batch in a new random order, so both see the same load
        spent = {arm: np.zeros(len(encoded)) for arm in arms}
        for i, enc in enumerate(encoded):
            for arm in rng.permutation(list(arms)):
                trainer = trainers[arm]
                t0 = time.perf_counter()
                trainer.learn_batch(enc)
                if trainer.step % 20 == 0 or i == len(encoded) - 1:
                    trainer.save()
                spent[arm][i] = time.perf_counter() - t0
        user = trainers["redis"].tables["user"]
        if isinstance(user, RedisTable):
            out_counters = user.store_stats()
            user.close()
    timed = slice(min(warmup_batches, len(encoded) - 1), None)
    rows = sum(e.size for e in encoded[timed])
    out: dict[str, float] = {f"train_{arm}_ex_per_s": round(rows / t[timed].sum(), 1)
                             for arm, t in spent.items()}
    out["store_train_ratio"] = round(out["train_redis_ex_per_s"]
                                     / out["train_memory_ex_per_s"], 3)
    # the same ratio per run of chunk_batches batches: its spread says how much the figure
    # above owes to a few slow batches of one arm
    cuts = range(timed.start, len(encoded), chunk_batches)
    per_chunk = [spent["memory"][c:c + chunk_batches].sum()
                 / spent["redis"][c:c + chunk_batches].sum() for c in cuts]
    out["store_train_ratio_chunk_median"] = round(float(np.median(per_chunk)), 3)
    out["store_train_ratio_chunk_min"] = round(float(np.min(per_chunk)), 3)
    out["store_train_ratio_chunk_max"] = round(float(np.max(per_chunk)), 3)
    out["train_redis_rows_flushed"] = out_counters["flushed"]
    out["train_redis_rows_read"] = out_counters["read"]
    out["train_examples"] = table.num_rows
    out["train_examples_timed"] = rows
    return out


def bench_freshness(url: str, trials: int) -> dict[str, float]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    writer = RedisTable(user_config(url, prefix))
    reader = ServedRedisTable(user_config(url, prefix))
    fid = np.array([42], np.uint64)
    writer.lookup(fid, now=0, train=True)
    writer.flush()
    lags = []
    for i in range(trials):
        old = reader.lookup(fid)
        writer.apply_gradients(fid, np.ones((1, 16), np.float32) * (1 + i % 3))
        t0 = time.perf_counter()
        writer.flush()
        while np.array_equal(reader.lookup(fid), old):
            time.sleep(0.005)
        lags.append(time.perf_counter() - t0)
    writer.close()
    reader.close()
    a = np.array(lags)
    return {"store_write_to_read_p50_s": round(float(np.quantile(a, 0.5)), 4),
            "store_write_to_read_p99_s": round(float(np.quantile(a, 0.99)), 4)}


def bench_state(url: str, reps: int) -> dict[str, float]:
    """Where the optimizer state lives: the cost of carrying it in Redis with the row.

    Reads (MGET) and writes (pipelined SET) of 512 rows (a batch's users) of dim 16 with no
    state (SGD, or state kept trainer-side), row-wise Adagrad (+1 float), Adagrad (+16)
    and Adam (+33); median ms per 512 rows.
    """
    from freshrec.store.client import RowStore

    client = open_client(url, "bench")
    fids = np.arange(512, dtype=np.uint64)
    out: dict[str, float] = {}
    for name, width in (("none", 16), ("rowwise_adagrad", 17), ("adagrad", 32),
                        ("adam", 49)):
        rows = RowStore(client, RowKeys(f"bench-{uuid.uuid4().hex[:8]}", "state"), width)
        values = np.ones((512, width), np.float32)
        w, r = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            rows.put(fids, values)
            w.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rows.get(fids)
            r.append(time.perf_counter() - t0)
        out[f"state_{name}_write_ms"] = round(float(np.median(w)) * 1000, 3)
        out[f"state_{name}_read_ms"] = round(float(np.median(r)) * 1000, 3)
    client.close()
    return out


def main(argv: list[str], verbose: bool = True) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="freshrec bench store")
    ap.add_argument("--quick", action="store_true", help="fewer requests and examples")
    ap.add_argument("--redis", default=None, help="a Redis URL (default: a private server)")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--examples", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3, help="serving rounds (default 3)")
    ap.add_argument("--spin-us", type=float, default=DEFAULT_SPIN_US,
                    help=f"the WireClient's spin before it sleeps (default {DEFAULT_SPIN_US})")
    ap.add_argument("--serving-only", action="store_true",
                    help="only the serving arms (no state, freshness, training)")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args(argv)
    say = print if verbose else (lambda *a, **k: None)
    requests = opts.requests or (2000 if opts.quick else 10_000)
    examples = opts.examples or (30_000 if opts.quick else 100_000)
    out: dict[str, Any] = {"requests": requests,
                           "loadavg_start": os.getloadavg()[0]}
    with _load("stream/bench_log.py", "bench_log").redis_server(opts.redis) as url:
        if url is None:
            raise SystemExit("bench store needs redis-server (scripts/ensure-redis)")
        out |= bench_serving(url, requests, opts.rounds, np.random.default_rng(0),
                             opts.spin_us)
        say(f"serving: added p99 {out['store_added_p99_ms']} ms (rounds: "
            f"{[r['store_added_p99_ms'] for r in out['serve_rounds']]}; redis-py's client "
            f"{out['store_added_p99_ms_redispy']}), bare round trip p99 "
            f"{out['serve_roundtrip_wire_p99_ms']} ms (redis-py "
            f"{out['serve_roundtrip_p99_ms']})")
        if opts.serving_only:
            out["loadavg_end"] = os.getloadavg()[0]
            return out
        out |= bench_state(url, 10 if opts.quick else 30)
        out |= bench_freshness(url, 20 if opts.quick else 40)
        say(f"freshness: p99 {out['store_write_to_read_p99_s']} s")
        out |= bench_training(url, examples, np.random.default_rng(1))
        say(f"training: redis / in-process {out['store_train_ratio']}")
    out["loadavg_end"] = os.getloadavg()[0]
    out["machine"] = machine_info()
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(main(sys.argv[1:], verbose=False)))
