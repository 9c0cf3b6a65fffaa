"""Collisionless vs hashed (colliding) embeddings on MovieLens (Monolith, Fig. 7).

    pip install -e '.[experiments]'      # once: matplotlib, for the plots only
    python benchmarks/train/exp_collision.py movielens --data ../shared/data/ml-100k \
        --seeds 3 --salts 3 --epochs 2
    python benchmarks/train/exp_collision.py page       # the page from the JSON in --out

The experiment at 10^6-10^7 ids under drift (Fig. 7 and Fig. 8) is
``exp_collision_scale.py`` beside this script; both write their result JSON into ``--out``
(default ``runs/experiments/collision``; ``--out docs`` publishes) *before* anything is
plotted, then :func:`write_page` rewrites ``collision.md`` there from every result JSON
present (the plots need matplotlib, from the ``experiments`` extra; without it the page is
written without them).

**movielens**: DeepFM with configs/movielens.yaml, time-ordered split (first 80 % of ratings
train, last 20 % test), ``--epochs`` passes. A hashed variant maps every fid of an id space
into a fixed number of buckets before the lookup, chosen so that the given fraction of the
distinct ids share a bucket; the bucket hash takes a salt, and every (seed, salt) pair is a
run, so the spread covers which ids happen to collide as well as the initialisation. Test
AUC pooled and per user (GAUC: per-user AUC weighted by the user's test rows, over users with
both labels), for all test rows and split into warm users (seen in training) and cold users.

With several epochs, the page adds the difference after every epoch. A scale result copied
beside the page as ``collision-scale-nodrift.json`` (``--drift 0``, the control) gets a
section of its own.

Differences are reported with 95 % intervals (Welch, t with the smaller sample's degrees of
freedom); the page states a difference only where the interval excludes 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from freshrec.benchinfo import machine_info, t95
from freshrec.config import FreshrecConfig, load_config
from freshrec.data.movielens import MovieLensReader
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


def verdict(diff: float, half: float, first: str = "hashed",
            second: str = "collisionless") -> str:
    """What the interval of ``first`` minus ``second`` supports, in words."""
    if not np.isfinite(half):
        return "too few runs"
    if diff - half > 0:
        return f"{first} better"
    if diff + half < 0:
        return f"{second} better"
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

    lines = ["## MovieLens 100K (DeepFM, Fig. 7 protocol)", "", "```", res["command"], "```",
             "",
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
    if res["epochs"] > 1:
        lines += ["", "Hashed minus collisionless after each epoch (95 % interval, Welch):", "",
                  "| variant | epoch | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for n in names[1:]:
            for e in range(res["epochs"]):
                cells = []
                for m in metrics:
                    d, h = interval(vals(n, m, e), vals("collisionless", m, e))
                    cells.append(f"{d:+.4f} ± {h:.4f} ({verdict(d, h)})")
                lines.append(f"| {n} | {e + 1} | " + " | ".join(cells) + " |")
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
             "Tables and plots written by `benchmarks/train/exp_collision.py` (MovieLens) "
             "and `benchmarks/train/exp_collision_scale.py` (10^6-10^7 ids) from the JSON "
             "results beside this page (`collision-movielens.json`, "
             "`collision-scale.json`, "
             "`collision-scale-nodrift.json`); "
             "the Reading sections are written by hand, and a regenerated page needs them "
             "again.", ""]
    from exp_collision_scale import scale_section  # imports this module

    nodrift = partial(scale_section, title="The same stream without taste drift (control)",
                      png="collision-scale-nodrift.png")
    for stem, section in (("collision-movielens", _ml_section),
                          ("collision-scale", scale_section),
                          ("collision-scale-nodrift", nodrift)):
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
    sub.add_parser("page", help="only rewrite the page from the JSON in --out")
    opts = ap.parse_args()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    if opts.experiment != "page":
        result = run_movielens(opts)
        path = out / f"collision-{opts.experiment}.json"
        path.write_text(json.dumps(result, indent=1))  # saved before any plotting
        print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "sizes")}))
    print(f"wrote {write_page(out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
