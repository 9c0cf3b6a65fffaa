"""Training-throughput benchmark: DeepFM on freshrec tables vs static tables vs no tables.

``freshrec bench train --json [--quick] [--threads 1,2] [--steps N] [--warmup N] [--rounds R]``

A synthetic Criteo-like stream: 26 single-valued categorical slots whose ids are drawn
Zipf(s=1.05) over ``--vocab`` values per slot (1 M; ``--quick``: 100 k), each slot's ranks
shuffled so hot ids are scattered, 13 dense N(0, 1) features, batch 4096. Labels follow a
known logistic rule over the ids of three slots and one dense feature, so a model that learns
reaches a known AUC (``oracle_auc``, from the true probabilities).

The same DeepFM (dim 16, MLP 400-400-400, Adam for dense parameters) is trained, each run from
scratch on the same batches, with

* ``freshrec``: one dynamic, collisionless :class:`~freshrec.table.EmbeddingTable` per slot
  behind :class:`~freshrec.nn.PooledEmbedding`, Adagrad inside the tables, fused in backward;
* ``freshrec_prefetch``: the same, with the next batch's fid -> row resolve started on a
  background thread (``PooledEmbedding.prefetch``) before this batch's backward, so it
  overlaps the dense compute (pooling still happens after the update; same results);
* ``static``: one ``nn.EmbeddingBag(vocab, 16, sparse=True)`` per slot, ids pre-mapped to
  ``[0, vocab)``, ``torch.optim.Adagrad`` over the sparse gradients;
* ``torchrec_fused``: TorchRec's ``FusedEmbeddingBagCollection`` (one table per slot, ids
  pre-mapped as for static, the same Adagrad as freshrec's ``--sparse-opt`` fused into
  backward by FBGEMM's CPU kernels) when it trains on this machine (``scripts/install-torchrec``;
  otherwise skipped, with ``torchrec_skipped_reason``);
* ``dense_only``: the model's dense part alone, fed a fixed (B, 26, 16) tensor that requires
  grad (so backward still computes the gradient w.r.t. the embeddings but nothing consumes
  it) -- the floor no embedding system can beat.

Throughput is the batch size over the median step time of the timed steps (a step is
forward, loss, backward with the sparse update, dense optimizer step). The runs are
interleaved step by step (each run trains batch i before any trains batch i+1), so that all
see the same machine conditions, and the whole interleaved run is repeated ``--rounds`` times
from scratch (2; ``--quick``: 1); examples/s and ratios are medians over the rounds (the
per-round ratios are in ``*_rounds`` keys). This is done at each thread count
of ``--threads`` (``torch.set_num_threads``). Keys without a suffix are from the largest
thread count that does not exceed the machine's cores. AUC is progressive (each batch scored
before it is trained on) over the last 40% of the steps of that run.

``freshrec_over_torchrec_fused`` and ``freshrec_over_dense_only`` are the ratios of the path
the trainer takes by default (``train.pipeline_lookup``: ``freshrec_prefetch``). After the
timed runs, one freshrec and one TorchRec model are profiled step by step (``profile_*`` and
``torchrec_profile_*`` keys, ms per step): resolve (fid -> row, admission), pool, dense
forward, dense backward, embedding backward (routing bag gradients, summing duplicates) and
the sparse optimizer step; TorchRec's fused kernel does the last two in one call.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from freshrec.benchinfo import machine_info
from freshrec.features import JaggedBatch
from freshrec.models import DeepFM
from freshrec.nn import PooledEmbedding, SlotSpec
from freshrec.nn.pooled import _Prefetch, _Resolved
from freshrec.table import EmbeddingTable, InitializerConfig, OptimizerConfig, TableConfig

N_SLOTS = 26
N_DENSE = 13
DIM = 16
SLOT_NAMES = [f"C{i + 1}" for i in range(N_SLOTS)]
RULE_SLOTS = (0, 1, 2)
#: (a, b) pairs reported as ``{a}_vs_{b}_ratio`` (examples/s of a over b) when both ran.
RATIOS = [(a, b) for a in ("freshrec", "freshrec_prefetch")
          for b in ("static", "dense_only", "torchrec_fused")]
RATIOS += [("torchrec_fused", "static"), ("torchrec_fused", "dense_only")]


# ---------------------------------------------------------------------------------- data
class Stream:
    """Pre-generated batches: per-slot values (B, 26) int64, fids, dense (B, 13), labels."""

    def __init__(self, n_batches: int, batch: int, vocab: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        cdf = np.cumsum(np.arange(1, vocab + 1, dtype=np.float64) ** -1.05)
        cdf /= cdf[-1]
        perms = np.stack([rng.permutation(vocab) for _ in range(N_SLOTS)])
        weights = rng.normal(0.0, 1.0, size=(len(RULE_SLOTS), vocab))
        self.batch = batch
        self.values: list[np.ndarray] = []
        self.fids: list[JaggedBatch] = []
        self.dense: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.probs: list[np.ndarray] = []
        ones = np.ones(N_SLOTS * batch, np.int32)
        slot_base = (np.arange(N_SLOTS, dtype=np.uint64) + np.uint64(1)) << np.uint64(40)
        for _ in range(n_batches):
            ranks = np.minimum(np.searchsorted(cdf, rng.random((N_SLOTS, batch))), vocab - 1)
            vals = np.take_along_axis(perms, ranks, axis=1)  # (26, B) ids in [0, vocab)
            dense = rng.standard_normal((batch, N_DENSE)).astype(np.float32)
            z = sum(weights[i, vals[s]] for i, s in enumerate(RULE_SLOTS)) + dense[:, 0] - 1.0
            p = 1.0 / (1.0 + np.exp(-z))
            fids = (vals.astype(np.uint64) + slot_base[:, None]).reshape(-1)
            self.values.append(np.ascontiguousarray(vals.T))
            self.fids.append(JaggedBatch.from_lengths(SLOT_NAMES, fids, ones))
            self.dense.append(torch.from_numpy(dense))
            self.labels.append(torch.from_numpy((rng.random(batch) < p).astype(np.float32)))
            self.probs.append(p)

    def __len__(self) -> int:
        return len(self.values)


# ---------------------------------------------------------------------------------- models
class StaticEmbeddingBags(nn.Module):
    """One ``nn.EmbeddingBag(vocab, dim, sparse=True)`` per slot over pre-mapped ids."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.slot_names = list(SLOT_NAMES)
        self.dim = dim
        self.bags = nn.ModuleList(
            nn.EmbeddingBag(vocab, dim, mode="sum", sparse=True) for _ in SLOT_NAMES
        )
        with torch.no_grad():
            for bag in self.bags:
                bag.weight.uniform_(-0.01, 0.01)

    def forward(self, values: torch.Tensor, now: int | None = None) -> torch.Tensor:
        # values: (B, 26) int64; a single-valued bag per example
        cols = values.t()
        return torch.stack([bag(cols[i].unsqueeze(1)) for i, bag in enumerate(self.bags)], 1)


class _Shape:
    """Stands in for an embedder in :class:`DeepFM`'s constructor (dense-only model)."""

    slot_names = list(SLOT_NAMES)
    dim = DIM


def freshrec_tables(opt_kind: str, lr: float) -> dict[str, EmbeddingTable]:
    return {
        s: EmbeddingTable(TableConfig(
            name=s, dim=DIM, capacity_hint=1 << 16,
            initializer=InitializerConfig(kind="uniform", scale=0.01, seed=i),
            optimizer=OptimizerConfig(kind=opt_kind, lr=lr)))
        for i, s in enumerate(SLOT_NAMES)
    }


def _torchrec_fused_ebc(vocab: int, opt_kind: str,
                        lr: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """TorchRec's ``FusedEmbeddingBagCollection`` (one table per slot, ``opt_kind`` Adagrad
    fused into backward) as ``embed(values (26, B) int64) -> (B, 26, 16)``.

    ``adagrad`` is element-wise (FBGEMM ``EXACT_ADAGRAD``), ``rowwise_adagrad`` is FBGEMM's
    ``EXACT_ROWWISE_ADAGRAD``; eps 1e-10 and init U(-0.01, 0.01) as in the other runs.
    """
    from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
    from torchrec.optim import RowWiseAdagrad

    ebc = FusedEmbeddingBagCollection(
        tables=[EmbeddingBagConfig(name=f"t_{s}", embedding_dim=DIM, num_embeddings=vocab,
                                   feature_names=[s], weight_init_min=-0.01,
                                   weight_init_max=0.01) for s in SLOT_NAMES],
        optimizer_type=torch.optim.Adagrad if opt_kind == "adagrad" else RowWiseAdagrad,
        optimizer_kwargs={"lr": lr, "eps": 1e-10})

    def embed(values: torch.Tensor) -> torch.Tensor:
        kjt = KeyedJaggedTensor(keys=SLOT_NAMES, values=values.reshape(-1),
                                lengths=torch.ones(values.numel(), dtype=torch.int32))
        return ebc(kjt).values().view(values.shape[1], N_SLOTS, DIM)

    return embed


# ---------------------------------------------------------------------------------- runs
Step = Callable[[int], torch.Tensor]


def _interact_step(model: DeepFM, dense_opt: torch.optim.Optimizer, stream: Stream,
                   embeddings: Callable[[int], torch.Tensor]) -> Step:
    """A step over ``model.interact`` fed ``embeddings(i)`` (B, slots, dim) from outside the
    model; only the dense optimizer steps (any sparse update happens in backward)."""

    def step(i: int) -> torch.Tensor:
        logits = model.interact(embeddings(i), stream.dense[i])
        loss = F.binary_cross_entropy_with_logits(logits, stream.labels[i])
        dense_opt.zero_grad(set_to_none=True)
        loss.backward()
        dense_opt.step()
        return logits

    return step


def _make_run(kind: str, stream: Stream, vocab: int, mlp: list[int], sparse_opt: str,
              sparse_lr: float, dense_lr: float, seed: int) -> tuple[Step, nn.Module]:
    """A ``step(i) -> logits`` closure that trains one batch, and the model."""
    torch.manual_seed(seed)
    if kind in ("freshrec", "freshrec_prefetch"):
        tables = freshrec_tables(sparse_opt, sparse_lr)
        emb = PooledEmbedding(tables, {s: SlotSpec(table=s) for s in SLOT_NAMES})
        model: nn.Module = DeepFM(emb, N_DENSE, mlp=mlp)
        dense_opt = torch.optim.Adam(model.parameters(), lr=dense_lr)
        prefetch = kind == "freshrec_prefetch"

        def step(i: int) -> torch.Tensor:
            logits = model(stream.fids[i], stream.dense[i], now=i)
            loss = F.binary_cross_entropy_with_logits(logits, stream.labels[i])
            if prefetch and i + 1 < len(stream):
                emb.prefetch(stream.fids[i + 1], now=i + 1)
            dense_opt.zero_grad(set_to_none=True)
            loss.backward()
            dense_opt.step()
            return logits

        return step, model
    if kind == "static":
        bags = StaticEmbeddingBags(vocab, DIM)
        model = DeepFM(bags, N_DENSE, mlp=mlp)
        dense_params = [p for n, p in model.named_parameters() if not n.startswith("embedding")]
        dense_opt = torch.optim.Adam(dense_params, lr=dense_lr)
        sparse_optim = torch.optim.Adagrad(list(bags.parameters()), lr=sparse_lr)
        values = [torch.from_numpy(v) for v in stream.values]

        def step(i: int) -> torch.Tensor:
            logits = model.interact(bags(values[i]), stream.dense[i])
            loss = F.binary_cross_entropy_with_logits(logits, stream.labels[i])
            dense_opt.zero_grad(set_to_none=True)
            sparse_optim.zero_grad(set_to_none=True)
            loss.backward()
            dense_opt.step()
            sparse_optim.step()
            return logits

        return step, model
    if kind == "torchrec_fused":
        embed = _torchrec_fused_ebc(vocab, sparse_opt, sparse_lr)
        model = DeepFM(_Shape(), N_DENSE, mlp=mlp)
        dense_opt = torch.optim.Adam(model.parameters(), lr=dense_lr)
        slot_major = [torch.from_numpy(np.ascontiguousarray(v.T)) for v in stream.values]
        return _interact_step(model, dense_opt, stream, lambda i: embed(slot_major[i])), model
    if kind == "dense_only":
        model = DeepFM(_Shape(), N_DENSE, mlp=mlp)
        dense_opt = torch.optim.Adam(model.parameters(), lr=dense_lr)
        fixed = (torch.rand(stream.batch, N_SLOTS, DIM) * 0.02 - 0.01).requires_grad_(True)

        def fixed_input(i: int) -> torch.Tensor:
            fixed.grad = None  # nothing consumes it: do not accumulate across steps
            return fixed

        return _interact_step(model, dense_opt, stream, fixed_input), model
    raise ValueError(kind)


def _time_interleaved(
    runs: dict[str, Step], n_steps: int, warmup: int
) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """Step every run on batch i before any run sees batch i+1, so that all runs share the
    same machine conditions (other load, thermal state); per-step times after ``warmup``."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    preds: dict[str, list[np.ndarray]] = {k: [] for k in runs}
    for i in range(n_steps):
        for kind, step in runs.items():
            t0 = time.perf_counter()
            logits = step(i)
            times[kind].append(time.perf_counter() - t0)
            preds[kind].append(logits.detach().numpy().copy())
    return {k: np.asarray(v[warmup:]) for k, v in times.items()}, preds


def _auc(stream: Stream, preds: list[np.ndarray], tail: float = 0.4) -> float:
    start = int(len(preds) * (1 - tail))
    y = torch.cat(stream.labels[start:len(preds)]).numpy()
    return float(roc_auc_score(y, np.concatenate(preds[start:])))


def _timed_steps(tables: dict[str, EmbeddingTable], acc: list[float]) -> None:
    """Wrap each table's optimizer step (``EmbeddingTable._step``) to add its wall time to
    ``acc[0]`` and the CPU time of its thread to ``acc[1]`` (a benchmark instrument: the step
    itself is unchanged)."""
    for t in tables.values():
        inner = t._step

        def timed(rows: np.ndarray, grads: np.ndarray, inner: Callable[..., int] = inner) -> int:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return inner(rows, grads)
            finally:
                acc[0] += time.perf_counter() - t0
                acc[1] += time.thread_time() - c0

        t._step = timed  # type: ignore[method-assign]


PHASES = ["resolve", "pool", "dense_fwd", "dense_bwd", "emb_bwd", "sparse_opt", "dense_opt"]


def _clocks() -> np.ndarray:
    """(wall, process CPU) seconds now."""
    return np.array([time.perf_counter(), time.process_time()])


def _profile(kind: str, stream: Stream, vocab: int, mlp: list[int], sparse_opt: str,
             sparse_lr: float, dense_lr: float, n_steps: int, warmup: int,
             seed: int) -> dict[str, float]:
    """ms per step in each phase of a ``freshrec`` or ``torchrec_fused`` step.

    Wall clock (``profile_*``) and CPU time of the process (``profile_cpu_*``: all its
    threads, so at 2 threads up to twice the wall time; under load it counts this process's
    work, not the waits for a core). The dense-backward / embedding-backward boundary is a
    hook on the (B, 26, 16) embedding output, which fires when the dense backward has
    produced its gradient. freshrec's resolve and pool are timed apart (its plain path does
    both inside the forward); the sparse optimizer time is summed over the tables' steps (at
    2 threads they overlap). TorchRec's resolve is 0 (ids are pre-mapped), its ``pool`` is
    the fused collection's forward and its ``emb_bwd`` includes the fused optimizer
    (``sparse_opt`` is reported as 0).
    """
    torch.manual_seed(seed)
    opt_time = [0.0, 0.0]
    if kind == "freshrec":
        tables = freshrec_tables(sparse_opt, sparse_lr)
        emb_mod = PooledEmbedding(tables, {s: SlotSpec(table=s) for s in SLOT_NAMES})
        model = DeepFM(emb_mod, N_DENSE, mlp=mlp)
        _timed_steps(tables, opt_time)

        def embed(i: int) -> tuple[torch.Tensor, np.ndarray]:
            t0 = _clocks()
            # the rows of the next forward, resolved up front (what prefetch does): private
            # API, so that resolve and pool are timed apart
            emb_mod._pending = _resolved_now(emb_mod, stream.fids[i], i)
            resolved = _clocks() - t0
            return emb_mod(stream.fids[i], now=i), resolved
    else:
        ebc = _torchrec_fused_ebc(vocab, sparse_opt, sparse_lr)
        model = DeepFM(_Shape(), N_DENSE, mlp=mlp)
        slot_major = [torch.from_numpy(np.ascontiguousarray(v.T)) for v in stream.values]

        def embed(i: int) -> tuple[torch.Tensor, np.ndarray]:
            return ebc(slot_major[i]), np.zeros(2)
    dense_params = [p for n, p in model.named_parameters() if not n.startswith("embedding")]
    dense_opt = torch.optim.Adam(dense_params, lr=dense_lr)
    acc: dict[str, list[np.ndarray]] = {p: [] for p in PHASES}
    for i in range(n_steps):
        opt_time[0] = opt_time[1] = 0.0
        t0 = _clocks()
        emb, resolve_s = embed(i)
        t1 = _clocks()
        logits = model.interact(emb, stream.dense[i])
        loss = F.binary_cross_entropy_with_logits(logits, stream.labels[i])
        t2 = _clocks()
        mark: list[np.ndarray] = []
        emb.register_hook(lambda g, mark=mark: mark.append(_clocks()))
        dense_opt.zero_grad(set_to_none=True)
        loss.backward()
        t4 = _clocks()
        dense_opt.step()
        t5 = _clocks()
        if i >= warmup:
            t3 = mark[0] if mark else t2
            opt = np.array(opt_time)
            values = (resolve_s, t1 - t0 - resolve_s, t2 - t1, t3 - t2, t4 - t3 - opt, opt,
                      t5 - t4)
            for p, v in zip(PHASES, values, strict=True):
                acc[p].append(v * 1e3)
    prefix = "profile" if kind == "freshrec" else "torchrec_profile"
    out: dict[str, float] = {}
    for clock, tag in ((0, ""), (1, "cpu_")):
        part = {f"{prefix}_{tag}{p}_ms": float(np.median([v[clock] for v in vals]))
                for p, vals in acc.items()}
        part[f"{prefix}_{tag}total_ms"] = float(sum(part.values()))
        out.update(part)
    return out


def _resolved_now(module: PooledEmbedding, batch: JaggedBatch, now: int) -> _Prefetch:
    """A finished prefetch of ``batch``: the resolve done here, on the calling thread."""
    done: Future[dict[str, tuple[_Resolved, int]]] = Future()
    resolved = {}
    for item in module._plan:
        res = module._resolve(item, batch, now, True)
        resolved[item[0]] = (res, res.table.version)
    done.set_result(resolved)
    return _Prefetch(batch, now, done)


def _torchrec_reason() -> str | None:
    """Why the TorchRec run is skipped (``None`` when its fused CPU path trains a batch)."""
    try:
        embed = _torchrec_fused_ebc(100, "adagrad", 0.05)
        embed(torch.zeros((N_SLOTS, 2), dtype=torch.int64)).sum().backward()
    except Exception as e:  # ImportError, or a broken install / unsupported CPU kernel
        return f"torchrec fused EmbeddingBagCollection fails on CPU: {type(e).__name__}: {e}"
    return None


def main(argv: list[str], verbose: bool = True) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="freshrec bench train")
    ap.add_argument("--quick", action="store_true", help="vocab 100 k, fewer steps (< 1 min)")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    ap.add_argument("--mlp", default="400,400,400")
    ap.add_argument("--sparse-opt", default="adagrad", choices=["adagrad", "rowwise_adagrad"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved runs from scratch; medians over them (2; --quick: 1)")
    opts = ap.parse_args(argv)
    torch.sparse.check_sparse_tensor_invariants.disable()  # explicit: silences a warning
    say = print if verbose else (lambda *a, **k: None)
    vocab = opts.vocab or (100_000 if opts.quick else 1_000_000)
    steps = opts.steps or (12 if opts.quick else 40)
    warmup = opts.warmup if opts.warmup is not None else (3 if opts.quick else 10)
    threads = [int(t) for t in opts.threads.split(",")]
    mlp = [int(w) for w in opts.mlp.split(",")]
    n = warmup + steps
    rounds = opts.rounds or (1 if opts.quick else 2)
    sparse_lr, dense_lr = 0.05, 1e-3

    say(f"generating {n} batches of {opts.batch} (vocab {vocab:,} per slot)...")
    stream = Stream(n, opts.batch, vocab, opts.seed)
    oracle = float(roc_auc_score(torch.cat(stream.labels[int(n * 0.6):]).numpy(),
                                 np.concatenate(stream.probs[int(n * 0.6):])))
    cores = os.cpu_count() or 1
    main_t = max([t for t in threads if t <= cores] or threads)
    result: dict[str, Any] = {
        "bench": "train", "model": "deepfm", "slots": N_SLOTS, "dense_features": N_DENSE,
        "dim": DIM, "mlp": mlp, "batch": opts.batch, "vocab_per_slot": vocab,
        "zipf_s": 1.05, "warmup_steps": warmup, "timed_steps": steps,
        "sparse_optimizer": opts.sparse_opt, "dense_optimizer": "adam",
        "static_sparse_optimizer": "adagrad", "threads": main_t, "thread_counts": threads,
        "oracle_auc": oracle, "rounds": rounds,
    }
    reason = _torchrec_reason()
    if reason is not None:
        result["torchrec_skipped_reason"] = reason
    else:  # FBGEMM's names for what torchrec_fused runs
        result["torchrec_sparse_optimizer"] = {"adagrad": "exact_adagrad",
                                               "rowwise_adagrad": "exact_row_wise_adagrad"}[
                                                   opts.sparse_opt]
    kinds = ["dense_only", "static", "freshrec", "freshrec_prefetch"]
    kinds += ["torchrec_fused"] if reason is None else []
    for t in threads:
        torch.set_num_threads(t)
        per_round: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(rounds):
            load = os.getloadavg()[0]
            runs = {k: _make_run(k, stream, vocab, mlp, opts.sparse_opt, sparse_lr, dense_lr,
                                 opts.seed)[0] for k in kinds}
            times, preds = _time_interleaved(runs, n, warmup)
            del runs
            result.setdefault(f"loadavg_1min_t{t}_rounds", []).append(load)
            for kind in kinds:
                rate = opts.batch / float(np.median(times[kind]))
                per_round[kind].append(rate)
                result.setdefault(f"{kind}_examples_per_s_t{t}_rounds", []).append(rate)
                result[f"{kind}_step_ms_mean_t{t}"] = float(times[kind].mean() * 1e3)
                if kind != "dense_only":
                    result[f"{kind}_auc_t{t}"] = _auc(stream, preds[kind])
                say(f"threads={t} {kind:>17}: {rate:,.0f} examples/s "
                    f"(median step {np.median(times[kind]) * 1e3:.1f} ms, load {load:.1f})")
        for kind in kinds:
            result[f"{kind}_examples_per_s_t{t}"] = float(np.median(per_round[kind]))
        for a, b in RATIOS:
            if a in kinds and b in kinds:
                ratios = [x / y for x, y in zip(per_round[a], per_round[b], strict=True)]
                result[f"{a}_vs_{b}_ratio_t{t}"] = float(np.median(ratios))
                result[f"{a}_vs_{b}_ratio_t{t}_rounds"] = ratios
        for b, key in (("torchrec_fused", "freshrec_over_torchrec_fused"),
                       ("dense_only", "freshrec_over_dense_only")):
            if b in kinds:
                result[f"{key}_t{t}"] = result[f"freshrec_prefetch_vs_{b}_ratio_t{t}"]
        prof_kinds = ["freshrec"] + (["torchrec_fused"] if "torchrec_fused" in kinds else [])
        for kind in prof_kinds:
            prof = _profile(kind, stream, vocab, mlp, opts.sparse_opt, sparse_lr, dense_lr,
                            min(n, warmup + 10), warmup, opts.seed)
            result.update({f"{k}_t{t}": v for k, v in prof.items()})
            say(f"threads={t} {kind} profile (ms/step, wall | CPU): "
                + ", ".join(f"{k.split('profile_')[1][:-3]}={v:.1f}" for k, v in prof.items()))
    main_keys = [f"{k}_examples_per_s" for k in kinds] + [f"{k}_auc" for k in kinds[1:]]
    main_keys += [f"{a}_vs_{b}_ratio" for a, b in RATIOS if a in kinds and b in kinds]
    main_keys += [k for k in ("freshrec_over_torchrec_fused", "freshrec_over_dense_only")
                  if f"{k}_t{main_t}" in result]
    for key in main_keys:
        result[key] = result[f"{key}_t{main_t}"]
    result.update(machine_info())
    return result
