"""Collisionless vs hashed (colliding) embeddings (Monolith, Fig. 7 and Fig. 8).

    pip install -e '.[experiments]'      # once: matplotlib, for the plots only
    python benchmarks/train/exp_collision.py movielens --data ../shared/data/ml-100k \
        --seeds 3 --salts 3 --epochs 2
    python benchmarks/train/exp_collision.py scale --users 1000000 --items 1000000 \
        --requests 30000 --seeds 3
    python benchmarks/train/exp_collision.py page       # the page from the JSON in --out

Each experiment writes its results JSON into ``--out`` (default
``runs/experiments/collision``; ``--out docs`` publishes) *before* anything is plotted, then
rewrites ``collision.md`` there from every result JSON present (the plots need matplotlib,
from the ``experiments`` extra; without it the page is written without them).

**movielens**: DeepFM with configs/movielens.yaml, time-ordered split (first 80 % of ratings
train, last 20 % test), ``--epochs`` passes. A hashed variant maps every fid of an id space
into a fixed number of buckets before the lookup, chosen so that the given fraction of the
distinct ids share a bucket; the bucket hash takes a salt, and every (seed, salt) pair is a
run, so the spread covers which ids happen to collide as well as the initialisation. Test
AUC pooled and per user (GAUC: per-user AUC weighted by the user's test rows, over users with
both labels), for all test rows and split into warm users (seen in training) and cold users.

**scale**: the click-stream simulator with a population of ``--users`` users and ``--items``
items (Zipf popularity, drifting tastes, items appearing and retired), trained online in one
pass: every batch is scored before it is learned (prequential). The hashed tables have 1/2,
1/4 and 1/16 as many rows as the distinct ids the run meets; collisionless holds one row per
id, and a collisionless variant with an admission filter (``min_count`` 2) holds fewer rows.
Curves: cumulative AUC over examples trained (Fig. 7), and AUC per event-time window
(Fig. 8); the simulator's true click probability gives the ceiling.

Differences are reported with 95 % intervals (MovieLens: Welch, t with the smaller sample's
degrees of freedom; scale: paired by seed, as every variant of a seed sees the same stream);
the page states a difference only where the interval excludes 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from freshrec.benchinfo import machine_info, paired_interval, t95
from freshrec.config import FreshrecConfig, load_config
from freshrec.data.movielens import MovieLensReader
from freshrec.data.simulate import SimulatorConfig, simulated_examples
from freshrec.features.jagged import JaggedBatch
from freshrec.features.schema import EncodedBatch
from freshrec.train.metrics import AUC
from freshrec.train.trainer import Trainer, rebatch

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "runs" / "experiments" / "collision"
log = logging.getLogger("exp_collision")



# --- hashing ----------------------------------------------------------------------------------


def salted_bucket(ids: np.ndarray, buckets: int, salt: int) -> np.ndarray:
    """Bucket of each fid under hash ``salt`` (splitmix64 finaliser of ``fid ^ salt``)."""
    x = ids.astype(np.uint64) ^ np.uint64((0x9E3779B97F4A7C15 * (salt + 1)) % 2**64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (x ^ (x >> np.uint64(31))) % np.uint64(buckets)


def colliding_fraction(ids: np.ndarray, buckets: int, salt: int) -> float:
    """Fraction of distinct ids that share their bucket with at least one other id."""
    _, inv, counts = np.unique(salted_bucket(ids, buckets, salt), return_inverse=True,
                               return_counts=True)
    return float((counts[inv] > 1).mean())


def buckets_for(ids: np.ndarray, target: float, salt: int) -> int:
    """Smallest bucket count whose colliding fraction is <= target (binary search)."""
    lo, hi = 1, max(2, len(ids) * 1000)
    while lo < hi:
        mid = (lo + hi) // 2
        if colliding_fraction(ids, mid, salt) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def remapper(buckets: dict[str, int] | None, space_of_slot: dict[str, str], salt: int
             ) -> Callable[[EncodedBatch], EncodedBatch]:
    """Maps the fids of each hashed id space to ``bucket + 1`` (collisionless: unchanged)."""
    if buckets is None:
        return lambda enc: enc

    def remap(enc: EncodedBatch) -> EncodedBatch:
        sp = enc.sparse
        vals = []
        for key in sp.keys:
            v, _ = sp.slot(key)
            m = buckets.get(space_of_slot[key])
            vals.append(v if m is None or len(v) == 0 else
                        salted_bucket(v, m, salt) + np.uint64(1))
        values = np.concatenate(vals) if vals else np.empty(0, np.uint64)
        return EncodedBatch(sparse=JaggedBatch(sp.keys, values, sp.lengths()), dense=enc.dense,
                            labels=enc.labels, weight=enc.weight, sample_rate=enc.sample_rate,
                            event_time=enc.event_time)

    return remap


# --- metrics ----------------------------------------------------------------------------------


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Pooled AUC (freshrec's metric, exact)."""
    m = AUC(bins=None)
    m.update(y, p)
    return float(m.get())


def gauc(users: np.ndarray, y: np.ndarray, p: np.ndarray) -> tuple[float, int]:
    """Per-user AUC weighted by the user's rows, over users with both labels; and how many
    users count. Ties count half (average ranks)."""
    if len(y) == 0:
        return float("nan"), 0
    o = np.lexsort((p, users))
    u, y, p = users[o], y[o].astype(np.float64), p[o]
    n = len(u)
    new_user = np.r_[True, u[1:] != u[:-1]]
    ustart = np.flatnonzero(new_user)
    uend = np.r_[ustart[1:], n]
    gid = np.cumsum(new_user) - 1
    rank = np.arange(n) - ustart[gid] + 1.0
    new_tie = new_user | np.r_[True, p[1:] != p[:-1]]
    tstart = np.flatnonzero(new_tie)
    tend = np.r_[tstart[1:], n]
    tid = np.cumsum(new_tie) - 1
    rank = ((rank[tstart] + rank[tend - 1]) / 2)[tid]
    npos = np.add.reduceat(y, ustart)
    count = (uend - ustart).astype(np.float64)
    nneg = count - npos
    ok = (npos > 0) & (nneg > 0)
    if not ok.any():
        return float("nan"), 0
    rsum = np.add.reduceat(rank * y, ustart)
    per_user = (rsum[ok] - npos[ok] * (npos[ok] + 1) / 2) / (npos[ok] * nneg[ok])
    return float(np.sum(per_user * count[ok]) / np.sum(count[ok])), int(ok.sum())


def split_metrics(users: np.ndarray, y: np.ndarray, p: np.ndarray, warm: np.ndarray
                  ) -> dict[str, float]:
    """AUC and GAUC for all rows, warm-user rows and cold-user rows."""
    out: dict[str, float] = {}
    for name, mask in (("all", np.ones(len(y), bool)), ("warm", warm), ("cold", ~warm)):
        out[f"auc_{name}"] = auc(y[mask], p[mask]) if mask.any() else float("nan")
        out[f"gauc_{name}"], out[f"gauc_users_{name}"] = gauc(users[mask], y[mask], p[mask])
    return out


def interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of ``a`` minus mean of ``b`` and the half-width of its 95 % interval."""
    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    if len(a_) < 2 or len(b_) < 2:
        return float(a_.mean() - b_.mean()), float("nan")
    se = np.sqrt(a_.var(ddof=1) / len(a_) + b_.var(ddof=1) / len(b_))
    return float(a_.mean() - b_.mean()), float(t95(min(len(a_), len(b_)) - 1) * se)


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of the paired differences ``a - b`` and the half-width of its 95 % t interval."""
    return paired_interval(np.asarray(a, float) - np.asarray(b, float))


def verdict(diff: float, half: float) -> str:
    """What the interval supports, in words."""
    if not np.isfinite(half):
        return "too few runs"
    if diff - half > 0:
        return "hashed better"
    if diff + half < 0:
        return "collisionless better"
    return "no difference resolved"


# --- MovieLens --------------------------------------------------------------------------------


def _ml_config(seed: int) -> FreshrecConfig:
    return load_config(ROOT / "configs" / "movielens.yaml",
                       ["train.batch_size=512", f"train.seed={seed}"]
                       + [f"features.tables.{t}.initializer.seed={seed}"
                          for t in ("user", "item", "attr")])


def run_movielens(opts: argparse.Namespace) -> dict[str, Any]:
    rows = pa.Table.from_batches(list(MovieLensReader(opts.data)))
    split = int(rows.num_rows * 0.8)
    train_rows, test_rows = rows.slice(0, split), rows.slice(split)
    base = _ml_config(0)
    probe = Trainer(base)
    enc_all = probe.schema.encode(rows.combine_chunks().to_batches()[0])
    by_space: dict[str, list[np.ndarray]] = {}
    for s in base.features.slots:
        by_space.setdefault(s.id_space, []).append(enc_all.sparse.slot(s.name)[0])
    distinct = {sp: np.unique(np.concatenate(v)) for sp, v in by_space.items()}
    space_of_slot = {s.name: s.id_space for s in base.features.slots}
    test_users = test_rows.column("user_id").to_numpy()
    warm = np.isin(test_users, np.unique(train_rows.column("user_id").to_numpy()))
    rates = [float(r) for r in opts.rates.split(",")]
    plan: list[tuple[str, float, int]] = [("collisionless", 0.0, 0)]
    plan += [(f"collision_{round(r * 100)}pct", r, salt) for r in rates
             for salt in range(opts.salts)]
    buckets = {(r, salt): {sp: buckets_for(ids, r, salt) for sp, ids in distinct.items()
                           if len(ids) > 1} for _, r, salt in plan if r > 0}
    runs: list[dict[str, Any]] = []
    t0 = time.time()
    for name, rate, salt in plan:
        for seed in range(opts.seeds):
            trainer = Trainer(_ml_config(seed))
            remap = remapper(buckets.get((rate, salt)), space_of_slot, salt)
            per_epoch = []
            for _ in range(opts.epochs):
                for rb in rebatch(train_rows.to_batches(), 512):
                    trainer.learn_batch(remap(trainer.schema.encode(rb)))
                ys, ps = [], []
                for rb in rebatch(test_rows.to_batches(), 4096):
                    enc = remap(trainer.schema.encode(rb))
                    ys.append(enc.labels[:, 0])
                    ps.append(trainer.predict_batch(enc))
                per_epoch.append(split_metrics(test_users, np.concatenate(ys),
                                               np.concatenate(ps), warm))
            runs.append({"variant": name, "rate": rate, "salt": salt, "seed": seed,
                         "epochs": per_epoch})
            log.warning("movielens %s salt=%d seed=%d auc=%s gauc=%s (%.0f s)", name, salt,
                        seed, [round(e["auc_all"], 4) for e in per_epoch],
                        [round(e["gauc_all"], 4) for e in per_epoch], time.time() - t0)
    return {"experiment": "movielens", "command": _command(), "epochs": opts.epochs,
            "seeds": opts.seeds, "salts": opts.salts, "train_rows": train_rows.num_rows,
            "test_rows": test_rows.num_rows, "test_rows_warm": int(warm.sum()),
            "test_users": int(len(np.unique(test_users))),
            "test_users_cold": int(len(np.unique(test_users[~warm]))),
            "distinct_ids": {sp: int(len(v)) for sp, v in distinct.items()},
            "buckets": {f"{r}/{s}": b for (r, s), b in buckets.items()},
            "runs": runs, "elapsed_s": round(time.time() - t0, 1), **_machine()}


# --- the simulator at scale -------------------------------------------------------------------


def _sim_config(seed: int, overrides: Iterable[str] = ()) -> FreshrecConfig:
    return load_config(ROOT / "configs" / "simulator.yaml",
                       [f"train.seed={seed}", "train.negative_sample_rate=1.0",
                        *[f"features.tables.{t}.initializer.seed={seed}"
                          for t in ("user", "item", "attr")], *overrides])


def run_scale(opts: argparse.Namespace) -> dict[str, Any]:
    fractions = [float(f) for f in opts.fractions.split(",")]
    runs: list[dict[str, Any]] = []
    sizes: list[dict[str, Any]] = []
    t0 = time.time()
    for seed in range(opts.seeds):
        sim = SimulatorConfig(seed=seed, n_users=opts.users, n_items=opts.items, candidates=20,
                              requests_per_s=opts.rate, bias=-2.5, drift_per_s=opts.drift,
                              new_items_per_s=2.0, item_churn_per_s=2.0, new_users_per_s=2.0,
                              duplicate_rate=0.0, malformed_rate=0.0, zipf_s=opts.zipf)
        table = simulated_examples(sim, opts.requests)
        base = _sim_config(seed)
        probe = Trainer(base)
        by_space: dict[str, list[np.ndarray]] = {}
        for rb in rebatch(table.to_batches(), 65536):
            enc = probe.schema.encode(rb)
            for s in base.features.slots:
                by_space.setdefault(s.id_space, []).append(np.unique(enc.sparse.slot(s.name)[0]))
        distinct = {sp: np.unique(np.concatenate(v)) for sp, v in by_space.items()}
        hashed_spaces = ("user_id", "item_id")
        users = table.column("user_id").to_numpy()
        y = table.column("click").to_numpy()
        first = np.unique(users, return_index=True)[1]
        seen_before = np.ones(len(users), bool)
        seen_before[first] = False  # a user's first row is cold, later rows warm
        times = table.column("event_time").to_numpy()
        oracle = table.column("true_p").to_numpy()
        sizes.append({"seed": seed, "examples": table.num_rows, "clicks": int(y.sum()),
                      "event_time_span_s": int(times[-1] - times[0]),
                      "distinct": {sp: int(len(distinct[sp])) for sp in hashed_spaces}})
        variants: list[tuple[str, dict[str, int] | None, list[str]]] = [
            ("collisionless", None, []),
            ("collisionless_admit2", None, [f"features.tables.{t}.admission.min_count=2"
                                            for t in ("user", "item")])]
        variants += [(f"hashed_1/{round(1 / f)}", {sp: max(1, int(len(distinct[sp]) * f))
                                                   for sp in hashed_spaces}, [])
                     for f in fractions]
        space_of_slot = {s.name: s.id_space for s in base.features.slots}
        for name, buckets, overrides in variants:
            trainer = Trainer(_sim_config(seed, overrides))
            remap = remapper(buckets, space_of_slot, salt=seed)
            ps = []
            for rb in rebatch(table.to_batches(), 512):
                ps.append(trainer.learn_batch(remap(trainer.schema.encode(rb))))
            p = np.concatenate(ps)
            half = len(y) // 2
            run = {"variant": name, "seed": seed, "salt": seed,
                   "rows": {t: len(tb) for t, tb in trainer.tables.items()},
                   "buckets": buckets,
                   "second_half": split_metrics(users[half:], y[half:], p[half:],
                                                seen_before[half:]),
                   "oracle_second_half": split_metrics(users[half:], y[half:], oracle[half:],
                                                       seen_before[half:]),
                   "curve_examples": _cumulative_auc(y, p, opts.points),
                   "curve_time": _window_auc(times, y, p, opts.window_s)}
            runs.append(run)
            log.warning("scale seed=%d %s rows=%s auc(2nd half)=%.4f gauc=%.4f (%.0f s)", seed,
                        name, run["rows"], run["second_half"]["auc_all"],
                        run["second_half"]["gauc_all"], time.time() - t0)
    return {"experiment": "scale", "command": _command(), "users": opts.users,
            "items": opts.items, "requests": opts.requests, "seeds": opts.seeds,
            "drift_per_s": opts.drift, "zipf_s": opts.zipf, "window_s": opts.window_s,
            "fractions": fractions, "sizes": sizes, "runs": runs,
            "elapsed_s": round(time.time() - t0, 1), **_machine()}


def _cumulative_auc(y: np.ndarray, p: np.ndarray, points: int) -> list[list[float]]:
    """``[examples, AUC of the predictions so far]`` at ``points`` evenly spaced ends."""
    ends = np.linspace(len(y) / points, len(y), points).astype(int)
    m, out, start = AUC(), [], 0
    for e in ends:
        m.update(y[start:e], p[start:e])
        start = e
        out.append([int(e), round(float(m.get()), 5)])
    return out


def _window_auc(t: np.ndarray, y: np.ndarray, p: np.ndarray, window_s: int
                ) -> list[list[float]]:
    """``[window start offset s, AUC in that window]`` per event-time window."""
    w = (t - t[0]) // window_s
    bounds = np.r_[0, np.flatnonzero(np.diff(w)) + 1, len(w)]
    return [[int(w[a] * window_s), round(auc(y[a:b], p[a:b]), 5)]
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# --- output -----------------------------------------------------------------------------------


def _command() -> str:
    return "python benchmarks/train/exp_collision.py " + " ".join(sys.argv[1:])


def _machine() -> dict[str, Any]:
    """The machine and versions (freshrec.benchinfo) with the load average of the run."""
    return {**machine_info(), "loadavg": os.getloadavg()}


def _fmt(values: Sequence[float]) -> str:
    a = np.asarray(values, float)
    return f"{a.mean():.4f} ± {a.std(ddof=1) if len(a) > 1 else 0:.4f}"


def _ml_section(res: dict[str, Any], out: Path, plots: bool) -> list[str]:
    runs = res["runs"]
    names = list(dict.fromkeys(r["variant"] for r in runs))
    last = res["epochs"] - 1
    metrics = ["auc_all", "gauc_all", "auc_warm", "gauc_warm", "auc_cold", "gauc_cold"]

    def vals(name: str, metric: str, epoch: int = last) -> list[float]:
        return [r["epochs"][epoch][metric] for r in runs if r["variant"] == name]

    lines = ["## MovieLens 100K (DeepFM, Fig. 7 protocol)", "", "```", res["command"], "```", "",
             f"Time-ordered split: {res['train_rows']:,} training rows, {res['test_rows']:,} "
             f"test rows ({res['test_rows_warm']:,} from warm users seen in training; "
             f"{res['test_users_cold']} of {res['test_users']} test users are cold). "
             f"{res['epochs']} epoch(s); collisionless over {res['seeds']} seeds, each hashed "
             f"variant over {res['seeds']} seeds x {res['salts']} hash salts "
             f"({res['seeds'] * res['salts']} runs). Mean ± std (ddof 1) after the last epoch. "
             f"Ran in {res['elapsed_s']:.0f} s (load {' '.join(f'{float(x):.2f}' for x in res['loadavg'])}).", "",
             "| variant | runs | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for n in names:
        lines.append(f"| {n} | {len(vals(n, 'auc_all'))} | "
                     + " | ".join(_fmt(vals(n, m)) for m in metrics) + " |")
    lines += ["", "Hashed minus collisionless, 95 % interval (Welch), after the last epoch:", "",
              "| variant | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for n in names[1:]:
        cells = []
        for m in metrics:
            d, h = interval(vals(n, m), vals("collisionless", m))
            cells.append(f"{d:+.4f} ± {h:.4f} ({verdict(d, h)})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    if plots:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4))
        xs = np.arange(len(metrics))
        for k, n in enumerate(names):
            per = np.array([[vals(n, m)[i] for m in metrics]
                            for i in range(len(vals(n, metrics[0])))])
            ax.errorbar(xs + 0.12 * (k - (len(names) - 1) / 2), per.mean(0),
                        yerr=per.std(0, ddof=1) if len(per) > 1 else None, label=n,
                        capsize=3, marker="o", ls="none")
        ax.set_xticks(xs, metrics)
        ax.set_ylabel(f"test metric after epoch {res['epochs']} (mean ± std)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "collision.png", dpi=100)
        plt.close(fig)
        lines += ["", "![test AUC and GAUC, all, warm and cold users](collision.png)"]
    return lines


def _scale_section(res: dict[str, Any], out: Path, plots: bool) -> list[str]:
    runs = res["runs"]
    names = list(dict.fromkeys(r["variant"] for r in runs))
    # cold rows (each user's first row) are as few as the distinct users: not reported
    metrics = ["auc_all", "gauc_all", "auc_warm"]

    def vals(name: str, metric: str) -> list[float]:
        return [r["second_half"][metric] for r in runs if r["variant"] == name]

    sz = res["sizes"]
    lines = ["## Simulator at scale (one online pass, Fig. 7 and Fig. 8)", "", "```",
             res["command"], "```", "",
             f"Population: {res['users']:,} users and {res['items']:,} items (Zipf "
             f"s={res['zipf_s']}), drift {res['drift_per_s']} per sqrt(s), items appearing and "
             f"retired. A run of {res['requests']:,} requests x 20 candidates meets "
             + ", ".join(f"{s['distinct']['user_id']:,} users / {s['distinct']['item_id']:,} "
                         f"items ({s['examples']:,} examples, {s['clicks']:,} clicks, "
                         f"{s['event_time_span_s']:,} s)" for s in sz)
             + " (per seed): the id space the tables see is those distinct ids, not the "
             "population. Hashed tables have the stated fraction of the distinct ids of "
             "user_id and item_id as rows; the other tables are the same in every variant. "
             f"Prequential metrics (each batch scored before it is learned) on the second "
             f"half of the stream, mean ± std over {res['seeds']} runs (seed and hash salt "
             f"both change per run). Ran in {res['elapsed_s']:.0f} s (load "
             f"{' '.join(f'{float(x):.2f}' for x in res['loadavg'])}).", "",
             "| variant | user/item rows | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for n in names:
        rows = [r["rows"] for r in runs if r["variant"] == n]
        size = f"{np.mean([r['user'] for r in rows]):,.0f} / {np.mean([r['item'] for r in rows]):,.0f}"
        if n.startswith("hashed"):
            b = [r["buckets"] for r in runs if r["variant"] == n]
            size = (f"{np.mean([x['user_id'] for x in b]):,.0f} / "
                    f"{np.mean([x['item_id'] for x in b]):,.0f} buckets")
        lines.append(f"| {n} | {size} | " + " | ".join(_fmt(vals(n, m)) for m in metrics)
                     + " |")
    oracle = [r["oracle_second_half"] for r in runs if r["variant"] == "collisionless"]
    lines.append("| true click probability (ceiling) | - | "
                 + " | ".join(_fmt([o[m] for o in oracle]) for m in metrics) + " |")
    lines += ["", "Each variant minus collisionless on the same stream (paired by seed, 95 % t "
              "interval):", "",
              "| variant | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for n in names[1:]:
        cells = []
        for m in metrics:
            d, h = paired(vals(n, m), vals("collisionless", m))
            cells.append(f"{d:+.4f} ± {h:.4f} ({verdict(d, h).replace('hashed', 'variant')})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    if plots:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for n in names:
            sel = [r for r in runs if r["variant"] == n]
            c = np.array([[v for _, v in r["curve_examples"]] for r in sel])
            x = [e for e, _ in sel[0]["curve_examples"]]
            axes[0].plot(x, c.mean(0), label=n)
            k = min(len(r["curve_time"]) for r in sel)
            w = np.array([[v for _, v in r["curve_time"][:k]] for r in sel])
            axes[1].plot([s / 60 for s, _ in sel[0]["curve_time"][:k]], np.nanmean(w, 0),
                         label=n)
        axes[0].set_xlabel("examples trained")
        axes[0].set_ylabel("cumulative prequential AUC")
        axes[1].set_xlabel(f"event time (min; windows of {res['window_s']} s)")
        axes[1].set_ylabel("AUC in window")
        for ax in axes:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "collision-scale.png", dpi=100)
        plt.close(fig)
        lines += ["", "![AUC over training and over event time](collision-scale.png)"]
    return lines


def write_page(out: Path) -> Path:
    """Rewrite ``collision.md`` in ``out`` from the result JSON files there."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        plots = True
    except ImportError:
        log.warning("matplotlib is not installed (pip install -e '.[experiments]'): "
                    "the page is written without plots")
        plots = False
    lines = ["# Collisionless vs hashed embeddings", "",
             "Written by `benchmarks/train/exp_collision.py` from the JSON results beside "
             "this page (`collision-movielens.json`, `collision-scale.json`).", ""]
    for stem, section in (("collision-movielens", _ml_section),
                          ("collision-scale", _scale_section)):
        path = out / f"{stem}.json"
        if path.exists():
            lines += section(json.loads(path.read_text()), out, plots) + [""]
    page = out / "collision.md"
    page.write_text("\n".join(lines) + "\n")
    return page


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT),
                    help="results directory (default runs/experiments/collision; docs to "
                         "publish)")
    sub = ap.add_subparsers(dest="experiment", required=True)
    ml = sub.add_parser("movielens", help="MovieLens 100K, seeds x hash salts")
    ml.add_argument("--data", required=True, help="the ml-100k directory")
    ml.add_argument("--seeds", type=int, default=3)
    ml.add_argument("--salts", type=int, default=3)
    ml.add_argument("--epochs", type=int, default=2)
    ml.add_argument("--rates", default="0.1,0.3,0.5",
                    help="fractions of distinct ids that share a bucket")
    sc = sub.add_parser("scale", help="the simulator with a large id space, online")
    sc.add_argument("--users", type=int, default=1_000_000)
    sc.add_argument("--items", type=int, default=1_000_000)
    sc.add_argument("--requests", type=int, default=30_000)
    sc.add_argument("--rate", type=float, default=5.0, help="requests per event-time second")
    sc.add_argument("--drift", type=float, default=0.01, help="taste drift per sqrt(s)")
    sc.add_argument("--zipf", type=float, default=1.05)
    sc.add_argument("--seeds", type=int, default=3)
    sc.add_argument("--fractions", default="0.5,0.25,0.0625")
    sc.add_argument("--points", type=int, default=20, help="points of the training curve")
    sc.add_argument("--window-s", type=int, default=600)
    sub.add_parser("page", help="only rewrite the page from the JSON in --out")
    opts = ap.parse_args()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    if opts.experiment != "page":
        result = run_movielens(opts) if opts.experiment == "movielens" else run_scale(opts)
        path = out / f"collision-{opts.experiment}.json"
        path.write_text(json.dumps(result, indent=1))  # saved before any plotting
        print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "sizes")}))
    print(f"wrote {write_page(out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
