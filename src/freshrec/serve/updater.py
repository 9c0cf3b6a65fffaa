"""Hot model updates: follow the registry while requests are being served.

The served model is one reference, :attr:`ModelUpdater.current` (a
:class:`~freshrec.serve.Predictor`). A background thread polls the registry's ``HEAD``:

* **sparse deltas** are applied in place to the served tables, in chunks under each table's
  short mutex (no copy of a table; a reader sees a row before or after, never half-written);
* **dense updates** build a new predictor over the same tables with the new weights, warm
  it up, then replace the reference (one assignment);
* **full snapshots and rollbacks** are materialised into new tables, built and warmed up
  off the request path, then swapped the same way; the old model is dropped when the last
  request using it returns.

The thread lowers its own CPU priority (Linux niceness is per thread) so loading yields the
CPU to request handling. A failed update is logged and counted, and retried at the next
poll; serving goes on with the current model. A damaged registry version is reported
(:meth:`ModelUpdater.status`, ``freshrec_registry_damaged_versions``) and skipped: the model
follows the newest version whose chain avoids damage, and a full snapshot published after
the damage moves it past it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import torch

from freshrec.config import FreshrecConfig, config_from_dict
from freshrec.errors import InputError
from freshrec.serve.catalogue import CatalogueStats, load_catalogue
from freshrec.serve.config import ServeConfig
from freshrec.serve.metrics import ServeMetrics
from freshrec.serve.predictor import Predictor
from freshrec.serve.request import ScoreRequest
from freshrec.sync import Registry, Subscriber, SubscriberConfig, SyncPlan

__all__ = ["ModelUpdater", "config_from_registry"]

log = logging.getLogger(__name__)


def config_from_registry(registry: Registry, version: int | None = None) -> FreshrecConfig:
    """The model config published with ``version`` (default ``HEAD``): ``meta["config"]``,
    the raw YAML mapping, of that version or the newest older one that has it (damaged
    manifests are passed over).

    Raises
    ------
    InputError
        The registry is empty or no readable version up to ``version`` carries a config.
    """
    head = registry.head()
    if head is None:
        raise InputError(f"registry {registry.root}: empty (no version published)")
    at = head if version is None else version
    raw = registry.published_meta("config", at)
    if not isinstance(raw, Mapping):
        raise InputError(
            f"registry {registry.root}: version {at} carries no model config in its meta "
            f"(publish with meta={{'config': config.raw}}) and none was given (--config)")
    return config_from_dict(raw, where=f"registry {registry.root} version {at} meta.config")


class _NeedsReload(Exception):
    """Raised from planning when the way to ``HEAD`` starts with a full snapshot."""

    def __init__(self, plan: SyncPlan) -> None:
        super().__init__("reload")
        self.plan = plan


class _DeltaOnlySubscriber(Subscriber):
    """A subscriber whose in-place :meth:`update` refuses plans that reload tables."""

    def plan(self, version: int | None = None, *, target: int | None = None) -> SyncPlan:
        p = super().plan(version, target=target)
        if p.reloads:
            raise _NeedsReload(p)
        return p


class ModelUpdater:
    """Holds the served predictor and keeps it at the registry's ``HEAD``.

    Parameters
    ----------
    registry : Registry
    config : FreshrecConfig, optional
        The model's config; read from the registry when absent (:func:`config_from_registry`).
    serve_config : ServeConfig, optional
    metrics : ServeMetrics, optional
    """

    def __init__(self, registry: Registry, config: FreshrecConfig | None = None,
                 serve_config: ServeConfig | None = None,
                 metrics: ServeMetrics | None = None) -> None:
        self.registry = registry
        self.config = config
        self.serve_config = serve_config if serve_config is not None else ServeConfig()
        self.metrics = metrics if metrics is not None else ServeMetrics()
        self.current: Predictor | None = None
        self.ready = threading.Event()
        self.recorded: deque[ScoreRequest] = deque(maxlen=max(1, self.serve_config
                                                             .warmup_requests))
        self._sub: _DeltaOnlySubscriber | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None
        #: Registry versions found damaged (skipped), with the reason naming the file.
        self.damaged: dict[int, str] = {}
        #: What the item catalogue (``serve_config.items_path``) loaded, after the first load.
        self.catalogue: CatalogueStats | None = None

    # ------------------------------------------------------------------ loading
    def _sub_config(self) -> SubscriberConfig:
        return SubscriberConfig(chunk_rows=self.serve_config.chunk_rows)

    def _warm(self, pred: Predictor) -> None:
        sc = self.serve_config
        reqs = list(self.recorded)
        if len(reqs) < sc.warmup_requests:
            reqs += pred.layout.generate_requests(sc.warmup_requests - len(reqs),
                                                  sc.warmup_candidates)
        pred.warmup(reqs)

    def _publish(self, pred: Predictor, kind: str) -> None:
        self.current = pred  # the swap: one reference assignment
        m = self.metrics
        m.model_version.set(pred.version if pred.version is not None else float("nan"))
        m.event_time = float(pred.event_time) if pred.event_time is not None else None
        m.updates.inc(kind=kind)
        self.ready.set()

    def _note_damage(self, sub: Subscriber) -> None:
        self.damaged.update(sub.damaged)
        self.metrics.damaged_versions.set(len(self.damaged))

    def load(self, *, warm: bool = True) -> Predictor:
        """Materialise the newest version that can be loaded (``HEAD`` unless damaged) into
        new tables, build and (with ``warm``) warm a predictor, swap it in; returns it."""
        t0 = time.perf_counter()
        reg = self.registry
        scout = Subscriber(reg, config=self._sub_config(), damaged=self.damaged)
        try:
            state = scout.materialize()
        finally:
            self._note_damage(scout)
        if self.config is None:
            self.config = config_from_registry(reg, state.version)
        pred = Predictor.build(self.config, tables=state.tables, dense=state.dense,
                               version=state.version, event_time=state.event_time,
                               index=self.current.index if self.current is not None else None,
                               engine=self.serve_config.engine)
        items = self.serve_config.items_path
        if items is not None and self.catalogue is None:
            self.catalogue = load_catalogue(pred.index, items)
            log.info("item catalogue %s: %d items loaded, %d lines rejected", items,
                     self.catalogue.loaded, self.catalogue.rejected)
        if warm:
            self._warm(pred)
        self._sub = _DeltaOnlySubscriber(reg, version=state.version, config=self._sub_config(),
                                         damaged=self.damaged)
        self._publish(pred, "full")
        self.metrics.swap.observe(time.perf_counter() - t0)
        behind = (f"; HEAD {reg.head()} is not servable, damaged: {sorted(self.damaged)}"
                  if state.version != reg.head() else "")
        log.info("serving version=%d (full load, %.1f ms)%s", state.version,
                 (time.perf_counter() - t0) * 1e3, behind)
        return pred

    def poll(self) -> bool:
        """Bring the served model to ``HEAD`` once; returns whether anything changed."""
        with self._lock:
            if self.current is None or self._sub is None:
                if self.registry.head() is None:
                    return False
                self.load()
                return True
            sub = self._sub
            head = self.registry.head()
            if head is None or head == sub.version:
                return False
            cur = self.current
            t0 = time.perf_counter()
            swapped: list[Predictor] = []

            def load_dense(dense: dict[str, torch.Tensor]) -> None:
                new = cur.with_dense(dense)
                self._warm(new)
                swapped.append(new)
                self._publish(new, "dense")

            before = sub.version
            try:
                sub.update(self._update_target(cur), load_dense_fn=load_dense)
            except _NeedsReload:
                self.load()
                return True
            finally:
                self._note_damage(sub)
            if sub.version is None:  # a failed apply left the tables unknown: reload next
                self.current = cur
                self._sub = None
                return True
            if sub.version == before:  # HEAD cannot be reached (damaged): nothing newer
                return False
            m = self.registry.manifest(sub.version)
            served = swapped[-1] if swapped else cur
            served.version, served.event_time = sub.version, m.event_time
            self.metrics.delta_apply.observe(time.perf_counter() - t0)
            self._publish(served, "delta")
            return True

    def _update_target(self, pred: Predictor) -> Mapping[str, Any]:
        """The tables a delta is applied to (the served ones; a subclass may wrap them)."""
        return pred.tables

    # ------------------------------------------------------------------ thread
    def start(self) -> None:
        """Start the polling thread (loads ``HEAD`` first when nothing is served)."""
        self._thread = threading.Thread(target=self._run, name="freshrec-updater", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        nice = self.serve_config.updater_nice
        if nice and hasattr(os, "setpriority"):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        while not self._stop.is_set():
            try:
                self.poll()
                self.last_error = None
            except Exception as e:  # noqa: BLE001 - keep serving the current model
                self.last_error = f"{type(e).__name__}: {e}"
                self.metrics.update_errors.inc()
                log.warning("update failed (serving version %s): %s",
                            self.current.version if self.current else None, e)
            self._stop.wait(self.serve_config.poll_interval_s)

    def stop(self) -> None:
        """Stop the polling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    async def metrics_text(self) -> str:
        """``GET /metrics``: the Prometheus text of this process's metrics (a worker of
        ``serve --workers N`` answers with the whole pool's)."""
        return self.metrics.render()

    def status(self) -> dict[str, Any]:
        """Version, event time and last error (for ``/readyz``)."""
        cur = self.current
        return {"ready": self.ready.is_set(),
                "model_version": cur.version if cur is not None else None,
                "event_time": cur.event_time if cur is not None else None,
                "last_error": self.last_error,
                "damaged_versions": {str(v): why for v, why in sorted(self.damaged.items())},
                "catalogue": None if self.catalogue is None else
                dataclasses.asdict(self.catalogue)}
