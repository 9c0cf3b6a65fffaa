"""Publish gate and automatic rollback against a bad stretch of training data (issue 18).

    freshrec bench gate [--corrupt noise|flip] [--minutes 30] [--bad 10:16] [--plot PNG]

The click-stream simulator's joined examples are replayed minute by minute of event time
through the real loop pieces: an :class:`~freshrec.train.online.OnlineTrainer` reads them from
a file log and publishes to a registry after every minute; a serving model follows the
registry (:class:`~freshrec.sync.Subscriber` + :class:`~freshrec.serve.predictor.Predictor`,
as ``freshrec serve`` loads) and scores each minute's examples *before* the trainer sees them;
the serving AUC is measured against the simulator's real clicks. During the bad stretch the
training stream's labels are corrupted (a joiner bug: ``--corrupt noise`` replaces them by
coin flips at the click rate, ``flip`` inverts them), while the world's clicks stay as they
were. The trainer publishes four times per minute. Two arms on the same data: **unprotected** (every version is published and served) and
**protected** (``ops.gate`` refuses candidates whose AUC on held-back recent examples fell,
and a :class:`~freshrec.ops.rollback.RollbackGuard` fed the serving scores and clicks rolls
the registry back to the last good version after two bad minutes).

Reported per arm: serving AUC per minute, the lowest, the minutes below the pre-stretch
level (mean of the 4 minutes before) - 0.05 (``bad_minutes``), the AUC-minutes lost (sum of
the shortfall below that level from the start of the stretch on), the time to recover
(minutes from the start of the stretch until the serving AUC stays within 0.03 of the level),
publishes refused and rollbacks. One JSON object on the last line; ``--plot`` draws both curves.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import yaml

from freshrec.benchinfo import machine_info
from freshrec.config import config_from_dict
from freshrec.data.simulate import SimulatorConfig, simulated_examples
from freshrec.features.schema import FeatureSchema
from freshrec.ops.config import RollbackConfig
from freshrec.ops.rollback import RollbackGuard
from freshrec.serve.predictor import Predictor
from freshrec.stream.events import encode_examples
from freshrec.stream.open import open_log
from freshrec.sync import Registry, Subscriber
from freshrec.train.metrics import AUC
from freshrec.train.online import OnlineTrainer

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("bench_gate")


def _doc(protect: bool) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    for k in ("simulate", "join", "serve", "demo"):
        doc.pop(k, None)
    doc["train"].update({"importance_rate": 0.0, "threads": 1})
    doc["online"] = {"window_report_s": 60, "checkpoint_every_s": 3600}
    doc["sync"] = {"sparse_interval_s": 0.0, "dense_interval_s": 0.0, "full_interval_s": 1e9}
    doc["ops"] = {"gate": {"enabled": protect, "holdout_fraction": 0.2,
                           "holdout_examples": 2400, "min_examples": 400,
                           "max_auc_drop": 0.05, "calibration_low": 0.5,
                           "calibration_high": 2.0}}
    return doc


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    m = AUC()
    m.update(y, p)
    return float(m.get())


def _score(pred: Predictor, schema: FeatureSchema, rb: pa.RecordBatch) -> np.ndarray:
    enc = schema.encode(rb)
    with torch.no_grad():
        logits = pred.model(enc.sparse, torch.from_numpy(enc.dense), None)
    return torch.sigmoid(logits).numpy().astype(np.float64)


def _corrupt(y: np.ndarray, how: str, rng: np.random.Generator) -> np.ndarray:
    """The training labels of a bad stretch: flipped, or coin flips at the same click rate
    (the signal gone)."""
    if how == "flip":
        return 1.0 - y
    return (rng.random(y.size) < y.mean()).astype(np.float64)


def run_arm(table: pa.Table, minutes: int, bad: tuple[int, int], protect: bool,
            workdir: Path, corrupt: str, publishes_per_min: int = 4) -> dict[str, Any]:
    """One arm of the experiment; returns its per-minute series and counters."""
    cfg = config_from_dict(_doc(protect))
    schema = FeatureSchema(cfg.features)
    ex_log = open_log(f"file:{workdir / 'examples'}")
    reg = Registry(workdir / "registry")
    trainer = OnlineTrainer(cfg, ex_log, run_dir=workdir / "run", registry=reg)
    guard = RollbackGuard(RollbackConfig(enabled=True, max_auc_drop=0.05, window_s=60,
                                         min_examples=500, patience=2), reg) if protect else None
    t0 = int(pc.min(table.column("event_time")).as_py())
    minute = pc.divide(pc.subtract(table.column("event_time"), t0), 60)
    pred: Predictor | None = None
    served = None
    rng = np.random.default_rng(1)
    out: dict[str, list[Any]] = {"minute": [], "serving_auc": [], "served_version": []}
    for m in range(minutes):
        chunk = table.filter(pc.equal(minute, m)).combine_chunks()
        if chunk.num_rows == 0:
            continue
        rb = chunk.to_batches()[0]
        y = rb.column("click").to_numpy(zero_copy_only=False).astype(np.float64)
        if pred is not None and served is not None:
            p = _score(pred, schema, rb)
            out["minute"].append(m)
            out["serving_auc"].append(_auc(y, p))
            out["served_version"].append(served)
            if guard is not None:
                guard.observe(t0 + 60.0 * m, p, y, version=served)
        if bad[0] <= m < bad[1]:  # the training stream's labels are corrupted
            i = rb.schema.get_field_index("click")
            rb = rb.set_column(i, "click", pa.array(_corrupt(y, corrupt, rng), pa.float64()))
        step = -(-rb.num_rows // publishes_per_min)
        for j in range(0, rb.num_rows, step):  # the trainer publishes every 60/k s
            part = pa.Table.from_batches([rb.slice(j, step)])
            ex_log.append([encode_examples(b) for b in part.to_batches(512)])
            trainer.run(idle_timeout_s=0.0)
        head = reg.head()  # the server polls the registry once a minute
        if head is not None and head != served:
            state = Subscriber(reg).materialize()
            pred = Predictor.build(cfg, tables=state.tables, dense=state.dense,
                                   version=state.version, engine="torch")
            served = state.version
    ex_log.close()
    refused = sum(1 for e in reg.events() if e.get("kind") == "gate_refused")
    return {**out, "refused": refused,
            "rollbacks": len(guard.actions) if guard is not None else 0,
            "versions": len(reg.versions())}


def _recovery(minute: list[int], auc: list[float], bad: tuple[int, int]) -> dict[str, Any]:
    before = [a for m, a in zip(minute, auc, strict=True) if bad[0] - 4 <= m < bad[0]]
    level = float(np.mean(before))
    after = [(m, a) for m, a in zip(minute, auc, strict=True) if m >= bad[0]]
    low = min(a for _, a in after)
    bad_minutes = sum(1 for _, a in after if a < level - 0.05)
    recovered = None
    for i, (m, _) in enumerate(after):
        if all(a >= level - 0.03 for _, a in after[i:]):
            recovered = m - bad[0]
            break
    return {"pre_auc": round(level, 4), "min_auc": round(low, 4), "bad_minutes": bad_minutes,
            "recovery_min": recovered,
            "auc_minutes_lost": round(sum(max(0.0, level - a) for _, a in after), 4)}


def _plot(arms: dict[str, dict[str, Any]], bad: tuple[int, int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.axvspan(bad[0], bad[1], color="0.9", label="training labels corrupted")
    for name, r in arms.items():
        ax.plot(r["minute"], r["serving_auc"], marker=".", label=name)
    ax.set_xlabel("event-time minute")
    ax.set_ylabel("serving AUC (real clicks)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None, *, verbose: bool = True) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="freshrec bench gate")
    p.add_argument("--minutes", type=int, default=30)
    p.add_argument("--bad", default="10:16", help="first:end minute of corrupted labels")
    p.add_argument("--requests-per-min", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corrupt", choices=["flip", "noise"], default="noise",
                   help="flipped labels, or labels replaced by coin flips (signal gone)")
    p.add_argument("--quick", action="store_true", help="24 minutes, bad 8:13")
    p.add_argument("--plot", default=None, help="write the plot (PNG) here")
    p.add_argument("--out", default=None, help="write the full result (JSON) here")
    a = p.parse_args(argv)
    if a.quick:
        a.minutes, a.bad = 24, "8:13"
    bad = tuple(int(x) for x in a.bad.split(":"))
    assert len(bad) == 2
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING if verbose else logging.ERROR)
    sim = SimulatorConfig(seed=a.seed, n_users=2000, n_items=500, candidates=20,
                          requests_per_s=a.requests_per_min / 60.0, bias=-2.0,
                          true_probabilities=True, malformed_rate=0.0, duplicate_rate=0.0)
    t_start = time.perf_counter()
    table = simulated_examples(sim, n_requests=int(a.requests_per_min * a.minutes * 1.3))
    arms = {}
    for name, protect in (("unprotected", False), ("gate + rollback", True)):
        with tempfile.TemporaryDirectory() as d:
            arms[name] = run_arm(table, a.minutes, (bad[0], bad[1]), protect, Path(d),
                                 a.corrupt)
            arms[name].update(_recovery(arms[name]["minute"], arms[name]["serving_auc"],
                                        (bad[0], bad[1])))
        if verbose:
            r = arms[name]
            print(f"{name}: pre {r['pre_auc']} min {r['min_auc']} bad minutes "
                  f"{r['bad_minutes']} AUC-minutes lost {r['auc_minutes_lost']} recovery "
                  f"{r['recovery_min']} min, refused "
                  f"{r['refused']}, rollbacks {r['rollbacks']}", flush=True)
    u, g = arms["unprotected"], arms["gate + rollback"]
    result = {
        "bench": "gate", "corrupt": a.corrupt, "minutes": a.minutes, "bad_start_min": bad[0], "bad_end_min": bad[1],
        "examples": table.num_rows, "seed": a.seed,
        "unprotected_min_auc": u["min_auc"], "gate_min_auc": g["min_auc"],
        "unprotected_bad_minutes": u["bad_minutes"], "gate_bad_minutes": g["bad_minutes"],
        "unprotected_recovery_min": u["recovery_min"], "gate_recovery_min": g["recovery_min"],
        "unprotected_auc_minutes_lost": u["auc_minutes_lost"],
        "gate_auc_minutes_lost": g["auc_minutes_lost"],
        "unprotected_pre_auc": u["pre_auc"], "gate_pre_auc": g["pre_auc"],
        "gate_publishes_refused": g["refused"], "gate_rollbacks": g["rollbacks"],
        "wall_s": round(time.perf_counter() - t_start, 1),
        "loadavg_1m": os.getloadavg()[0], **machine_info(),
    }
    if a.out:
        Path(a.out).write_text(json.dumps({"result": result, "arms": arms}, indent=1))
    if a.plot:
        _plot(arms, (bad[0], bad[1]), Path(a.plot))
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
