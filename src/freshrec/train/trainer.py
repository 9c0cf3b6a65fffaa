"""The trainer: progressive evaluation, then a step, over time-ordered batches.

:class:`Trainer` is Monolith's batch stage and the core the online stage reuses: for each
batch it first scores the examples (the forward pass of the step, before any update, so the
running metrics are out-of-sample), updates progressive metrics, then backpropagates: table
rows are updated inside backward by their own optimizers and dense parameters by a torch
optimizer. It down-samples negatives, corrects predictions for it, expires table rows in
event time and writes checkpoints that resume exactly.

Examples
--------
>>> import pyarrow as pa, numpy as np
>>> from freshrec.config import config_from_dict
>>> cfg = config_from_dict({
...     "features": {"tables": {"item": {"dim": 4, "optimizer": {"kind": "adagrad", "lr": 0.1}}},
...                  "slots": {"item_id": {"table": "item"}}, "labels": ["click"]},
...     "model": {"kind": "deepfm", "mlp": [8]}, "train": {"batch_size": 64}})
>>> trainer = Trainer(cfg)
>>> rng = np.random.default_rng(0)
>>> items = rng.integers(0, 20, 640)
>>> rb = pa.RecordBatch.from_pydict({"item_id": items, "click": (items % 2).astype(float),
...                                  "event_time": np.arange(640)})
>>> summary = trainer.fit([rb])
>>> summary["examples"], summary["auc"] > 0.8
(640, True)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from freshrec.analysis.online import OnlineImportance
from freshrec.data.prefetch import Prefetcher
from freshrec.errors import ConfigError, InputError, TrainingDivergedError
from freshrec.features.schema import EncodedBatch, FeatureSchema
from freshrec.models import build_model
from freshrec.nn.pooled import PooledEmbedding, SlotSpec
from freshrec.store.rules import prepare_new_rows
from freshrec.store.table import flush_tables, open_table
from freshrec.train._kernels import row_coins
from freshrec.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_metrics,
    save_checkpoint,
)
from freshrec.train.metrics import default_metrics

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig

__all__ = ["Trainer", "rebatch"]

log = logging.getLogger(__name__)


def rebatch(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """Re-cut a stream of record batches into batches of exactly ``size`` rows (last shorter).

    Slices are zero-copy; rows are copied only for a batch that spans two input batches.

    >>> rbs = [pa.RecordBatch.from_pydict({"x": list(range(n))}) for n in (3, 4, 2)]
    >>> [b.num_rows for b in rebatch(rbs, 4)]
    [4, 4, 1]
    >>> [b.column(0).to_pylist() for b in rebatch(rbs, 4)][1]
    [1, 2, 3, 0]
    """
    parts: list[pa.RecordBatch] = []
    have = 0
    for rb in batches:
        start = 0
        while start < rb.num_rows:
            take = min(size - have, rb.num_rows - start)
            parts.append(rb.slice(start, take))
            have += take
            start += take
            if have == size:
                yield _joined(parts)
                parts, have = [], 0
    if have:
        yield _joined(parts)


def _batch_now(enc: EncodedBatch) -> int:
    """Event time of a batch: its newest example's (0 when empty)."""
    return int(enc.event_time.max()) if enc.size else 0


@contextlib.contextmanager
def _drawing_from(generator: torch.Generator) -> Iterator[None]:
    """Run a block on ``generator``'s stream, for code that can only draw from torch's global
    generator (``nn.init``, ``nn.Dropout``); the global generator is restored after it."""
    saved = torch.get_rng_state()
    torch.set_rng_state(generator.get_state())
    try:
        yield
    finally:
        generator.set_state(torch.get_rng_state())
        torch.set_rng_state(saved)


def _joined(parts: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(parts) == 1:
        return parts[0]
    return pa.Table.from_batches(parts).combine_chunks().to_batches()[0]


class Trainer:
    """Trains a config's model on record batches; see the module docstring.

    Parameters
    ----------
    config : FreshrecConfig
    run_dir : path, optional
        Where ``checkpoints/`` and ``metrics.jsonl`` go; nothing is written without it.
    """

    def __init__(self, config: FreshrecConfig, run_dir: str | Path | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        tc = config.train
        #: The trainer's random stream (dense initialisation, dropout), seeded by
        #: ``train.seed``; torch's global generator is left as it was.
        self.generator = torch.Generator().manual_seed(tc.seed)
        fc = config.features
        self.schema = FeatureSchema(fc)
        self.tables = {t.name: open_table(t) for t in fc.tables}
        self.embedding = PooledEmbedding(
            self.tables, {s.name: SlotSpec(table=s.table, pooling=s.pooling) for s in fc.slots})
        with _drawing_from(self.generator):
            self.model = build_model(config.model, self.embedding, self.schema.n_dense)
        params = list(self.model.parameters())
        opt_cls = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad,
                   "sgd": torch.optim.SGD}[tc.dense_optimizer]
        self.optimizer = opt_cls(params, lr=tc.dense_lr)
        self.metrics = default_metrics(window_s=tc.metrics_window_s)
        self.step = 0
        self.examples = 0
        self.position = {"epoch": 0, "batches": 0}
        self._last_expire: int | None = None
        self._last_ckpt_wall = time.monotonic()
        self._log_rate = math.log(tc.negative_sample_rate)
        self._label = fc.labels[0]
        #: Keep the tables' log of expired fids for delta export (a publisher reads it and
        #: trims it); off, the log is dropped after each expiry pass so it cannot grow.
        self.keep_expired_log = False
        #: The state dict of the checkpoint :meth:`resume` loaded (empty before).
        self.resumed_state: dict[str, Any] = {}
        #: Feature importance of sampled steps (``train.importance_rate``; None when 0).
        self.importance = OnlineImportance.for_trainer(self)

    # ------------------------------------------------------------------ steps
    def predict_batch(self, enc: EncodedBatch) -> np.ndarray:
        """Calibrated click probabilities (eval mode, no table writes)."""
        self.model.eval()
        with torch.no_grad():
            logits = self.model(enc.sparse, torch.from_numpy(enc.dense), None)
        return self._probabilities(logits)

    def _probabilities(self, logits: torch.Tensor) -> np.ndarray:
        if self.config.train.correction == "logit" and self._log_rate:
            logits = logits + self._log_rate
        return torch.sigmoid(logits.detach()).numpy().astype(np.float64)

    def learn_batch(self, enc: EncodedBatch, ahead: EncodedBatch | None = None) -> np.ndarray:
        """Score ``enc`` (returned, calibrated), update progressive metrics, then train on it.

        ``ahead``: the batch the next call will train on; its ids are resolved to rows on a
        background thread during this step's backward (:meth:`PooledEmbedding.prefetch`)
        unless this step ends with an expiry pass. The next call must then be
        ``learn_batch(ahead, ...)`` with no other table change in between.
        """
        self.model.train()
        now = self._step_now(enc)
        y = enc.labels[:, 0]
        prepare_new_rows(self.tables, self.config.features, enc.sparse)  # new-user init
        with _drawing_from(self.generator):
            logits = self.model(enc.sparse, torch.from_numpy(enc.dense), now)
        probs = self._probabilities(logits)
        if not np.isfinite(probs).all():  # inputs are checked finite: the model diverged
            bad = int((~np.isfinite(probs)).sum())
            raise TrainingDivergedError(
                f"step {self.step}: the model's output is NaN or infinite for {bad} of "
                f"{probs.shape[0]} examples, so its parameters diverged (learning rates too "
                f"high?); nothing of this batch was trained: resume from an earlier "
                f"checkpoint with smaller learning rates")
        if self.importance is not None:
            self.importance.after_forward(self.model, enc.dense, now, self.step)
        # metrics estimate the un-sampled stream: a kept negative stands for 1/rate negatives
        rate = np.where(y > 0, 1.0, enc.sample_rate).astype(np.float64)
        self.metrics.update(y, probs, enc.weight / rate, now=now)
        weight = enc.weight.astype(np.float32)
        if self.config.train.correction == "weight":
            weight = (weight / rate).astype(np.float32)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.from_numpy(y), weight=torch.from_numpy(weight), reduction="sum"
        ) / max(self._loss_weight(weight), 1e-12)
        if ahead is not None and ahead.size and not self._expire_due(now):
            prepare_new_rows(self.tables, self.config.features, ahead.sparse)
            self.embedding.prefetch(ahead.sparse, _batch_now(ahead))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.examples += enc.size
        self._maybe_expire(now)
        return probs

    def _step_now(self, enc: EncodedBatch) -> int:
        """Event time of a training step on ``enc``: its newest example's (a distributed
        trainer takes the newest over every rank's slice of the batch)."""
        return _batch_now(enc)

    def _loss_weight(self, weight: np.ndarray) -> float:
        """The loss divides by this: the batch's total example weight (a distributed trainer
        sums it over every rank's slice, so the gradients add up to one process's)."""
        return float(weight.sum())

    def _expire_due(self, now: int) -> bool:
        """Whether the expiry pass after a step at event time ``now`` removes rows."""
        return self._last_expire is not None and \
            now - self._last_expire >= self.config.train.expire_every_s

    def _maybe_expire(self, now: int) -> None:
        if self._last_expire is None:
            self._last_expire = now
        elif self._expire_due(now):
            removed = {n: t.expire(now) for n, t in self.tables.items()}
            if not self.keep_expired_log:  # nobody exports deltas: do not keep expired fids
                for t in self.tables.values():
                    t.forget_expired_before(t.version)
            self._last_expire = now
            log.info("expired now=%d %s", now, " ".join(f"{k}={v}" for k, v in removed.items()))

    def sample_negatives(self, rb: pa.RecordBatch, first_row: int) -> pa.RecordBatch:
        """Keep every positive and each negative with the configured rate (deterministic per row).

        Adds a ``sample_rate`` column (the keep-rate, 1.0 for positives).
        """
        rate = self.config.train.negative_sample_rate
        if rate >= 1.0:
            return rb
        y = np.asarray(rb.column(self._label).cast(pa.float32()).fill_null(0).to_numpy(
            zero_copy_only=False))
        seed = np.uint64(self.config.train.seed)
        coin = row_coins(seed, np.int64(first_row), rb.num_rows, np.uint64(7))
        keep = (y > 0) | (coin < rate)
        kept = rb.filter(pa.array(keep))
        col = self.config.features.sample_rate_column
        rates = pa.array(np.where(y[keep] > 0, 1.0, rate).astype(np.float32))
        if col in kept.schema.names:
            kept = kept.drop_columns([col])
        return kept.append_column(col, rates)

    # ------------------------------------------------------------------ loops
    def fit(
        self,
        batches: Iterable[pa.RecordBatch] | Callable[[], Iterable[pa.RecordBatch]],
        *,
        on_step: Callable[[Trainer, dict[str, float]], None] | None = None,
    ) -> dict[str, Any]:
        """Train for ``epochs`` passes; ``batches`` is re-iterated (or re-created) per epoch.

        Resumes at :attr:`position` (restored by :meth:`resume`): batches already trained on
        are read and skipped. Returns a summary dict (examples, steps, metrics).
        """
        tc = self.config.train
        while self.position["epoch"] < tc.epochs:
            source = batches() if callable(batches) else batches
            prepared = Prefetcher(self._prepare(source, self.position["epoch"],
                                                self.position["batches"]),
                                  depth=tc.prefetch, name="freshrec-train-prepare")
            try:
                items = self._in_step(iter(prepared))
                nxt = next(items, None)
                while nxt is not None:
                    i, enc = nxt
                    nxt = next(items, None)
                    save = self._checkpoint_due(self.step + (enc is not None))
                    last = bool(tc.max_steps) and self.step + 1 >= tc.max_steps
                    ahead = nxt[1] if tc.pipeline_lookup and nxt is not None and \
                        not save and not last else None
                    if enc is not None:
                        self.learn_batch(enc, ahead)
                    self.position["batches"] = i + 1
                    self._after_step(on_step, save)
                    if tc.max_steps and self.step >= tc.max_steps:
                        return self.finish()
            finally:
                prepared.close()
            self.position = {"epoch": self.position["epoch"] + 1, "batches": 0}
        if self.run_dir is not None:
            self.save()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """The run stops: the open importance window is written (to ``run_dir``); returns
        :meth:`summary`. :meth:`fit` calls it when it returns."""
        if self.importance is not None:
            self.importance.finish(self.step)
            if self.run_dir is not None:
                self.importance.write(self.run_dir)
        return self.summary()

    def _prepare(self, source: Iterable[pa.RecordBatch], epoch: int, skip: int
                 ) -> Iterator[tuple[int, EncodedBatch | None]]:
        """Re-batch, skip what a resumed run already trained on, sample and encode.

        Runs on the prefetch thread, so data preparation overlaps training.
        """
        rows_before = 0
        for i, rb in enumerate(rebatch(source, self.config.train.batch_size)):
            first_row = epoch * 10**12 + rows_before
            rows_before += rb.num_rows
            if i < skip:
                continue
            sampled = self.sample_negatives(rb, first_row)
            try:
                enc = self._encode(sampled)
            except InputError as e:  # where in the input (rows counted from 0)
                where = f"input rows {rows_before - rb.num_rows}-{rows_before - 1}"
                if sampled.num_rows < rb.num_rows:
                    where += " before negative sampling"
                raise InputError(f"epoch {epoch}, {where}: {e}") from e
            yield i, enc

    def _in_step(self, prepared: Iterator[tuple[int, EncodedBatch | None]]
                 ) -> Iterator[tuple[int, EncodedBatch | None]]:
        """The steps of an epoch from its prepared batches (a distributed trainer whose ranks
        read different files keeps them in step here)."""
        return prepared

    def _encode(self, sampled: pa.RecordBatch) -> EncodedBatch | None:
        """The step's batch after negative sampling, encoded (None: nothing to train on; a
        distributed trainer encodes its rank's slice)."""
        return self.schema.encode(sampled) if sampled.num_rows else None

    def _checkpoint_due(self, step: int) -> bool:
        """Whether a checkpoint is written after the step that makes the count ``step``."""
        tc = self.config.train
        if self.run_dir is None:
            return False
        due = bool(tc.checkpoint_every_steps) and step % tc.checkpoint_every_steps == 0
        return due or bool(tc.checkpoint_every_s and
                           time.monotonic() - self._last_ckpt_wall >= tc.checkpoint_every_s)

    def _after_step(self, on_step: Callable[[Trainer, dict[str, float]], None] | None,
                    save: bool) -> None:
        tc = self.config.train
        if self.run_dir is not None and tc.log_every_steps and self.step % tc.log_every_steps == 0:
            line = {"step": self.step, "examples": self.examples, **self.metrics.get(),
                    **{f"{n}_entries": len(t) for n, t in self.tables.items()}}
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(line) + "\n")
        if self.importance is not None and self.run_dir is not None:
            self.importance.write(self.run_dir)
        if on_step is not None:
            on_step(self, self.metrics.get())
        if save:
            self.save()

    def summary(self) -> dict[str, Any]:
        """Steps, examples, progressive metrics and table sizes so far."""
        return {"steps": self.step, "examples": self.examples, **self.metrics.get(),
                **{f"{n}_entries": len(t) for n, t in self.tables.items()}}

    # ------------------------------------------------------------------ checkpoints
    def save(self, extra: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint under ``run_dir/checkpoints`` (tables, dense, position, metrics).

        ``extra`` (JSON-able) is stored with it, e.g. the online trainer's input offsets,
        and comes back in :attr:`resumed_state`.

        Raises
        ------
        ConfigError
            The trainer has no ``run_dir``.
        """
        if self.run_dir is None:
            raise ConfigError("Trainer.save: run_dir is None; build the trainer with "
                              "Trainer(config, run_dir=...) to write checkpoints")
        state = {"step": self.step, "examples": self.examples, "position": self.position,
                 "last_expire": self._last_expire, "metrics": self.metrics.get(),
                 "config_fingerprint": self.config.fingerprint(),
                 "torch_rng": self.generator.get_state().numpy().tolist(), **(extra or {})}
        self._last_ckpt_wall = time.monotonic()
        path = save_checkpoint(self.run_dir / "checkpoints", f"step-{self.step:010d}",
                               self.tables, self.model.state_dict(), self.optimizer.state_dict(),
                               state, keep=self.config.train.keep_checkpoints,
                               metrics=self.metrics)
        flush_tables(self.tables)  # Redis-backed tables write back what the checkpoint holds
        return path

    def resume(self, path: str | Path | None = None) -> bool:
        """Load the latest checkpoint of ``run_dir`` (or ``path``); False if there is none.

        The model, tables, optimizer, data position and progressive metrics continue exactly
        (metrics restart, with a warning, from a checkpoint saved without them or with other
        metrics).
        """
        root = Path(path) if path is not None else (
            self.run_dir / "checkpoints" if self.run_dir else None)
        ckpt = latest_checkpoint(root) if root is not None else None
        if ckpt is None:
            return False
        model_state, optim_state, state = load_checkpoint(ckpt, self.tables,
                                                          self.config.fingerprint())
        self.model.load_state_dict(model_state)
        if optim_state is not None:
            self.optimizer.load_state_dict(optim_state)
        self.step = int(state["step"])
        self.examples = int(state["examples"])
        self.position = {k: int(v) for k, v in state["position"].items()}
        self._last_expire = state["last_expire"]
        load_metrics(ckpt, self.metrics)
        self.resumed_state = state
        self.generator.set_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        log.info("resumed checkpoint=%s step=%d", ckpt, self.step)
        return True

    def evaluate(self, batches: Iterable[pa.RecordBatch]) -> dict[str, float]:
        """Metrics of the current model on ``batches`` (no training, no table writes)."""
        metrics = default_metrics()
        for rb in rebatch(batches, self.config.train.batch_size):
            enc = self.schema.encode(rb)
            metrics.update(enc.labels[:, 0], self.predict_batch(enc), enc.weight)
        return metrics.get()


