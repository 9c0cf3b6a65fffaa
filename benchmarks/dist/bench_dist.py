"""``freshrec bench dist --json [--quick]``: 2 gloo ranks vs 1 process x 2 threads vs TorchRec DMP.

The DeepFM benchmark of ``freshrec bench train`` (26 single-valued slots over Zipf ids, one
table per slot, dim 16, 13 dense features, MLP 400-400-400, Adagrad tables, Adam dense; a
global batch of 4096), trained three ways on the same pre-generated batches, same run:

* ``threads2``: one process of its own, ``torch.set_num_threads(2)``,
  :class:`~freshrec.nn.PooledEmbedding` (tables looked up and updated on 2 threads, dense on
  2 intra-op threads), run twice: with OpenMP's default wait policy (torch's OpenMP workers
  spin after each parallel region, ``threads2_spin_ex_per_s``) and with
  ``OMP_WAIT_POLICY=PASSIVE`` (they sleep, ``threads2_passive_ex_per_s``). On 2 cores the
  spinning worker takes a core from the table threads and the main thread (measured: 3.5x
  the CPU time per step of 1 thread, at a longer wall time), so the baseline
  (``threads2_ex_per_s``) is the faster of the two;
* ``dist_ranks2``: 2 processes x 1 thread joined by gloo, each with half of every batch,
  :class:`~freshrec.dist.ShardedPooledEmbedding` over its shards and
  :class:`~freshrec.dist.DenseGradientSync` (what ``freshrec train --nproc 2`` runs);
* ``torchrec_dmp_ranks2``: TorchRec's ``DistributedModelParallel`` on 2 gloo ranks x 1 thread
  (``scripts/install-torchrec``): an ``EmbeddingBagCollection`` sharded by TorchRec's planner
  with row-wise Adagrad fused into backward, the same DeepFM interaction as its dense part
  (DDP), or ``null`` with ``torchrec_dmp_skipped_reason`` when it does not run here.

Both freshrec arms start the next batch's lookup before the backward (``prefetch``), as
``freshrec train`` does by default (``train.pipeline_lookup``): one process resolves its rows
on a background thread; the ranks send the next batch's ids to their owners, which resolve
and admit them, on a thread and process group of their own.

The arms alternate over ``--rounds`` rounds (each round runs every arm once, in an order
rotated from round to round), and the figures are medians over rounds: rates are the
median of each arm's per-round rate, ratios the median of the per-round ratios (each
against the baselines of its own round), with their ``_min``/``_max`` over rounds and the
per-round figures under ``rounds_detail``, so one noisy run of a baseline does not decide a ratio.

Every rate is global examples per second over the timed steps (after warm-up).
``dist_bytes_per_step`` is what one rank sends per step: ids, rows and row gradients of the
sparse exchange (``dist_sparse_bytes_per_step``) and the dense gradients it all-reduces
(``dist_dense_bytes_per_step``, ring all-reduce: 2 (N-1)/N of the gradient bytes).
``dist_exchange_s_per_step`` is the wall time a rank's training thread spends in the
sparse exchange (the rows' and gradients' collectives, and waiting for a request started
ahead); ``dist_request_s_per_step`` the request thread's time in its collectives (under the
training thread's compute); the rest of the step is compute (``dist_compute_s_per_step``):
the inputs of the scaling model of docs/distributed.md. ``dist_ranks2_cpu_s_per_step`` and
``dist_ranks2_faults_per_step`` (and DMP's) are the CPU seconds (every thread) and minor page
faults per timed step of rank 0's process; each round's row has them for every arm.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from freshrec.benchinfo import load_script, machine_info
from freshrec.features.jagged import JaggedBatch
from freshrec.models.deepfm import DeepFM
from freshrec.nn.pooled import PooledEmbedding, SlotSpec

bt = load_script(Path(__file__).resolve().parents[1] / "train" / "bench_train.py", "bench_train")

SPARSE_LR, DENSE_LR = 0.05, 1e-3


def _local(stream: Any, i: int, rank: int, world: int) -> tuple[JaggedBatch, torch.Tensor,
                                                                  torch.Tensor, np.ndarray]:
    """Rank ``rank``'s slice of batch ``i``: fids, dense, labels and raw ids (B_r, 26)."""
    b = stream.batch
    lo, hi = b * rank // world, b * (rank + 1) // world
    vals = stream.values[i][lo:hi]
    base = (np.arange(bt.N_SLOTS, dtype=np.uint64) + np.uint64(1)) << np.uint64(40)
    fids = (vals.T.astype(np.uint64) + base[:, None]).reshape(-1)
    jb = JaggedBatch.from_lengths(bt.SLOT_NAMES, fids, np.ones(fids.shape[0], np.int32))
    return jb, stream.dense[i][lo:hi], stream.labels[i][lo:hi], vals


def _usage() -> tuple[float, int]:
    """(CPU seconds, minor page faults) of this process so far, every thread."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_minflt


def _per_step(since: tuple[float, int], steps: int) -> dict[str, float]:
    """CPU seconds and page faults per step of this process since ``since``."""
    cpu, faults = _usage()
    return {"cpu_s_per_step": (cpu - since[0]) / steps,
            "faults_per_step": (faults - since[1]) / steps}


def _freshrec_rate(opts: argparse.Namespace, rank: int, world: int) -> dict[str, Any]:
    """Train the freshrec model (sharded when ``world`` > 1); examples/s and exchange stats."""
    import torch.distributed as dist

    from freshrec.dist import DenseGradientSync, ShardedPooledEmbedding, SparseExchange

    stream = bt.Stream(opts.warmup + opts.steps, opts.batch, opts.vocab, opts.seed)
    tables = bt.freshrec_tables(opts.sparse_opt, SPARSE_LR)
    slots = {s: SlotSpec(table=s) for s in bt.SLOT_NAMES}
    ex = SparseExchange() if world > 1 else None
    emb = ShardedPooledEmbedding(tables, slots, ex) if ex is not None else \
        PooledEmbedding(tables, slots)
    torch.manual_seed(opts.seed)
    model = DeepFM(emb, bt.N_DENSE, mlp=opts.mlp)
    opt = torch.optim.Adam(model.parameters(), lr=DENSE_LR)
    sync = None
    if world > 1:
        sync = DenseGradientSync(model.parameters(), opt, dist.new_group(backend="gloo"))
        sync.broadcast()
    batches = [_local(stream, i, rank, world) for i in range(len(stream))]
    before = np.zeros(4)
    start, usage = 0.0, _usage()

    def exchanged() -> np.ndarray:
        """Bytes sent by the training thread and by the request thread, the training
        thread's and the request thread's exchange seconds, so far."""
        if not isinstance(emb, ShardedPooledEmbedding):
            return np.zeros(4)
        req = emb.requests
        return np.array([emb.exchange.bytes_sent, req.bytes_sent,
                         emb.exchange.seconds + emb.wait_seconds, req.seconds])

    for i, (jb, dense, labels, _) in enumerate(batches):
        if i == opts.warmup:
            if ex is not None:
                ex.barrier()
            before = exchanged()
            usage = _usage()
            start = time.perf_counter()
        logits = model(jb, dense, now=i)
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / stream.batch
        if i + 1 < len(batches):  # the next batch's lookup under this backward
            emb.prefetch(batches[i + 1][0], now=i + 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if ex is not None:
        ex.barrier()
    took = time.perf_counter() - start
    out: dict[str, Any] = {"ex_per_s": opts.batch * opts.steps / took,
                           "s_per_step": took / opts.steps, **_per_step(usage, opts.steps)}
    if ex is not None and sync is not None:
        # the timed steps send steps - 1 requests (the first was sent in the warm-up)
        sent, requested, seconds, request_s = (exchanged() - before) / opts.steps
        out["sparse_bytes"] = float(sent + requested * opts.steps / max(opts.steps - 1, 1))
        out["dense_bytes"] = sync.bytes_per_step * 2 * (world - 1) / world
        out["exchange_s"] = float(seconds)
        out["request_s"] = float(request_s)
    return out


class _DMPModel(nn.Module):
    """TorchRec's EmbeddingBagCollection (one table per slot) under freshrec's DeepFM
    interaction, so DMP shards the tables and wraps the rest in DDP."""

    def __init__(self, vocab: int, mlp: list[int]) -> None:
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

        super().__init__()
        self.ebc = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name=f"t_{s}", embedding_dim=bt.DIM, num_embeddings=vocab,
                                       feature_names=[s], weight_init_min=-0.01,
                                       weight_init_max=0.01) for s in bt.SLOT_NAMES],
            device=torch.device("meta"))
        self.deepfm = DeepFM(bt._Shape(), bt.N_DENSE, mlp=mlp)

    def forward(self, kjt: Any, dense: torch.Tensor) -> torch.Tensor:
        emb = self.ebc(kjt).values().view(dense.shape[0], bt.N_SLOTS, bt.DIM)
        return self.deepfm.interact(emb, dense)


def _dmp_rate(opts: argparse.Namespace, rank: int, world: int) -> dict[str, Any]:
    """Train the same model with TorchRec's DistributedModelParallel; examples/s."""
    import torch.distributed as dist
    from torchrec import KeyedJaggedTensor
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.optim import RowWiseAdagrad
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    stream = bt.Stream(opts.warmup + opts.steps, opts.batch, opts.vocab, opts.seed)
    torch.manual_seed(opts.seed)
    module = _DMPModel(opts.vocab, opts.mlp)
    sparse_opt = torch.optim.Adagrad if opts.sparse_opt == "adagrad" else RowWiseAdagrad
    apply_optimizer_in_backward(sparse_opt, module.ebc.parameters(), {"lr": SPARSE_LR, "eps": 1e-10})
    model = DistributedModelParallel(module, device=torch.device("cpu"))
    dense_params = [p for n, p in model.named_parameters() if "ebc" not in n]
    opt = torch.optim.Adam(dense_params, lr=DENSE_LR)
    batches = []
    for i in range(len(stream)):
        _, dense, labels, vals = _local(stream, i, rank, world)
        kjt = KeyedJaggedTensor(keys=bt.SLOT_NAMES, values=torch.from_numpy(
            np.ascontiguousarray(vals.T).reshape(-1)),
            lengths=torch.ones(vals.size, dtype=torch.int32))
        batches.append((kjt, dense, labels))
    start, usage = 0.0, _usage()
    for i, (kjt, dense, labels) in enumerate(batches):
        if i == opts.warmup:
            dist.barrier()
            usage = _usage()
            start = time.perf_counter()
        logits = model(kjt, dense)
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / stream.batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    dist.barrier()
    took = time.perf_counter() - start
    return {"ex_per_s": opts.batch * opts.steps / took, "s_per_step": took / opts.steps,
            **_per_step(usage, opts.steps)}


def _ranks(mode: str, argv: list[str], world: int, timeout: float,
           **env_vars: str) -> dict[str, Any]:
    """Run ``mode`` on ``world`` processes (1 thread each; ``threads2``: 1 process of 2
    threads) with the environment ``env_vars`` added; rank 0's result."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1", **env_vars}
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", mode, "--out",
                                   f"{tmp}/r.json", *argv], env={**env, "RANK": str(r)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for r in range(world)]
        errs = [p.communicate(timeout=timeout)[1] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(next(e for p, e in zip(procs, errs, strict=True)
                                    if p.returncode)[-1500:])
        return dict(json.loads(Path(f"{tmp}/r.json").read_text()))


def _worker(opts: argparse.Namespace) -> None:
    import datetime

    import torch.distributed as dist

    if opts.worker == "threads2":
        torch.set_num_threads(2)
        Path(opts.out).write_text(json.dumps(_freshrec_rate(opts, 0, 1)))
        return
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    rank, world = dist.get_rank(), dist.get_world_size()
    result = (_freshrec_rate if opts.worker == "dist" else _dmp_rate)(opts, rank, world)
    if rank == 0:
        Path(opts.out).write_text(json.dumps(result))
    dist.destroy_process_group()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="freshrec bench dist")
    ap.add_argument("--quick", action="store_true", help="vocab 100 k, fewer steps")
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--mlp", default="400,400,400")
    ap.add_argument("--sparse-opt", default="adagrad", choices=["adagrad", "rowwise_adagrad"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of every arm, alternating; figures are medians over rounds")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    return ap


def _resolve(opts: argparse.Namespace) -> argparse.Namespace:
    opts.vocab = opts.vocab or (100_000 if opts.quick else 1_000_000)
    opts.steps = opts.steps or (10 if opts.quick else 30)
    opts.warmup = opts.warmup if opts.warmup is not None else (3 if opts.quick else 5)
    opts.mlp = [int(w) for w in str(opts.mlp).split(",")] if isinstance(opts.mlp, str) \
        else opts.mlp
    return opts


def _spread(result: dict[str, Any], key: str, values: list[float | None]) -> None:
    """``result[key]``: the median of ``values`` over rounds, with ``_min`` and ``_max``
    (None when a value is missing)."""
    if any(v is None for v in values) or not values:
        result.update({key: None, f"{key}_min": None, f"{key}_max": None})
        return
    vals = [float(v) for v in values if v is not None]
    result.update({key: float(np.median(vals)), f"{key}_min": min(vals),
                   f"{key}_max": max(vals)})


def _round(passed: list[str], r: int, say: Any) -> dict[str, Any]:
    """Every arm once, in an order rotated by the round number ``r``; their rates."""
    arms: list[tuple[str, Any]] = [
        ("threads2_spin", lambda: _ranks("threads2", passed, 1, 1800, OMP_NUM_THREADS="2")),
        ("threads2_passive", lambda: _ranks("threads2", passed, 1, 1800, OMP_NUM_THREADS="2",
                                            OMP_WAIT_POLICY="PASSIVE")),
        ("dist_ranks2", lambda: _ranks("dist", passed, 2, 1800)),
        ("torchrec_dmp_ranks2", lambda: _ranks("dmp", passed, 2, 1800)),
    ]
    k = r % len(arms)
    got: dict[str, Any] = {"loadavg_before": os.getloadavg()[0]}
    for name, run in arms[k:] + arms[:k]:
        try:
            got[name] = run()
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            if name != "torchrec_dmp_ranks2":
                raise
            got[name] = None
            got["skipped"] = str(e).strip().splitlines()[-1][:300]
    threads2 = max(got["threads2_spin"]["ex_per_s"], got["threads2_passive"]["ex_per_s"])
    dist2, dmp = got["dist_ranks2"], got["torchrec_dmp_ranks2"]
    row = {"loadavg_before": got["loadavg_before"], "loadavg_after": os.getloadavg()[0],
           "threads2_spin_ex_per_s": got["threads2_spin"]["ex_per_s"],
           "threads2_passive_ex_per_s": got["threads2_passive"]["ex_per_s"],
           "threads2_ex_per_s": threads2, "dist_ranks2_ex_per_s": dist2["ex_per_s"],
           "torchrec_dmp_ranks2_ex_per_s": dmp["ex_per_s"] if dmp else None,
           "dist_ranks2_over_torchrec_dmp": dist2["ex_per_s"] / dmp["ex_per_s"] if dmp else None,
           "dist_ranks2_over_threads2": dist2["ex_per_s"] / threads2, "dist": dist2}
    for name in ("threads2_spin", "threads2_passive", "dist_ranks2", "torchrec_dmp_ranks2"):
        for key in ("cpu_s_per_step", "faults_per_step"):  # of rank 0 (of the process)
            row[f"{name}_{key}"] = got[name][key] if got[name] else None
    if "skipped" in got:
        row["torchrec_dmp_skipped_reason"] = got["skipped"]
    say(f"round {r + 1}: 2 ranks {row['dist_ranks2_ex_per_s']:,.0f} examples/s; 1 process x 2 "
        f"threads {row['threads2_spin_ex_per_s']:,.0f} (spinning) / "
        f"{row['threads2_passive_ex_per_s']:,.0f} (passive); TorchRec DMP "
        + (f"{row['torchrec_dmp_ranks2_ex_per_s']:,.0f}" if dmp else "skipped"))
    return row


def main(argv: list[str], verbose: bool = True) -> dict[str, Any]:
    say = print if verbose else (lambda *a, **k: None)
    opts = _resolve(_parser().parse_args(argv))
    passed = [a for a in argv if a != "--json"]
    result: dict[str, Any] = {
        "bench": "dist", "model": "deepfm", "slots": bt.N_SLOTS, "dim": bt.DIM,
        "mlp": opts.mlp, "batch": opts.batch, "vocab_per_slot": opts.vocab,
        "sparse_optimizer": opts.sparse_opt, "timed_steps": opts.steps,
        "warmup_steps": opts.warmup, "rounds": opts.rounds, "ranks": 2,
        "threads_per_rank": 1, "backend": "gloo", "loadavg_before": os.getloadavg()[0],
        **machine_info()}
    rounds = [_round(passed, r, say) for r in range(opts.rounds)]
    for key in ("threads2_ex_per_s", "threads2_spin_ex_per_s", "threads2_passive_ex_per_s",
                "dist_ranks2_ex_per_s", "torchrec_dmp_ranks2_ex_per_s",
                "dist_ranks2_over_torchrec_dmp", "dist_ranks2_over_threads2",
                "dist_ranks2_cpu_s_per_step", "torchrec_dmp_ranks2_cpu_s_per_step",
                "dist_ranks2_faults_per_step", "torchrec_dmp_ranks2_faults_per_step"):
        _spread(result, key, [r[key] for r in rounds])
    skipped = [r["torchrec_dmp_skipped_reason"] for r in rounds
               if "torchrec_dmp_skipped_reason" in r]
    if skipped:
        result["torchrec_dmp_skipped_reason"] = skipped[0]

    def dist_median(key: str) -> float:
        return float(np.median([r["dist"][key] for r in rounds]))

    sparse, dense = dist_median("sparse_bytes"), dist_median("dense_bytes")
    step, exchange = dist_median("s_per_step"), dist_median("exchange_s")
    result.update({
        "dist_bytes_per_step": sparse + dense,
        "dist_sparse_bytes_per_step": sparse,
        "dist_dense_bytes_per_step": dense,
        "dist_s_per_step": step,
        "dist_exchange_s_per_step": exchange,
        "dist_request_s_per_step": dist_median("request_s"),
        "dist_compute_s_per_step": step - exchange,
        "rounds_detail": [{k: v for k, v in r.items() if k != "dist"} for r in rounds],
        "loadavg_after": os.getloadavg()[0],
    })
    over_dmp = result["dist_ranks2_over_torchrec_dmp"]
    say(f"medians of {opts.rounds} rounds: 2 ranks "
        + (f"{over_dmp:.2f}x TorchRec DMP, " if over_dmp is not None else "")
        + f"{result['dist_ranks2_over_threads2']:.2f}x 1 process x 2 threads")
    return result


if __name__ == "__main__":
    _worker(_resolve(_parser().parse_args(sys.argv[1:])))
