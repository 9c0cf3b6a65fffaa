"""The online trainer: learns from the joined-example log as it grows and publishes updates.

Monolith's online stage: a model (from a batch checkpoint, or from scratch) consumes the
joiner's examples as they arrive, scores each batch before training on it (progressive,
event-time-windowed AUC / log loss / calibration), keeps its tables bounded by admission and
expiry in event time, and publishes the rows it touched to a :mod:`freshrec.sync` registry
every ``sync.sparse_interval_s`` (dense parameters and full snapshots less often, and
everything when it stops). Its checkpoints hold the model together with the input offsets
and the progressive metrics, so a restart after ``kill -9`` resumes exactly: no example lost,
none trained twice, and the same example count and AUC as a run never interrupted.

A long run does not die on its surroundings: an unreachable log is retried with back-off
(:attr:`OnlineTrainer.source_errors`), and so is a checkpoint or publish that cannot be
written (a full disk; :attr:`OnlineTrainer.write_errors`, the path named in the warning)
while training goes on.

Examples
--------
>>> import tempfile, orjson
>>> from freshrec.config import config_from_dict
>>> from freshrec.stream.open import open_log
>>> log = open_log("file:" + tempfile.mkdtemp())
>>> _ = log.append([orjson.dumps({"item_id": i % 5, "click": float(i % 5 == 0),
...                               "event_time": i}) for i in range(300)])
>>> cfg = config_from_dict({
...     "features": {"tables": {"item": {"dim": 4}}, "slots": {"item_id": {"table": "item"}},
...                  "labels": ["click"]},
...     "model": {"kind": "deepfm", "mlp": [8]}, "train": {"batch_size": 100}})
>>> online = OnlineTrainer(cfg, log, run_dir=tempfile.mkdtemp())
>>> online.run(idle_timeout_s=0.0)["examples"]
300
>>> online.offsets
{0: 300}
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from freshrec._retry import Backoff
from freshrec.errors import InputError
from freshrec.features.schema import EncodedBatch, RowsOutOfRange
from freshrec.ops.gate import GateDecision, PublishGate, holdout_mask
from freshrec.ops.stats import SlotStats, window_record
from freshrec.stream.base import Log, committed_end
from freshrec.stream.events import decode_examples
from freshrec.sync.publisher import Publisher
from freshrec.sync.registry import Registry, VersionManifest
from freshrec.train.trainer import Trainer, rebatch

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig

__all__ = ["OnlineTrainer"]

log = logging.getLogger(__name__)


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors of an unreachable log, retried with back-off (the backends' client errors)."""
    errors: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    try:
        import redis

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:  # pragma: no cover - redis is an optional extra
        pass
    return tuple(errors)


_TRANSIENT = _transient_errors()


class OnlineTrainer:
    """Trains a config's model from a log of joined examples; see the module docstring.

    Parameters
    ----------
    config : FreshrecConfig
        ``online`` and ``sync`` sections drive this class; ``train`` the steps.
    source : Log
        The joiner's output log: Arrow example records, or orjson rows (one flat example
        per record); see :func:`~freshrec.stream.events.decode_examples`.
    run_dir : path
        Checkpoints and ``metrics.jsonl``.
    registry : Registry, optional
        Where updates are published (nothing is published without it).
    """

    def __init__(self, config: FreshrecConfig, source: Log, *, run_dir: str | Path,
                 registry: Registry | None = None) -> None:
        self.config = config
        self.source = source
        self.trainer = self._new_trainer(config, run_dir)
        oc = config.online
        unknown = set(oc.frozen_tables) - set(self.trainer.tables)
        if unknown:
            raise InputError(f"online.frozen_tables: no table {sorted(unknown)} "
                             f"(tables: {sorted(self.trainer.tables)})")
        self.offsets = {p: 0 for p in range(source.partitions)}
        self.rejected = 0
        #: Times reading the log failed (unreachable server); each is retried with back-off.
        self.source_errors = 0
        #: Times a checkpoint or publish could not be written; each is retried with back-off.
        self.write_errors = 0
        self.newest_event_time: int | None = None
        #: Rows read from the log (the position that decides which rows are held back).
        self.rows_read = 0
        #: The publish gate (``ops.gate``); its newest decision in :attr:`last_gate`.
        self.gate = PublishGate(config.ops.gate) if config.ops.gate.enabled else None
        self.last_gate: GateDecision | None = None
        self._gate_at = -math.inf
        self._resume()
        self.publisher = self._new_publisher(registry) if registry is not None else None
        self.trainer.keep_expired_log = self.publisher is not None
        self._last_ckpt = time.monotonic()
        self._window: dict[str, Any] = {}
        self._slot_stats = SlotStats(self.trainer.schema.slot_names)
        self._dense_published_step: int | None = None

    def _new_trainer(self, config: FreshrecConfig, run_dir: str | Path) -> Trainer:
        """The trainer of the model (a distributed run's is a rank's trainer)."""
        return Trainer(config, run_dir=run_dir)

    def _new_publisher(self, registry: Registry) -> Any:
        """What publishes to ``registry``: ``maybe_publish``, ``publish_sparse`` and
        ``publish_dense`` of a :class:`~freshrec.sync.Publisher`."""
        return Publisher(registry, self.trainer.tables, self._dense_state, self.config.sync)

    def _dense_state(self) -> dict[str, Any]:
        return self.trainer.model.state_dict()

    def _agreed(self, flag: bool) -> bool:
        """A decision to stop (a distributed run takes it when any rank does)."""
        return flag

    def _resume(self) -> None:
        t = self.trainer
        if t.resume():
            self.offsets = {int(p): int(o) for p, o in t.resumed_state["offsets"].items()}
            self.rejected = int(t.resumed_state.get("rejected", 0))
            self.newest_event_time = t.resumed_state.get("newest_event_time")
            self.rows_read = int(t.resumed_state.get("rows_read", 0))
            log.info("online resumed step=%d offsets=%s", t.step, self.offsets)
        elif self.config.online.init_from:
            if not t.resume(self.config.online.init_from):
                raise InputError(f"online.init_from: no checkpoint at "
                                 f"{self.config.online.init_from!r}")
            t.position = {"epoch": 0, "batches": 0}
            t.metrics = t.metrics.clone()  # progressive metrics are of the online stream
            log.info("online starts from batch checkpoint %s", self.config.online.init_from)

    # ------------------------------------------------------------------ loop
    def step(self, timeout_s: float = 0.0) -> int:
        """Read what is available (waiting up to ``timeout_s``), train on it, checkpoint and
        publish what is due; returns examples."""
        n = self._consume(timeout_s)
        self._maybe_checkpoint()
        self._maybe_publish()
        return n

    def _consume(self, timeout_s: float) -> int:
        """Read what is available (waiting up to ``timeout_s``) and train on it."""
        values, ends = self._read(timeout_s)
        rb = None
        if values:
            rb, bad = decode_examples(values)
            if bad:
                self.rejected += bad
                log.warning("online: %d records are not examples (skipped)", bad)
        n = self._train(rb)
        self.offsets = ends
        return n

    def _read(self, timeout_s: float) -> tuple[list[bytes], dict[int, int]]:
        """The records available in the partitions of :attr:`offsets` (waiting up to
        ``timeout_s`` in each) and the offsets after them."""
        oc = self.config.online
        values: list[bytes] = []
        ends = dict(self.offsets)
        for p in self.offsets:
            recs = self.source.read(p, self.offsets[p], oc.max_records, timeout_s)
            end = committed_end(self.source, p) if recs else None
            if end is not None:  # the joiner may still roll back what is past its commit
                recs = [r for r in recs if r.offset < end]
            values += [r.value for r in recs]
            if recs:
                ends[p] = recs[-1].offset + 1
        return values, ends

    def _train(self, rb: pa.RecordBatch | None) -> int:
        """Train on the examples ``rb`` (None: none were read); returns examples."""
        if rb is None:
            return 0
        n = self._learn(self._encoded(rb, self.config.train.batch_size))
        self._after_round()
        return n

    def _encoded(self, rb: pa.RecordBatch, batch_size: int) -> list[EncodedBatch]:
        """``rb`` in encoded batches of ``batch_size`` examples (less the examples the gate
        holds back); a batch that cannot be encoded is rejected (counted, logged)."""
        out = []
        for chunk in rebatch([rb], batch_size):
            if self.gate is not None:
                chunk = self._hold_back(chunk)
            enc = self._encode(chunk, "examples")
            if enc is not None:
                out.append(enc)
        return out

    def _encode(self, chunk: pa.RecordBatch, what: str) -> EncodedBatch | None:
        """``chunk`` encoded less its rows out of range (a label outside [0, 1], ...); None
        when none of it can be. Every row left out is counted in :attr:`rejected` and
        logged with the reason."""
        try:
            return self.trainer.schema.encode(chunk)
        except RowsOutOfRange as e:  # the other rows are kept
            bad = int(e.rows.sum())
            self.rejected += bad
            log.warning("online: rejected %d %s: %s", bad, what, e)
            if bad == chunk.num_rows:
                return None
            return self.trainer.schema.encode(chunk.filter(pa.array(~e.rows)))
        except InputError as e:
            self.rejected += chunk.num_rows
            log.warning("online: rejected %d %s: %s", chunk.num_rows, what, e)
            return None

    def _learn(self, batches: list[EncodedBatch]) -> int:
        """One training step per batch; returns examples."""
        for enc in batches:
            self._learn_one(enc)
        return sum(enc.size for enc in batches)

    def _learn_one(self, enc: EncodedBatch) -> None:
        t = self.trainer
        oc = self.config.online
        warm = t.step < oc.embedding_warmup_steps
        for name, table in t.tables.items():
            table.frozen = warm or name in oc.frozen_tables
        t.learn_batch(enc)
        if enc.size:
            self._slot_stats.update(enc.sparse, enc.labels[:, 0])
            newest = int(enc.event_time.max())
            self.newest_event_time = max(newest, self.newest_event_time or newest)

    def _after_round(self) -> None:
        """After training on what a read returned: the window report, importance."""
        t = self.trainer
        self._report()
        if t.importance is not None and t.run_dir is not None:
            t.importance.write(t.run_dir)

    def _hold_back(self, chunk: pa.RecordBatch) -> pa.RecordBatch:
        """Keep the gate's share of ``chunk`` for the publish gate; return the rest."""
        assert self.gate is not None
        mask = holdout_mask(self.rows_read, chunk.num_rows, self.config.ops.gate.holdout_fraction,
                            seed=self.config.train.seed)
        self.rows_read += chunk.num_rows
        if mask.any():
            enc = self._encode(chunk.filter(pa.array(mask)), "held-back examples")
            if enc is not None:
                self.gate.hold(enc, enc.labels[:, 0])
        return chunk.filter(pa.array(~mask))

    def _report(self) -> None:
        """Log admitted/expired counts and windowed metrics once per event-time window, and
        append a line to ``metrics.jsonl`` (:func:`~freshrec.ops.stats.window_record`: the
        metrics, each slot's coverage and distinct ids and each table's counters over the
        examples since the previous line), which the dashboard and alerts read."""
        if self.newest_event_time is None:
            return
        w = self.config.online.window_report_s
        key = self.newest_event_time // w
        if self._window.get("key") == key:
            return
        stats = {n: t.stats() for n, t in self.trainer.tables.items()}
        prev = self._window.get("stats", {})
        parts = []
        for n, s in stats.items():
            p = prev.get(n)
            parts.append(f"{n}_entries={s.entries} {n}_admitted={s.admitted - (p.admitted if p else 0)}"
                         f" {n}_expired={s.expired - (p.expired if p else 0)}")
        m = self.trainer.metrics.get()
        log.info("online window=%d %s auc_window=%.4f", key * w, " ".join(parts),
                 m.get("auc_window", float("nan")))
        now, examples = time.monotonic(), self.trainer.examples
        if self.trainer.run_dir is not None:
            since = self._window.get("clock")
            rate = (examples - since[1]) / max(now - since[0], 1e-9) if since else None
            tables = {n: {"entries": s.entries,
                          "admitted": s.admitted - (prev[n].admitted if n in prev else 0),
                          "expired": s.expired - (prev[n].expired if n in prev else 0)}
                      for n, s in stats.items()}
            line = window_record(event_time=key * w, wall_s=time.time(), step=self.trainer.step,
                                 examples=examples, examples_per_s=rate, metrics=m,
                                 slots=self._slot_stats.get(), tables=tables,
                                 positive_ratio=self._slot_stats.positive_ratio)
            self.trainer.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.trainer.run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(line) + "\n")
        self._slot_stats.reset()
        self._window = {"key": key, "stats": stats, "clock": (now, examples)}

    def _maybe_checkpoint(self) -> None:
        if time.monotonic() - self._last_ckpt >= self.config.online.checkpoint_every_s:
            self.checkpoint()

    def checkpoint(self) -> Path:
        """Save model, tables, progressive metrics and input offsets together."""
        self._last_ckpt = time.monotonic()
        return self.trainer.save(extra=self._checkpoint_state())

    def _checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the model: input offsets and counters."""
        return {"offsets": {str(p): o for p, o in self.offsets.items()},
                "rejected": self.rejected, "newest_event_time": self.newest_event_time,
                "rows_read": self.rows_read}

    def _gate_allows(self, *, final: bool = False) -> bool:
        """Whether the publish gate lets the model out now (checked at most once per
        ``sync.sparse_interval_s`` unless ``final``); a refusal is logged and recorded in the
        registry's events with its reason."""
        if self.gate is None or self.publisher is None:
            return True
        now = time.monotonic()
        if not final and self.last_gate is not None and \
                now - self._gate_at < self.config.sync.sparse_interval_s:
            return self.last_gate.accepted
        self._gate_at = now
        ref = self.publisher.registry.published_meta("gate")
        ref_auc = ref.get("auc") if isinstance(ref, dict) else None
        d = self.gate.check(self.trainer.predict_batch, reference_auc=ref_auc)
        self.last_gate = d
        if not d.accepted:
            log.warning("online: publish refused by the gate at step %d: %s", self.trainer.step,
                        d.reason)
            self.publisher.registry.record({"kind": "gate_refused", "step": self.trainer.step,
                                            "event_time": self.newest_event_time, **d.meta()})
        return d.accepted

    def _maybe_publish(self) -> None:
        if self.publisher is None or not self._gate_allows():
            return
        self._published(self.publisher.maybe_publish(
            time.monotonic(), event_time=self.newest_event_time, meta=self._publish_meta()))

    def publish(self) -> None:
        """Publish everything trained now: the rows written since the last publish (when
        any), and the dense parameters unless already published at this step. :meth:`run`
        calls it when it stops."""
        if self.publisher is None or not self._gate_allows(final=True):
            return
        meta = self._publish_meta()
        self._published(self.publisher.publish_sparse(event_time=self.newest_event_time,
                                                      meta=meta))
        if self._dense_published_step != self.trainer.step:
            self._published(self.publisher.publish_dense(event_time=self.newest_event_time,
                                                         meta=meta))

    def _published(self, manifest: VersionManifest | None) -> None:
        if manifest is not None and manifest.dense:
            self._dense_published_step = self.trainer.step

    def _publish_meta(self) -> dict[str, Any]:
        """Published with every version: input offsets, step, examples trained, the
        progressive metrics (``auc``, ``logloss``, ...; ``None`` while undefined) and the
        model config (serving builds its model from it)."""
        metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                   for k, v in self.trainer.metrics.get().items()}
        gate = {"gate": self.last_gate.meta()} if self.last_gate is not None else {}
        return {"offsets": self.offsets, "step": self.trainer.step,
                "examples": self.trainer.examples, "metrics": metrics,
                "config": dict(self.config.raw), **gate}

    def lag(self) -> int:
        """Records in the log not yet trained on (one record may hold many examples)."""
        return sum(self.source.count_from(p, o) for p, o in self.offsets.items())

    def _outputs(self, *, final: bool) -> list[tuple[str, Callable[[], object]]]:
        """(where, write) of the checkpoint and the publish: when due, or all (``final``)."""
        out: list[tuple[str, Callable[[], object]]] = [
            (f"checkpoint under {self.trainer.run_dir}",
             self.checkpoint if final else self._maybe_checkpoint)]
        if self.publisher is not None:
            out.append((f"publish to registry {self.publisher.registry.root}",
                        self.publish if final else self._maybe_publish))
        return out

    def run(self, *, idle_timeout_s: float = 5.0, max_examples: int | None = None,
            stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Train until the log is idle for ``idle_timeout_s``, ``max_examples`` or ``stop()``.

        An unreachable log, and a checkpoint or publish that fails to write, are retried
        with back-off (counted in :attr:`source_errors` and :attr:`write_errors`). Before
        returning, checkpoints and (with a registry) publishes everything (:meth:`publish`).
        """
        idle_since = time.monotonic()
        done = 0
        read_backoff, write_backoff = Backoff(), Backoff()
        while True:
            if self._agreed(stop is not None and stop()):
                break
            try:
                n = self._consume(self.config.online.poll_timeout_s if idle_timeout_s else 0.0)
            except _TRANSIENT as e:
                raise_if_fatal(e)
                self.source_errors += 1
                _wait(read_backoff, f"log {self.source!r} unreachable", e)
                idle_since = time.monotonic()
                continue
            read_backoff.reset()
            wrote = True
            for where, write in self._outputs(final=False):
                try:
                    write()
                except OSError as e:
                    self.write_errors += 1
                    wrote = False
                    _wait(write_backoff, f"{where} failed, training goes on", e)
            if wrote:
                write_backoff.reset()
            done += n
            if n:
                idle_since = time.monotonic()
            elif self._agreed(time.monotonic() - idle_since >= idle_timeout_s):
                break
            if max_examples is not None and done >= max_examples:
                break
        for where, write in self._outputs(final=True):
            try:
                write()
            except OSError as e:
                log.error("online: %s failed when stopping (%s: %s)", where, type(e).__name__, e)
                raise
        return {**self.trainer.finish(), "offsets": dict(self.offsets),
                "rejected": self.rejected, "source_errors": self.source_errors,
                "write_errors": self.write_errors}


def _wait(backoff: Backoff, what: str, error: BaseException) -> None:
    """Log ``what`` failed with ``error`` and sleep the next back-off delay."""
    delay = backoff.next()
    log.warning("online: %s (%s: %s); retrying in %.2fs", what, type(error).__name__, error,
                delay)
    time.sleep(delay)


def raise_if_fatal(error: BaseException) -> None:
    """Re-raise errors that retrying cannot fix (a missing file log directory)."""
    if isinstance(error, FileNotFoundError | PermissionError | NotADirectoryError):
        raise error
