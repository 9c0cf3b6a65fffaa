"""One chaos scenario: the loop under kill -9, a Redis restart, registry damage and garbage.

:func:`run_scenario` runs, in a fresh work directory::

    producer (thread) --events + garbage--> log (file or Redis, P partitions)
                                              |
       freshrec join     <-- SIGKILL x K -----+--> examples log --> freshrec train --online
       freshrec train    <-- SIGKILL x K                               |  (SIGKILL x K)
       freshrec serve    <-- SIGKILL x K         registry (tmpfs) <----+
         ^  POST /score every 50 ms (poller thread)   ^ delta corrupted, manifest removed,
                                                        disk filled then freed
       redis-server --appendonly yes --appendfsync always: SIGKILLed and restarted once

1. **The log** is :func:`garbage.build_log`'s: the simulator's stream (3% redeliveries, 1%
   malformed) with every garbage kind woven in. The producer appends it in step with the
   chaos: at kill progress ``x`` (kills done / kills planned) a fraction ``0.1 + 0.9 x`` of
   every partition is written, so records keep arriving while stages die.
2. **Kills**: each stage is killed (SIGKILL to its process group) ``kills`` times, each time
   at a random moment up to ``kill_delay_s`` after its first commit since it was (re)started
   -- the joiner's LMDB commit, the trainer's checkpoint, the server's first answer -- and
   restarted at once. A stage that exits on its own is restarted after a back-off (0.5 s
   doubling to 5 s) and its exit is counted.
3. **Faults** at kill progress 0.25 (a file of the newest delta version is corrupted), 0.4
   (Redis is SIGKILLed and restarted from its AOF), 0.5 (the newest version's manifest is
   removed) and 0.75 (the registry's disk is filled for ``fill_s`` seconds, then freed). The
   registry lives on a tmpfs of 256 MiB mounted for the run when ``mount`` works (root);
   otherwise the trainer's RLIMIT_FSIZE is lowered to 1 KiB for the window (``EFBIG``
   instead of ``ENOSPC``, and its checkpoints fail too). ``disk_full`` in the result says
   which.
4. **Recovery** once the chaos is over (all faults removed): the registry must get a full
   version published after the last registry fault and the server must serve it or a newer
   one; meanwhile the joiner is stopped (SIGINT) and run once more with ``--flush`` (end of
   stream) and must exit 0; then the trainer is stopped and run once more until idle and
   must exit 0 having read the whole examples log. A stage failing its check within ``recover_s``
   (three tries for the joiner and the trainer) is a *permanent crash*.
5. **Counts**: the event log is read back and :func:`freshrec.stream.truth.reference_join`
   computes what the joiner had to write; :func:`~freshrec.stream.truth.compare` counts the
   examples lost, duplicated, spurious and wrongly labelled, and the clicks missed.
6. **Server availability**: the poller posts one scoring request every ``poll_s``. The
   server is *down* from the start of a failed request (error, timeout, non-200) to the end
   of the next successful one. A kill of the server opens a *restart allowance* from the
   kill until twice the scenario's median restart time (kill to first answer) has passed;
   ``server_unavailable_s`` is the down time outside every allowance (outages that the
   server's own restarts do not explain: registry damage, a full disk, the trainer's or
   Redis's deaths, slow restarts), ``server_down_s`` all of it.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from freshrec.benchinfo import load_script
from freshrec.stream.events import EXAMPLES_MAGIC, decode_examples
from freshrec.stream.open import open_log
from freshrec.stream.truth import TruthConfig, compare, reference_join


def _sibling(name: str) -> Any:
    return load_script(Path(__file__).with_name(f"{name}.py"), f"freshrec_chaos_{name}")


garbage = _sibling("garbage")

STAGES = ("join", "train", "serve")
#: a child runs ``freshrec <argv>`` with SIGINT as KeyboardInterrupt (as the demo's children)
_CHILD_MAIN = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "from freshrec.cli import main; sys.exit(main(sys.argv[1:]))")
#: the trainer's model: DeepFM on the simulator's joined examples, with these overrides
MODEL_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "simulator.yaml"
_TRAIN_SETTINGS = ("sync.sparse_interval_s=1", "sync.dense_interval_s=3",
                   "sync.full_interval_s=5", "online.checkpoint_every_s=1",
                   "train.batch_size=256", "train.threads=1")
_FSIZE_LIMIT = 1024
_TMPFS_SIZE = "256m"


@dataclass(frozen=True, kw_only=True)
class ChaosConfig:
    """One scenario (see the module docstring).

    Parameters
    ----------
    backend
        ``"file"`` or ``"redis"`` (a redis-server of its own, with AOF).
    partitions
        Partitions of the event and example logs.
    kills
        SIGKILLs per stage.
    stages
        The stages that run (``join`` always does).
    requests, copies, kinds, seed
        The log: simulated requests, copies of each garbage kind, which kinds, seed.
    registry_faults, redis_restart
        Damage the registry / restart Redis (Redis backend only) mid-run.
    window_s, lateness_s
        The joiner's label window and allowed lateness.
    kill_delay_s
        A kill comes at a uniform random moment up to this long after the stage's commit.
    recover_s
        Longest wait for each recovery check.
    fill_s
        How long the registry's disk stays full.
    poll_s
        Interval of the server poller.
    workdir
        Where everything goes (None: a temporary directory, removed afterwards).
    """

    backend: str = "file"
    partitions: int = 1
    kills: int = 3
    stages: tuple[str, ...] = STAGES
    requests: int = 1500
    copies: int = 1
    kinds: tuple[str, ...] = garbage.KINDS
    seed: int = 0
    registry_faults: bool = True
    redis_restart: bool = True
    window_s: int = 5
    lateness_s: int = 2
    kill_delay_s: float = 2.0
    recover_s: float = 120.0
    fill_s: float = 4.0
    poll_s: float = 0.05
    workdir: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("file", "redis"):
            raise ValueError(f"ChaosConfig: backend must be 'file' or 'redis', got "
                             f"{self.backend!r}")
        if "join" not in self.stages or set(self.stages) - set(STAGES):
            raise ValueError(f"ChaosConfig: stages must include 'join' and be among "
                             f"{STAGES}, got {self.stages!r}")

    @property
    def name(self) -> str:
        return f"{self.backend}_p{self.partitions}"


# ---------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class _Stage:
    """A ``freshrec`` command in its own process group; one output file per start."""

    def __init__(self, name: str, argv: list[str], proc_dir: Path,
                 committed: Callable[[float], bool]) -> None:
        self.name, self.argv, self.proc_dir, self.committed = name, argv, proc_dir, committed
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.started = 0.0  # wall time of the last start
        self.commit_seen = False
        self.kill_at: float | None = None
        self.restart_at: float | None = None
        self.kills: list[float] = []
        self.exits: list[int] = []
        self.failures_in_row = 0
        self.fsize_limit: int | None = None
        self.last_commit = time.time()  # or the start of the chaos
        self.stuck = False  # no commit for recover_s: no more kills are planned for it

    @property
    def out(self) -> Path:
        return self.proc_dir / f"{self.name}.{self.starts}.log"

    def start(self, extra: tuple[str, ...] = ()) -> None:
        self.starts += 1
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        limit = self.fsize_limit

        def pre() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

        with open(self.out, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_MAIN, *self.argv, *extra], stdout=fh,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, preexec_fn=pre if limit is not None else None)
        self.started = time.time()
        self.commit_seen = False
        self.kill_at = self.restart_at = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGINT (the CLI checkpoints and exits), SIGKILL after ``grace_s``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self.signal(signal.SIGKILL)  # anything left in its group
        return self.proc.returncode

    def run_once(self, extra: tuple[str, ...], timeout_s: float) -> tuple[int | None, str]:
        """Start with ``extra`` arguments and wait for the exit: ``(code, output)``."""
        self.start(extra)
        assert self.proc is not None
        try:
            code: int | None = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        return code, self.tail(400)

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.out.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class _Redis:
    """A redis-server of the scenario's own, appending every write to its AOF (fsync always)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH (scripts/ensure-redis installs it)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class _Poller(threading.Thread):
    """POSTs one scoring request every ``poll_s``; keeps ``(start, end, ok, version)``."""

    def __init__(self, port: int, body: bytes, poll_s: float) -> None:
        super().__init__(name="chaos-poller", daemon=True)
        self.port, self.body, self.poll_s = port, body, poll_s
        self.samples: list[tuple[float, float, bool, int | None]] = []
        self.last_ok = 0.0
        self.version: int | None = None
        self.failures: list[tuple[float, str]] = []  # the first failure of each outage
        self.halt = threading.Event()

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.halt.is_set():
            t0 = time.time()
            ok, version, why = False, None, ""
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)
                conn.request("POST", "/score", body=self.body,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status == 200:
                    ok, version = True, json.loads(data).get("model_version")
                else:
                    why = f"HTTP {resp.status}: {data[:120]!r}"
            except (OSError, http.client.HTTPException, ValueError) as e:
                why = f"{type(e).__name__}: {e}"
                if conn is not None:
                    conn.close()
                conn = None
            t1 = time.time()
            self.samples.append((t0, t1, ok, version))
            if not ok and (len(self.samples) == 1 or self.samples[-2][2]):
                self.failures.append((t0, why))
            if ok:
                self.last_ok = t1
                self.version = version
            self.halt.wait(max(0.0, t0 + self.poll_s - time.time()))
        if conn is not None:
            conn.close()


class _Producer(threading.Thread):
    """Appends each partition's planned records up to ``target`` (a fraction), retrying."""

    def __init__(self, log: Any, parts: list[list[bytes]]) -> None:
        super().__init__(name="chaos-producer", daemon=True)
        self.log, self.parts = log, parts
        self.pos = [0] * len(parts)
        self.target = 0.0
        self.errors = 0
        self.halt = threading.Event()

    @property
    def done(self) -> bool:
        return all(p == len(r) for p, r in zip(self.pos, self.parts, strict=True))

    def run(self) -> None:
        while not self.halt.is_set():
            wrote = False
            for p, recs in enumerate(self.parts):
                want = len(recs) if self.target >= 1.0 else int(len(recs) * self.target)
                if self.pos[p] >= want:
                    continue
                chunk = recs[self.pos[p]:min(want, self.pos[p] + 200)]
                try:
                    self.log.append(chunk, partition=p)
                except Exception:  # noqa: BLE001 - the log's server is down: retry
                    self.errors += 1
                    self.halt.wait(0.2)
                    break
                self.pos[p] += len(chunk)
                wrote = True
            if not wrote:
                self.halt.wait(0.01)


# ---------------------------------------------------------------------------- registry
def _versions(registry: Path) -> list[int]:
    try:
        return sorted(int(p.name) for p in (registry / "versions").iterdir() if p.name.isdigit())
    except OSError:
        return []


def _kind(registry: Path, version: int) -> str | None:
    try:
        m = json.loads((registry / "versions" / f"{version:012d}" / "manifest.json").read_text())
        return str(m.get("kind"))
    except (OSError, ValueError):
        return None


def _head(registry: Path) -> int | None:
    try:
        return int(json.loads((registry / "HEAD").read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _corrupt_delta(registry: Path) -> str | None:
    """Flip bytes in the largest part file of the newest delta version; what was done."""
    for v in reversed(_versions(registry)):
        if _kind(registry, v) != "delta":
            continue
        vdir = registry / "versions" / f"{v:012d}"
        files = [p for p in vdir.rglob("*") if p.is_file() and p.name != "manifest.json"]
        if not files:
            continue
        target = max(files, key=lambda p: p.stat().st_size)
        with contextlib.suppress(OSError):
            data = bytearray(target.read_bytes())
            if not data:
                continue
            mid = len(data) // 2
            for k in range(mid, min(mid + 16, len(data))):
                data[k] ^= 0xFF
            target.write_bytes(bytes(data))
            return f"corrupted {target.relative_to(registry)} of delta {v}"
    return None


def _remove_manifest(registry: Path) -> str | None:
    for v in reversed(_versions(registry)):
        m = registry / "versions" / f"{v:012d}" / "manifest.json"
        with contextlib.suppress(OSError):
            m.unlink()
            return f"removed the manifest of version {v}"
    return None


def _try_tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={_TMPFS_SIZE}", "tmpfs",
                        str(path)], capture_output=True)
    return r.returncode == 0


def _fill(path: Path) -> int:
    """Write zeros to ``path`` until the file system is full; bytes written."""
    n = 0
    block = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                n += fh.write(block)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    break
                raise
    with open(path, "ab", buffering=0) as fh:  # the last partial block
        for size in (65536, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    n += fh.write(b"\0" * size)
    return n


# ---------------------------------------------------------------------------- reading logs
def _read_all(log: Any, partition: int) -> list[bytes]:
    out: list[bytes] = []
    off = 0
    while True:
        recs = log.read(partition, off, 2000)
        if not recs:
            return out
        out += [r.value for r in recs]
        off = recs[-1].offset + 1


def _examples(log: Any, actions: tuple[str, ...]) -> tuple[dict[str, list[Any]], int]:
    """Every example of the joiner's output log as columns; records that are not examples."""
    cols: dict[str, list[Any]] = {k: [] for k in ("request_id", "item_id", "position",
                                                 *actions, "correction")}
    bad = 0
    for p in range(log.partitions):
        for value in _read_all(log, p):
            if value[:4] != EXAMPLES_MAGIC:  # a legacy row: one example as a JSON object
                try:
                    row = orjson.loads(value)
                except orjson.JSONDecodeError:
                    row = None
                if not isinstance(row, dict):
                    bad += 1
                    continue
                for k in cols:
                    cols[k].append(row.get(k, 0 if k == "correction" else None))
                continue
            rb, rejected = decode_examples([value])  # one by one: no cross-record typing
            bad += rejected
            if rb is None:
                continue
            d = rb.select([k for k in cols if k in rb.schema.names]).to_pydict()
            for k in cols:
                cols[k] += d.get(k, [0 if k == "correction" else None] * rb.num_rows)
    return cols, bad


# ---------------------------------------------------------------------------- availability
def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, cur_a, cur_b = 0.0, None, None
    for a, b in sorted(intervals):
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a
    return total


def down_intervals(samples: list[tuple[float, float, bool, Any]]
                   ) -> list[tuple[float, float]]:
    """From the start of each failed request after a success to the end of the next success
    (failures before the first success are the server's first start, not an outage)."""
    down: list[tuple[float, float]] = []
    start: float | None = None
    seen_ok = False
    for t0, t1, ok, _ in samples:
        seen_ok = seen_ok or ok
        if not ok and start is None and seen_ok:
            start = t0
        elif ok and start is not None:
            down.append((start, t1))
            start = None
    if start is not None and samples:
        down.append((start, samples[-1][1]))
    return down


def availability(samples: list[tuple[float, float, bool, Any]], kills: list[float]
                 ) -> dict[str, float]:
    """Down time, restart times and unavailability beyond restarts (module docstring, 6).

    Examples
    --------
    >>> s = [(0.0, 0.1, True, 1), (1.0, 1.1, False, None), (2.0, 2.1, True, 1),
    ...      (5.0, 5.1, False, None), (6.0, 6.1, True, 1)]
    >>> availability(s, kills=[0.9])  # 1.0-2.1 is the restart (1.2 s), 5.0-6.1 is not
    ... # doctest: +NORMALIZE_WHITESPACE
    {'server_down_s': 2.2, 'server_unavailable_s': 1.1, 'server_restart_s_p50': 1.2,
     'server_restart_s_max': 1.2, 'server_restarts_measured': 1}
    """
    down = down_intervals(samples)
    oks = [t1 for _, t1, ok, _ in samples if ok]
    restarts = []
    for k in kills:
        i = int(np.searchsorted(oks, k, side="right"))
        if i < len(oks):
            restarts.append(oks[i] - k)
    allow = 2 * statistics.median(restarts) if restarts else 0.0
    windows = [(k, k + allow) for k in kills]
    total = _union_length(down)
    # down time outside the allowances = union(down) - union(down ∩ allowances)
    inter = [(max(a, c), min(b, d)) for a, b in down for c, d in windows
             if min(b, d) > max(a, c)]
    unavailable = total - _union_length(inter)
    return {"server_down_s": round(total, 3), "server_unavailable_s": round(unavailable, 3),
            "server_restart_s_p50": round(statistics.median(restarts), 3) if restarts else 0.0,
            "server_restart_s_max": round(max(restarts), 3) if restarts else 0.0,
            "server_restarts_measured": len(restarts)}


# ---------------------------------------------------------------------------- the run
@dataclass
class _Faults:
    """Faults planned at kill-progress thresholds; ``done`` says what happened."""

    plan: list[tuple[float, str]]
    done: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    last_registry_fault: float = 0.0
    fill_until: float | None = None
    fill_path: Path | None = None


def _score_body(impression: dict[str, Any] | None) -> bytes:
    imp = impression or {"user_id": 1, "user": {},
                         "candidates": [{"item_id": i, "features": {}} for i in range(10)]}
    body = {"user_id": imp["user_id"], "user": imp["user"],
            "candidates": [{"item_id": c["item_id"], **c.get("features", {})}
                           for c in imp["candidates"]]}
    return json.dumps(body).encode()


def run_scenario(cfg: ChaosConfig, *, log: Callable[[str], None] = lambda m: None
                 ) -> dict[str, Any]:
    """Run one scenario (module docstring); returns its counts with unprefixed keys."""
    contract = TruthConfig(window_s=cfg.window_s, allowed_lateness_s=cfg.lateness_s)
    own_dir = cfg.workdir is None
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix=f"freshrec-chaos-{cfg.name}-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    rng = np.random.default_rng(cfg.seed + 1000 * cfg.partitions)
    plan = garbage.build_log(seed=cfg.seed, requests=cfg.requests, partitions=cfg.partitions,
                             kinds=cfg.kinds, copies=cfg.copies)
    log(f"[{cfg.name}] log: {plan.records:,} records ({plan.simulated:,} simulated, "
        f"{sum(plan.garbage.values())} garbage) in {work}")
    registry = work / "registry"
    tmpfs = cfg.registry_faults and "train" in cfg.stages and _try_tmpfs(registry)
    registry.mkdir(parents=True, exist_ok=True)
    proc_dir = work / "proc"
    proc_dir.mkdir(exist_ok=True)
    redis = _Redis(work) if cfg.backend == "redis" else None
    stages: dict[str, _Stage] = {}
    poller: _Poller | None = None
    producer: _Producer | None = None
    events = None
    faults: _Faults | None = None
    damage = cfg.registry_faults and "train" in cfg.stages
    res: dict[str, Any] = {"disk_full": ("tmpfs" if tmpfs else "rlimit_fsize") if damage
                           else "none", "crashed_stages": ""}
    crashed: list[str] = []
    try:
        if redis is not None:
            redis.start()
            tag = f"chaos-{cfg.seed}"
            specs = {k: f"{redis.url}#{tag}-{k}" for k in ("events", "examples", "dead")}
        else:
            specs = {k: f"file:{work / 'logs' / k}" for k in ("events", "examples", "dead")}
        events = open_log(specs["events"], partitions=cfg.partitions)
        open_log(specs["examples"], partitions=cfg.partitions).close()
        open_log(specs["dead"]).close()
        producer = _Producer(events, plan.partitions)
        producer.target = 0.1
        producer.start()
        model = work / "model.yaml"
        shutil.copyfile(MODEL_CONFIG, model)
        state, run_dir = work / "join-state", work / "train"
        port = _free_port()
        stages["join"] = _Stage(
            "join", ["join", "--source", specs["events"], "--output", specs["examples"],
                     "--state", str(state), "--dead-letter", specs["dead"],
                     "--window-s", str(cfg.window_s), "--lateness-s", str(cfg.lateness_s),
                     # the bounds the reference join applies, stated rather than defaulted
                     "--max-candidates", str(contract.max_candidates),
                     "--max-future-skew-s", str(int(contract.max_future_skew_s or 0))],
            proc_dir, lambda since: _mtime(state / "data.mdb") > since)
        if "train" in cfg.stages:
            settings = [a for s in _TRAIN_SETTINGS for a in ("--set", s)]
            stages["train"] = _Stage(
                "train", ["train", "--online", "--config", str(model), "--source",
                          specs["examples"], "--partitions", str(cfg.partitions),
                          "--registry", str(registry), "--run-dir", str(run_dir),
                          "--no-progress", *settings],
                proc_dir, lambda since: _mtime(run_dir / "checkpoints" / "LATEST") > since)
        if "serve" in cfg.stages:
            stages["serve"] = _Stage(
                "serve", ["serve", "--registry", str(registry), "--port", str(port),
                          "--log", "none", "--threads", "1", "--poll-interval", "0.5"],
                proc_dir, lambda since: poller is not None and poller.last_ok > since)
        chaos_extra = {"join": ("--idle-timeout-s", "1e9"), "train": ("--idle-timeout", "0")}
        for name in ("train", "join", "serve"):  # serve waits, not ready, for a version
            if name in stages:
                stages[name].start(chaos_extra.get(name, ()))
        if "serve" in stages:
            poller = _Poller(port, _score_body(plan.first_impression), cfg.poll_s)
            poller.start()
            _wait(lambda: poller is not None and poller.last_ok > 0, cfg.recover_s,
                  "the server's first answer", stages)
        log(f"[{cfg.name}] up: {', '.join(stages)} (registry on "
            f"{'tmpfs' if tmpfs else 'disk'}, {time.monotonic() - t_start:.0f} s)")
        faults = _Faults(plan=sorted(
            ([(0.25, "corrupt_delta"), (0.5, "remove_manifest"), (0.75, "fill_disk")]
             if cfg.registry_faults and "train" in stages else [])
            + ([(0.4, "restart_redis")] if redis is not None and cfg.redis_restart else [])))
        res["up_s"] = round(time.monotonic() - t_start, 1)
        _chaos(cfg, stages, chaos_extra, faults, producer, registry, redis, tmpfs, rng, log)
        res["chaos_s"] = round(time.monotonic() - t_start - res["up_s"], 1)
        t_recover = time.monotonic()
        res["faults"] = "; ".join(faults.done)
        res["registry_faults_done"] = sum(1 for f in faults.applied if f != "restart_redis")
        res["redis_restarts"] = faults.applied.count("restart_redis")
        producer.target = 1.0
        _wait(lambda: producer is not None and producer.done, cfg.recover_s,
              "the producer writing the whole log", {})
        # -- recovery checks: the joiner's last run (end of stream) beside the server's
        finals: dict[str, dict[str, Any]] = {}

        def final(name: str, extra: tuple[str, ...], check: Callable[[str], bool]) -> None:
            stages[name].stop()
            for _ in range(3):
                code, out = stages[name].run_once(extra, cfg.recover_s)
                if code == 0 and check(out):
                    finals[name] = _summary_line(out)
                    return
            log(f"[{cfg.name}] recovery: {name} failed; its output ends:\n{out}")

        last_join = threading.Thread(target=final, args=(
            "join", ("--idle-timeout-s", "2", "--flush"), lambda out: True))
        last_join.start()
        if "serve" in stages:
            assert poller is not None
            ok, why = _serve_recovers(cfg, stages, registry, poller, faults)
            if not ok:
                crashed.append("serve" if why == "serve" else "train")
                log(f"[{cfg.name}] recovery: {why} failed")
        last_join.join()
        if "train" in stages:
            final("train", ("--idle-timeout", "3"),
                  lambda out: _trained_to_end(out, specs["examples"]))
            res["examples_trained"] = finals.get("train", {}).get("examples")
            res["trainer_rejected"] = finals.get("train", {}).get("rejected")
        crashed += [n for n in ("join", "train") if n in stages and n not in finals]
        res["recovery_s"] = round(time.monotonic() - t_recover, 1)
        # -- counts
        truth = reference_join([_read_all(events, p) for p in range(events.partitions)],
                               contract)
        out_log = open_log(specs["examples"])
        try:
            cols, undecodable = _examples(out_log, ("click",))
        finally:
            out_log.close()
        cmp = compare(truth, cols)
        dead = open_log(specs["dead"])
        try:
            res["dead_letters"] = sum(dead.end_offset(p) if cfg.backend == "file"
                                      else len(_read_all(dead, p))
                                      for p in range(dead.partitions))
        finally:
            dead.close()
        res.update({
            "examples_lost": cmp["lost"], "examples_duplicated": cmp["duplicated"],
            "wrong_labels": cmp["wrong_labels"], "missed_clicks": cmp["missed_clicks"],
            "examples_spurious": cmp["spurious"], "examples_expected": cmp["expected"],
            "examples_emitted": cmp["emitted"], "output_records_undecodable": undecodable,
            "events": truth.counts["records"], "events_planned": plan.records,
            "garbage_records": sum(plan.garbage.values()),
            "truth_positives": truth.counts["positives"],
            "truth_late_actions": truth.counts["late_actions"],
            "truth_late_impressions": truth.counts["late_impressions"],
            "truth_malformed": sum(v for k, v in truth.counts.items()
                                   if k.startswith("malformed:")),
            "producer_retries": producer.errors,
        })
    except Exception as e:  # noqa: BLE001 - a scenario that cannot run is reported
        res["error"] = f"{type(e).__name__}: {e}"
        log(f"[{cfg.name}] ERROR {res['error']}")
        for name in ("examples_lost", "examples_duplicated", "wrong_labels", "missed_clicks"):
            res.setdefault(name, None)
        if isinstance(e, _StageDown) and e.stage not in crashed:
            crashed.append(e.stage)
    finally:
        if poller is not None:
            poller.halt.set()
            poller.join(timeout=5)
        for s in stages.values():
            s.stop(grace_s=10)
        if producer is not None:
            producer.halt.set()
            producer.join(timeout=10)
        if events is not None:
            with contextlib.suppress(Exception):
                events.close()
        if redis is not None:
            redis.kill()
        if tmpfs:
            subprocess.run(["umount", "-l", str(registry)], capture_output=True)
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    crashed = list(dict.fromkeys(crashed))
    res["permanent_crashes"] = len(crashed)
    res["crashed_stages"] = ",".join(crashed)
    for name in STAGES:
        s = stages.get(name)
        res[f"kills_{name}"] = len(s.kills) if s else 0
        res[f"exits_{name}"] = len(s.exits) if s else 0
    if poller is not None:
        res.update(availability(poller.samples, stages["serve"].kills))
        res["server_polls"] = len(poller.samples)
    else:
        res.update({"server_down_s": None, "server_unavailable_s": None})
    res["wall_s"] = round(time.monotonic() - t_start, 1)
    if not own_dir:  # what happened when, for a look afterwards
        (work / "timeline.json").write_text(json.dumps({
            "kills": {n: s.kills for n, s in stages.items()},
            "exits": {n: s.exits for n, s in stages.items()},
            "faults": list(zip(faults.times, faults.done, strict=True)) if faults else [],
            "down": down_intervals(poller.samples) if poller is not None else [],
            "down_why": poller.failures if poller is not None else [],
            "result": res}, indent=1))
    return res


class _StageDown(RuntimeError):
    def __init__(self, stage: str, msg: str) -> None:
        super().__init__(msg)
        self.stage = stage


def _wait(ready: Callable[[], bool], timeout_s: float, what: str,
          stages: dict[str, _Stage]) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            dead = [n for n, s in stages.items() if s.proc is not None and not s.running()]
            stage = dead[0] if dead else next(iter(stages), "join")
            tail = stages[stage].tail() if stage in stages else ""
            raise _StageDown(stage, f"{what} did not happen within {timeout_s:.0f} s; "
                                    f"{stage} output ends:\n{tail}")
        time.sleep(0.05)


def _chaos(cfg: ChaosConfig, stages: dict[str, _Stage], extra: dict[str, tuple[str, ...]],
           faults: _Faults, producer: _Producer, registry: Path, redis: _Redis | None,
           tmpfs: bool, rng: np.random.Generator, log: Callable[[str], None]) -> None:
    """Kill, restart and damage until every planned kill and fault has happened."""
    planned = cfg.kills * len(stages)
    pending = list(faults.plan)
    t0 = time.monotonic()
    t_all_kills: float | None = None  # when every planned kill had happened
    for s in stages.values():
        s.last_commit = time.time()
    while True:
        now = time.time()
        for name, s in stages.items():
            args = extra.get(name, ())
            if s.proc is not None and not s.running() and s.restart_at is None:
                code = s.proc.returncode
                s.exits.append(code)
                s.failures_in_row += 1
                s.restart_at = now + min(0.5 * 2 ** (s.failures_in_row - 1), 5.0)
                log(f"[{cfg.name}] {name} exited on its own (code {code}); output ends:\n"
                    f"{s.tail(6)}")
            if s.restart_at is not None and now >= s.restart_at:
                s.start(args)
            if not s.running():
                continue
            if not s.commit_seen and s.committed(s.started):
                s.commit_seen = True
                s.failures_in_row = 0
                s.last_commit = now
                if len(s.kills) < cfg.kills and not s.stuck:
                    s.kill_at = now + float(rng.uniform(0, cfg.kill_delay_s))
            if s.kill_at is not None and now >= s.kill_at:
                s.kill()
                s.kills.append(time.time())
                s.start(args)
        for name, s in stages.items():
            if not s.stuck and len(s.kills) < cfg.kills and now - s.last_commit > cfg.recover_s:
                s.stuck = True
                log(f"[{cfg.name}] {name} made no commit for {cfg.recover_s:.0f} s: "
                    f"no more kills for it")
        done = sum(cfg.kills if s.stuck else len(s.kills) for s in stages.values())
        progress = done / planned if planned else min(1.0, (time.monotonic() - t0) / 20.0)
        if progress >= 1.0 and t_all_kills is None:
            t_all_kills = time.monotonic()
        # a fault with nothing to damage yet (no delta published) waits for one, a third of
        # recover_s at most after the last kill, rather than being skipped
        patience = progress < 1.0 or (t_all_kills is not None
                                      and time.monotonic() - t_all_kills < cfg.recover_s / 3)
        producer.target = max(producer.target, 0.1 + 0.9 * progress)
        while pending and progress >= pending[0][0]:
            what = pending[0][1]
            got = _fault(what, faults, registry, redis, tmpfs, stages, cfg)
            if got is None and patience:
                break  # nothing to damage yet (no delta published): try again later
            pending.pop(0)
            if got is not None:
                faults.applied.append(what)
            faults.done.append(got or f"{what}: nothing to do")
            faults.times.append(time.time())
            log(f"[{cfg.name}] fault at progress {progress:.2f}: {faults.done[-1]}")
        if faults.fill_until is not None and time.time() >= faults.fill_until:
            _unfill(faults, stages)
            faults.done.append("registry disk freed")
            faults.times.append(time.time())
            faults.last_registry_fault = time.time()
        if (done >= planned and not pending and faults.fill_until is None
                and progress >= 1.0):
            return
        time.sleep(0.02)


def _fault(what: str, faults: _Faults, registry: Path, redis: _Redis | None, tmpfs: bool,
           stages: dict[str, _Stage], cfg: ChaosConfig) -> str | None:
    if what == "restart_redis":
        assert redis is not None
        redis.kill()
        time.sleep(0.5)
        redis.start()
        return "redis SIGKILLed and restarted from its AOF"
    if what == "corrupt_delta":
        got = _corrupt_delta(registry)
    elif what == "remove_manifest":
        got = _remove_manifest(registry)
    else:
        faults.fill_until = time.time() + cfg.fill_s
        if tmpfs:
            faults.fill_path = registry / ".chaos-fill"
            n = _fill(faults.fill_path)
            got = f"registry disk filled ({n / 2**20:.0f} MiB of zeros, tmpfs)"
        else:
            train = stages["train"]
            train.fsize_limit = _FSIZE_LIMIT
            if train.running() and train.proc is not None:
                with contextlib.suppress(OSError):
                    resource.prlimit(train.proc.pid, resource.RLIMIT_FSIZE,
                                     (_FSIZE_LIMIT, resource.RLIM_INFINITY))
            got = f"trainer RLIMIT_FSIZE lowered to {_FSIZE_LIMIT} bytes"
    if got is not None:
        faults.last_registry_fault = time.time()
    return got


def _unfill(faults: _Faults, stages: dict[str, _Stage]) -> None:
    faults.fill_until = None
    if faults.fill_path is not None:
        with contextlib.suppress(OSError):
            faults.fill_path.unlink()
        faults.fill_path = None
        return
    train = stages.get("train")
    if train is not None:
        train.fsize_limit = None
        if train.running() and train.proc is not None:
            with contextlib.suppress(OSError):
                resource.prlimit(train.proc.pid, resource.RLIMIT_FSIZE,
                                 (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _serve_recovers(cfg: ChaosConfig, stages: dict[str, _Stage], registry: Path,
                    poller: _Poller, faults: _Faults) -> tuple[bool, str]:
    """The registry gets a full version after the last registry fault and the server
    serves it (or newer) within ``recover_s``; ``(ok, which part failed)``."""
    deadline = time.monotonic() + cfg.recover_s
    since = faults.last_registry_fault
    target: int | None = None
    while time.monotonic() < deadline:
        if target is None:
            for v in reversed(_versions(registry)):
                vdir = registry / "versions" / f"{v:012d}"
                if _mtime(vdir / "manifest.json") > since and _kind(registry, v) == "full":
                    target = v
                    break
        if target is not None and (poller.version or 0) >= target \
                and poller.last_ok > time.time() - 1.0:
            return True, ""
        for name in ("serve", "train"):  # keep them alive while waiting
            s = stages.get(name)
            if s is not None and s.proc is not None and not s.running():
                s.start(("--idle-timeout", "0") if name == "train" else ())
        time.sleep(0.1)
    return False, "train" if target is None else "serve"


def _summary_line(output: str) -> dict[str, Any]:
    """The last JSON object line a ``freshrec`` command printed ({} when none)."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                got = json.loads(line)
                if isinstance(got, dict):
                    return got
    return {}


def _trained_to_end(output: str, examples_spec: str) -> bool:
    """The trainer's summary line reports offsets at the end of the examples log."""
    summary = _summary_line(output)
    if "offsets" not in summary:
        return False
    log = open_log(examples_spec)
    try:
        ends = {str(p): log.end_offset(p) for p in range(log.partitions)}
    finally:
        log.close()
    got = {str(k): int(v) for k, v in summary["offsets"].items()}
    return all(got.get(p, 0) >= end for p, end in ends.items())
