"""Sync benchmark: size and time of publishing and applying sparse deltas.

``freshrec bench sync --json [--quick] [--entries N] [--reps R] [--dir DIR] [--with-state]``

A dim-16 row-wise-Adagrad table is filled with N fids (1 M; ``--quick``: 200 k) and published
as a full snapshot; a subscriber materialises it. Then, for 1 k / 10 k / 100 k touched rows,
R times (median reported): one gradient step on that many distinct random existing fids,
``Publisher.publish_sparse()`` (export the rows, write the delta bundle with checksums and
fsync, rename, move ``HEAD``: ``publish_ms``), then ``Subscriber.update()`` on the
subscriber's tables (plan, read and verify the delta from disk, apply it in place in chunks of
4096 rows: ``apply_ms``). ``delta_bytes`` is the delta's size on disk. The registry lives in a
temporary directory unless ``--dir`` is given, so figures include that disk's fsync cost.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from freshrec.benchinfo import machine_info
from freshrec.sync import Publisher, PublisherConfig, Registry, Subscriber
from freshrec.table import EmbeddingTable, OptimizerConfig, TableConfig

SIZES = {"1k": 1_000, "10k": 10_000, "100k": 100_000}


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def main(argv: list[str], verbose: bool = True) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="freshrec bench sync")
    ap.add_argument("--quick", action="store_true", help="200 k entries, 3 repetitions")
    ap.add_argument("--entries", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--dir", default=None, help="registry parent directory (default: a temp dir)")
    ap.add_argument("--with-state", action="store_true", help="deltas carry optimizer state")
    ap.add_argument("--seed", type=int, default=0)
    opts = ap.parse_args(argv)
    n = opts.entries or (200_000 if opts.quick else 1_000_000)
    reps = opts.reps or (3 if opts.quick else 5)
    say = print if verbose else (lambda *a, **k: None)
    rng = np.random.default_rng(opts.seed)

    keys = np.unique(rng.integers(0, 2**63, size=int(n * 1.01), dtype=np.uint64))
    keys = rng.permutation(keys)[:n]
    cfg = TableConfig(name="bench", dim=16, capacity_hint=n,
                      optimizer=OptimizerConfig(kind="rowwise_adagrad", lr=0.05))
    trainer = EmbeddingTable(cfg)
    say(f"filling {n:,} entries...")
    for s in range(0, n, 65536):
        trainer.lookup(keys[s:s + 65536], now=1, train=True)

    with tempfile.TemporaryDirectory(dir=opts.dir) as tmp:
        reg = Registry(Path(tmp) / "registry")
        pub = Publisher(reg, [trainer], config=PublisherConfig(auto_gc=False,
                                                               with_state=opts.with_state))
        t0 = time.perf_counter()
        full = pub.publish_full(event_time=1)
        full_publish_s = time.perf_counter() - t0
        sub = Subscriber(reg)
        t0 = time.perf_counter()
        state = sub.materialize()
        materialize_s = time.perf_counter() - t0
        follower = state.tables
        sub = Subscriber(reg, version=state.version)
        result: dict[str, object] = {
            "bench": "sync", "entries": n, "dim": 16, "optimizer": "rowwise_adagrad",
            "with_state": opts.with_state, "reps": reps, "threads": 1,
            "full_bytes": full.full_bytes, "full_publish_ms": _ms(full_publish_s),
            "materialize_ms": _ms(materialize_s),
        }
        now = 2
        for label, size in SIZES.items():
            size = min(size, n)
            publish, apply, nbytes, rows = [], [], [], []
            for _ in range(reps):
                touched = keys[rng.choice(n, size=size, replace=False)]
                grads = rng.standard_normal((size, 16)).astype(np.float32)
                trainer.lookup(touched, now=now, train=True)
                trainer.apply_gradients(touched, grads, now=now)
                t0 = time.perf_counter()
                m = pub.publish_sparse(event_time=now)
                publish.append(time.perf_counter() - t0)
                assert m is not None
                t0 = time.perf_counter()
                version = sub.update(follower)
                apply.append(time.perf_counter() - t0)
                assert version == m.version
                probe = touched[:100]
                if not np.array_equal(follower["bench"].lookup(probe), trainer.lookup(probe)):
                    raise AssertionError("subscriber differs from the trainer after a delta")
                nbytes.append(m.delta_bytes)
                rows.append(m.delta_rows)
                now += 1
            result[f"delta_rows_{label}"] = int(statistics.median(rows))
            result[f"delta_bytes_{label}"] = int(statistics.median(nbytes))
            result[f"publish_ms_{label}"] = _ms(statistics.median(publish))
            result[f"apply_ms_{label}"] = _ms(statistics.median(apply))
            result[f"bytes_per_row_{label}"] = round(statistics.median(nbytes) / size, 2)
            say(f"{label}: rows={result[f'delta_rows_{label}']} "
                f"bytes={result[f'delta_bytes_{label}']} "
                f"publish_ms={result[f'publish_ms_{label}']} "
                f"apply_ms={result[f'apply_ms_{label}']}")
    result.update(machine_info())
    say(result)
    return result
