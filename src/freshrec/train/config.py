"""Configuration of training: batch size, dense optimizer, sampling, checkpoints, expiry.

Examples
--------
>>> TrainConfig(negative_sample_rate=0.25).negative_sample_rate
0.25
>>> TrainConfig(batch_size=0)
Traceback (most recent call last):
...
freshrec.errors.ConfigError: TrainConfig: batch_size must be an int >= 1, got 0
"""

from __future__ import annotations

from dataclasses import dataclass

from freshrec._validate import is_int, is_number, require

__all__ = ["TrainConfig", "OnlineConfig"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train.

    Parameters
    ----------
    batch_size : int
        Examples per step (source chunks are re-batched to this size).
    dense_optimizer : str
        ``adam``, ``adagrad`` or ``sgd`` for the dense parameters (tables use their own).
    dense_lr : float
    epochs : int
        Passes over the data (1 = Monolith's one-pass batch stage).
    negative_sample_rate : float
        Keep-rate of negatives (1.0 keeps all). Kept negatives are re-weighted or the logits
        corrected by ``log(rate)``, per ``correction``.
    correction : str
        ``logit`` (train unweighted, add ``log(rate)`` to logits at prediction) or
        ``weight`` (weight kept negatives by ``1 / rate``).
    checkpoint_every_steps : int
        0 disables step-based checkpoints.
    checkpoint_every_s : float
        Wall seconds between checkpoints (0 disables).
    keep_checkpoints : int
        Newest checkpoints kept on disk.
    expire_every_s : int
        Event-time seconds between table expiry passes.
    metrics_window_s : int
        Event-time window of the windowed metrics.
    log_every_steps : int
        Steps between lines of the JSON-lines metrics log.
    max_steps : int
        Stop after this many steps (0 = no limit).
    seed : int
        Seeds the trainer's torch generator (dense initialisation, dropout) and the
        negative-sampling coin.
    threads : int
        torch intra-op threads of the process, set by ``freshrec train``/``evaluate`` (0 =
        leave torch's default); a :class:`~freshrec.train.Trainer` does not set it.
    prefetch : int
        Batches prepared ahead on a background thread.
    pipeline_lookup : bool
        :meth:`Trainer.fit` resolves the next batch's ids to table rows on a background
        thread while this batch's dense part runs (:meth:`PooledEmbedding.prefetch`; results
        unchanged), except before steps that expire rows, checkpoint or end the run. An
        ``on_step`` callback must then not change the tables.
    run_dir : str
        Where ``freshrec train`` keeps checkpoints and metrics.jsonl (``""``: ``runs/train``,
        with ``--online`` ``runs/online``, so that an online run never resumes a batch
        checkpoint by accident).
    importance_rate : float
        Share of training steps whose batch is scored for feature importance (gradient x
        variance at the concat, :mod:`freshrec.analysis.online`), evenly spaced; 0 disables.
    importance_window_s : int
        Event-time seconds per window of the running importance estimates.
    """

    batch_size: int = 512
    dense_optimizer: str = "adam"
    dense_lr: float = 1e-3
    epochs: int = 1
    negative_sample_rate: float = 1.0
    correction: str = "logit"
    checkpoint_every_steps: int = 0
    checkpoint_every_s: float = 0.0
    keep_checkpoints: int = 2
    expire_every_s: int = 3600
    metrics_window_s: int = 3600
    log_every_steps: int = 50
    max_steps: int = 0
    seed: int = 0
    threads: int = 0
    prefetch: int = 4
    pipeline_lookup: bool = True
    run_dir: str = ""
    importance_rate: float = 0.05
    importance_window_s: int = 3600

    def __post_init__(self) -> None:
        o = "TrainConfig"
        require(
            is_int(self.batch_size) and self.batch_size >= 1,
            o,
            "batch_size",
            "an int >= 1",
            self.batch_size,
        )
        require(
            self.dense_optimizer in ("adam", "adagrad", "sgd"),
            o,
            "dense_optimizer",
            "'adam', 'adagrad' or 'sgd'",
            self.dense_optimizer,
        )
        require(
            is_number(self.dense_lr) and self.dense_lr > 0,
            o,
            "dense_lr",
            "a number > 0",
            self.dense_lr,
        )
        require(is_int(self.epochs) and self.epochs >= 1, o, "epochs", "an int >= 1", self.epochs)
        require(
            is_number(self.negative_sample_rate) and 0 < self.negative_sample_rate <= 1,
            o,
            "negative_sample_rate",
            "a number in (0, 1]",
            self.negative_sample_rate,
        )
        require(
            self.correction in ("logit", "weight"),
            o,
            "correction",
            "'logit' or 'weight'",
            self.correction,
        )
        require(isinstance(self.pipeline_lookup, bool), o, "pipeline_lookup", "true or false",
                self.pipeline_lookup)
        for f in ("checkpoint_every_steps", "log_every_steps", "max_steps", "threads", "seed"):
            v = getattr(self, f)
            require(is_int(v) and v >= 0, o, f, "an int >= 0", v)
        require(is_number(self.importance_rate) and 0 <= self.importance_rate <= 1, o,
                "importance_rate", "a number in [0, 1]", self.importance_rate)
        for f in ("expire_every_s", "metrics_window_s", "keep_checkpoints", "prefetch",
                  "importance_window_s"):
            v = getattr(self, f)
            require(is_int(v) and v >= 1, o, f, "an int >= 1", v)
        require(
            is_number(self.checkpoint_every_s) and self.checkpoint_every_s >= 0,
            o,
            "checkpoint_every_s",
            "a number >= 0",
            self.checkpoint_every_s,
        )
        require(isinstance(self.run_dir, str), o, "run_dir", "a path string", self.run_dir)


@dataclass(frozen=True, kw_only=True)
class OnlineConfig:
    """How the online trainer consumes the joined-example log.

    Parameters
    ----------
    max_records : int
        Records read per partition per step.
    poll_timeout_s : float
        Wait for new records when the log is drained.
    checkpoint_every_s : float
        Wall seconds between checkpoints (model + input offsets together); 0 checkpoints
        after every step.
    frozen_tables : tuple of str
        Tables that are looked up but never updated (forward-only).
    embedding_warmup_steps : int
        Steps during which every table is forward-only (the dense part learns first).
    init_from : str
        A batch-training checkpoint (or checkpoints folder) to start from; ignored when the
        online run has a checkpoint of its own.
    window_report_s : int
        Event-time window of the admitted/expired/AUC report lines.
    source : str
        ``freshrec train --online``: the joined-examples log (``file:DIR``,
        ``redis://HOST:PORT#NAME``).
    partitions : int or None
        Partitions of ``source`` (None: those the log has).
    registry : str
        A registry directory to publish updates to (``""``: none).
    idle_timeout_s : float
        Stop after this many seconds without new examples (0 or ``.inf``: never).

    Examples
    --------
    >>> OnlineConfig(frozen_tables=["user"]).frozen_tables
    ('user',)
    """

    max_records: int = 4096
    poll_timeout_s: float = 0.2
    checkpoint_every_s: float = 30.0
    frozen_tables: tuple[str, ...] = ()
    embedding_warmup_steps: int = 0
    init_from: str = ""
    window_report_s: int = 60
    source: str = ""
    partitions: int | None = None
    registry: str = ""
    idle_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        o = "OnlineConfig"
        object.__setattr__(self, "frozen_tables", tuple(self.frozen_tables))
        require(is_int(self.max_records) and self.max_records >= 1, o, "max_records",
                "an int >= 1", self.max_records)
        for f in ("poll_timeout_s", "checkpoint_every_s"):
            v = getattr(self, f)
            require(is_number(v) and v >= 0, o, f, "a number >= 0", v)
        require(is_int(self.embedding_warmup_steps) and self.embedding_warmup_steps >= 0, o,
                "embedding_warmup_steps", "an int >= 0", self.embedding_warmup_steps)
        require(is_int(self.window_report_s) and self.window_report_s >= 1, o,
                "window_report_s", "an int >= 1", self.window_report_s)
        require(isinstance(self.init_from, str), o, "init_from", "a path string",
                self.init_from)
        for f in ("source", "registry"):
            require(isinstance(getattr(self, f), str), o, f, "a string", getattr(self, f))
        require(self.partitions is None or (is_int(self.partitions) and self.partitions >= 1),
                o, "partitions", "null or an int >= 1", self.partitions)
        require(is_number(self.idle_timeout_s) and self.idle_timeout_s >= 0, o,
                "idle_timeout_s", "a number >= 0", self.idle_timeout_s)
