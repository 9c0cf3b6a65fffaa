"""Freshness: wall time from a click entering the event log to a serving-side model holding
an update trained on it (``freshrec bench freshness --json [--quick] [--rate R]``).

The whole loop runs as separate processes on this machine, embedded defaults (file logs,
registry directory) or ``--redis URL`` for the logs:

    producer (simulator paced so event time == wall time)  ->  events log
    freshrec join       (label window --window-s, lateness 1 s)  ->  examples log
    freshrec train --online  (publishes sparse deltas every --sync-s)  ->  registry
    subscriber          (Subscriber.update in a loop, like freshrec serve)

The producer records when each click was appended; the subscriber records when it applied
each registry version; a version's manifest says which examples-log offsets it covers; the
examples log says which click each positive example carries. Latency of a click = applied
wall time of the first version covering its example - its append wall time. Because the
joiner emits an impression's examples when its label window closes, the latency includes up
to ``--window-s`` of waiting by design; the report gives it with and without that wait.
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

from freshrec.benchinfo import machine_info

ROOT = Path(__file__).resolve().parents[2]


_TS = re.compile(rb'"timestamp":([0-9.]+)')


def producer(spec: str, rate: float, seconds: float, candidates: int, out: str) -> None:
    """Simulate at about ``rate`` events/s with event time following the wall clock.

    Records the wall time each click was appended, and how far generation fell behind event
    time at worst (``behind_s``: when large, the machine could not hold the rate).
    """
    from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig
    from freshrec.stream.events import decode
    from freshrec.stream.open import open_log

    log = open_log(spec)
    rps = rate / (1.0 + candidates * 0.08)
    sim = ClickStreamSimulator(SimulatorConfig(
        seed=0, n_users=5000, n_items=2000, candidates=candidates, requests_per_s=rps,
        bias=-2.5, start_time=int(time.time()), duplicate_rate=0.0, malformed_rate=0.0,
        late_click_rate=0.0, max_jitter_s=0.2, click_delay_median_s=1.0))
    clicks: dict[str, float] = {}
    batch: list[bytes] = []
    keys: list[str] = []
    ts0 = w0 = 0.0
    behind = 0.0
    t_end = time.time() + seconds
    for _, payload in sim.records():
        m = _TS.search(payload)
        ts = float(m.group(1)) if m else ts0
        if not ts0:
            ts0, w0 = ts, time.time()
        if payload.startswith(b'{"v":1,"type":"action"'):
            ev = decode(payload)
            if ev["action"] == "click":
                keys.append(f"{ev['request_id']}|{ev['item_id']}")
        batch.append(payload)
        if len(batch) >= 64:
            lag = (time.time() - w0) - (ts - ts0)
            if lag < 0:
                time.sleep(-lag)
            behind = max(behind, lag)
            log.append(batch)
            now = time.time()
            for key in keys:
                clicks[key] = now
            batch, keys = [], []
            if now > t_end:
                break
    if batch:
        log.append(batch)
    log.close()
    Path(out).write_bytes(orjson.dumps({"clicks": clicks, "behind_s": behind}))


SUBSCRIBER = """
import sys, time, orjson
from freshrec.config import load_config
from freshrec.sync import Registry, Subscriber
from freshrec.train.trainer import Trainer
cfg = load_config(sys.argv[1])
model = Trainer(cfg)
reg = Registry(sys.argv[2])
sub = Subscriber(reg)
applied = []
t_end = time.time() + float(sys.argv[4])
while time.time() < t_end:
    if reg.head() is not None and reg.head() != sub.version:
        v = sub.update(model.tables, model.model.load_state_dict)
        applied.append((v, time.time()))
    time.sleep(0.02)
open(sys.argv[3], "wb").write(orjson.dumps(applied))
"""


def main(argv: list[str], verbose: bool = True) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="freshrec bench freshness")
    ap.add_argument("--quick", action="store_true", help="20 s run at 2,000 events/s")
    ap.add_argument("--rate", type=float, default=None, help="events/s (default 20,000)")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--window-s", type=int, default=2)
    ap.add_argument("--sync-s", type=float, default=1.0)
    ap.add_argument("--redis", default=None, help="redis://HOST:PORT/0 for the logs")
    opts = ap.parse_args(argv)
    rate = opts.rate or (2000.0 if opts.quick else 20000.0)
    seconds = opts.seconds or (20.0 if opts.quick else 60.0)
    say = print if verbose else (lambda *a, **k: None)
    fr = [sys.executable, "-m", "freshrec.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if opts.redis:
            events, examples = f"{opts.redis}#fr-events-{os.getpid()}", \
                f"{opts.redis}#fr-examples-{os.getpid()}"
        else:
            events, examples = f"file:{d / 'events'}", f"file:{d / 'examples'}"
        cfg = d / "cfg.yaml"
        cfg.write_text((ROOT / "configs" / "simulator.yaml").read_text()
                       + "\n# bench overrides\n")
        sets = ["--set", f"sync.sparse_interval_s={opts.sync_s}", "--set",
                "sync.dense_interval_s=30", "--set", "online.checkpoint_every_s=30",
                "--set", "online.max_records=2048", "--set", "train.threads=1"]
        from freshrec.stream.open import open_log

        open_log(events).close()
        open_log(examples).close()
        prod_cmd = [sys.executable, str(Path(__file__).resolve()), "--producer", events,
                    str(rate), str(seconds), str(opts.candidates), str(d / "clicks.json")]
        join = subprocess.Popen(fr + ["join", "--source", events, "--output", examples,
                                      "--state", str(d / "join"), "--window-s",
                                      str(opts.window_s), "--lateness-s", "1",
                                      "--idle-timeout-s", "5"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        train = subprocess.Popen(fr + ["train", "--online", "--config", str(cfg), "--source",
                                       examples, "--registry", str(d / "reg"), "--run-dir",
                                       str(d / "run"), "--idle-timeout", "8"] + sets,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        subp = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(cfg), str(d / "reg"),
                                 str(d / "applied.json"), str(seconds + 20)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        say(f"running the loop at {rate:,.0f} events/s for {seconds:.0f} s ...")
        t0 = time.time()
        arrivals: list[tuple[int, float]] = []  # (examples-log end offset, wall time seen)
        watching = threading.Event()

        def watch() -> None:
            ex = open_log(examples)
            while not watching.is_set():
                end = ex.end_offset(0)
                if not arrivals or end != arrivals[-1][0]:
                    arrivals.append((end, time.time()))
                time.sleep(0.01)
            ex.close()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            subprocess.run(prod_cmd, check=True, timeout=seconds + 120)
            produce_s = time.time() - t0
            for p in (join, train, subp):
                p.wait(timeout=seconds + 120)
        finally:
            watching.set()
            for p in (join, train, subp):
                if p.poll() is None:
                    p.kill()
        applied = orjson.loads((d / "applied.json").read_bytes())
        produced = orjson.loads((d / "clicks.json").read_bytes())
        clicks = produced["clicks"]
        from freshrec.stream.events import decode_examples  # type: ignore[attr-defined]
        from freshrec.sync import Registry

        reg = Registry(d / "reg")
        cover = []  # (offset end covered, applied wall time), in version order
        applied_at = {int(v): t for v, t in applied}
        for v in reg.versions():
            offs = (reg.manifest(v).meta or {}).get("offsets")
            if offs and v in applied_at:
                cover.append((int(offs.get("0", offs.get(0, 0))), applied_at[v]))
        log = open_log(examples)
        lat, to_example = [], []
        off = 0
        while True:
            recs = log.read(0, off, 4096)
            if not recs:
                break
            for r in recs:
                batch, _ = decode_examples([r.value])
                if batch is None:
                    continue
                cols = batch.to_pydict()
                t_serv = next((t for end, t in cover if end > r.offset), None)
                for i in range(batch.num_rows):
                    if cols["click"][i] > 0 and t_serv is not None:
                        t_click = clicks.get(f"{cols['request_id'][i]}|{cols['item_id'][i]}")
                        if t_click is not None:
                            lat.append(t_serv - t_click)
                            t_ex = next((t for end, t in arrivals if end > r.offset), None)
                            if t_ex is not None:
                                to_example.append(t_ex - t_click)
            off = recs[-1].offset + 1
        log.close()
    lat_a = np.array(lat) if lat else np.array([np.nan])
    ex_a = np.array(to_example) if to_example else np.array([np.nan])
    result: dict[str, object] = {
        "bench": "freshness", "target_events_per_s": rate, "seconds": seconds,
        "events_per_s": rate * seconds / max(produce_s, 1e-9) if produce_s else 0.0,
        "window_s": opts.window_s, "sync_interval_s": opts.sync_s,
        "clicks_measured": len(lat),
        "event_to_servable_p50_s": float(np.nanpercentile(lat_a, 50)),
        "event_to_servable_p99_s": float(np.nanpercentile(lat_a, 99)),
        "click_to_example_p50_s": float(np.nanpercentile(ex_a, 50)),
        "click_to_example_p99_s": float(np.nanpercentile(ex_a, 99)),
        "producer_behind_s": float(produced["behind_s"]),
        "versions_applied": len(applied), "logs": "redis" if opts.redis else "file",
        "threads": 1, **machine_info(),
    }
    say(result)
    return result


if __name__ == "__main__" and sys.argv[1:2] == ["--producer"]:
    spec, rate_s, seconds_s, cands, out_path = sys.argv[2:7]
    producer(spec, float(rate_s), float(seconds_s), int(cands), out_path)
