"""New-user init on the simulator: AUC on users' first K impressions, init vs random.

``freshrec bench store_init --json [--quick] [--requests N] [--k K] [--seeds N] [--seed S]
[--holdout F]``

Per seed, one simulated stream (:func:`~freshrec.data.simulate.simulated_examples`, 2,000
users, 500 items, 20 candidates per request; 8,000 requests, ``--quick`` 3,000) is trained
on once, in event-time order, by the simulator's DeepFM (configs/simulator.yaml) with the
user table in Redis, once per arm: ``random`` (the table's uniform initializer, the
baseline), ``zeros`` (a fixed zero vector), ``history_mean`` (a user new to the table starts
from the mean of the item rows of the clicks in their history, ``u_recent_clicks``),
``previous_model`` (the user's row in another model's user table: the same model trained on
the first half of the stream with every user, a day-before model; ``source: table``),
``previous_model_state`` (that row and its optimizer state, ``with_state``) and
``unaligned_model`` (the row of a model trained like ``previous_model`` from other seeds:
other initial rows and dense weights), ``shuffled_model`` (``previous_model``'s rows given
to other users: its rows, not its users'), ``own_norm`` (each user's ``previous_model``
row's norm in a random direction) and ``random_wide`` (a uniform initializer of a
trained row's norm, 0.30). Every batch is scored before it is trained on
(progressive validation). Same stream, same seed, same model: the arms differ only in where
new user rows start. One more arm, ``no_user_id``, is the model without the ``user_id`` slot
(random init): how much the user field is worth at all.

Two groups of users are scored:

- **Returning users** (``init_returning_*``, the case the init is for): a share
  ``--holdout`` (0.3) of the users is left out of training for the first half of the
  stream; their clicks there still enter their history (the site saw them, this model's
  user table did not: a user whose row expired, or one new to this model). Their first K
  (20) impressions of the second half are scored: they arrive with a history and a row new
  to the table. ``*_with_history`` restricts to those whose history was not empty.
- **New users** (``init_new_*``): every other user's first K impressions in the stream
  (most have no history at first sight, so ``history_mean`` falls back to the initializer).
  The ``table`` arms are scored on returning users only (the other models saw the new
  users' scored impressions).

Each seed gives each arm's AUC and its difference to ``random``; over the seeds (default 5,
``--quick`` 2) the JSON has the mean difference and the half-width of its 95 % t interval
(``*_gain_<arm>`` and ``*_gain_<arm>_ci95``), and ``init_<group>_auc_oracle``, the AUC of
the simulator's own click probabilities (the ceiling). ``diag_*`` (means over seeds, from
the random arm's model at the end, see :func:`diagnose`) say why an init helps or not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.benchinfo import load_script, machine_info, paired_interval
from freshrec.config import config_from_dict
from freshrec.data.simulate import SimulatorConfig, simulated_examples
from freshrec.features import hash_array
from freshrec.table import EmbeddingTable, TableConfig, TableDelta
from freshrec.train.trainer import Trainer, rebatch

#: new-user init of each arm (a ``table`` source names one of :data:`PREVIOUS`, whose
#: snapshot is made per seed)
ARMS: dict[str, dict[str, Any]] = {"random": {"source": "none"},
        "zeros": {"source": "fixed", "value": [0.0] * 16},
        "history_mean": {"source": "history_mean", "history_slot": "u_recent_clicks"},
        "previous_model": {"source": "table", "table_path": "previous_model"},
        "previous_model_state": {"source": "table", "table_path": "previous_model",
                                 "with_state": True},
        "unaligned_model": {"source": "table", "table_path": "unaligned_model"},
        "shuffled_model": {"source": "table", "table_path": "shuffled_model"},
        "own_norm": {"source": "table", "table_path": "own_norm"},
        "random_wide": {"source": "none"}}
#: the ``random_wide`` arm's uniform initializer half-width: rows of a trained row's norm
#: (0.13 * sqrt(16 / 3) = 0.30)
WIDE_SCALE = 0.13
#: the other models (trained on the stream's first half with every user): the train seed
#: and the tables' initializer seed added to the measured model's
PREVIOUS = {"previous_model": (0, 0), "unaligned_model": (7919, 1)}
#: the model without the user_id slot (random init): the user field's worth
ABLATION = "no_user_id"
#: groups each arm is scored on (the previous model saw the new users' impressions)
GROUPS = ("returning", "returning_with_history", "new", "all")
RETURNING = ("returning", "returning_with_history")


def _bench_log() -> Any:
    """benchmarks/stream/bench_log.py (its private redis-server)."""
    return load_script(Path(__file__).resolve().parents[1] / "stream" / "bench_log.py", "bench_log")


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN without both classes."""
    pos, neg = int((y > 0).sum()), int((y <= 0).sum())
    if not pos or not neg:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), np.float64)
    sp = p[order]
    i = 0
    while i < len(sp):  # average ranks of ties
        j = i
        while j + 1 < len(sp) and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y > 0].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def model_config(url: str | None, prefix: str, new_user: dict[str, Any],
                 seed: int = 0, user_id: bool = True,
                 mlp: tuple[int, ...] = (64, 32), init_seed: int = 0,
                 user_scale: float | None = None) -> dict[str, Any]:
    """configs/simulator.yaml's model with the user table in Redis at ``url`` (None: in
    the process), new users starting as ``new_user`` says; ``user_id=False`` drops the
    user_id slot, ``mlp=()`` the deep part (linear + FM only); ``init_seed`` seeds the
    tables' initializer (other initial rows), ``user_scale`` is the user table's uniform
    initializer's half-width."""
    opt = {"kind": "rowwise_adagrad", "lr": 0.05}
    init = {"initializer": {"seed": init_seed}} if init_seed else {}
    user: dict[str, Any] = {"dim": 16, "optimizer": opt, **init}
    if user_scale is not None:
        user["initializer"] = {"seed": init_seed, "scale": user_scale}
    if url is not None:
        user |= {"backend": "redis",
                 "store": {"url": url, "prefix": prefix, "new_user": new_user}}
    slots: dict[str, Any] = {"user_id": {"table": "user"}} if user_id else {}
    return {
        "features": {
            "tables": {
                "user": user,
                "item": {"dim": 16, "optimizer": opt, **init},
                "attr": {"dim": 16, "optimizer": {"kind": "adagrad", "lr": 0.05}, **init}},
            "slots": {**slots, "item_id": {"table": "item"},
                      "u_recent_clicks": {"table": "item", "kind": "multi", "max_len": 20,
                                          "pooling": "mean", "id_space": "item_id"},
                      "u_gender": {"table": "attr"}, "u_age": {"table": "attr"},
                      "u_region": {"table": "attr"}, "i_category": {"table": "attr"},
                      "i_brand": {"table": "attr"}, "position": {"table": "attr"}},
            "dense": {"i_price": {"norm": "none"}},
            "labels": ["click"]},
        "model": {"kind": "deepfm", "mlp": list(mlp)},
        "train": {"batch_size": 512, "dense_lr": 0.002, "seed": seed},
    }


def _groups(table: Any, k: int, holdout: float, seed: int) -> dict[str, np.ndarray]:
    """Masks of the stream's rows: ``train`` (rows trained on), and the scored groups
    ``returning``, ``returning_with_history`` and ``new`` (see the module docstring)."""
    users = np.asarray(table.column("user_id").to_pylist(), np.int64)
    hist = table.column("u_recent_clicks").to_pylist()
    uniq = np.unique(users)
    held = set(np.random.default_rng(seed + 1000).choice(
        uniq, size=int(round(holdout * uniq.shape[0])), replace=False).tolist())
    half = table.num_rows // 2
    is_held = np.fromiter((u in held for u in users.tolist()), bool, users.shape[0])
    train = ~(is_held & (np.arange(users.shape[0]) < half))
    seen: dict[int, int] = {}
    first_hist: dict[int, bool] = {}
    returning = np.zeros(users.shape[0], bool)
    with_hist = np.zeros(users.shape[0], bool)
    new = np.zeros(users.shape[0], bool)
    for i, u in enumerate(users.tolist()):
        if not train[i]:
            continue
        c = seen.get(u, 0)
        if c == 0:
            first_hist[u] = bool(hist[i])
        seen[u] = c + 1
        if c < k:
            if u in held:
                returning[i] = True
                with_hist[i] = first_hist[u]
            else:
                new[i] = True
    return {"train": train, "returning": returning, "returning_with_history": with_hist,
            "new": new, "held": is_held}


def _train(cfg: Any, train: Any) -> tuple[Trainer, np.ndarray]:
    """A trainer that learned ``train`` once in order, and its scores (each batch scored
    before it was trained on)."""
    trainer = Trainer(cfg)
    p = np.concatenate([trainer.learn_batch(trainer.schema.encode(rb))
                        for rb in rebatch(train.to_batches(), cfg.train.batch_size)])
    return trainer, p


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine of the rows of ``a`` and ``b`` (a row of norm 0 counts 0)."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    return float(((a * b).sum(axis=1)[ok] / (na * nb)[ok]).sum() / max(a.shape[0], 1))


def diagnose(trainer: Trainer, train: Any, held: np.ndarray,
             previous: dict[str, EmbeddingTable], min_impressions: int = 60,
             candidates: int = 20) -> dict[str, float]:
    """Why an init helps or not, from a trained model (the random arm's, at the end).

    Over the users with at least ``min_impressions`` trained on and a history: the mean
    norm of their user rows (``user_row_norm``), of the mean of the item rows of their
    last history (``history_mean_norm``) and of the initializer's rows (``init_row_norm``);
    the mean cosine of a user's row and their history mean (``cos_row_history_mean``; with
    another user's history mean, ``cos_row_other_history_mean``, is the baseline of no
    relation). ``one_request_row_norm``: the mean norm of the rows of users seen in one
    request (``candidates`` impressions or fewer), about one optimizer step from their
    start. Over the held-out users (fids ``held``): the mean cosine of this model's row
    and each ``previous`` model's user row (``cos_row_<name>``; with another user's row,
    ``cos_row_<name>_other``): whether the two models' user rows are in one space.
    """
    enc = trainer.schema.encode(train)
    users, uoff = enc.sparse.slot("user_id")
    hist, hoff = enc.sparse.slot("u_recent_clicks")
    ex_user = users[uoff[:-1]]
    fids, rev_first, counts = np.unique(ex_user[::-1], return_index=True,
                                        return_counts=True)
    last = ex_user.shape[0] - 1 - rev_first
    ok = (counts >= min_impressions) & (hoff[last + 1] > hoff[last])
    utab, itab = trainer.tables["user"], trainer.tables["item"]
    once = utab.lookup(fids[counts <= candidates])
    fids, last = fids[ok], last[ok]
    rows = utab.lookup(fids)
    means = np.stack([itab.lookup(hist[hoff[i]:hoff[i + 1]]).mean(axis=0) for i in last])
    probe = EmbeddingTable(TableConfig(name="probe", dim=utab.dim,
                                       initializer=utab.config.initializer))
    init_rows = probe.lookup(np.arange(1, 1001, dtype=np.uint64), now=0, train=True)
    out = {"users": float(fids.shape[0]),
            "user_row_norm": float(np.linalg.norm(rows, axis=1).mean()),
            "history_mean_norm": float(np.linalg.norm(means, axis=1).mean()),
            "init_row_norm": float(np.linalg.norm(init_rows, axis=1).mean()),
            "one_request_row_norm": float(np.linalg.norm(once, axis=1).mean()),
            "cos_row_history_mean": _cos(rows, means),
            "cos_row_other_history_mean": _cos(rows, np.roll(means, 1, axis=0))}
    for name, table in previous.items():
        mine, theirs = utab.lookup(held), table.lookup(held)
        both = (np.linalg.norm(mine, axis=1) > 0) & (table.find(held) >= 0)
        out[f"cos_row_{name}"] = _cos(mine[both], theirs[both])
        out[f"cos_row_{name}_other"] = _cos(mine[both], np.roll(theirs[both], 1, axis=0))
    return out


def shuffled(table: EmbeddingTable, seed: int, keep_norm: bool = False) -> EmbeddingTable:
    """A copy of ``table`` whose rows (values and optimizer states) are given to other
    fids: each fid gets another fid's row, drawn by a permutation seeded by ``seed``;
    ``keep_norm``: each fid keeps its row's norm and state, in a random direction."""
    rows = table.read_rows()
    rng = np.random.default_rng(seed + 2000)
    n = rows.fids.shape[0]
    perm = np.arange(n) if keep_norm else rng.permutation(n)
    values = rows.values[perm]
    if keep_norm:
        way = rng.normal(size=values.shape)
        values = (way / np.linalg.norm(way, axis=1, keepdims=True)
                  * np.linalg.norm(values, axis=1, keepdims=True)).astype(np.float32)
    out = EmbeddingTable(table.config)
    out.apply_delta(TableDelta(
        table=table.name, fingerprint=out.config.fingerprint(), from_version=0,
        to_version=0, fids=rows.fids, values=values, last_seen=rows.last_seen,
        states=None if rows.states is None else rows.states[perm],
        expired=np.empty(0, np.uint64)), check_version=False)
    return out


def run_seed(url: str, n_req: int, k: int, holdout: float, seed: int,
             say: Any, n_users: int = 2000, mlp: tuple[int, ...] = (64, 32),
             run_arms: tuple[str, ...] = (*ARMS, ABLATION)) -> dict[str, Any]:
    """One seed: each arm of ``run_arms`` (always ``random``) AUC on each scored group (see
    the module docstring)."""
    run_arms = ("random", *run_arms)
    t0 = time.perf_counter()
    table = simulated_examples(SimulatorConfig(
        seed=seed, n_users=n_users, n_items=500, candidates=20, bias=-2.0,
        malformed_rate=0.0, duplicate_rate=0.0), n_requests=n_req)
    masks = _groups(table, k, holdout, seed)
    train = table.filter(masks["train"])
    y = train.column("click").to_numpy(zero_copy_only=False).astype(np.float64)
    scored = {g: masks[g][masks["train"]] for g in GROUPS if g != "all"}
    scored["all"] = np.ones(train.num_rows, bool)
    true_p = train.column("true_p").to_numpy(zero_copy_only=False)
    out: dict[str, Any] = {"seed": seed, "impressions": train.num_rows}
    out |= {f"{g}_impressions": int(m.sum()) for g, m in scored.items()}
    out |= {f"{g}_auc_oracle": auc(y[m], true_p[m]) for g, m in scored.items()}
    say(f"seed {seed}: {train.num_rows:,} impressions trained on, scored "
        f"{ {g: int(m.sum()) for g, m in scored.items()} } ({time.perf_counter() - t0:.1f}s)")
    with tempfile.TemporaryDirectory() as tmp:
        # the other models: every user, the first half of the stream, rows in the process
        previous = {}
        for name, (dseed, iseed) in PREVIOUS.items():
            other, _ = _train(config_from_dict(model_config(
                None, "", {}, seed + dseed, mlp=mlp, init_seed=iseed)),
                table.slice(0, table.num_rows // 2))
            previous[name] = other.tables["user"]
            other.tables["user"].save(Path(tmp) / name)
        shuffled(previous["previous_model"], seed).save(Path(tmp) / "shuffled_model")
        shuffled(previous["previous_model"], seed, keep_norm=True).save(Path(tmp) / "own_norm")
        arms = {a: (dict(v, table_path=str(Path(tmp) / v["table_path"]))
                    if v["source"] == "table" else v, True) for a, v in ARMS.items()
                if a in run_arms}
        if ABLATION in run_arms:
            arms[ABLATION] = (ARMS["random"], False)
        for arm, (new_user, user_id) in arms.items():
            t = time.perf_counter()
            cfg = config_from_dict(model_config(
                url, f"init-{uuid.uuid4().hex[:8]}", new_user, seed, user_id, mlp,
                user_scale=WIDE_SCALE if arm == "random_wide" else None))
            trainer, p = _train(cfg, train)
            groups = RETURNING if new_user["source"] == "table" else GROUPS
            out |= {f"{g}_auc_{arm}": auc(y[scored[g]], p[scored[g]]) for g in groups}
            if arm == "random":
                held = np.unique(table.filter(masks["held"]).column("user_id").to_numpy())
                out |= {f"diag_{key}": v for key, v in diagnose(
                    trainer, train, hash_array("user_id", held), previous).items()}
            trainer.tables["user"].close()  # type: ignore[attr-defined]
            say(f"  {arm:>20}: " + ", ".join(f"{g} {out[f'{g}_auc_{arm}']:.4f}"
                                              for g in groups)
                + f" ({time.perf_counter() - t:.1f}s)")
    return out


def main(argv: list[str], verbose: bool = True) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="freshrec bench store_init")
    ap.add_argument("--quick", action="store_true", help="3,000 requests, 2 seeds")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--k", type=int, default=20, help="first K impressions of each user")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--holdout", type=float, default=0.3,
                    help="share of users left out of the first half (returning users)")
    ap.add_argument("--users", type=int, default=2000, help="simulated users at the start")
    ap.add_argument("--mlp", default="64,32",
                    help="hidden widths of the DeepFM's MLP, comma-separated ('' : none)")
    ap.add_argument("--arms", default=",".join((*ARMS, ABLATION)),
                    help="arms to run, comma-separated (random always runs)")
    ap.add_argument("--redis", default=None, help="a Redis URL (default: a private server)")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args(argv)
    say = print if verbose else (lambda *a, **k: None)
    n_req = opts.requests or (3000 if opts.quick else 8000)
    n_seeds = opts.seeds or (2 if opts.quick else 5)
    mlp = tuple(int(w) for w in opts.mlp.split(",") if w.strip())
    run_arms = tuple(a.strip() for a in opts.arms.split(",") if a.strip())
    unknown = set(run_arms) - {*ARMS, ABLATION}
    if unknown:
        raise SystemExit(f"bench store_init: unknown arms {sorted(unknown)}, expected some "
                         f"of {[*ARMS, ABLATION]}")
    runs = []
    with _bench_log().redis_server(opts.redis) as url:
        if url is None:
            raise SystemExit("bench store_init needs redis-server (scripts/ensure-redis)")
        for seed in range(opts.seed, opts.seed + n_seeds):
            runs.append(run_seed(url, n_req, opts.k, opts.holdout, seed, say, opts.users,
                                  mlp, run_arms))
    out: dict[str, object] = {"requests": n_req, "users": opts.users, "mlp": list(mlp),
                              "k": opts.k,
                              "holdout": opts.holdout, "seeds": n_seeds}
    for g in GROUPS:
        out[f"init_{g}_auc_oracle"] = round(float(np.mean([r[f"{g}_auc_oracle"]
                                                           for r in runs])), 4)
        for arm in (*ARMS, ABLATION):
            if f"{g}_auc_{arm}" not in runs[0]:
                continue
            out[f"init_{g}_auc_{arm}"] = round(float(np.mean(
                [r[f"{g}_auc_{arm}"] for r in runs])), 4)
            if arm == "random":
                continue
            mean, half = paired_interval([r[f"{g}_auc_{arm}"] - r[f"{g}_auc_random"]
                                          for r in runs])
            out[f"init_{g}_gain_{arm}"] = round(mean, 4)
            out[f"init_{g}_gain_{arm}_ci95"] = round(half, 4)
    for key in (k for k in runs[0] if k.startswith("diag_")):
        out[key] = round(float(np.mean([r[key] for r in runs])), 4)
    out["runs"] = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
                   for r in runs]
    out["machine"] = machine_info()
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(main(sys.argv[1:], verbose=False)))
