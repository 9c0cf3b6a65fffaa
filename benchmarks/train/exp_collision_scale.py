"""Collisionless vs hashed embeddings at 10^6-10^7 ids, under drift (Monolith Fig. 7, 8).

    pip install -e '.[experiments]'      # once: matplotlib, for the plots only
    python benchmarks/train/exp_collision_scale.py --seeds 3 --examples 20000000
    python benchmarks/train/exp_collision_scale.py --quick          # a minute, small sizes

The event simulator (``freshrec.data.simulate``) makes a few thousand examples per second,
so within an hour its runs meet about 10^4 ids. This experiment draws its stream directly,
vectorised, so that one run meets millions of distinct ids:

- **Users**: ``--users`` ids with power-law (Zipf, ``--zipf-users``) activity; the activity
  ranking is redrawn ``--user-phases`` times over the run and blended linearly between
  phases (activity drift). Each user's taste is a vector that rotates between two hidden
  directions at ``--drift`` radians per day times a per-user speed (taste drift).
- **Items**: a window of ``--items-alive`` live ids with Zipf (``--zipf-items``) popularity.
  At each of ``--item-phases`` phases the window slides by ``--item-birth`` new ids (new
  items appear, the oldest are retired) and the popularity ranking is redrawn, blended
  linearly between phases (popularity drift).
- **Labels**: a click with probability ``sigmoid(mu + b_user + b_item + gamma <taste(t),
  item vector>)``, all hidden effects drawn per id; the true probability gives the ceiling.

The model is a factorisation machine over the two ids (logit = bias + user bias + item bias +
<user vector, item vector>), its rows in freshrec's :class:`~freshrec.table.EmbeddingTable`
(element-wise Adagrad), trained online in one pass: each batch is scored before it is learned
(prequential AUC). Variants, each on the same stream per seed:

- ``collisionless``: one row per id (the table grows to every distinct id met);
- ``hashed_1/k``: ids hashed (salted by the seed) into ``1/k`` as many buckets as distinct
  ids the stream meets (per table);
- ``capped_1/k``: collisionless with the same row budget as ``hashed_1/k``: when the table
  is full the least recently seen ids expire (freshrec's ``ttl`` expiry with the cutoff
  chosen so that 90 % of the budget stays), so it is never larger than the hashed table.

Differences to collisionless are paired by seed (the same stream) with a 95 % t interval;
the page states a difference only where the interval excludes 0. The result JSON is written
into ``--out`` before anything is plotted; then ``collision.md`` there is rewritten with
``exp_collision.write_page``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.benchinfo import paired_interval
from freshrec.table import EmbeddingTable, TableConfig
from freshrec.table.config import InitializerConfig, OptimizerConfig
from freshrec.train.metrics import AUC

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp_collision import DEFAULT_OUT, _fmt, _machine, auc, salted_bucket, verdict, write_page  # noqa: E402

log = logging.getLogger("exp_collision_scale")
DAY_S = 86_400


# --- the stream -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """Sizes and drift of the generated stream (see the module docstring)."""

    users: int = 4_000_000
    items_alive: int = 1_000_000
    item_phases: int = 8
    item_birth: int = 250_000
    user_phases: int = 2
    zipf_users: float = 0.9
    zipf_items: float = 1.05
    examples: int = 20_000_000
    days: float = 7.0
    drift: float = 0.5
    taste_dim: int = 4
    mu: float = -2.2
    user_bias_std: float = 0.5
    item_bias_std: float = 0.8
    gamma: float = 1.2
    seed: int = 0

    @property
    def items(self) -> int:
        """Item ids over the whole run (the live window plus every birth)."""
        return self.items_alive + self.item_phases * self.item_birth


def power_law_ranks(rng: np.random.Generator, n: int, s: float, size: int) -> np.ndarray:
    """``size`` ranks in ``[0, n)`` with P(rank r) ~ (r + 1)^-s (continuous inverse CDF).

    >>> r = power_law_ranks(np.random.default_rng(0), 1000, 1.05, 100_000)
    >>> int(r.min()) >= 0 and int(r.max()) < 1000, bool((r == 0).mean() > (r == 9).mean())
    (True, True)
    """
    u = rng.random(size)
    if abs(s - 1.0) < 1e-9:
        x = np.exp(u * np.log(n + 1.0))
    else:
        a = 1.0 - s
        x = (1.0 + u * ((n + 1.0) ** a - 1.0)) ** (1.0 / a)
    return np.minimum(x.astype(np.int64) - 1, n - 1).clip(0)


class DriftingZipf:
    """Ids drawn by power-law popularity whose ranking changes over ``phases`` phases.

    Phase ``k`` ranks the window ``[k * birth, k * birth + alive)`` by a fresh random
    permutation; at run fraction ``f`` an id comes from phase ``floor(f * phases)`` or the
    next one, the next with probability ``frac(f * phases)`` (a linear blend).
    """

    def __init__(self, rng: np.random.Generator, alive: int, phases: int, birth: int,
                 s: float) -> None:
        self.alive, self.phases, self.birth, self.s = alive, phases, birth, s
        self.perms = [rng.permutation(alive).astype(np.int32) for _ in range(phases + 1)]

    def draw(self, rng: np.random.Generator, frac: np.ndarray) -> np.ndarray:
        """One id per run fraction in ``frac`` (values in [0, 1))."""
        x = frac * self.phases
        k = np.floor(x).astype(np.int64)
        k += rng.random(len(frac)) < (x - k)
        r = power_law_ranks(rng, self.alive, self.s, len(frac))
        ids = np.empty(len(frac), np.int64)
        for phase in np.unique(k):
            m = k == phase
            ids[m] = self.perms[phase][r[m]] + phase * self.birth
        return ids


class World:
    """Hidden per-id effects and the stream drawn from them."""

    def __init__(self, cfg: WorldConfig) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        k = cfg.taste_dim
        self.user_bias = (rng.standard_normal(cfg.users) * cfg.user_bias_std).astype(np.float32)
        self.taste_a = (rng.standard_normal((cfg.users, k)) / np.sqrt(k)).astype(np.float32)
        self.taste_b = (rng.standard_normal((cfg.users, k)) / np.sqrt(k)).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, cfg.users).astype(np.float32)
        self.speed = np.abs(1 + 0.5 * rng.standard_normal(cfg.users)).astype(np.float32)
        self.item_bias = (rng.standard_normal(cfg.items) * cfg.item_bias_std).astype(np.float32)
        self.item_vec = rng.standard_normal((cfg.items, k)).astype(np.float32)
        self.users = DriftingZipf(rng, cfg.users, cfg.user_phases, 0, cfg.zipf_users)
        self.items = DriftingZipf(rng, cfg.items_alive, cfg.item_phases, cfg.item_birth,
                                  cfg.zipf_items)
        self._rng = rng

    def true_p(self, t: np.ndarray, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Click probability of user ``u`` on item ``i`` at event time ``t`` (seconds)."""
        c = self.cfg
        theta = self.phase[u] + self.speed[u] * (c.drift * t / DAY_S)
        taste = (np.cos(theta)[:, None] * self.taste_a[u]
                 + np.sin(theta)[:, None] * self.taste_b[u])
        logit = (c.mu + self.user_bias[u] + self.item_bias[i]
                 + c.gamma * np.einsum("nk,nk->n", taste, self.item_vec[i]))
        return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)

    def stream(self, chunk: int = 1 << 20) -> dict[str, np.ndarray]:
        """The whole stream in event-time order: ``t`` (s), ``user``, ``item``, ``y``, ``p``."""
        c, rng = self.cfg, self._rng
        span = c.days * DAY_S
        t = np.sort(rng.random(c.examples)) * span
        out = {"t": t.astype(np.int64), "user": np.empty(c.examples, np.int32),
               "item": np.empty(c.examples, np.int32), "y": np.empty(c.examples, np.int8),
               "p": np.empty(c.examples, np.float32)}
        for a in range(0, c.examples, chunk):
            b = min(a + chunk, c.examples)
            frac = t[a:b] / span
            u, i = self.users.draw(rng, frac), self.items.draw(rng, frac)
            p = self.true_p(t[a:b], u, i)
            out["user"][a:b], out["item"][a:b], out["p"][a:b] = u, i, p
            out["y"][a:b] = rng.random(b - a) < p
        return out


def prior_count(ids: np.ndarray) -> np.ndarray:
    """How often each row's id occurred in earlier rows.

    >>> prior_count(np.array([5, 3, 5, 5, 3])).tolist()
    [0, 0, 1, 2, 1]
    """
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    start = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    group = np.zeros(len(s), np.int64)
    group[start[1:]] = 1
    group = np.cumsum(group)
    out = np.empty(len(ids), np.int64)
    out[order] = np.arange(len(s)) - start[group]
    return out


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The factorisation machine and its training."""

    dim: int = 8
    lr: float = 0.2
    init_std: float = 0.05
    batch: int = 8192
    bias_lr: float = 0.2


@dataclass(frozen=True)
class Variant:
    """How ids become fids: ``buckets`` per table (hashed) or ``cap`` rows (expiring)."""

    name: str
    buckets: dict[str, int] | None = None
    cap: dict[str, int] | None = None


class CappedIds:
    """The least-recently-seen cutoff that keeps a table within its row budget.

    The table admits every id and stamps the batch's time as ``last_seen``; this keeps the
    same stamp per id, so the live ids are those stamped at or after the last cutoff.
    """

    def __init__(self, n_ids: int, cap: int, batch: int) -> None:
        self.last = np.full(n_ids, -1, np.int64)
        self.cap, self.batch, self.cutoff = cap, batch, 0

    def after_batch(self, table: EmbeddingTable, ids: np.ndarray, now: int) -> None:
        """Stamp ``ids`` and expire the oldest rows when one more batch could pass the cap.

        A table keeps every id of the current batch, so a cap below the distinct ids of one
        batch is passed (the peak rows are reported)."""
        self.last[ids] = now
        if len(table) <= self.cap - self.batch:
            return
        stamps = self.last[self.last >= self.cutoff]
        keep = max(self.cap // 2, self.cap - 2 * self.batch)
        self.cutoff = int(np.partition(stamps, len(stamps) - keep)[len(stamps) - keep])
        table.expire(self.cutoff + 1)  # ttl_s 1: removes rows last seen before the cutoff


def train_variant(data: dict[str, np.ndarray], variant: Variant, m: ModelConfig, salt: int,
                  n_ids: dict[str, int]) -> dict[str, Any]:
    """One online pass over ``data``; returns the prequential predictions and table sizes."""
    d = m.dim
    tables: dict[str, EmbeddingTable] = {}
    capped: dict[str, CappedIds] = {}
    for k, name in enumerate(("user", "item")):
        cap = variant.cap[name] if variant.cap else None
        tables[name] = EmbeddingTable(TableConfig(
            name=name, dim=d + 1, ttl_s=1 if cap else None,
            capacity_hint=min(cap or n_ids[name], 1 << 24),
            initializer=InitializerConfig(kind="normal", std=m.init_std, seed=salt * 2 + k),
            optimizer=OptimizerConfig(kind="adagrad", lr=m.lr, initial_accumulator=0.1)))
        if cap:
            capped[name] = CappedIds(n_ids[name], cap, m.batch)
    n = len(data["y"])
    pred = np.empty(n, np.float32)
    rows_seen = {name: 0 for name in tables}
    bias = 0.0
    for a in range(0, n, m.batch):
        b = min(a + m.batch, n)
        now = int(data["t"][b - 1])
        offsets = np.arange(b - a + 1, dtype=np.int64)
        scale = np.ones(b - a, np.float32)
        emb, rows = {}, {}
        for name, table in tables.items():
            ids = data[name][a:b]
            fid = (salted_bucket(ids, variant.buckets[name], salt) if variant.buckets
                   else ids.astype(np.uint64)) + np.uint64(1)
            rows[name] = table.resolve(fid, now=now, train=True)
            emb[name] = table.pool(rows[name], offsets, scale)
        eu, ei = emb["user"], emb["item"]
        z = bias + eu[:, d] + ei[:, d] + np.einsum("nk,nk->n", eu[:, :d], ei[:, :d])
        p = 1.0 / (1.0 + np.exp(-z))
        pred[a:b] = p
        g = (p - data["y"][a:b]).astype(np.float32)
        for name, other in (("user", ei), ("item", eu)):
            grad = np.empty((b - a, d + 1), np.float32)
            grad[:, :d] = g[:, None] * other[:, :d]
            grad[:, d] = g
            tables[name].apply_bag_gradients(rows[name], offsets, scale, grad)
        bias -= m.bias_lr * float(g.mean())
        for name, table in tables.items():
            if name in capped:
                capped[name].after_batch(table, data[name][a:b], now)
            rows_seen[name] = max(rows_seen[name], len(table))
    return {"pred": pred, "peak_rows": rows_seen,
            "final_rows": {name: len(t) for name, t in tables.items()}}


# --- metrics ----------------------------------------------------------------------------------


def cumulative_auc(y: np.ndarray, p: np.ndarray, points: int) -> list[list[float]]:
    """``[examples, AUC of the predictions so far]`` at ``points`` evenly spaced ends
    (freshrec's binned streaming AUC)."""
    ends = np.linspace(len(y) / points, len(y), points).astype(int)
    m, out, start = AUC(), [], 0
    for e in ends:
        m.update(y[start:e], p[start:e])
        start = e
        out.append([int(e), round(float(m.get()), 5)])
    return out


def window_auc(t: np.ndarray, y: np.ndarray, p: np.ndarray, window_s: int
               ) -> list[list[float]]:
    """``[window start (s), AUC in that window]`` per event-time window."""
    w = t // window_s
    bounds = np.r_[0, np.flatnonzero(np.diff(w)) + 1, len(w)]
    return [[int(w[a] * window_s), round(auc(y[a:b], p[a:b]), 5)]
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def summary(y: np.ndarray, p: np.ndarray, item_prior: np.ndarray, user_prior: np.ndarray,
            late: np.ndarray, rare: int) -> dict[str, float]:
    """Prequential AUC on the late rows: all, rows whose item (user) had fewer than ``rare``
    earlier rows, and the others."""
    out = {"auc_late": auc(y[late], p[late])}
    for name, prior in (("item", item_prior), ("user", user_prior)):
        few = late & (prior < rare)
        out[f"auc_late_rare_{name}"] = auc(y[few], p[few])
        out[f"auc_late_frequent_{name}"] = auc(y[late & ~few], p[late & ~few])
        out[f"share_late_rare_{name}"] = float(few.sum() / late.sum())
    return out


# --- the run ----------------------------------------------------------------------------------


def variants_for(distinct: dict[str, int], fractions: list[float]) -> list[Variant]:
    """Collisionless, then per fraction the hashed table and the capped collisionless one."""
    out = [Variant("collisionless")]
    for f in fractions:
        size = {name: max(1, int(n * f)) for name, n in distinct.items()}
        out += [Variant(f"hashed_1/{round(1 / f)}", buckets=size),
                Variant(f"capped_1/{round(1 / f)}", cap=size)]
    return out


def run(opts: argparse.Namespace, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every seed: draw the stream, train every variant, keep the metrics (no predictions);
    ``save`` gets the result so far after every seed."""
    fractions = [float(f) for f in opts.fractions.split(",")]
    model = ModelConfig(dim=opts.dim, lr=opts.lr, batch=opts.batch)
    world_kw = {k: getattr(opts, k) for k in ("users", "items_alive", "item_phases",
                                             "item_birth", "user_phases", "zipf_users",
                                             "zipf_items", "examples", "days", "drift")}
    sizes: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    t0 = time.time()

    def result() -> dict[str, Any]:
        return {"experiment": "scale", "command": _command(), "seeds": len(sizes),
                "seeds_asked": opts.seeds, "world": world_kw, "model": asdict(model),
                "fractions": fractions, "rare": opts.rare, "window_s": opts.window_s,
                "sizes": sizes, "runs": runs, "elapsed_s": round(time.time() - t0, 1),
                **_machine()}

    for seed in range(opts.seeds):
        cfg = WorldConfig(seed=seed, **world_kw)
        data = World(cfg).stream()
        y = data["y"]
        distinct = {name: int(len(np.unique(data[name]))) for name in ("user", "item")}
        item_prior, user_prior = prior_count(data["item"]), prior_count(data["user"])
        late = np.arange(len(y)) >= len(y) // 2
        sizes.append({"seed": seed, "examples": len(y), "clicks": int(y.sum()),
                      "distinct": distinct, "ids_in_space": {"user": cfg.users,
                                                             "item": cfg.items},
                      "oracle": summary(y, data["p"], item_prior, user_prior, late, opts.rare),
                      "oracle_curve_time": window_auc(data["t"], y, data["p"], opts.window_s),
                      "generate_s": round(time.time() - t0, 1)})
        log.warning("seed %d: %s examples, %s distinct ids, oracle auc %.4f (%.0f s)", seed,
                    len(y), distinct, sizes[-1]["oracle"]["auc_late"], time.time() - t0)
        for variant in variants_for(distinct, fractions):
            t1 = time.time()
            res = train_variant(data, variant, model, salt=seed,
                                n_ids={"user": cfg.users, "item": cfg.items})
            p = res.pop("pred")
            runs.append({"variant": variant.name, "seed": seed, "salt": seed,
                         "buckets": variant.buckets, "cap": variant.cap, **res,
                         "train_s": round(time.time() - t1, 1),
                         "summary": summary(y, p, item_prior, user_prior, late, opts.rare),
                         "curve_examples": cumulative_auc(y, p, opts.points),
                         "curve_time": window_auc(data["t"], y, p, opts.window_s)})
            log.warning("seed %d %s rows=%s auc(late)=%.4f (%.0f s)", seed, variant.name,
                        res["peak_rows"], runs[-1]["summary"]["auc_late"], time.time() - t0)
        del data
        save(result())
    return result()


def _command() -> str:
    return "python benchmarks/train/exp_collision_scale.py " + " ".join(sys.argv[1:])


# --- the page ---------------------------------------------------------------------------------


def scale_section(res: dict[str, Any], out: Path, plots: bool, *,
                  title: str = "Drifting Zipf stream at 10^6-10^7 ids (one online pass, "
                               "Fig. 7 and Fig. 8)",
                  png: str = "collision-scale.png") -> list[str]:
    """The page section of a scale result (and the plot ``png`` when ``plots``)."""
    runs, sz, w = res["runs"], res["sizes"], res["world"]
    names = list(dict.fromkeys(r["variant"] for r in runs))
    metrics = ["auc_late", "auc_late_rare_item", "auc_late_frequent_item",
               "auc_late_rare_user"]

    def vals(name: str, metric: str) -> np.ndarray:
        return np.array([r["summary"][metric] for r in runs if r["variant"] == name])

    seeds = sorted({r["seed"] for r in runs if r["variant"] == names[-1]})
    du = [s["distinct"]["user"] for s in sz]
    di = [s["distinct"]["item"] for s in sz]
    share = np.mean([s["oracle"]["share_late_rare_item"] for s in sz])
    ushare = np.mean([s["oracle"]["share_late_rare_user"] for s in sz])
    lines = [
        f"## {title}", "",
        "```", res["command"], "```", "",
        f"Stream (`benchmarks/train/exp_collision_scale.py`): {w['examples']:,} examples over "
        f"{w['days']:g} days of event time per seed; id spaces of {w['users']:,} users (Zipf "
        f"s={w['zipf_users']}, activity ranking redrawn {w['user_phases']} times, tastes "
        f"rotating at {w['drift']} rad/day) and "
        f"{w['items_alive'] + w['item_phases'] * w['item_birth']:,} items ({w['items_alive']:,} "
        f"live, Zipf s={w['zipf_items']}, {w['item_birth']:,} new items and a new popularity "
        f"ranking at each of {w['item_phases']} phases). Each run meets "
        f"{np.mean(du):,.0f} distinct users and {np.mean(di):,.0f} distinct items "
        f"({np.mean(du) + np.mean(di):,.0f} ids, mean over {len(sz)} seeds). "
        f"Model: factorisation machine over the two ids, dim {res['model']['dim']}, rows in "
        f"freshrec's EmbeddingTable (Adagrad, lr {res['model']['lr']}), batch "
        f"{res['model']['batch']}, one pass, each batch scored before it is learned. "
        f"`hashed_1/k` hashes each id field into 1/k as many buckets as its distinct ids "
        f"(salt = seed); `capped_1/k` is collisionless with the same row budget, the least "
        f"recently seen ids expiring when it is full. Metrics: prequential AUC on the second "
        f"half of the stream (`auc_late`), split by whether the row's item (user) had fewer "
        f"than {res['rare']} earlier rows ({share:.0%} of late rows are such rare-item rows, "
        f"{ushare:.0%} rare-user rows). Mean ± std over {len(seeds)} seeds"
        + (f" ({res['seeds']} of the {res['seeds_asked']} asked finished)"
           if res["seeds"] < res["seeds_asked"] else "") + ". Ran in "
        f"{res['elapsed_s']:.0f} s (load "
        f"{' '.join(f'{float(x):.2f}' for x in res['loadavg'])}).", "",
        "| variant | user/item rows (peak) | " + " | ".join(metrics) + " |",
        "|---|---|" + "---|" * len(metrics)]
    for n in names:
        pk = [r["peak_rows"] for r in runs if r["variant"] == n]
        rows = (f"{np.mean([x['user'] for x in pk]):,.0f} / "
                f"{np.mean([x['item'] for x in pk]):,.0f}")
        lines.append(f"| {n} | {rows} | " + " | ".join(_fmt(vals(n, m)) for m in metrics)
                     + " |")
    lines.append("| true click probability (ceiling) | - | "
                 + " | ".join(_fmt([s["oracle"][m] for s in sz]) for m in metrics) + " |")
    lines += ["", "Each variant minus collisionless on the same stream (paired by seed, 95 % t "
              "interval):", "", "| variant | " + " | ".join(metrics) + " |",
              "|---|" + "---|" * len(metrics)]
    for n in names[1:]:
        cells = []
        for m in metrics:
            diff, half = paired_interval(vals(n, m) - vals("collisionless", m)[:len(vals(n, m))])
            cells.append(f"{diff:+.4f} ± {half:.4f} ({verdict(diff, half, 'variant')})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    pairs = [(n, "hashed" + n[len("capped"):]) for n in names
             if n.startswith("capped") and "hashed" + n[len("capped"):] in names]
    if pairs:
        lines += ["", "Collisionless capped minus hashed at the same row budget (paired by seed, "
                  "95 % t interval):", "", "| budget | " + " | ".join(metrics) + " |",
                  "|---|" + "---|" * len(metrics)]
        for capped, hashed in pairs:
            cells = []
            for m in metrics:
                diff, half = paired_interval(vals(capped, m) - vals(hashed, m))
                word = verdict(diff, half, "capped", "hashed")
                cells.append(f"{diff:+.4f} ± {half:.4f} ({word})")
            lines.append(f"| {capped[len('capped_'):]} | " + " | ".join(cells) + " |")
    if plots:
        _plot(res, names, out / png)
        lines += ["", "![AUC over training and over event time, and the difference to "
                  f"collisionless per window]({png})"]
    return lines


def _plot(res: dict[str, Any], names: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    runs = res["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    base = {r["seed"]: np.array([v for _, v in r["curve_time"]])
            for r in runs if r["variant"] == "collisionless"}
    palette = ["tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple"]
    fraction_color = {f: palette[k % len(palette)] for k, f in enumerate(
        dict.fromkeys(n.split("_", 1)[1] for n in names if n != "collisionless"))}
    for n in names:
        sel = [r for r in runs if r["variant"] == n]
        style = "--" if n.startswith("capped") else "-"
        color = "k" if n == "collisionless" else fraction_color[n.split("_", 1)[1]]
        c = np.array([[v for _, v in r["curve_examples"]] for r in sel])
        x = np.array([e for e, _ in sel[0]["curve_examples"]])
        line, = axes[0].plot(x, c.mean(0), style, color=color, label=n)
        k = min(len(r["curve_time"]) for r in sel)
        hours = np.array([s for s, _ in sel[0]["curve_time"][:k]]) / 3600
        wv = np.array([[v for _, v in r["curve_time"][:k]] for r in sel])
        axes[1].plot(hours, wv.mean(0), style, color=line.get_color(), label=n)
        if n != "collisionless":
            diff = np.array([np.array([v for _, v in r["curve_time"][:k]]) - base[r["seed"]][:k]
                             for r in sel])
            half = np.array([paired_interval(diff[:, j])[1] for j in range(k)])
            axes[2].plot(hours, diff.mean(0), style, color=line.get_color(), label=n)
            if len(sel) > 1:
                axes[2].fill_between(hours, diff.mean(0) - half, diff.mean(0) + half,
                                     color=line.get_color(), alpha=0.15)
    axes[2].axhline(0, color="k", lw=0.5)
    axes[0].set_xlabel("examples trained")
    axes[0].set_ylabel("cumulative prequential AUC")
    axes[1].set_xlabel(f"event time (hours; windows of {res['window_s'] / 3600:g} h)")
    axes[1].set_ylabel("prequential AUC in window")
    axes[2].set_xlabel("event time (hours)")
    axes[2].set_ylabel("AUC minus collisionless (95 % band over seeds)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    d, m = WorldConfig(), ModelConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT),
                    help="results directory (default runs/experiments/collision; docs to "
                         "publish)")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes (200,000 examples, 10^5 ids, batch 1024, 2 seeds) to try "
                         "it out")
    ap.add_argument("--seeds", type=int, default=3)
    for name in ("users", "items_alive", "item_phases", "item_birth", "user_phases",
                 "examples"):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("zipf_users", "zipf_items", "days", "drift"):
        ap.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    ap.add_argument("--dim", type=int, default=m.dim)
    ap.add_argument("--lr", type=float, default=m.lr)
    ap.add_argument("--batch", type=int, default=m.batch)
    ap.add_argument("--fractions", default="0.5,0.25,0.0625")
    ap.add_argument("--rare", type=int, default=20,
                    help="an id with fewer earlier rows than this is rare")
    ap.add_argument("--points", type=int, default=40, help="points of the training curve")
    ap.add_argument("--window-s", type=int, default=6 * 3600)
    opts = ap.parse_args(argv)
    if opts.quick:
        opts.users, opts.items_alive, opts.item_birth = 100_000, 30_000, 7_500
        opts.examples, opts.seeds, opts.batch = 200_000, 2, 1024
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "collision-scale.json"
    # saved after every seed, before any plotting
    result = run(opts, lambda res: path.write_text(json.dumps(res, indent=1)))
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "sizes")}))
    print(f"wrote {write_page(out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
