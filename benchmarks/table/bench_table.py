"""Table benchmark: lookup / insert / update throughput and memory per entry.

``freshrec bench table --json [--quick] [--entries N] [--batch B] [--rounds R]``

Fills a dim-16 row-wise-Adagrad table with N random fids (10 M; ``--quick``: 1 M), then looks
up batches of 65,536 fids drawn Zipf(s=1.05) and uniformly over the table, and compares in the
same run with a Python dict (fid -> row, then a row gather) and with ``torch.index_select`` on
a preallocated tensor with pre-mapped int64 positions. Single-threaded kernels: figures are
per core.

The Zipf lookups, ``index_select`` and the same lookups on a second table built without huge
pages (``EmbeddingTable(..., huge_pages=False)``) take turns in ``--rounds`` short rounds (20;
each looks up a fifth of the batches, about 0.1 s per variant on a quiet machine), the order
of the three reversed every other round, so a change of the machine's load hits all three
(after one untimed pass of each over all batches: without it the first rounds of the tables
just filled ran at a fraction of the later ones' rate);
rates are medians over the rounds, and ``lookup_over_index_select`` and
``huge_pages_speedup`` are medians of the per-round ratios (also listed per round).

Inserts are timed apart from growth and page faults: ``insert_fids_per_s`` is the fill of a
table pre-sized for all entries (``capacity_hint`` = entries) whose arrays were touched
first (the insert itself), ``insert_fids_per_s_first_touch`` the same fill into fresh memory
(the kernel's page faults included; ``_small_pages``: without huge pages),
``insert_fids_per_s_grown``
the fill from the default capacity including the growth, of which ``growth_s`` is spent
growing (copying rows into larger arrays, rebuilding the index: time inside
``EmbeddingTable._reserve``) and ``insert_fids_per_s_grown_excl_growth`` the rest. Each fill
is also given in CPU time (``*_cpu`` keys: ``time.thread_time``), which a loaded machine
disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from freshrec.benchinfo import machine_info
from freshrec.table import EmbeddingTable, OptimizerConfig, TableConfig


def zipf_ranks(rng: np.random.Generator, n_keys: int, size: int, s: float) -> np.ndarray:
    """Ranks in [0, n_keys) with P(k) proportional to (k+1)**-s (inverse-CDF sampling)."""
    cdf = np.cumsum(np.arange(1, n_keys + 1, dtype=np.float64) ** -s)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size)), n_keys - 1)


def _rate(n: int, seconds: float) -> float:
    return float(n / seconds) if seconds > 0 else float("inf")


class _Clock:
    """Wall and CPU seconds of a block (``with clock: ...``), added up over uses."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> _Clock:
        self._t = (time.perf_counter(), time.thread_time())
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._t[0]
        self.cpu += time.thread_time() - self._t[1]


def _fill(table: EmbeddingTable, keys: np.ndarray, bs: int) -> tuple[_Clock, _Clock]:
    """Insert ``keys`` by training lookups of ``bs`` fids; returns the clock of the whole fill
    and the clock of the time spent growing (``_reserve``, wrapped here as an instrument)."""
    fill, growth = _Clock(), _Clock()
    inner = table._reserve

    def timed(extra: int) -> None:
        with growth:
            inner(extra)

    table._reserve = timed  # type: ignore[method-assign]
    with fill:
        for s in range(0, keys.shape[0], bs):
            table.lookup(keys[s:s + bs], now=1, train=True)
    del table._reserve
    return fill, growth


def main(argv: list[str], verbose: bool = True) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="freshrec bench table")
    ap.add_argument("--quick", action="store_true", help="1 M entries, fewer batches (< 60 s)")
    ap.add_argument("--entries", type=int, default=None)
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--batches", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=20)
    opts = ap.parse_args(argv)
    n = opts.entries or (1_000_000 if opts.quick else 10_000_000)
    n_batches = opts.batches or (30 if opts.quick else 100)
    bs = opts.batch
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    rng = np.random.default_rng(opts.seed)
    say = print if verbose else (lambda *a, **k: None)

    keys = np.unique(rng.integers(0, 2**64 - 1, size=int(n * 1.01), dtype=np.uint64))
    keys = rng.permutation(keys)[:n]
    cfg = TableConfig(name="bench", dim=16,
                      optimizer=OptimizerConfig(kind="rowwise_adagrad", lr=0.05))

    # warm up (JIT) on a tiny table
    warm = EmbeddingTable(cfg)
    warm.lookup(keys[:1000], now=1, train=True)
    warm.lookup(keys[:1000])
    warm.apply_gradients(keys[:1000], np.ones((1000, 16), np.float32))

    say(f"filling {n:,} entries (growing from the default capacity)...")
    grown = EmbeddingTable(cfg)
    grown_fill, growth = _fill(grown, keys, bs)
    grown_stats = grown.stats()
    del grown

    say("filling again with capacity_hint = entries: fresh memory, touched memory, small pages...")
    sized = TableConfig(name="bench", dim=16, capacity_hint=n, optimizer=cfg.optimizer)
    fresh = EmbeddingTable(sized)
    fresh_fill, _ = _fill(fresh, keys, bs)
    del fresh
    table = EmbeddingTable(sized)
    for arr in (table._meta, table._emb, table._state, table._index):
        arr += 0  # touch every page first: the fill below times the insert, not page faults
    sized_fill, _ = _fill(table, keys, bs)
    small_pages = EmbeddingTable(sized, huge_pages=False)
    small_fill, _ = _fill(small_pages, keys, bs)
    stats = table.stats()

    zipf = keys[zipf_ranks(rng, n, n_batches * bs, 1.05)].reshape(n_batches, bs)
    unif = keys[rng.integers(0, n, size=(n_batches, bs))]

    def lookups(batches: np.ndarray, on: EmbeddingTable) -> float:
        t = time.perf_counter()
        for b in batches:
            on.lookup(b)
        return _rate(batches.size, time.perf_counter() - t)

    weight = torch.zeros(n, 16)
    pos = torch.from_numpy(zipf_ranks(rng, n, n_batches * bs, 1.05).reshape(n_batches, bs))

    def index_select(batches: torch.Tensor) -> float:
        t = time.perf_counter()
        for p in batches:
            torch.index_select(weight, 0, p)
        return _rate(batches.numel(), time.perf_counter() - t)

    say("lookups, index_select and small-page lookups in interleaved rounds...")
    per_round = max(1, n_batches // 5)
    on = {"zipf": table, "small_pages": small_pages}
    del small_pages
    runs = {"zipf": lambda sl: lookups(zipf[sl], on["zipf"]),
            "index_select": lambda sl: index_select(pos[sl]),
            "small_pages": lambda sl: lookups(zipf[sl], on["small_pages"])}
    for run in runs.values():  # warm-up: one untimed pass over every batch of each
        run(slice(0, n_batches))
    rounds: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(opts.rounds):
        start = (r * per_round) % n_batches
        sl = slice(start, start + per_round)
        for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            rounds[name].append(runs[name](sl))
    del on["small_pages"]
    zipf_rate = float(np.median(rounds["zipf"]))
    index_select_rate = float(np.median(rounds["index_select"]))
    vs_index_select = [a / b for a, b in zip(rounds["zipf"], rounds["index_select"],
                                             strict=True)]
    huge_speedup = [a / b for a, b in zip(rounds["zipf"], rounds["small_pages"], strict=True)]
    unif_rate = lookups(unif, table)

    say("python dict baseline...")
    d_batches = max(3, n_batches // 10)
    pydict = dict(zip(keys.tolist(), range(n), strict=True))
    emb = np.zeros((n, 16), np.float32)
    t = time.perf_counter()
    for b in zipf[:d_batches]:
        at = np.fromiter((pydict.get(k, -1) for k in b.tolist()), np.int64, count=bs)
        emb[at]
    dict_rate = _rate(d_batches * bs, time.perf_counter() - t)
    del pydict, emb

    say("gradient updates...")
    grads = rng.standard_normal((bs, 16)).astype(np.float32)
    t = time.perf_counter()
    for b in zipf[: n_batches // 2]:
        table.apply_gradients(b, grads)
    update_rate = _rate((n_batches // 2) * bs, time.perf_counter() - t)

    result: dict[str, object] = {
        "bench": "table",
        "entries": n,
        "dim": 16,
        "optimizer": "rowwise_adagrad",
        "batch": bs,
        "threads": 1,
        "lookup_fids_per_s_zipf": zipf_rate,
        "lookup_fids_per_s_uniform": unif_rate,
        "dict_lookup_fids_per_s_zipf": dict_rate,
        "index_select_rows_per_s": index_select_rate,
        "insert_fids_per_s": _rate(n, sized_fill.wall),
        "insert_fids_per_s_cpu": _rate(n, sized_fill.cpu),
        "insert_fids_per_s_first_touch": _rate(n, fresh_fill.wall),
        "insert_fids_per_s_first_touch_cpu": _rate(n, fresh_fill.cpu),
        "insert_fids_per_s_small_pages": _rate(n, small_fill.wall),
        "insert_fids_per_s_small_pages_cpu": _rate(n, small_fill.cpu),
        "insert_fids_per_s_grown": _rate(n, grown_fill.wall),
        "insert_fids_per_s_grown_cpu": _rate(n, grown_fill.cpu),
        "growth_s": growth.wall,
        "growth_s_cpu": growth.cpu,
        "insert_fids_per_s_grown_excl_growth": _rate(n, grown_fill.wall - growth.wall),
        "insert_fids_per_s_grown_excl_growth_cpu": _rate(n, grown_fill.cpu - growth.cpu),
        "update_rows_per_s": update_rate,
        "bytes_per_entry": stats.bytes_per_entry,
        "bytes_per_entry_grown": grown_stats.bytes_per_entry,
        "load_factor": stats.load_factor,
        "lookup_vs_dict_ratio": zipf_rate / dict_rate,
        "lookup_vs_index_select_ratio": zipf_rate / index_select_rate,
        "lookup_over_index_select": float(np.median(vs_index_select)),
        "lookup_over_index_select_rounds": vs_index_select,
        "lookup_fids_per_s_zipf_small_pages": float(np.median(rounds["small_pages"])),
        "huge_pages_speedup": float(np.median(huge_speedup)),
        "huge_pages_speedup_rounds": huge_speedup,
        "rounds": opts.rounds,
        "batches_per_round": per_round,
        "loadavg_1min_start": load_start,
        "loadavg_1min": os.getloadavg()[0],
        "gib_for_100m_entries": stats.bytes_per_entry * 1e8 / 2**30,
        "gib_for_100m_entries_grown": grown_stats.bytes_per_entry * 1e8 / 2**30,
        **machine_info(),
    }
    say(result)
    return result
