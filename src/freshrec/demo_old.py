"""``freshrec demo``: the whole loop on the embedded defaults, in one command.

What runs (one work directory, default ``runs/demo-<timestamp>``)::

    traffic driver (this process)  --POST /score-->  freshrec serve  (child)
      simulated users, candidates;                      |  impressions
      clicks drawn from the simulator's                 v
      true click probability        --actions-->  logs/events  (file log, 2 partitions)
                                                        |
                                                  freshrec join   (child)  label window
                                                        v
                                                  logs/examples
                                                        |
                                                  freshrec train --online  (child)
                                                        v
                                                  registry/  (full snapshot, sparse deltas
                                                        |     every ~2 s, dense every 10 s)
                                                        +----> picked up by freshrec serve

- **Bootstrap**: the online trainer publishes its (untrained) initial model as a full
  snapshot at its first step, before any example arrives; serving starts once the registry
  has that version. Everything the model knows afterwards it learned during the demo.
- **The event log has one writer per partition** (the file log takes an exclusive lock per
  partition): the server writes impressions to partition 0 -- the driver only sends request
  ids that :func:`~freshrec.stream.events.partition_for` maps there -- and the driver writes
  click actions to partition 1. The joiner reads both. With ``redis=`` the logs are Redis
  Streams with one partition and both write to it.
- **Clicks**: each request is an impression of the
  :class:`~freshrec.data.simulate.ClickStreamSimulator` (its user, features and candidates);
  the driver posts it to the server, draws each candidate's click from the simulator's true
  click probability (``true_p``, from the latent vectors) and appends the click when its
  delay (log-normal, shorter than the label window) has passed, with event time = the
  request's time + delay. The server's impression carries the same ``request_id``, so the
  joiner joins the click to what the server logged: the loop is closed.
- **Measured**: the driver's end-to-end latency per request and the AUC of the scores the
  server returned against the clicks drawn ("serving AUC"; the AUC of the true click
  probabilities, "oracle AUC", is the ceiling any model can reach); the log's growth; the examples
  the joiner wrote; the registry's newest version and the trainer's progressive AUC (from
  each version's meta); the version and freshness the server reports on ``/metrics``.

:func:`run_demo` runs it; children live in their own process groups and are always stopped
(SIGINT, then SIGKILL) when it returns, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from freshrec._validate import is_int, is_number, require
from freshrec.errors import FreshrecError

__all__ = ["DemoConfig", "DemoError", "MODEL_CONFIG", "TrafficDriver", "run_demo", "summary_table"]

log = logging.getLogger(__name__)

#: The demo's model (YAML; ``{sync_s}`` is filled in from :class:`DemoConfig`).
MODEL_CONFIG = """\
# freshrec demo: DeepFM on the click-stream simulator's joined examples (configs/simulator.yaml
# with larger learning rates, so that a short demo learns visibly, and dense every 10 s)
features:
  tables:
    user: {dim: 16, optimizer: {kind: rowwise_adagrad, lr: 0.1}, ttl_s: 86400}
    item: {dim: 16, optimizer: {kind: rowwise_adagrad, lr: 0.1}, ttl_s: 86400}
    attr: {dim: 16, optimizer: {kind: adagrad, lr: 0.1}}
  slots:
    user_id: {table: user}
    item_id: {table: item}
    u_recent_clicks: {table: item, kind: multi, max_len: 20, pooling: mean, id_space: item_id}
    u_gender: {table: attr}
    u_age: {table: attr}
    u_region: {table: attr}
    i_category: {table: attr}
    i_brand: {table: attr}
    position: {table: attr}
  dense:
    i_price: {norm: none}
  labels: [click]
model:
  kind: deepfm
  mlp: [64, 32]
train:
  batch_size: 256
  dense_lr: 0.005
  threads: 1
  expire_every_s: 600
  metrics_window_s: 600
online:
  checkpoint_every_s: 30
  window_report_s: 300
sync:
  sparse_interval_s: {sync_s}
  dense_interval_s: 10
  full_interval_s: 600
"""


class DemoError(FreshrecError, RuntimeError):
    """The demo could not run: a child process died or a stage did not come up in time."""


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What :func:`run_demo` runs.

    Parameters
    ----------
    duration_s
        Seconds of traffic once the loop is up (start-up and shut-down come on top).
    workdir
        Where everything is written; ``None``: ``runs/demo-<timestamp>``.
    rate
        Requests per second sent by the driver.
    candidates
        Candidates per request.
    users, items
        Simulator population.
    window_s, lateness_s
        The joiner's label window and allowed lateness (event-time seconds).
    sync_s
        The online trainer's sparse-delta interval (wall seconds).
    redis
        ``redis://HOST:PORT/DB``: Redis Streams for the logs instead of file logs.
    seed
        Seed of the simulator and of the drawn clicks.
    startup_timeout_s
        Longest wait for each stage to come up (generous: a loaded 2-core machine).

    Examples
    --------
    >>> DemoConfig(duration_s=20, rate=10).candidates
    20
    >>> DemoConfig(rate=0)
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: DemoConfig: rate must be a number > 0, got 0
    """

    duration_s: float = 120.0
    workdir: str | None = None
    rate: float = 20.0
    candidates: int = 20
    users: int = 2000
    items: int = 500
    window_s: int = 5
    lateness_s: int = 2
    sync_s: float = 2.0
    redis: str | None = None
    seed: int = 0
    startup_timeout_s: float = 240.0

    def __post_init__(self) -> None:
        o = "DemoConfig"
        for f in ("duration_s", "rate", "sync_s", "startup_timeout_s"):
            v = getattr(self, f)
            require(is_number(v) and v > 0, o, f, "a number > 0", v)
        for f in ("candidates", "users", "items", "window_s"):
            v = getattr(self, f)
            require(is_int(v) and v >= 1, o, f, "an int >= 1", v)
        for f in ("lateness_s", "seed"):
            v = getattr(self, f)
            require(is_int(v) and v >= 0, o, f, "an int >= 0", v)
        require(self.candidates <= self.items, o, "candidates", f"<= items ({self.items})",
                self.candidates)
        require(self.redis is None or self.redis.startswith(("redis://", "unix://")), o,
                "redis", "a redis:// or unix:// URL", self.redis)


# ---------------------------------------------------------------------------- children
#: A child runs ``freshrec <argv>`` with SIGINT as KeyboardInterrupt even when the demo was
#: started with SIGINT ignored (``nohup``, ``cmd &``): the demo stops children with SIGINT.
_CHILD_MAIN = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "from freshrec.cli import main; sys.exit(main(sys.argv[1:]))")


class _Child:
    """A ``freshrec`` command in its own process group, output to a file."""

    def __init__(self, name: str, argv: list[str], out: Path) -> None:
        self.name, self.argv, self.out = name, argv, out
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        with open(self.out, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_MAIN, *self.argv], stdout=fh,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        log.info("demo started child=%s pid=%d", self.name, self.proc.pid)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def check(self) -> None:
        """Raise :class:`DemoError` (with the tail of its output) if the child has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise DemoError(f"{self.name} exited with code {self.proc.returncode}; the end of "
                            f"its output ({self.out}):\n{self.tail()}")

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.out.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def wait(self, timeout_s: float) -> bool:
        """Wait for the exit; ``True`` once it has exited."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=max(timeout_s, 0.0))
            return True
        except subprocess.TimeoutExpired:
            return False


def _stop_all(children: list[_Child], grace_s: float = 30.0) -> None:
    """SIGINT every child's group (they checkpoint, flush and exit), then SIGKILL stragglers."""
    for c in children:
        c.signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for c in children:
        if not c.wait(deadline - time.monotonic()):
            log.warning("demo: %s did not stop within %.0f s; killing it", c.name, grace_s)
    for c in children:
        if c.proc is not None:
            if c.proc.poll() is None:
                c.signal(signal.SIGKILL)
                c.wait(10.0)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGKILL)  # anything left in its group


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_for(what: str, ready: Callable[[], bool], children: list[_Child],
              timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        for c in children:
            c.check()
        if time.monotonic() > deadline:
            raise DemoError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.2)


# ---------------------------------------------------------------------------- traffic
def _percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1e3) if values else math.nan


@dataclass
class _DriverStats:
    requests: int = 0
    errors: int = 0
    clicks_drawn: int = 0
    clicks_written: int = 0
    latencies: list[float] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    true_p: list[np.ndarray] = field(default_factory=list)
    last_error: str = ""


class TrafficDriver:
    """Sends simulated requests to a server and writes the clicks they get to the event log.

    Parameters
    ----------
    url : str
        ``http://host:port`` of ``freshrec serve``.
    events : Log
        The event log the server writes impressions to; clicks go to its last partition.
    config : DemoConfig
        ``rate``, ``candidates``, population, ``window_s`` and ``seed`` are used.

    The driver runs on a thread (:meth:`start` / :meth:`stop`); :meth:`take` hands over what
    was measured since the last call.
    """

    def __init__(self, url: str, events: Any, config: DemoConfig) -> None:
        self.url = url
        self.events = events
        self.config = config
        self._stats = _DriverStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- public
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_safe, name="freshrec-demo-driver",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def take(self) -> _DriverStats:
        """What was measured since the previous call (counts are deltas)."""
        with self._lock:
            out, self._stats = self._stats, _DriverStats(last_error=self._stats.last_error)
        return out

    # -- the loop
    def _run_safe(self) -> None:
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - reported by the demo's monitor
            self.error = e
            log.exception("demo driver failed")

    def _run(self) -> None:
        from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig
        from freshrec.stream.events import decode, encode, partition_for

        c = self.config
        sim = ClickStreamSimulator(SimulatorConfig(
            seed=c.seed, n_users=c.users, n_items=c.items, candidates=c.candidates,
            requests_per_s=c.rate, bias=-2.0, start_time=int(time.time()),
            duplicate_rate=0.0, malformed_rate=0.0, max_jitter_s=0.0, late_click_rate=0.0))
        rng = np.random.default_rng(c.seed + 1)
        parts = self.events.partitions
        action_part = parts - 1
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        pending: list[tuple[float, int, bytes]] = []  # (due wall time, seq, action event)
        seq = 0
        k = 0
        max_delay = max(0.2, 0.8 * c.window_s)
        next_t = time.monotonic()

        def flush_due() -> None:
            now = time.time()
            due = []
            while pending and pending[0][0] <= now:
                due.append(heapq.heappop(pending)[2])
            if due:
                self.events.append(due, partition=action_part)
                with self._lock:
                    self._stats.clicks_written += len(due)

        for _, payload in sim.records():
            if self._stop.is_set():
                break
            ev = decode(payload)
            if ev.get("type") != "impression":
                continue
            while True:  # wait for the send time, writing clicks as they fall due
                flush_due()
                wait = next_t - time.monotonic()
                if wait <= 0 or self._stop.is_set():
                    break
                nxt = pending[0][0] - time.time() if pending else wait
                time.sleep(max(0.0, min(wait, nxt, 0.05)))
            if self._stop.is_set():
                break
            while True:  # a request id whose impression the server writes to partition 0
                rid = f"demo-{c.seed}-{k}"
                k += 1
                if parts == 1 or partition_for(rid, parts) == 0:
                    break
            cands = ev["candidates"]
            true_p = np.array([float(x.get("true_p", 0.0)) for x in cands])
            body = {"request_id": rid, "user_id": ev["user_id"], "user": ev["user"],
                    "candidates": [{"item_id": x["item_id"], **x.get("features", {})}
                                   for x in cands]}
            now = time.time()
            body["now"] = now
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/score", body=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                status, data = 0, str(e).encode()
            latency = time.perf_counter() - t0
            next_t += 1.0 / c.rate
            if next_t < time.monotonic() - 1.0:  # far behind: do not burst to catch up
                next_t = time.monotonic()
            if status != 200:
                with self._lock:
                    self._stats.errors += 1
                    self._stats.last_error = f"HTTP {status}: {data[:200]!r}"
                continue
            scores = np.asarray(json.loads(data)["scores"], dtype=np.float64)
            clicked = rng.random(len(true_p)) < true_p
            for j in np.flatnonzero(clicked).tolist():
                delay = min(0.7 * math.exp(rng.normal(0.0, 0.6)), max_delay)
                item = cands[j]["item_id"]
                action = encode({"v": 1, "type": "action", "event_id": f"c-{rid}-{item}",
                                 "request_id": rid, "item_id": item, "action": "click",
                                 "timestamp": round(now + delay, 3)})
                heapq.heappush(pending, (now + delay, seq, action))
                seq += 1
            with self._lock:
                s = self._stats
                s.requests += 1
                s.clicks_drawn += int(clicked.sum())
                s.latencies.append(latency)
                s.scores.append(scores)
                s.labels.append(clicked.astype(np.float64))
                s.true_p.append(true_p)
        conn.close()


# ---------------------------------------------------------------------------- monitoring
def _parse_prometheus(text: str) -> dict[str, float]:
    """``name{labels} value`` lines -> ``{name: value}``, summing a metric's label sets.

    >>> _parse_prometheus('# HELP x y\\nfreshrec_model_version 3\\na{k="1"} 2\\na{k="2"} 1\\n')
    {'freshrec_model_version': 3.0, 'a': 3.0}
    """
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        try:
            v = float(value)
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + v if not math.isnan(v) else math.nan
    return out


def _auc(scores: list[np.ndarray], labels: list[np.ndarray]) -> float:
    from freshrec.train.metrics import AUC

    if not scores:
        return math.nan
    m = AUC()
    m.update(np.concatenate(labels), np.concatenate(scores))
    return float(m.get())


class _Monitor:
    """Samples every stage once per tick; keeps the time series and running totals."""

    def __init__(self, config: DemoConfig, paths: dict[str, Any], url: str,
                 driver: TrafficDriver) -> None:
        from freshrec.stream.open import open_log
        from freshrec.sync.registry import Registry

        self.config = config
        self.driver = driver
        self.registry = Registry(paths["registry"])
        self.events = open_log(paths["events"])
        self.examples = open_log(paths["examples"])
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self._host, self._port = host, int(port)
        self.samples: list[dict[str, Any]] = []
        self.latencies: list[float] = []
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.true_p: list[np.ndarray] = []
        self._recent: list[tuple[float, _DriverStats]] = []
        self.totals = {"requests": 0, "errors": 0, "clicks_drawn": 0, "clicks_written": 0,
                       "examples_out": 0}
        self._ex_offset = 0
        self._t0 = time.monotonic()
        self._last_events: tuple[float, int] | None = None
        self.server: dict[str, float] = {}
        self.meta: dict[str, Any] = {}
        self.last_error = ""

    def close(self) -> None:
        self.events.close()
        self.examples.close()

    def _server_metrics(self) -> dict[str, float]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            return _parse_prometheus(resp.read().decode()) if resp.status == 200 else {}
        except (OSError, http.client.HTTPException):
            return {}
        finally:
            conn.close()

    def _count_examples(self) -> None:
        from freshrec.stream.events import decode_examples

        while True:
            recs = self.examples.read(0, self._ex_offset, 64)
            if not recs:
                return
            rb, _ = decode_examples([r.value for r in recs])
            self.totals["examples_out"] += 0 if rb is None else rb.num_rows
            self._ex_offset = recs[-1].offset + 1

    def tick(self) -> dict[str, Any]:
        now = time.monotonic()
        s = self.driver.take()
        for k in ("requests", "errors", "clicks_drawn", "clicks_written"):
            self.totals[k] += getattr(s, k)
        self.last_error = s.last_error or self.last_error
        self.latencies += s.latencies
        self.scores += s.scores
        self.labels += s.labels
        self.true_p += s.true_p
        self._recent = [(t, r) for t, r in self._recent if now - t < 10.0] + [(now, s)]
        span = max(now - self._recent[0][0], 1.0) if len(self._recent) > 1 else 1.0
        lat = [x for _, r in self._recent for x in r.latencies]
        n_events = sum(self.events.end_offset(p) for p in range(self.events.partitions))
        ev_rate = math.nan
        if self._last_events is not None:
            ev_rate = (n_events - self._last_events[1]) / max(now - self._last_events[0], 1e-3)
        self._last_events = (now, n_events)
        self._count_examples()
        head = self.registry.head()
        meta: dict[str, Any] = {}
        head_time = None
        if head is not None:
            with contextlib.suppress(FreshrecError, OSError, ValueError):
                m = self.registry.manifest(head)
                meta, head_time = m.meta, m.event_time
        self.meta = meta or self.meta
        server = self._server_metrics()
        self.server = server or self.server
        served = server.get("freshrec_model_version", math.nan)
        fresh = server.get("freshrec_freshness_seconds", math.nan)
        metrics = meta.get("metrics") or {}
        sample = {
            "t_s": round(now - self._t0, 2),
            "requests": self.totals["requests"],
            "errors": self.totals["errors"],
            "requests_per_s": sum(r.requests for _, r in self._recent[1:]) / span
            if len(self._recent) > 1 else float(s.requests),
            "latency_p50_ms": _percentile_ms(lat, 50),
            "latency_p99_ms": _percentile_ms(lat, 99),
            "events": n_events,
            "events_per_s": ev_rate,
            "clicks_written": self.totals["clicks_written"],
            "examples_out": self.totals["examples_out"],
            "registry_version": head,
            "registry_event_time": head_time,
            "examples_trained": meta.get("examples"),
            "online_auc": metrics.get("auc"),
            "serving_auc_10s": _auc([x for _, r in self._recent for x in r.scores],
                                    [x for _, r in self._recent for x in r.labels]),
            "served_version": None if math.isnan(served) else int(served),
            "freshness_s": None if math.isnan(fresh) else round(fresh, 2),
            "updates_applied": int(server.get("freshrec_updates_total", 0.0)),
        }
        self.samples.append(sample)
        return sample


def _fmt(v: Any, spec: str = "", none: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


def _live_table(sample: dict[str, Any], config: DemoConfig, elapsed: float) -> Any:
    from rich.table import Table

    t = Table(title=f"freshrec demo  {elapsed:5.0f} / {config.duration_s:.0f} s",
              show_header=False, min_width=60)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    rows = [
        ("requests (ok / errors)", f"{sample['requests']:,} / {sample['errors']:,}"),
        ("requests/s", _fmt(sample["requests_per_s"], ".1f")),
        ("latency p50 / p99 (ms, last 10 s)",
         f"{_fmt(sample['latency_p50_ms'], '.2f')} / {_fmt(sample['latency_p99_ms'], '.2f')}"),
        ("events in the log (events/s)",
         f"{sample['events']:,} ({_fmt(sample['events_per_s'], ',.0f')})"),
        ("examples joined", f"{sample['examples_out']:,}"),
        ("examples trained", _fmt(sample["examples_trained"], ",")),
        ("online AUC (trainer, progressive)", _fmt(sample["online_auc"], ".4f")),
        ("serving AUC (scores vs clicks, 10 s)", _fmt(sample["serving_auc_10s"], ".4f")),
        ("registry version / served version",
         f"{_fmt(sample['registry_version'])} / {_fmt(sample['served_version'])}"),
        ("freshness of the served model (s)", _fmt(sample["freshness_s"], ".1f")),
    ]
    for k, v in rows:
        t.add_row(k, v)
    return t


# ---------------------------------------------------------------------------- outputs
def _summary(mon: _Monitor, trainer_final: dict[str, Any], versions: list[int],
             duration: float) -> dict[str, Any]:
    fresh = [s["freshness_s"] for s in mon.samples if s["freshness_s"] is not None]
    metrics = mon.meta.get("metrics") or {}
    auc = trainer_final.get("auc", metrics.get("auc"))
    trained = trainer_final.get("examples", mon.meta.get("examples"))
    return {
        "duration_s": round(duration, 1),
        "requests": mon.totals["requests"],
        "request_errors": mon.totals["errors"],
        "requests_per_s": round(mon.totals["requests"] / max(duration, 1e-9), 2),
        "latency_p50_ms": _percentile_ms(mon.latencies, 50),
        "latency_p99_ms": _percentile_ms(mon.latencies, 99),
        "clicks": mon.totals["clicks_written"],
        "events": mon.samples[-1]["events"] if mon.samples else 0,
        "examples_joined": mon.totals["examples_out"],
        "examples_trained": int(trained) if trained is not None else 0,
        "versions_published": len(versions),
        "registry_head": versions[-1] if versions else None,
        "served_version": next((s["served_version"] for s in reversed(mon.samples)
                                if s["served_version"] is not None), None),
        "updates_applied": max((s["updates_applied"] for s in mon.samples), default=0),
        "online_auc": float(auc) if auc is not None else math.nan,
        "serving_auc": _auc(mon.scores, mon.labels),
        "oracle_auc": _auc(mon.true_p, mon.labels),
        "freshness_last_s": fresh[-1] if fresh else math.nan,
        "freshness_median_s": float(np.median(fresh)) if fresh else math.nan,
    }


def _trainer_final(path: Path) -> dict[str, Any]:
    """The JSON summary line ``freshrec train --online`` prints when it stops."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict) and "examples" in obj:
                    return obj
    return {}


def _plot(samples: list[dict[str, Any]], path: Path) -> bool:
    """AUC, latency and freshness over time as a PNG; ``False`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if s[key] is None else float(s[key]) for s in samples])

    t = col("t_s")
    fig, ax = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    ax[0].plot(t, col("online_auc"), label="online AUC (trainer, progressive)")
    ax[0].plot(t, col("serving_auc_10s"), label="serving AUC (scores vs clicks, last 10 s)")
    ax[0].axhline(0.5, color="grey", lw=0.8, ls=":")
    ax[0].set_ylabel("AUC")
    ax[0].legend(loc="lower right", fontsize=8)
    ax[1].plot(t, col("latency_p50_ms"), label="p50")
    ax[1].plot(t, col("latency_p99_ms"), label="p99")
    ax[1].set_ylabel("request latency (ms)")
    ax[1].legend(loc="upper right", fontsize=8)
    ax[2].plot(t, col("freshness_s"), label="freshness of the served model")
    ax[2].set_ylabel("seconds")
    ax[2].set_xlabel("seconds since traffic started")
    ax[2].legend(loc="upper right", fontsize=8)
    fig.suptitle("freshrec demo")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def summary_table(summary: dict[str, Any]) -> Any:
    """The end-of-run table (rich)."""
    from rich.table import Table

    t = Table(title="freshrec demo: summary", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    s = summary
    rows = [
        ("traffic", f"{s['duration_s']:.0f} s, {s['requests_per_s']:.1f} requests/s"),
        ("requests (ok / errors)", f"{s['requests']:,} / {s['request_errors']:,}"),
        ("latency p50 / p99 (ms)",
         f"{_fmt(s['latency_p50_ms'], '.2f')} / {_fmt(s['latency_p99_ms'], '.2f')}"),
        ("clicks / events in the log", f"{s['clicks']:,} / {s['events']:,}"),
        ("examples joined / trained", f"{s['examples_joined']:,} / {s['examples_trained']:,}"),
        ("versions published (registry HEAD)",
         f"{s['versions_published']} ({_fmt(s['registry_head'])})"),
        ("updates applied by the server (served version)",
         f"{s['updates_applied']} ({_fmt(s['served_version'])})"),
        ("online AUC (trainer, progressive)", _fmt(s["online_auc"], ".4f")),
        ("serving AUC (scores vs clicks)", _fmt(s["serving_auc"], ".4f")),
        ("oracle AUC (true click probability)", _fmt(s["oracle_auc"], ".4f")),
        ("freshness last / median (s)",
         f"{_fmt(s['freshness_last_s'], '.1f')} / {_fmt(s['freshness_median_s'], '.1f')}"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    return t


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------- the run
def _paths(config: DemoConfig, workdir: Path) -> dict[str, Any]:
    if config.redis:
        tag = f"freshrec-demo-{workdir.name}-{os.getpid()}"
        events, examples = f"{config.redis}#{tag}-events", f"{config.redis}#{tag}-examples"
    else:
        events, examples = f"file:{workdir / 'logs' / 'events'}", \
            f"file:{workdir / 'logs' / 'examples'}"
    return {"workdir": workdir, "events": events, "examples": examples,
            "registry": workdir / "registry", "train": workdir / "train",
            "join": workdir / "join", "proc": workdir / "proc",
            "config": workdir / "model.yaml", "metrics": workdir / "metrics.json",
            "plot": workdir / "demo.png"}


def run_demo(config: DemoConfig | None = None, *,
             on_tick: Callable[[dict[str, Any], float], None] | None = None,
             live: bool | None = None) -> dict[str, Any]:
    """Run the loop (module docstring) for ``config.duration_s`` seconds of traffic.

    Parameters
    ----------
    config : DemoConfig, optional
    on_tick : callable, optional
        Called with each sample (about once a second) and the seconds of traffic so far.
    live : bool, optional
        Draw the live table with rich (default: when stdout is a terminal).

    Returns
    -------
    dict
        ``summary`` (see ``metrics.json``), ``paths``, ``children`` (their pids) and
        ``interrupted``.

    Raises
    ------
    DemoError
        A child died or a stage did not come up within ``startup_timeout_s``.
    """
    from rich.console import Console
    from rich.live import Live

    from freshrec.stream.open import open_log
    from freshrec.sync.registry import Registry

    config = config or DemoConfig()
    console = Console()
    live = console.is_terminal if live is None else live
    workdir = Path(config.workdir or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S"))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = _paths(config, workdir)
    paths["proc"].mkdir(exist_ok=True)
    paths["config"].write_text(MODEL_CONFIG.replace("{sync_s}", f"{config.sync_s:g}"))
    # the event log: impressions (server) in partition 0, actions (driver) in the last one
    events = open_log(paths["events"], partitions=1 if config.redis else 2)
    open_log(paths["examples"]).close()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    trainer = _Child("train", ["train", "--online", "--config", str(paths["config"]),
                               "--source", paths["examples"], "--registry",
                               str(paths["registry"]), "--run-dir", str(paths["train"])],
                     paths["proc"] / "train.log")
    joiner = _Child("join", ["join", "--source", paths["events"], "--output",
                             paths["examples"], "--state", str(paths["join"]),
                             "--window-s", str(config.window_s), "--lateness-s",
                             str(config.lateness_s), "--idle-timeout-s", "1e9"],
                    paths["proc"] / "join.log")
    server = _Child("serve", ["serve", "--registry", str(paths["registry"]), "--port",
                              str(port), "--log", paths["events"], "--threads", "1",
                              "--poll-interval", "0.5"],
                    paths["proc"] / "serve.log")
    children = [server, joiner, trainer]
    registry = Registry(paths["registry"])
    driver = TrafficDriver(url, events, config)
    mon: _Monitor | None = None
    interrupted = False
    t_traffic = time.monotonic()
    duration = 0.0
    old_term = None
    if threading.current_thread() is threading.main_thread():
        def _term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        old_term = signal.signal(signal.SIGTERM, _term)
    try:
        # 1. bootstrap: the trainer publishes its initial model as version 1
        trainer.start()
        joiner.start()
        console.print(f"[bold]freshrec demo[/] in {workdir}: starting the joiner and the "
                      "online trainer ...")
        _wait_for("the online trainer's first published version",
                  lambda: registry.head() is not None, children, config.startup_timeout_s)
        # 2. serving, once there is a version to serve
        server.start()
        console.print(f"registry has version {registry.head()}; starting the server on {url}")

        def ready() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/readyz")
                return conn.getresponse().status == 200
            except (OSError, http.client.HTTPException):
                return False
            finally:
                conn.close()

        _wait_for(f"the server being ready on {url}", ready, children,
                  config.startup_timeout_s)
        # 3. traffic, 4. live display
        console.print(f"the loop is up; sending {config.rate:g} requests/s with "
                      f"{config.candidates} candidates for {config.duration_s:g} s")
        mon = _Monitor(config, paths, url, driver)
        driver.start()
        t_traffic = time.monotonic()
        next_tick = t_traffic + 1.0
        last_print = t_traffic
        with Live(console=console, refresh_per_second=2, transient=False) if live \
                else contextlib.nullcontext() as display:
            while True:
                time.sleep(max(0.0, next_tick - time.monotonic()))
                next_tick += 1.0
                elapsed = time.monotonic() - t_traffic
                sample = mon.tick()
                if display is not None:
                    display.update(_live_table(sample, config, elapsed))
                elif time.monotonic() - last_print >= 5.0:
                    last_print = time.monotonic()
                    console.print(
                        f"{elapsed:5.0f}s  req {sample['requests']:,}  "
                        f"p50/p99 {_fmt(sample['latency_p50_ms'], '.1f')}/"
                        f"{_fmt(sample['latency_p99_ms'], '.1f')} ms  "
                        f"examples {sample['examples_out']:,}  "
                        f"auc {_fmt(sample['online_auc'], '.3f')}  "
                        f"version {_fmt(sample['registry_version'])}/"
                        f"{_fmt(sample['served_version'])}  "
                        f"fresh {_fmt(sample['freshness_s'], '.1f')} s", highlight=False,
                        soft_wrap=True)
                if on_tick is not None:
                    on_tick(sample, elapsed)
                if driver.error is not None:
                    raise DemoError(f"the traffic driver failed: {driver.error!r}") \
                        from driver.error
                for c in children:
                    c.check()
                if elapsed >= config.duration_s:
                    break
        duration = time.monotonic() - t_traffic
    except KeyboardInterrupt:
        interrupted = True
        duration = time.monotonic() - t_traffic
        console.print("interrupted: stopping the loop ...")
    finally:
        driver.stop()
        if mon is not None:
            with contextlib.suppress(Exception):
                mon.tick()
        _stop_all(children)
        events.close()
        if mon is not None:
            mon.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    summary = _summary(mon, _trainer_final(trainer.out), registry.versions(), duration) \
        if mon is not None else {}
    out = {"summary": summary, "config": asdict(config),
           "paths": {k: str(v) for k, v in paths.items()},
           "children": {c.name: c.pid for c in children}, "interrupted": interrupted,
           "samples": mon.samples if mon is not None else [],
           "last_driver_error": mon.last_error if mon is not None else ""}
    out["plot"] = str(paths["plot"]) if mon is not None and mon.samples and \
        _plot(mon.samples, paths["plot"]) else None
    paths["metrics"].write_text(json.dumps(_jsonable(out), indent=1))
    return out
