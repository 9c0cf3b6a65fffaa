"""``freshrec serve --workers N``: N worker processes on one port over shared tables.

One Python process saturates one core. With ``workers > 1`` the parent process

* binds and listens on ``host:port`` once; every worker accepts on that one socket (a
  pre-forked accept socket: the kernel hands each connection to one waiting worker);
* follows the registry with the ordinary :class:`~freshrec.serve.ModelUpdater` and keeps
  the rows only in shared memory (:class:`~freshrec.serve.shared.SharedTable`, one segment
  per table): a full snapshot is copied into new segments and the updater's own tables are
  emptied (they keep only the version bookkeeping the registry's delta chain needs); a sparse
  delta is written once, in place, into the shared rows, which every worker reads; when its
  new rows do not fit the segments' spare rows, larger segments are built (a new
  generation). Dense weights and new generations are announced in a *control record*;
* restarts a worker that dies, and forwards the workers' impression events to the log (the
  file log has one writer per partition: the parent).

The control record (a small shared-memory array, written under its own seqlock) holds the
table *generation* (which segments hold the rows), the served ``version``, the
``dense_version`` whose weights go with it and its event time. A worker's follower thread
reads it every 20 ms. A new generation or dense version is loaded off the request path
(segments attached, dense weights read from ``dense-<v>.npz``), warmed up and swapped in with
one reference assignment, so a request is scored entirely by one predictor. A sparse delta
needs no swap: its rows are visible to all workers as soon as written (each row whole:
:attr:`SharedTable.epoch`), and the workers only take the new version number. Each worker
publishes the version it serves in its slot of the control record
(:meth:`WorkerPool.served_versions`).

Behind a load balancer across machines: one ``freshrec serve --workers N`` per machine (N =
its cores), each following the same registry on shared storage; the balancer health-checks
``/readyz`` (503 while loading, saturated or draining).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import queue
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import torch

from freshrec.config import FreshrecConfig
from freshrec.serve.config import ServeConfig
from freshrec.serve.metrics import ServeMetrics
from freshrec.serve.predictor import Predictor
from freshrec.serve.shared import SharedTable
from freshrec.serve.updater import ModelUpdater
from freshrec.stream.base import Log, Record
from freshrec.stream.open import open_log
from freshrec.sync import Registry
from freshrec.table import EmbeddingTable, TableConfig
from freshrec.table.delta import TableDelta

__all__ = ["WorkerPool", "run_workers"]

log = logging.getLogger(__name__)

#: Control record: seq, generation, version, dense_version, event_time (-1: none), then one
#: served-version slot per worker, one metrics-request slot per worker and one metrics-answer
#: slot per worker and for the parent (the last).
_SEQ, _GEN, _VERSION, _DENSE, _EVENT, _SLOTS = range(6)
_FOLLOW_S = 0.02
_SCRAPE_TIMEOUT_S = 2.0


class _Control:
    """The control record in a small shared-memory segment (see the module docstring)."""

    def __init__(self, shm: shared_memory.SharedMemory, workers: int) -> None:
        self.shm, self.workers = shm, workers
        self.a = np.ndarray((_SLOTS + 4 * workers + 1,), np.int64, buffer=shm.buf)
        self._asked = self.a[_SLOTS + workers:_SLOTS + 2 * workers]
        self._answered = self.a[_SLOTS + 2 * workers:]

    @classmethod
    def create(cls, name: str, workers: int) -> _Control:
        shm = shared_memory.SharedMemory(name=name, create=True,
                                         size=8 * (_SLOTS + 4 * workers + 1))
        c = cls(shm, workers)
        c.a[:] = 0
        c.a[_EVENT] = -1
        return c

    def write(self, **fields: int) -> None:
        keys = {"generation": _GEN, "version": _VERSION, "dense_version": _DENSE,
                "event_time": _EVENT}
        self.a[_SEQ] += 1
        for k, v in fields.items():
            self.a[keys[k]] = v
        self.a[_SEQ] += 1

    def read(self) -> tuple[int, int, int, int]:
        """``(generation, version, dense_version, event_time)``, consistently."""
        while True:
            seq = int(self.a[_SEQ])
            vals = (int(self.a[_GEN]), int(self.a[_VERSION]), int(self.a[_DENSE]),
                    int(self.a[_EVENT]))
            if not seq & 1 and int(self.a[_SEQ]) == seq:
                return vals
            time.sleep(0)

    def served(self) -> list[int]:
        return [int(x) for x in self.a[_SLOTS:_SLOTS + self.workers]]

    # metrics scrapes: a worker answering ``GET /metrics`` asks every other process (its
    # slot in ``asked`` := a fresh token); each process's follower writes its snapshot and
    # sets its slot in ``answered`` to the highest token it saw
    def ask(self, worker: int) -> int:
        token = time.monotonic_ns()  # CLOCK_MONOTONIC: one clock for every process
        self._asked[worker] = token
        return token

    def wanted(self) -> int:
        return int(self._asked.max())

    def answer(self, slot: int, token: int) -> None:
        """``slot``: a worker's index, or ``workers`` for the parent."""
        self._answered[slot] = token

    def answered(self, slot: int) -> int:
        return int(self._answered[slot])


def _segment(prefix: str, generation: int, table: str) -> str:
    return f"{prefix}_g{generation}_{table}"


def _default_row(table: EmbeddingTable) -> np.ndarray:
    """The row ``table`` reads for an absent fid."""
    fid = np.array([0], np.uint64)
    while table.find(fid)[0] >= 0:
        fid += np.uint64(1)
    return table.lookup(fid)[0]


def _all_rows(table: EmbeddingTable) -> tuple[np.ndarray, np.ndarray]:
    rows = table.read_rows(with_state=False)
    return rows.fids, rows.values


def _emptied(table: EmbeddingTable) -> EmbeddingTable:
    """An empty table of ``table``'s config at its applied version (what the registry's
    delta chain checks)."""
    t = EmbeddingTable(table.config)
    t.apply_delta(TableDelta.empty(table.name, table.config.fingerprint(), dim=table.dim,
                                   from_version=0, to_version=table.applied_version),
                  check_version=False)
    return t


class _Mirrored:
    """An emptied table (version bookkeeping only) whose deltas' rows go to its shared copy."""

    def __init__(self, table: EmbeddingTable, owner: _SharedUpdater) -> None:
        self._table, self._owner = table, owner

    def apply_delta(self, delta: TableDelta, **kw: Any) -> None:
        self._owner.write_rows(self._table.name, delta)
        self._table.apply_delta(TableDelta.empty(
            delta.table, delta.fingerprint, dim=self._table.dim,
            from_version=delta.from_version, to_version=delta.to_version), **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


class _SharedUpdater(ModelUpdater):
    """The parent's updater: follows the registry and mirrors each change into shared memory."""

    def __init__(self, registry: Registry, config: FreshrecConfig | None,
                 serve_config: ServeConfig, control: _Control, prefix: str, dense_dir: Path
                 ) -> None:
        super().__init__(registry, config, dataclasses.replace(
            serve_config, warmup_requests=0, items_path=None))
        self.control, self.prefix, self.dense_dir = control, prefix, dense_dir
        self.shared: dict[str, SharedTable] = {}
        self._table_configs: dict[str, TableConfig] = {}
        self.generation = 0
        self.rebuild = False

    def _update_target(self, pred: Predictor) -> Mapping[str, Any]:
        return {n: _Mirrored(t, self) for n, t in pred.tables.items()}

    def write_rows(self, name: str, delta: TableDelta) -> None:
        """Write a delta's rows into the shared table ``name`` (in place, or into a new,
        larger generation of every table when its new rows do not fit)."""
        chunk = self.serve_config.chunk_rows
        if self.shared[name].apply_delta(delta.fids, delta.values, delta.expired,
                                         chunk_rows=chunk):
            return
        self._new_generation({n: t.rows() for n, t in self.shared.items()},
                             spare=delta.num_rows)
        if not self.shared[name].apply_delta(delta.fids, delta.values, delta.expired,
                                             chunk_rows=chunk):
            raise RuntimeError(f"shared table {name!r}: a new generation has no room for a "
                               f"delta of {delta.num_rows} rows")
        self.rebuild = True

    def _publish(self, pred: Predictor, kind: str) -> None:
        super()._publish(pred, kind)
        version = pred.version if pred.version is not None else 0
        event = pred.event_time if pred.event_time is not None else -1
        if kind == "full":
            self._table_configs = {n: t.config for n, t in pred.tables.items()}
            self._new_generation({n: (*_all_rows(t), _default_row(t))
                                  for n, t in pred.tables.items()})
            for n, t in pred.tables.items():  # the rows now live in shared memory only
                pred.tables[n] = _emptied(t)
        if kind in ("full", "dense") or self.rebuild:
            self._save_dense(pred, version)
            self.control.write(generation=self.generation, version=version,
                               dense_version=version, event_time=event)
        else:
            self.control.write(version=version, event_time=event)
        self.rebuild = False

    def _new_generation(self, rows: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                        spare: int = 0) -> None:
        old = self.shared
        gen = self.generation + 1
        new = {}
        for name, (fids, values, default) in rows.items():
            new[name] = SharedTable.create(name, fids, values, default,
                                           segment=_segment(self.prefix, gen, name),
                                           min_spare=max(1024, spare),
                                           config=self._table_configs.get(name))
        self.shared, self.generation = new, gen
        for t in old.values():  # workers keep their mappings; new ones attach to `new`
            t.unlink()
        log.info("shared tables generation %d: %s", gen,
                 {n: len(t) for n, t in new.items()})

    def _save_dense(self, pred: Predictor, version: int) -> None:
        path = self.dense_dir / f"dense-{version}.npz"
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{k: v.detach().cpu().numpy()
                         for k, v in pred.model.state_dict().items()})
        os.replace(tmp, path)

    def close(self) -> None:
        for t in self.shared.values():
            t.unlink()
        self.shared = {}


class _SharedFollower(ModelUpdater):
    """A worker's updater: serves what the parent's control record says."""

    def __init__(self, registry: Registry, config: FreshrecConfig | None,
                 serve_config: ServeConfig, control: _Control, prefix: str, dense_dir: Path,
                 slot: int) -> None:
        super().__init__(registry, config, dataclasses.replace(
            serve_config, poll_interval_s=_FOLLOW_S))
        self.control, self.prefix, self.dense_dir, self.slot = control, prefix, dense_dir, slot
        self._seen = (0, 0, 0, -1)

    def load(self, *, warm: bool = True) -> Predictor:
        """Attach to the current generation with its dense weights; warm; swap in."""
        gen, version, dense_v, event = self.control.read()
        if gen == 0:
            raise LookupError("no model shared by the updater process yet")
        cur = self.current
        if cur is not None and gen == self._seen[0]:
            tables: Mapping[str, Any] = cur.tables
        else:
            tables = {t.name: SharedTable.attach(_segment(self.prefix, gen, t.name), t.name, t)
                      for t in self._model_config(version).features.tables}
        with np.load(self.dense_dir / f"dense-{dense_v}.npz") as z:
            dense = {k: torch.from_numpy(z[k]) for k in z.files}
        pred = Predictor.build(self._model_config(version),
                               tables=cast(Mapping[str, EmbeddingTable], tables), dense=dense,
                               version=version, event_time=None if event < 0 else event,
                               index=cur.index if cur is not None else None,
                               engine=self.serve_config.engine)
        if cur is None and self.serve_config.items_path is not None:
            from freshrec.serve.catalogue import load_catalogue

            self.catalogue = load_catalogue(pred.index, self.serve_config.items_path)
        if warm:
            self._warm(pred)
        kind = "full" if gen != self._seen[0] else "dense"
        self._seen = (gen, version, dense_v, event)
        self._publish(pred, kind)
        self.control.a[_SLOTS + self.slot] = version
        return pred

    def _model_config(self, version: int) -> FreshrecConfig:
        if self.config is None:
            from freshrec.serve.updater import config_from_registry

            self.config = config_from_registry(self.registry, version)
        return self.config

    def poll(self) -> bool:
        _answer_scrape(self.control, self.slot, self.metrics, self.dense_dir)
        state = self.control.read()
        if state == self._seen or state[0] == 0:
            return False
        gen, version, dense_v, event = state
        cur = self.current
        if cur is None or gen != self._seen[0] or dense_v != self._seen[2]:
            self.load()
            return True
        cur.version, cur.event_time = version, None if event < 0 else event
        self._seen = state
        self._publish(cur, "delta")
        self.control.a[_SLOTS + self.slot] = version
        return True


    async def metrics_text(self) -> str:
        """The pool's metrics (:meth:`ServeMetrics.pooled`): this worker's, and the snapshots
        the other workers and the parent write when asked (within ~20 ms, their follower's
        poll interval; a process that does not answer within 2 s is counted from its last
        snapshot, or not at all)."""
        ctl = self.control
        token = ctl.ask(self.slot)
        others = [s for s in range(ctl.workers + 1) if s != self.slot]
        deadline = time.monotonic() + _SCRAPE_TIMEOUT_S
        while any(ctl.answered(s) < token for s in others) and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        snaps: dict[int, Any] = {}
        for s in others:
            with contextlib.suppress(FileNotFoundError):
                snaps[s] = orjson.loads(_snapshot_path(self.dense_dir, s).read_bytes())
        snaps[self.slot] = self.metrics.snapshot()
        parent = snaps.pop(ctl.workers, None) or ServeMetrics().snapshot()
        return ServeMetrics.pooled(parent, [snaps[s] for s in sorted(snaps)]).render()


def _snapshot_path(dense_dir: Path, slot: int) -> Path:
    return dense_dir / f"metrics-{slot}.json"


def _answer_scrape(control: _Control, slot: int, metrics: ServeMetrics, dense_dir: Path) -> None:
    """Write this process's metrics snapshot when a worker asked for one since the last."""
    want = control.wanted()
    if want > control.answered(slot):
        path = _snapshot_path(dense_dir, slot)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(metrics.snapshot()))
        os.replace(tmp, path)
        control.answer(slot, want)


class _ForwardLog(Log):
    """A write-only log that hands appended records to the parent process (which writes
    them to the real log: a file log partition has a single writer)."""

    def __init__(self, q: Any, partitions: int) -> None:
        self._q = q
        self.partitions = partitions

    def append(self, records: Any, partition: int = 0) -> list[int]:
        self._q.put((partition, list(records)))
        return []

    def _write_only(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError("a worker's impression log is write-only")

    def read(self, partition: int, offset: int, max_records: int = 1000,
             timeout_s: float = 0.0) -> list[Record]:
        return cast(list[Record], self._write_only())

    def end_offset(self, partition: int) -> int:
        return cast(int, self._write_only())

    def commit(self, group: str, partition: int, offset: int) -> None:
        self._write_only()

    def committed(self, group: str, partition: int) -> int:
        return cast(int, self._write_only())

    def lag(self, group: str, partition: int | None = None) -> int:
        return cast(int, self._write_only())

    def truncate(self, partition: int, offset: int) -> None:
        self._write_only()


def _worker_main(sock: socket.socket, registry: str, config: ServeConfig,
                 model_config: FreshrecConfig | None, control: str, prefix: str,
                 dense_dir: str, impressions: Any, partitions: int, slot: int) -> None:
    """Entry point of a worker process."""
    from freshrec.serve.server import Server

    logging.basicConfig(level=logging.WARNING, format=f"worker {slot}: %(levelname)s %(message)s")
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.switch_interval_s:
        sys.setswitchinterval(config.switch_interval_s)
    ctl = _Control(shared_memory.SharedMemory(name=control), config.workers)
    reg = Registry(registry)
    follower = _SharedFollower(reg, model_config, config, ctl, prefix, Path(dense_dir), slot)
    log_: Log | bool = False if impressions is None else _ForwardLog(impressions, partitions)
    server = Server(reg, config, model_config=model_config, log=log_, sock=sock,
                    updater=follower)
    server.serve_forever()


class WorkerPool:
    """The parent of ``serve --workers N`` (see the module docstring).

    Parameters
    ----------
    registry : path
    config : ServeConfig
        ``config.workers`` processes are started.
    model_config : FreshrecConfig, optional
    log : Log or str or bool or None
        As :class:`~freshrec.serve.Server`'s ``log``.

    Examples
    --------
    ::

        with WorkerPool("runs/x/registry", ServeConfig(port=0, workers=2)) as pool:
            httpx.post(pool.url + "/score", json={...})
    """

    def __init__(self, registry: str | os.PathLike[str], config: ServeConfig, *,
                 model_config: FreshrecConfig | None = None,
                 log: Log | str | bool | None = None) -> None:
        self.registry = Registry(registry)
        self.config = config
        self.model_config = model_config
        self._log_arg = log
        self._ctx = mp.get_context("spawn")
        self._token = f"fr{os.getpid()}_{secrets.token_hex(3)}"
        self._dense_dir = Path(tempfile.mkdtemp(prefix="freshrec-dense-"))
        self.control = _Control.create(self._token + "_ctl", config.workers)
        self.updater = _SharedUpdater(self.registry, model_config, config, self.control,
                                      self._token, self._dense_dir)
        self.metrics: ServeMetrics = self.updater.metrics
        self._sock: socket.socket | None = None
        self._procs: list[Any] = []
        self._queue: Any = None
        self._log: Log | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.port: int | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def start(self, timeout_s: float = 120.0) -> WorkerPool:
        """Load the model, start the workers; returns once every worker is ready (or, on an
        empty registry, accepting)."""
        sc = self.config
        if self._log_arg is not False:
            if isinstance(self._log_arg, Log):
                self._log = self._log_arg
            else:
                from freshrec.serve.server import default_log_spec

                spec = self._log_arg if isinstance(self._log_arg, str) else \
                    default_log_spec(self.registry.root)
                self._log = open_log(spec, partitions=sc.log_partitions)
            self._queue = self._ctx.Queue(maxsize=sc.log_queue)
        if self.registry.head() is not None:
            self.updater.load(warm=False)
        self.updater.start()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((sc.host, sc.port))
        self._sock.listen(2048)
        self._sock.setblocking(False)
        self.port = self._sock.getsockname()[1]
        self._procs = [self._spawn(i) for i in range(sc.workers)]
        for target in (self._watch, self._forward):
            t = threading.Thread(target=target, name=f"freshrec-{target.__name__[1:]}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        self._wait_ready(timeout_s)
        return self

    def _spawn(self, slot: int) -> Any:
        p = self._ctx.Process(
            target=_worker_main, name=f"freshrec-worker-{slot}", daemon=True,
            args=(self._sock, str(self.registry.root), self.config, self.model_config,
                  self.control.shm.name, self._token, str(self._dense_dir), self._queue,
                  self.config.log_partitions, slot))
        p.start()
        return p

    def _wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        want = self.control.read()[1] if self.updater.current is not None else None
        while time.monotonic() < deadline:
            if want is None:
                try:
                    httpx.get(self.url + "/healthz", timeout=1)
                    return
                except httpx.HTTPError:
                    pass
            elif all(v == want for v in self.served_versions()):
                return
            if any(not p.is_alive() for p in self._procs) and self.restarts > 3 * len(
                    self._procs):
                break
            time.sleep(0.05)
        raise TimeoutError(f"workers on {self.url} not ready within {timeout_s:g} s")

    def served_versions(self) -> list[int]:
        """The version each worker serves (0: none yet)."""
        return self.control.served()

    def _watch(self) -> None:
        """Restart workers that died; answer metrics scrapes for the parent."""
        while not self._stop.wait(_FOLLOW_S):
            _answer_scrape(self.control, self.config.workers, self.metrics, self._dense_dir)
            for i, p in enumerate(self._procs):
                if not p.is_alive() and not self._stop.is_set():
                    log.warning("worker %d (pid %s) exited with %s: restarting", i, p.pid,
                                p.exitcode)
                    self.restarts += 1
                    self.control.a[_SLOTS + i] = 0
                    self._procs[i] = self._spawn(i)

    def _forward(self) -> None:
        """Write the workers' impression events to the log."""
        if self._queue is None or self._log is None:
            return
        while not self._stop.is_set() or not self._queue.empty():
            try:
                partition, records = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self._log.append(records, partition=partition)
            self.metrics.impressions.inc(len(records))

    def worker_pids(self) -> list[int]:
        return [int(p.pid) for p in self._procs]

    def stop(self) -> None:
        """Stop the workers (SIGTERM: each drains for ``drain_s``), the updater and the log."""
        self._stop.set()
        for p in self._procs:
            if p.is_alive():
                p.terminate()
        for p in self._procs:
            p.join(timeout=30 + self.config.drain_s)
            if p.is_alive():
                p.kill()
                p.join()
        for t in self._threads:
            t.join()
        self.updater.stop()
        self.updater.close()
        if self._log is not None and not isinstance(self._log_arg, Log):
            self._log.close()
        if self._sock is not None:
            self._sock.close()
        self.control.shm.close()
        self.control.shm.unlink()
        for f in self._dense_dir.glob("*"):
            f.unlink()
        self._dense_dir.rmdir()

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_workers(registry: str | os.PathLike[str], *, config: ServeConfig,
                model_config: FreshrecConfig | None = None,
                log: Log | str | bool | None = None,
                on_started: Callable[[str, bool], None] | None = None) -> None:
    """Serve with ``config.workers`` processes until SIGTERM/SIGINT (blocking)."""
    pool = WorkerPool(registry, config, model_config=model_config, log=log)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        pool.start()
        if on_started is not None:
            on_started(pool.url, pool.updater.current is not None)
        done.wait()
    finally:
        pool.stop()
