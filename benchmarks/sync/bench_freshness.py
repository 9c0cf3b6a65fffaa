"""Freshness: wall time from a click entering the event log to a serving-side model holding
an update trained on it (``freshrec bench freshness --json [--quick] [--rate R]``).

The whole loop runs as separate processes on this machine, embedded defaults (file logs,
registry directory) or ``--redis URL`` for the logs:

    producer (simulator paced so event time == wall time)  ->  events log
    freshrec join       (label window --window-s, lateness 1 s)  ->  examples log
    freshrec train --online  (publishes sparse deltas every --sync-s)  ->  registry
    subscriber          (Subscriber.update in a loop, like freshrec serve)

The producer starts with a warm-up (one request in 10 appended, nothing measured) that ends
when the subscriber has applied a first version, so no figure includes a process starting
up (the trainer is started once the joiner has written its first examples); then it runs at
the rate for the given seconds. It records when each click was
appended; the subscriber records when it applied
each registry version; a version's manifest says which examples-log offsets it covers; the
examples log says which click each positive example carries. Latency of a click = applied
wall time of the first version covering its example - its append wall time. Because the
joiner emits an impression's examples when its label window closes, the latency includes up
to ``--window-s`` of waiting by design; the report gives it with and without that wait.

``--workers N`` runs the joiner as ``freshrec join --workers N`` over ``--partitions P``
partitions (events routed by request id; the examples log has P partitions too, one per
event partition, and the trainer reads them all). The processes share the machine's cores
with no pinning: producer, joiner workers, trainer and subscriber are scheduled by the OS.

``--max-rate`` searches the highest rate that keeps click -> servable p50 <= 5 s and
p99 <= 10 s: for each worker count of ``--workers-list`` (default 1,2, over
``--partitions`` 2), rates of ``--rates`` in turn until the first that misses a bound (or
whose producer fell more than 2 s behind); on the file logs and, when redis-server is found
(or ``--redis``), on Redis Streams. Reported as ``freshness_max_rate_file`` /
``freshness_max_rate_redis`` (best over the worker counts) with the per-worker-count figures
and every run's p50/p99.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson

from freshrec.benchinfo import load_script, machine_info

ROOT = Path(__file__).resolve().parents[2]


_TS = re.compile(rb'"timestamp":([0-9.]+)')


P50_MAX_S, P99_MAX_S = 5.0, 10.0  # the freshness targets


WARMUP_KEEP = 10  # during the warm-up the producer appends 1 request in this many
WARMUP_MAX_S = 300.0


def producer(spec: str, rate: float, seconds: float, candidates: int, out: str,
             gate: str = "") -> None:
    """Simulate at about ``rate`` events/s with event time following the wall clock.

    Until the file ``gate`` exists (the subscriber applied a first version: every process of
    the loop has started and the loop runs end to end) it is a warm-up: one request in
    :data:`WARMUP_KEEP` is appended (all its events) and no click is measured. Then for
    ``seconds`` every request is appended, and the wall time each click of a request
    appended then was appended is recorded, with how far generation fell behind event time
    at worst (``behind_s``: when large, the machine could not hold the rate) and the rate
    achieved.
    """
    import zlib

    from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig
    from freshrec.stream.events import decode, partition_for
    from freshrec.stream.open import open_log

    log = open_log(spec)
    n_parts = log.partitions
    rps = rate / (1.0 + candidates * 0.08)
    sim = ClickStreamSimulator(SimulatorConfig(
        seed=0, n_users=5000, n_items=2000, candidates=candidates, requests_per_s=rps,
        bias=-2.5, start_time=int(time.time()), duplicate_rate=0.0, malformed_rate=0.0,
        late_click_rate=0.0, max_jitter_s=0.2, click_delay_median_s=1.0))
    clicks: dict[str, float] = {}
    batch: list[tuple[str, bytes]] = []
    keys: list[str] = []
    ts0 = w0 = 0.0
    behind = 0.0
    t_start = time.time()
    t_open = 0.0 if gate else t_start  # when the measured part began
    kept: set[str] = set()  # requests whose impression was appended
    measured: set[str] = set()  # ... after the warm-up
    sent = 0
    for rid, payload in sim.records():
        m = _TS.search(payload)
        ts = float(m.group(1)) if m else ts0
        if not ts0:
            ts0, w0 = ts, time.time()
        impression = not payload.startswith(b'{"v":1,"type":"action"')
        # adler32, not crc32: partition_for is crc32 % partitions, so crc32 % 10 == 0 would
        # send every warm-up request to even partitions (and hold the watermark back)
        if impression and (t_open or zlib.adler32(rid.encode()) % WARMUP_KEEP == 0):
            kept.add(rid)
            if t_open:
                measured.add(rid)
        if rid not in kept:
            continue
        if not impression and rid in measured:
            ev = decode(payload)
            if ev["action"] == "click":
                keys.append(f"{ev['request_id']}|{ev['item_id']}")
        batch.append((rid, payload))
        if len(batch) >= 64:
            lag = (time.time() - w0) - (ts - ts0)
            if lag < 0:
                time.sleep(-lag)
            _append(log, batch, n_parts, partition_for)
            now = time.time()
            if t_open:
                behind = max(behind, lag)
                sent += len(batch)
            for key in keys:
                clicks[key] = now
            batch, keys = [], []
            if not t_open and (os.path.exists(gate) or now - t_start > WARMUP_MAX_S):
                t_open = now
            elif t_open and now > t_open + seconds:
                break
    if batch:
        _append(log, batch, n_parts, partition_for)
        sent += len(batch)
    log.close()
    Path(out).write_bytes(orjson.dumps({
        "clicks": clicks, "behind_s": behind, "warmup_s": t_open - t_start,
        "events_per_s": sent / max(time.time() - t_open, 1e-9)}))


def _append(log, batch: list[tuple[str, bytes]], n_parts: int, partition_for) -> None:
    """Append ``(request id, record)`` pairs, each to its request's partition."""
    if n_parts == 1:
        log.append([r for _, r in batch])
        return
    parts: dict[int, list[bytes]] = {}
    for rid, r in batch:
        parts.setdefault(partition_for(rid, n_parts), []).append(r)
    for p, recs in parts.items():
        log.append(recs, partition=p)


SUBSCRIBER = """
import os, sys, time, orjson
from freshrec.config import load_config
from freshrec.sync import Registry, Subscriber
from freshrec.train.trainer import Trainer
cfg = load_config(sys.argv[1])
model = Trainer(cfg)
reg = Registry(sys.argv[2])
sub = Subscriber(reg)
applied = []
t_end = time.time() + float(sys.argv[4])
stop = sys.argv[5]  # the bench creates this file once the trainer has exited
ready = sys.argv[6]  # created at the first version applied: the producer's warm-up ends
last = False
while time.time() < t_end and not last:
    last = os.path.exists(stop)
    if reg.head() is not None and reg.head() != sub.version:
        v = sub.update(model.tables, model.model.load_state_dict)
        applied.append((v, time.time()))
        open(ready, "ab").close()
    time.sleep(0.02)
open(sys.argv[3], "wb").write(orjson.dumps(applied))
"""


def _coverage(reg, applied: list[list[float]]) -> list[tuple[dict[int, int], float]]:
    """``(examples-log end offset per partition, applied wall time)`` of every applied
    version, in version order."""
    cover = []
    applied_at = {int(v): t for v, t in applied}
    for v in reg.versions():
        offs = (reg.manifest(v).meta or {}).get("offsets")
        if offs and v in applied_at:
            cover.append(({int(p): int(o) for p, o in offs.items()}, applied_at[v]))
    return cover


def run_loop(rate: float, seconds: float, *, candidates: int, window_s: int, sync_s: float,
             workers: int = 1, partitions: int = 1, redis: str | None = None,
             say=print) -> dict[str, object]:
    """One run of the whole loop at ``rate`` events/s for ``seconds``; returns the figures."""
    fr = [sys.executable, "-m", "freshrec.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if redis:
            tag = f"{os.getpid()}-{time.monotonic_ns()}"
            events, examples = f"{redis}#fr-events-{tag}", f"{redis}#fr-examples-{tag}"
        else:
            events, examples = f"file:{d / 'events'}", f"file:{d / 'examples'}"
        cfg = d / "cfg.yaml"
        cfg.write_text((ROOT / "configs" / "simulator.yaml").read_text()
                       + "\n# bench overrides\n")
        sets = ["--set", f"sync.sparse_interval_s={sync_s}", "--set",
                "sync.dense_interval_s=30", "--set", "online.checkpoint_every_s=30",
                "--set", "online.max_records=2048", "--set", "train.threads=1"]
        from freshrec.stream.open import open_log

        open_log(events, partitions=partitions).close()
        open_log(examples, partitions=partitions).close()
        files: list[object] = []

        def logs(name: str):  # a file, not a pipe nobody reads (a full pipe blocks)
            f = open(d / f"{name}.log", "wb")  # noqa: SIM115 - closed after the run
            files.append(f)
            return f

        prod_cmd = [sys.executable, str(Path(__file__).resolve()), "--producer", events,
                    str(rate), str(seconds), str(candidates), str(d / "clicks.json"),
                    str(d / "loop-ready")]
        join = subprocess.Popen(fr + ["join", "--source", events, "--output", examples,
                                      "--state", str(d / "join"), "--window-s",
                                      str(window_s), "--lateness-s", "1",
                                      "--idle-timeout-s", "10", "--workers", str(workers)],
                                stdout=subprocess.DEVNULL, stderr=logs("join"))
        train_cmd = fr + ["train", "--online", "--config", str(cfg), "--source", examples,
                          "--registry", str(d / "reg"), "--run-dir", str(d / "run"),
                          "--idle-timeout", "20"] + sets
        stop = d / "trainer-exited"
        subp = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(cfg), str(d / "reg"),
                                 str(d / "applied.json"), str(seconds + 300), str(stop),
                                 str(d / "loop-ready")],
                                stdout=subprocess.DEVNULL, stderr=logs("subscriber"))
        say(f"running the loop at {rate:,.0f} events/s for {seconds:.0f} s, {workers} "
            f"joiner worker(s), {partitions} partition(s), {'redis' if redis else 'file'} "
            f"logs ...")
        arrivals: list[tuple[dict[int, int], float]] = []  # (end offsets, wall time seen)
        watching = threading.Event()

        def watch() -> None:
            ex = open_log(examples)
            while not watching.is_set():
                ends = {p: ex.end_offset(p) for p in range(ex.partitions)}
                if not arrivals or ends != arrivals[-1][0]:
                    arrivals.append((ends, time.time()))
                time.sleep(0.01)
            ex.close()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        prod = subprocess.Popen(prod_cmd)
        procs = [join, subp, prod]
        try:
            # the trainer starts once the joiner has written examples (still in the
            # warm-up): a joiner worker, which loads torch with its config, can take a
            # minute to start on a busy machine, longer than the trainer's idle timeout
            t_wait = time.time()
            while not any(any(ends.values()) for ends, _ in arrivals[-1:]):
                if time.time() - t_wait > WARMUP_MAX_S or prod.poll() is not None:
                    break
                time.sleep(0.1)
            train = subprocess.Popen(train_cmd, stdout=subprocess.DEVNULL,
                                     stderr=logs("train"))
            procs.append(train)
            if prod.wait(timeout=seconds + 2 * WARMUP_MAX_S + 120) != 0:
                raise RuntimeError(f"the producer exited {prod.returncode}")
            for p in (join, train):
                p.wait(timeout=seconds + 120)
            stop.touch()
            subp.wait(timeout=seconds + 120)
        finally:
            watching.set()
            for p in procs:
                if p.poll() is None:
                    p.kill()
        for f in files:
            f.close()  # type: ignore[attr-defined]
        for name in ("join", "train", "subscriber"):
            tail = (d / f"{name}.log").read_bytes()[-2000:].decode(errors="replace")
            if "Traceback" in tail:
                say(f"{name} failed:\n{tail}")
        applied = orjson.loads((d / "applied.json").read_bytes())
        produced = orjson.loads((d / "clicks.json").read_bytes())
        clicks = produced["clicks"]
        from freshrec.stream.events import decode_examples
        from freshrec.sync import Registry

        cover = _coverage(Registry(d / "reg"), applied)
        log = open_log(examples)
        lat, to_example = [], []
        for part in range(log.partitions):
            off = 0
            while recs := log.read(part, off, 4096):
                for r in recs:
                    batch, _ = decode_examples([r.value])
                    if batch is None:
                        continue
                    cols = batch.to_pydict()
                    t_serv = next((t for ends, t in cover if ends.get(part, 0) > r.offset),
                                  None)
                    t_ex = next((t for ends, t in arrivals if ends.get(part, 0) > r.offset),
                                None)
                    for i in range(batch.num_rows):
                        if cols["click"][i] > 0 and t_serv is not None:
                            t_click = clicks.get(
                                f"{cols['request_id'][i]}|{cols['item_id'][i]}")
                            if t_click is not None:
                                lat.append(t_serv - t_click)
                                if t_ex is not None:
                                    to_example.append(t_ex - t_click)
                off = recs[-1].offset + 1
        if redis:
            log.delete()
            src = open_log(events)
            src.delete()
            src.close()
        log.close()
    lat_a = np.array(lat) if lat else np.array([np.nan])
    ex_a = np.array(to_example) if to_example else np.array([np.nan])
    return {
        "target_events_per_s": rate, "seconds": seconds,
        "events_per_s": float(produced["events_per_s"]),
        "warmup_s": float(produced["warmup_s"]),
        "window_s": window_s, "sync_interval_s": sync_s, "candidates": candidates,
        "workers": workers, "partitions": partitions,
        "clicks_measured": len(lat),
        "event_to_servable_p50_s": float(np.nanpercentile(lat_a, 50)),
        "event_to_servable_p99_s": float(np.nanpercentile(lat_a, 99)),
        "click_to_example_p50_s": float(np.nanpercentile(ex_a, 50)),
        "click_to_example_p99_s": float(np.nanpercentile(ex_a, 99)),
        "producer_behind_s": float(produced["behind_s"]),
        "versions_applied": len(applied), "logs": "redis" if redis else "file",
    }


def meets_targets(run: dict[str, object]) -> bool:
    """Whether a run kept click -> servable p50 <= 5 s and p99 <= 10 s at its rate (with
    clicks measured, and the producer no more than 2 s behind event time)."""
    p50, p99 = run["event_to_servable_p50_s"], run["event_to_servable_p99_s"]
    return (int(run["clicks_measured"]) > 0  # type: ignore[call-overload]
            and float(p50) <= P50_MAX_S and float(p99) <= P99_MAX_S  # type: ignore[arg-type]
            and float(run["producer_behind_s"]) <= 2.0)  # type: ignore[arg-type]


def max_rate(rates: list[float], worker_counts: list[int], *, redis: str | None,
             say=print, **loop: object) -> dict[str, object]:
    """The highest rate of ``rates`` (in order, until the first miss) meeting the targets,
    per worker count; the runs are returned too."""
    name = "redis" if redis else "file"
    out: dict[str, object] = {}
    runs = []
    for w in worker_counts:
        best = 0.0
        for r in rates:
            run = run_loop(r, workers=w, redis=redis, say=say, **loop)  # type: ignore[arg-type]
            ok = meets_targets(run)
            runs.append({k: run[k] for k in ("target_events_per_s", "events_per_s",
                                             "workers", "event_to_servable_p50_s",
                                             "event_to_servable_p99_s", "clicks_measured",
                                             "producer_behind_s", "warmup_s")}
                        | {"meets": ok})
            say(f"  {name} workers={w} rate={r:,.0f}: p50 "
                f"{run['event_to_servable_p50_s']:.2f} s p99 "
                f"{run['event_to_servable_p99_s']:.2f} s -> {'ok' if ok else 'missed'}")
            if not ok:
                break
            best = r
        out[f"freshness_max_rate_{name}_workers{w}"] = best
    out[f"freshness_max_rate_{name}"] = max(
        float(out[f"freshness_max_rate_{name}_workers{w}"])  # type: ignore[arg-type]
        for w in worker_counts)
    out[f"freshness_runs_{name}"] = runs
    return out


def _redis_server(url: str | None):
    """bench_log's private redis-server (or ``url``)."""
    mod = load_script(ROOT / "benchmarks" / "stream" / "bench_log.py", "bench_log_for_freshness")
    return mod.redis_server(url)


def main(argv: list[str], verbose: bool = True) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="freshrec bench freshness")
    ap.add_argument("--quick", action="store_true",
                    help="20 s run at 2,000 events/s; with --max-rate: 10 s runs at 1k, 2k, "
                         "4k, 8k, 16k events/s")
    ap.add_argument("--rate", type=float, default=None, help="events/s (default 20,000)")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--window-s", type=int, default=2)
    ap.add_argument("--sync-s", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=1, help="joiner worker processes")
    ap.add_argument("--partitions", type=int, default=None,
                    help="partitions of the events and examples logs (default: the workers; "
                         "2 with --max-rate)")
    ap.add_argument("--redis", default=None, help="redis://HOST:PORT/0 for the logs")
    ap.add_argument("--max-rate", action="store_true",
                    help="search freshness_max_rate_file / _redis (see the module docstring)")
    ap.add_argument("--rates", default=None,
                    help="comma-separated events/s for --max-rate (default 2500,5000,7500,"
                         "10000,15000,20000; --quick 1000,2000,4000,8000,16000)")
    ap.add_argument("--workers-list", default="1,2", help="worker counts for --max-rate")
    ap.add_argument("--no-redis", action="store_true", help="--max-rate on file logs only")
    opts = ap.parse_args(argv)
    say = print if verbose else (lambda *a, **k: None)
    if opts.max_rate:
        rates = [float(x) for x in (opts.rates or ("1000,2000,4000,8000,16000" if opts.quick else
                                                   "2500,5000,7500,10000,15000,20000")
                                    ).split(",")]
        loop = {"seconds": opts.seconds or (10.0 if opts.quick else 30.0),
                "candidates": opts.candidates, "window_s": opts.window_s,
                "sync_s": opts.sync_s, "partitions": opts.partitions or 2}
        workers = [int(w) for w in opts.workers_list.split(",")]
        result: dict[str, object] = {"bench": "freshness", "mode": "max_rate",
                                     "p50_max_s": P50_MAX_S, "p99_max_s": P99_MAX_S,
                                     "rates": rates, **loop}
        result.update(max_rate(rates, workers, redis=None, say=say, **loop))
        if opts.no_redis:
            result["redis_skipped"] = "--no-redis"
        else:
            with _redis_server(opts.redis) as url:
                if url is None:
                    result["redis_skipped"] = "redis-server not found"
                else:
                    result.update(max_rate(rates, workers, redis=url, say=say, **loop))
        result.update(threads=1, **machine_info())
        say({k: v for k, v in result.items() if not k.startswith("freshness_runs")})
        return result
    rate = opts.rate or (2000.0 if opts.quick else 20000.0)
    seconds = opts.seconds or (20.0 if opts.quick else 60.0)
    result = {"bench": "freshness", **run_loop(
        rate, seconds, candidates=opts.candidates, window_s=opts.window_s,
        sync_s=opts.sync_s, workers=opts.workers,
        partitions=opts.partitions or opts.workers, redis=opts.redis, say=say),
        "threads": 1, **machine_info()}
    say(result)
    return result


if __name__ == "__main__" and sys.argv[1:2] == ["--producer"]:
    spec, rate_s, seconds_s, cands, out_path, gate_path = sys.argv[2:8]
    producer(spec, float(rate_s), float(seconds_s), int(cands), out_path, gate_path)
