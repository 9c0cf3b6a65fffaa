"""Serving benchmark: model time, end-to-end latency at fixed QPS, hot updates.

``freshrec bench serve --json [--quick] [--seconds S] [--qps 250,500,1000]``

Model: Wide & Deep with a 592-d input (18 slots x 32 + 16 dense) and a 3 x 256 MLP (the
Meituan write-up's), 100 candidates per request, 8 user-side and 10 candidate-side slots.
Tables hold ``--users`` and ``--items`` rows. Steps:

1. model time: :meth:`Predictor.score` in this process on recorded requests (feature index
   warm), with 1 and with 2 threads, for the default dense engine (``model_engine``: ONNX
   Runtime when installed), for the torch engine (``torch_model_*``) and with candidates
   named by id from a preloaded item catalogue (``by_id_model_*``), taking turns;
2. end-to-end: ``freshrec serve`` in a subprocess (1 thread), an open-loop load generator in
   another (``loadgen.py``) at each QPS; latency from the scheduled send to the response;
   max QPS whose p99.9 <= 10 ms with no errors; the server's CPU time per request (user +
   system, all threads: the figure least distorted by other jobs on a shared machine);
3. hot updates at ``--update-qps`` (default 100, below saturation): a full snapshot published every ``--swap-every`` seconds (new
   publisher, so the server reloads) vs steady state in the same run; the same with
   ``--update-mode naive`` (reload on the request path, no warm-up); continuous 10 k-row
   sparse deltas (server RSS before/after: ``delta_memory_growth_ratio`` = after / before);
4. stall: in this process, the longest single-row lookup while 10 k-row deltas are applied
   (chunks of 2,048 rows) vs without deltas;
5. overload (issue 12), with 1,000 candidates per request (so that the load generator, on
   the same cores, can offer 4x): the server's capacity C = 1 / its CPU time per request at
   a light load (one whole core: an upper bound, so 2 C is at least twice what it can
   serve), then open-loop loads of 2 C and 4 C with admission control (the default
   ``queue_budget_s``) and without it (a budget of 1,000 s) in the same run: p99 of the
   accepted (200) requests from their actual send (``*_from_schedule``: from their scheduled
   send, which adds the load generator's own lateness when it cannot keep the rate:
   ``*_achieved_qps`` says whether it kept up) and the fraction shed (503);
6. workers (issue 12): the QPS sweep (``--workers-qps``) against ``serve --workers 2`` and
   against one process, with the CPU time per request of the server's processes and of the
   load generator (``loadgen_cpu_ms_per_req_*``: it runs on the same cores); with
   ``updates`` in ``--only`` also step 3's swaps and deltas against the 2 workers
   (``swap_p99_9_ratio_workers2``, ``delta_p99_9_ratio_workers2``, ``update_errors_workers2``);
   the shared-table memory (the PSS of the shared segments summed over every process of the
   server) of a 2-worker and a 1-worker pool, and every process's total PSS.

``--only model,e2e,updates,stall,overload,workers`` runs a subset (same keys for those).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch

from freshrec.benchinfo import machine_info, percentiles_ms
from freshrec.config import config_from_dict
from freshrec.features import hash_array
from freshrec.serve import Predictor
from freshrec.serve.request import build_request
from freshrec.sync import Publisher, Registry, Subscriber
from freshrec.table import EmbeddingTable

HERE = Path(__file__).resolve().parent
USER_SLOTS = ["user_id", "u_gender", "u_age", "u_region", "u_recent", "u_f0", "u_f1", "u_f2"]
CAND_SLOTS = ["item_id", "position", "i_cat", "i_brand", "i_f0", "i_f1", "i_f2", "i_f3", "i_f4",
              "i_f5"]
DENSE = [f"u_d{i}" for i in range(8)] + [f"i_d{i}" for i in range(8)]


def bench_config() -> dict:
    table = {"dim": 32, "optimizer": {"kind": "adagrad", "lr": 0.05},
             "initializer": {"kind": "normal", "std": 0.05}, "capacity_hint": 1024}
    slots = {s: {"table": "user" if s.startswith("u") else "item"} for s in USER_SLOTS}
    slots.update({s: {"table": "item"} for s in CAND_SLOTS})
    slots["u_recent"] = {"table": "item", "kind": "multi", "max_len": 10, "pooling": "mean",
                         "id_space": "item_id"}
    return {"features": {"tables": {"user": table, "item": table}, "slots": slots,
                         "dense": {d: {"norm": "log"} for d in DENSE}, "labels": ["click"]},
            "model": {"kind": "wide_deep", "mlp": [256, 256, 256]},
            "train": {"negative_sample_rate": 0.1}}


def make_registry(root: Path, users: int, items: int) -> tuple[Registry, dict, dict]:
    raw = bench_config()
    cfg = config_from_dict(raw, where="bench_serve")
    tables = {t.name: EmbeddingTable(t) for t in cfg.features.tables}
    tables["user"].lookup(hash_array("user_id", np.arange(users)), now=1, train=True)
    tables["item"].lookup(hash_array("item_id", np.arange(items)), now=1, train=True)
    for s in USER_SLOTS[1:] + CAND_SLOTS[1:]:
        if s != "u_recent":
            t = "user" if s.startswith("u") else "item"
            tables[t].lookup(hash_array(s, np.arange(1000)), now=1, train=True)
    pred = Predictor.build(cfg, tables=tables)
    dense = {k: v.clone() for k, v in pred.model.state_dict().items()}
    reg = Registry(root)
    Publisher(reg, tables, lambda: dense).publish_full(event_time=int(time.time()),
                                                      meta={"config": raw})
    return reg, tables, dense


def make_requests(n: int, cands: int, users: int, items: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    pop = rng.zipf(1.2, size=20 * n * cands) % items  # popular items repeat across requests
    out = []
    for k in range(n):
        user = {"gender": int(rng.integers(0, 2)), "age": int(rng.integers(0, 80)),
                "region": int(rng.integers(0, 50)),
                "recent": [int(x) for x in rng.integers(0, items, 10)],
                **{f"f{i}": int(rng.integers(0, 1000)) for i in range(3)},
                **{f"d{i}": float(rng.random()) for i in range(8)}}
        ids = pop[k * cands:(k + 1) * cands]
        cs = []
        for iid in ids.tolist():
            r = np.random.default_rng(iid)  # an item's features are a function of the item
            c = {"item_id": iid, "cat": int(r.integers(0, 1000)),
                 "brand": int(r.integers(0, 1000)),
                 **{f"f{i}": int(r.integers(0, 1000)) for i in range(6)},
                 **{f"d{i}": round(float(r.random()), 4) for i in range(8)}}
            cs.append(c)
        out.append({"request_id": f"b{seed}-{k}", "user_id": int(rng.integers(0, users)),
                    "user": user, "candidates": cs})
    return out


def by_id(bodies: list[dict]) -> tuple[list[dict], list[dict]]:
    """The bodies with candidates named by id, and the item catalogue they need."""
    items = {c["item_id"]: c for b in bodies for c in b["candidates"]}
    ided = [{"request_id": b["request_id"], "user_id": b["user_id"], "user": b["user"],
             "candidate_ids": [c["item_id"] for c in b["candidates"]]} for b in bodies]
    return ided, list(items.values())


#: Model-time variants: name -> (engine, candidates named by id)
VARIANTS = {"auto": ("auto", False), "torch": ("torch", False), "by_id": ("auto", True)}


def model_time(reg: Registry, bodies: list[dict], iters: int, threads: int,
               variants: tuple[str, ...] = tuple(VARIANTS)) -> dict[str, dict]:
    """Latency percentiles of ``Predictor.score`` per variant (:data:`VARIANTS`); the
    variants take turns in rounds of 250 requests so that all see the same machine
    conditions. The by-id variant's index holds every candidate first (the catalogue)."""
    torch.set_num_threads(threads)
    state = Subscriber(reg).materialize()
    cfg = config_from_dict(state.meta["config"])
    ided, catalogue = by_id(bodies)
    preds, reqs = {}, {}
    for v in variants:
        engine, ids = VARIANTS[v]
        preds[v] = Predictor.build(cfg, tables=state.tables, dense=state.dense, engine=engine)
        if ids:
            preds[v].index.add(catalogue)
        reqs[v] = [build_request(b, 1000) for b in (ided if ids else bodies)]
    lat: dict[str, list[float]] = {v: [] for v in variants}
    for v, pred in preds.items():
        for r in reqs[v][:50]:
            pred.score(r)
    for start in range(0, iters, 250):
        for v, pred in preds.items():
            rs = reqs[v]
            for i in range(start, min(iters, start + 250)):
                t = time.perf_counter()
                pred.score(rs[i % len(rs)])
                lat[v].append(time.perf_counter() - t)
    out: dict[str, dict] = {v: percentiles_ms(x) for v, x in lat.items()}
    for v, pred in preds.items():
        out[v]["engine"] = pred.engine.name if pred.engine is not None else None
    return out


#: Candidates per request of the overload runs (10 bodies' worth).
OVERLOAD_CANDIDATES = 1000

#: Runs a worker pool (``WorkerPool``, as ``serve --workers N``) of any size, 1 included.
POOL = ("import sys; from freshrec.serve import ServeConfig; "
        "from freshrec.serve.workers import run_workers; a = sys.argv[1:]; "
        "run_workers(a[0], config=ServeConfig(port=int(a[1]), workers=int(a[2]), threads=1, "
        "max_in_flight=256, poll_interval_s=0.2, items_path=a[4] or None), log=a[3])")


class ServerProc:
    def __init__(self, reg: Path, log: Path, mode: str = "background",
                 items: Path | None = None, extra: tuple[str, ...] = (),
                 pool: int = 0) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.pool = pool
        cmd = [sys.executable, "-m", "freshrec.cli", "serve", "--registry", str(reg), "--port",
               str(self.port), "--log", str(log), "--threads", "1", "--poll-interval", "0.2",
               "--update-mode", mode, "--max-in-flight", "256",
               *(["--items", str(items)] if items is not None else []), *extra]
        if pool:
            cmd = [sys.executable, "-c", POOL, str(reg), str(self.port), str(pool), str(log),
                   str(items or "")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.proc.stderr.read()[-2000:]!r}")
            time.sleep(0.1)

    def cpu_s(self) -> float:
        """User + system CPU seconds so far of the server process and its worker processes
        (all their threads)."""
        total = 0
        for pid in self.pids():
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        return total / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def memory_bytes(self) -> int:
        """The server's memory: its RSS, or for a worker pool the PSS of all its processes
        (shared segments counted once)."""
        return self.pss_bytes() if self.pool else self.rss_bytes()

    def pids(self) -> list[int]:
        """The server process and its children (worker processes)."""
        out = [self.proc.pid]
        for pid in list(out):
            kids = Path(f"/proc/{pid}/task/{pid}/children")
            if kids.exists():
                out += [int(x) for x in kids.read_text().split()]
        return out

    def pss_bytes(self, shared_only: bool = False) -> int:
        """PSS summed over :meth:`pids`: all memory, or only the shared-table segments'."""
        total = 0
        for pid in self.pids():
            if not shared_only:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                continue
            inside = False
            for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
                if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header line
                    inside = "/dev/shm/fr" in line
                elif inside and line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        return total

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def load(url: str, bodies_path: Path, qps: float, seconds: float) -> dict:
    out = bodies_path.parent / f"lat-{qps}-{time.monotonic_ns()}.json"
    subprocess.run([sys.executable, str(HERE / "loadgen.py"), url, str(bodies_path), str(qps),
                    str(seconds), str(out)], check=True)
    res = json.loads(out.read_text())
    p = percentiles_ms(res["latencies_s"])
    p["ok"] = percentiles_ms(res["ok_latencies_s"]) if res["ok_latencies_s"] else None
    p["ok_sent"] = (percentiles_ms(res["ok_sent_latencies_s"]) if res["ok_sent_latencies_s"]
                    else None)
    p["codes"] = res["codes"]
    p["errors"] = sum(v for k, v in res["codes"].items() if k != "200")
    p["achieved_qps"] = res["achieved_qps"]
    p["sent"] = res["sent"]
    p["loadgen_cpu_ms_per_request"] = res["cpu_s"] * 1e3 / max(1, res["sent"])
    return p


def during(fn, seconds: float, every: float) -> threading.Thread:
    """Run ``fn`` every ``every`` seconds for ``seconds`` on a thread."""
    def loop() -> None:
        end = time.monotonic() + seconds
        nxt = time.monotonic() + every / 2
        while time.monotonic() < end:
            if time.monotonic() >= nxt:
                fn()
                nxt += every
            time.sleep(0.01)
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def stall(reg: Registry, rows: int, rounds: int) -> dict:
    """Longest 1-fid lookup with and without 10 k-row deltas being applied (in process)."""
    state = Subscriber(reg).materialize()
    table = state.tables["item"]
    src = Subscriber(reg).materialize().tables["item"]
    fids = hash_array("item_id", np.arange(min(rows * 5, len(src) - 1000)))
    probe = fids[:1]
    res = {}
    for mode in ("steady", "delta"):
        stop = threading.Event()
        worst = [0.0]

        def reader(stop: threading.Event = stop, worst: list[float] = worst) -> None:
            while not stop.is_set():
                t = time.perf_counter()
                table.lookup(probe)
                worst[0] = max(worst[0], time.perf_counter() - t)
                time.sleep(0)

        th = threading.Thread(target=reader)
        th.start()
        rng = np.random.default_rng(0)
        for _ in range(rounds):
            if mode == "delta":
                pick = fids[rng.choice(fids.shape[0], rows, replace=False)]
                src.apply_gradients(pick, rng.normal(size=(rows, src.dim)).astype(np.float32))
                d = src.export_delta(table.applied_version, with_state=False)
                table.apply_delta(d, chunk_rows=2048, check_version=False)
            else:
                time.sleep(0.05)
        stop.set()
        th.join()
        res[mode] = worst[0] * 1e3
    return res


def main(argv: list[str] | None = None, verbose: bool = True) -> dict:
    ap = argparse.ArgumentParser(prog="freshrec bench serve")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--qps", default=None, help="comma-separated QPS levels")
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--swap-every", type=float, default=10.0)
    ap.add_argument("--by-id", action="store_true",
                    help="end-to-end runs send candidate_ids (the server loads an item "
                         "catalogue) instead of every candidate's features")
    ap.add_argument("--update-qps", type=float, default=100.0,
                    help="offered QPS of the hot-update runs (below saturation, so that a "
                         "spike is the update's and not the queue's)")
    ap.add_argument("--workers-qps", default="250,500,750,1000,1250,1500",
                    help="comma-separated QPS levels of the workers sweep (step 6)")
    ap.add_argument("--only", default="model,e2e,updates,stall,overload,workers",
                    help="comma-separated sections to run")
    a = ap.parse_args(argv)
    only = set(a.only.split(","))
    q = a.quick
    seconds = a.seconds or (4.0 if q else 20.0)
    levels = [float(x) for x in (a.qps or ("250,500,1000" if q else
                                           "250,500,750,1000,1250,1500")).split(",")]
    users, items = a.users or (20_000 if q else 200_000), a.items or (20_000 if q else 100_000)
    swap_every = min(a.swap_every, seconds / 2) if q else a.swap_every
    update_seconds = max(seconds, 2.5 * swap_every)
    say = print if verbose else (lambda *x, **k: None)
    tmp = Path(tempfile.mkdtemp(prefix="freshrec-bench-serve-"))
    reg, _, _ = make_registry(tmp / "registry", users, items)
    bodies = make_requests(200 if q else 500, 100, users, items)
    bodies_path = tmp / "bodies.jsonl"
    items_path = None
    sent = bodies
    if a.by_id:
        sent, catalogue = by_id(bodies)
        items_path = tmp / "items.jsonl"
        items_path.write_bytes(b"\n".join(orjson.dumps(c) for c in catalogue) + b"\n")
    bodies_path.write_bytes(b"\n".join(orjson.dumps(b) for b in sent) + b"\n")
    res: dict = {"candidates": 100, "input_dim": 592, "mlp": [256, 256, 256], "users": users,
                 "items": items, "seconds_per_level": seconds, "quick": q,
                 "by_id": a.by_id, "body_bytes": float(np.mean([len(orjson.dumps(b))
                                                                 for b in sent])),
                 "loadavg_start": os.getloadavg()[0]}
    iters = 500 if q else 5000
    # the default engine (ONNX Runtime when installed), torch, and candidates by id
    for th in ((1, 2) if "model" in only else ()):
        sfx = "" if th == 1 else "_threads2"
        for name, m in model_time(reg, bodies, iters, th).items():
            pre = "" if name == "auto" else f"{name}_"
            if name == "auto":
                res["model_engine"] = m["engine"]
            res.update({f"{pre}model_p50_ms{sfx}": m["p50"], f"{pre}model_p99_ms{sfx}": m["p99"],
                        f"{pre}model_p99_9_ms{sfx}": m["p99_9"]})
            say(f"model time {name} threads={th}: {m}")
    torch.set_num_threads(1)
    if only & {"e2e", "updates"}:
        round1(a, res, reg, tmp, bodies_path, items_path, levels, seconds, update_seconds,
               swap_every, items, only, say)
    if "stall" in only:
        s = stall(reg, 10_000, 5 if q else 20)
        res["delta_max_stall_ms"] = s["delta"]
        res["steady_max_stall_ms"] = s["steady"]
    if "overload" in only:
        overload(res, tmp, bodies_path, items_path, 4.0 if q else 10.0, say)
    if "workers" in only:
        wlevels = [float(x) for x in a.workers_qps.split(",")]
        upd = None if "updates" not in only else {
            "reg": reg, "bodies_path": bodies_path, "qps": a.update_qps,
            "seconds": update_seconds, "swap_every": swap_every, "items": items}
        workers(res, tmp, bodies_path, items_path, wlevels, seconds, upd, say)
    res["loadavg_end"] = os.getloadavg()[0]
    res["machine"] = machine_info()
    res["threads"] = 1
    return res


def round1(a, res: dict, reg: Registry, tmp: Path, bodies_path: Path, items_path: Path | None,
           levels: list[float], seconds: float, update_seconds: float, swap_every: float,
           items: int, only: set[str], say) -> None:
    """End-to-end latency per QPS level and hot updates (steps 2 and 3)."""
    server = ServerProc(tmp / "registry", tmp / "log", items=items_path)
    try:
        load(server.url, bodies_path, 200, 1.0)  # warm connections and caches
        best = 0.0
        for qps in (levels if "e2e" in only else ()):
            c0 = server.cpu_s()
            p = load(server.url, bodies_path, qps, seconds)
            p["server_cpu_ms_per_request"] = (server.cpu_s() - c0) * 1e3 / max(1, p["sent"])
            say(f"e2e qps={qps:g}: {p}")
            k = f"qps{int(qps)}"
            res[f"e2e_server_cpu_ms_per_req_{k}"] = p["server_cpu_ms_per_request"]
            res[f"e2e_achieved_qps_{k}"] = p["achieved_qps"]
            res.update({f"e2e_p50_ms_{k}": p["p50"], f"e2e_p99_ms_{k}": p["p99"],
                        f"e2e_p99_9_ms_{k}": p["p99_9"], f"e2e_errors_{k}": p["errors"]})
            if p["p99_9"] <= 10.0 and p["errors"] == 0 and p["achieved_qps"] >= 0.95 * qps:
                best = max(best, qps)
        if "e2e" in only:
            res["max_qps_p99_9_under_10ms"] = best
        if "updates" not in only:
            return
        uq = a.update_qps
        k = f"qps{int(uq)}"
        res["update_qps"] = uq
        u = hot_updates(server, reg, bodies_path, uq, update_seconds, swap_every, items, say)
        res[f"steady_p99_9_ms_{k}"] = u["steady"]["p99_9"]
        res[f"swap_p99_9_ms_{k}"] = u["swap"]["p99_9"]
        res["swap_p99_9_ratio"] = u["swap"]["p99_9"] / u["steady"]["p99_9"]
        res[f"delta_p99_9_ms_{k}"] = u["delta"]["p99_9"]
        res["delta_p99_9_ratio"] = u["delta"]["p99_9"] / u["steady"]["p99_9"]
        res["delta_memory_growth_ratio"] = u["rss1"] / u["rss0"]
        res["server_rss_mib"] = u["rss0"] / 2**20
        steady = u["steady"]
    finally:
        server.close()
    naive = ServerProc(tmp / "registry", tmp / "log-naive", mode="naive", items=items_path)
    try:
        load(naive.url, bodies_path, 200, 1.0)
        nsteady = load(naive.url, bodies_path, uq, update_seconds)
        th = during(lambda: publish_swap(reg), update_seconds, swap_every)
        nsw = load(naive.url, bodies_path, uq, update_seconds)
        th.join()
        res[f"naive_swap_p99_9_ms_{k}"] = nsw["p99_9"]
        res["naive_swap_p99_9_ratio"] = nsw["p99_9"] / steady["p99_9"]
        res[f"naive_steady_p99_9_ms_{k}"] = nsteady["p99_9"]
        say(f"naive steady {nsteady} swap {nsw}")
    finally:
        naive.close()


def publish_swap(reg: Registry) -> None:
    """Publish the registry's newest state again as a new full snapshot (servers reload),
    with the model config (``HEAD`` may be a delta, whose meta has none)."""
    st = Subscriber(reg).materialize()
    Publisher(reg, st.tables, lambda: st.dense).publish_full(
        event_time=int(time.time()), meta={"config": reg.published_meta("config")})


def hot_updates(server: ServerProc, reg: Registry, bodies_path: Path, qps: float,
                seconds: float, swap_every: float, items: int, say) -> dict:
    """Step 3 against one server: steady state, full snapshots every ``swap_every`` s,
    continuous 10 k-row sparse deltas (every second), each at ``qps`` for ``seconds``;
    the server's memory (:meth:`ServerProc.memory_bytes`) before and after the deltas."""
    out: dict = {"steady": load(server.url, bodies_path, qps, seconds)}
    th = during(lambda: publish_swap(reg), seconds, swap_every)
    out["swap"] = load(server.url, bodies_path, qps, seconds)
    th.join()
    say(f"steady {out['steady']} swap {out['swap']}")
    st = Subscriber(reg).materialize()
    pub = Publisher(reg, st.tables, lambda: st.dense)
    pub.publish_full(event_time=int(time.time()), meta={"config": reg.published_meta("config")})
    time.sleep(2.0)
    out["rss0"] = server.memory_bytes()
    ids = hash_array("item_id", np.arange(items))
    rng = np.random.default_rng(1)

    def delta() -> None:
        pick = ids[rng.choice(ids.shape[0], 10_000, replace=False)]
        st.tables["item"].apply_gradients(pick, rng.normal(size=(10_000, 32)).astype(np.float32))
        pub.publish_sparse(event_time=int(time.time()))

    th = during(delta, seconds, 1.0)
    out["delta"] = load(server.url, bodies_path, qps, seconds)
    th.join()
    time.sleep(1.0)
    out["rss1"] = server.memory_bytes()
    say(f"deltas {out['delta']} memory {out['rss0'] / 2**20:.0f} -> "
        f"{out['rss1'] / 2**20:.0f} MiB")
    return out


def overload(res: dict, tmp: Path, bodies_path: Path, items_path: Path | None, seconds: float,
             say) -> None:
    """Step 5: 2x and 4x the capacity, with and without admission control. Requests carry
    :data:`OVERLOAD_CANDIDATES` candidates (those of 10 bodies), so that 4x the server's
    capacity is a rate the load generator can offer on the same 2 cores."""
    bodies = [orjson.loads(line) for line in bodies_path.read_bytes().splitlines()]
    key = "candidate_ids" if "candidate_ids" in bodies[0] else "candidates"
    heavy = [{**bodies[i], "request_id": f"heavy-{i}",
              key: [c for b in bodies[i:i + 10] for c in b[key]]}
             for i in range(0, len(bodies) - 9, 10)]
    heavy_path = tmp / "heavy.jsonl"
    heavy_path.write_bytes(b"\n".join(orjson.dumps(b) for b in heavy) + b"\n")
    for mode, extra in (("shed", ()), ("noshed", ("--queue-budget", "1000"))):
        server = ServerProc(tmp / "registry", tmp / f"log-{mode}", items=items_path,
                            extra=extra)
        try:
            load(server.url, bodies_path, 200, 1.0)
            if mode == "shed":  # capacity: one core's worth of the server's CPU per request
                c0 = server.cpu_s()
                light = load(server.url, heavy_path, 20, 3.0)
                cpu_ms = (server.cpu_s() - c0) * 1e3 / light["sent"]
                capacity = 1e3 / cpu_ms
                res["overload_capacity_qps"] = capacity
                res["overload_cpu_ms_per_request"] = cpu_ms
                res["overload_candidates"] = OVERLOAD_CANDIDATES
            for x in (2, 4):
                p = load(server.url, heavy_path, x * capacity, seconds)
                codes = p["codes"]
                pre = "" if mode == "shed" else "noshed_"
                nan = {"p50": float("nan"), "p99": float("nan")}
                ok, ok_sent = p["ok"] or nan, p["ok_sent"] or nan
                # from the actual send: the server's part, whether or not the generator kept up
                res[f"{pre}overload_{x}x_p99_ms"] = ok_sent["p99"]
                res[f"{pre}overload_{x}x_p50_ms"] = ok_sent["p50"]
                res[f"{pre}overload_{x}x_p99_ms_from_schedule"] = ok["p99"]
                res[f"{pre}overload_{x}x_shed_fraction"] = codes.get("503", 0) / p["sent"]
                res[f"{pre}overload_{x}x_timeouts"] = codes.get("0", 0)
                res[f"{pre}overload_{x}x_ok_qps"] = codes.get("200", 0) / seconds
                res[f"{pre}overload_{x}x_offered_qps"] = x * capacity
                res[f"{pre}overload_{x}x_achieved_qps"] = p["achieved_qps"]
                say(f"overload {mode} {x}x ({x * capacity:.0f} qps): codes {codes} ok {ok}")
        finally:
            server.close()


def workers(res: dict, tmp: Path, bodies_path: Path, items_path: Path | None,
            levels: list[float], seconds: float, updates: dict | None, say) -> None:
    """Step 6: QPS sweep with 1 process and 2 workers (every level: a p99.9 of a few
    thousand requests is the few slowest, so a level can fail and the next pass), each
    level with the CPU per request of the server's processes and of the load generator; with ``updates`` (``hot_updates``' arguments but the server) the hot updates
    of step 3 against the 2 workers; shared-table memory per pool size."""
    for n in (1, 2):
        server = ServerProc(tmp / "registry", tmp / f"log-w{n}", items=items_path,
                            pool=0 if n == 1 else 2)
        try:
            load(server.url, bodies_path, 200, 1.0)
            res[f"pss_mib_workers{n}"] = server.pss_bytes() / 2**20
            best = 0.0
            for qps in levels:
                c0 = server.cpu_s()
                p = load(server.url, bodies_path, qps, seconds)
                cpu = (server.cpu_s() - c0) * 1e3 / max(1, p["sent"])
                say(f"workers={n} qps={qps:g}: server {cpu:.3f} ms CPU/request, load "
                    f"generator {p['loadgen_cpu_ms_per_request']:.3f}: {p}")
                k = f"qps{int(qps)}_workers{n}"
                res[f"e2e_p50_ms_{k}"] = p["p50"]
                res[f"e2e_p99_ms_{k}"] = p["p99"]
                res[f"e2e_p99_9_ms_{k}"] = p["p99_9"]
                res[f"e2e_errors_{k}"] = p["errors"]
                res[f"e2e_achieved_qps_{k}"] = p["achieved_qps"]
                res[f"server_cpu_ms_per_req_{k}"] = cpu
                res[f"loadgen_cpu_ms_per_req_{k}"] = p["loadgen_cpu_ms_per_request"]
                if p["p99_9"] <= 10.0 and p["errors"] == 0 and p["achieved_qps"] >= 0.95 * qps:
                    best = max(best, qps)
            res[f"max_qps_p99_9_under_10ms_workers{n}"] = best
            if n == 2 and updates is not None:
                u = hot_updates(server, **updates, say=say)
                k = f"qps{int(updates['qps'])}_workers2"
                res[f"steady_p99_9_ms_{k}"] = u["steady"]["p99_9"]
                res[f"swap_p99_9_ms_{k}"] = u["swap"]["p99_9"]
                res[f"delta_p99_9_ms_{k}"] = u["delta"]["p99_9"]
                res["swap_p99_9_ratio_workers2"] = u["swap"]["p99_9"] / u["steady"]["p99_9"]
                res["delta_p99_9_ratio_workers2"] = u["delta"]["p99_9"] / u["steady"]["p99_9"]
                res["update_errors_workers2"] = sum(u[x]["errors"] for x in
                                                    ("steady", "swap", "delta"))
                res["delta_memory_growth_ratio_workers2"] = u["rss1"] / u["rss0"]
        finally:
            server.close()
    shared = {}
    for n in (1, 2):
        pool = ServerProc(tmp / "registry", tmp / f"log-p{n}", items=items_path, pool=n)
        try:
            load(pool.url, bodies_path, 200, 1.0)  # every worker has read rows
            shared[n] = pool.pss_bytes(shared_only=True)
            res[f"pool_pss_mib_workers{n}"] = pool.pss_bytes() / 2**20
        finally:
            pool.close()
    res["table_bytes_workers1"] = shared[1]
    res["table_bytes_workers2"] = shared[2]
    res["table_bytes_per_worker_ratio"] = shared[2] / shared[1]
    say(f"shared-table PSS: {shared}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
