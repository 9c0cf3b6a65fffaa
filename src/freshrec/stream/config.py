"""Configuration of the logs and the joiner: frozen keyword-only dataclasses, validated when built.

Examples
--------
>>> JoinerConfig(window_s=300, actions=("click", "like")).actions
('click', 'like')
>>> JoinJobConfig(source="file:runs/events", workers=2, window_s=30).workers
2
>>> FileLogConfig(fsync="sometimes")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
freshrec.errors.ConfigError: FileLogConfig: fsync must be one of ..., got 'sometimes'
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from freshrec._validate import is_int, is_number, require

__all__ = [
    "FileLogConfig",
    "RedisLogConfig",
    "KafkaLogConfig",
    "ValidationConfig",
    "JoinerConfig",
    "JoinJobConfig",
]

_FSYNC = ("always", "interval", "never")
_REDIS_SCHEMES = ("redis://", "unix://", "redis+cluster://")


@dataclass(frozen=True, kw_only=True)
class FileLogConfig:
    """Embedded file log.

    Parameters
    ----------
    partitions
        Number of partitions when the log is created (an existing log keeps its own).
    segment_bytes
        A partition rolls to a new segment file once the current one reaches this size.
    fsync
        ``"always"``: fsync before ``append`` returns (survives power loss); ``"interval"``:
        at most every ``fsync_interval_s``; ``"never"``: leave it to the OS. Every acknowledged
        record survives a killed process (kill -9) under all three.
    fsync_interval_s
        Interval of the ``"interval"`` policy.
    """

    partitions: int = 1
    segment_bytes: int = 64 << 20
    fsync: str = "interval"
    fsync_interval_s: float = 1.0

    def __post_init__(self) -> None:
        o = "FileLogConfig"
        require(is_int(self.partitions) and self.partitions >= 1, o, "partitions",
                "an int >= 1", self.partitions)
        require(is_int(self.segment_bytes) and self.segment_bytes >= 1024, o, "segment_bytes",
                "an int >= 1024", self.segment_bytes)
        require(self.fsync in _FSYNC, o, "fsync", "one of 'always', 'interval', 'never'",
                self.fsync)
        require(is_number(self.fsync_interval_s) and self.fsync_interval_s >= 0, o,
                "fsync_interval_s", "a number >= 0", self.fsync_interval_s)


@dataclass(frozen=True, kw_only=True)
class RedisLogConfig:
    """Redis Streams log: one stream per partition, ``{<name>:p<i>}``.

    Parameters
    ----------
    url
        ``redis://host:port/db`` or ``unix://path`` (one server), or
        ``redis+cluster://host:port/0`` (a Redis Cluster, through any of its nodes).
    name
        Key prefix of the streams, commits and append tokens (no braces: each partition's
        keys share the hash tag ``{<name>:p<i>}``).
    partitions
        Number of streams.
    max_len
        Approximate ``MAXLEN`` applied on every append (None: no length trimming).
    claim_idle_s
        Pending entries of a group idle for this long are re-delivered (``XAUTOCLAIM``) to the
        next consumer that polls.
    retry_s
        An operation that loses the server (connection refused or dropped, timeout, server
        still loading its data) is retried with exponential back-off for up to this many
        seconds in all before the error is raised (0: raise at once).
    """

    url: str = "redis://127.0.0.1:6379/0"
    name: str = "events"
    partitions: int = 1
    max_len: int | None = None
    claim_idle_s: float = 30.0
    retry_s: float = 60.0

    def __post_init__(self) -> None:
        o = "RedisLogConfig"
        require(isinstance(self.url, str) and self.url.startswith(_REDIS_SCHEMES), o, "url",
                "a redis://, unix:// or redis+cluster:// URL", self.url)
        require(not self.url.startswith("redis+cluster://")
                or urlsplit(self.url).path in ("", "/", "/0"), o, "url",
                "database 0 on a cluster (redis+cluster://host:port/0)", self.url)
        require(isinstance(self.name, str) and bool(self.name) and not {"{", "}"} & set(self.name),
                o, "name", "a non-empty string without braces", self.name)
        require(is_int(self.partitions) and self.partitions >= 1, o, "partitions",
                "an int >= 1", self.partitions)
        require(self.max_len is None or (is_int(self.max_len) and self.max_len >= 1), o,
                "max_len", "None or an int >= 1", self.max_len)
        require(is_number(self.claim_idle_s) and self.claim_idle_s >= 0, o, "claim_idle_s",
                "a number >= 0", self.claim_idle_s)
        require(is_number(self.retry_s) and self.retry_s >= 0, o, "retry_s", "a number >= 0",
                self.retry_s)


@dataclass(frozen=True, kw_only=True)
class KafkaLogConfig:
    """Kafka topic through confluent-kafka (optional extra ``freshrec[kafka]``)."""

    bootstrap: str = "127.0.0.1:9092"
    topic: str = "events"
    partitions: int = 1

    def __post_init__(self) -> None:
        o = "KafkaLogConfig"
        require(isinstance(self.bootstrap, str) and bool(self.bootstrap), o, "bootstrap",
                "host:port[,host:port]", self.bootstrap)
        require(isinstance(self.topic, str) and bool(self.topic), o, "topic",
                "a non-empty string", self.topic)
        require(is_int(self.partitions) and self.partitions >= 1, o, "partitions",
                "an int >= 1", self.partitions)


@dataclass(frozen=True, kw_only=True)
class ValidationConfig:
    """Stream validation: bounds on each event-time window of impressions.

    A window (``window_s`` seconds of impression time) whose examples fall outside the bounds
    raises an alert and its examples go to the quarantine log instead of the output, until
    :meth:`~freshrec.stream.join.Joiner.release` lets them through. Examples are held until
    their window closes, which adds up to ``window_s`` of event-time latency.
    """

    window_s: int = 60
    min_examples: int = 0
    max_examples: int | None = None
    min_positive_ratio: float = 0.0
    max_positive_ratio: float = 1.0
    min_join_rate: float = 0.0

    def __post_init__(self) -> None:
        o = "ValidationConfig"
        require(is_int(self.window_s) and self.window_s >= 1, o, "window_s", "an int >= 1",
                self.window_s)
        require(is_int(self.min_examples) and self.min_examples >= 0, o, "min_examples",
                "an int >= 0", self.min_examples)
        require(self.max_examples is None or is_int(self.max_examples), o, "max_examples",
                "None or an int", self.max_examples)
        for f in ("min_positive_ratio", "max_positive_ratio", "min_join_rate"):
            v = getattr(self, f)
            require(is_number(v) and 0 <= v <= 1, o, f, "a number in [0, 1]", v)
        require(self.min_positive_ratio <= self.max_positive_ratio, o, "min_positive_ratio",
                f"<= max_positive_ratio ({self.max_positive_ratio})", self.min_positive_ratio)


@dataclass(frozen=True, kw_only=True)
class JoinerConfig:
    """The online joiner.

    Parameters
    ----------
    window_s
        Label window W: an action within W seconds (event time) of its impression labels it.
    allowed_lateness_s
        The watermark trails the largest event time seen by this much; an impression is
        emitted once the watermark passes ``timestamp + window_s``.
    actions
        Action types, one float label column each (actions of other types are counted and
        dropped).
    negative_rate
        Keep-rate of negatives (deterministic per (request, item) and ``seed``); recorded in
        each example's ``sample_rate``.
    max_pending_in_memory
        Pending impressions (requests) held in memory; older ones spill to LMDB.
    dedupe_horizon_s
        Event ids are remembered this long (event time) behind the watermark.
    max_dedupe_keys_in_memory
        Dedupe keys (event ids, emitted request ids; each kind) held in memory, the newest
        minute buckets; all are in LMDB after each checkpoint, and a lookup older than the
        buckets in memory reads LMDB.
    emit_corrections
        Emit an example with ``correction=1`` when an action arrives after its impression was
        emitted as a negative (always counted).
    max_event_bytes
        Larger records go to the dead-letter log.
    checkpoint_every_s
        Wall-clock interval between checkpoints; output is appended at checkpoints only.
    validation
        Stream validation bounds (None: no validation, no holding).
    idle_partition_s
        None (default): the watermark waits for every partition, so the output is a function
        of the input alone (a partition without traffic holds emission back; ``flush`` ends
        a finite stream). A number: a partition with nothing to read for this many wall
        seconds stops holding the watermark back until it has records again (Flink's
        idleness); an action that partition delivers afterwards for an impression emitted
        meanwhile is late, so labels may then depend on timing.
    max_future_skew_s
        A record dated more than this ahead of its partition's newest event time (the wall
        clock for the partition's first record) is held back; it is dead-lettered unless
        ``jump_confirm_records`` consecutive records confirm the jump.
    jump_confirm_records
        Consecutive far-ahead records of one partition that make a real jump in event time.
    max_candidates
        Impressions with more candidates are dead-lettered.
    seed
        Seed of the negative sampling hash.
    """

    window_s: int = 600
    allowed_lateness_s: int = 30
    actions: tuple[str, ...] = ("click",)
    negative_rate: float = 1.0
    max_pending_in_memory: int = 100_000
    dedupe_horizon_s: int = 3600
    max_dedupe_keys_in_memory: int = 4_000_000
    emit_corrections: bool = False
    max_event_bytes: int = 1 << 20
    checkpoint_every_s: float = 0.2
    validation: ValidationConfig | None = None
    idle_partition_s: float | None = None
    max_future_skew_s: int = 3600
    jump_confirm_records: int = 16
    max_candidates: int = 10_000
    seed: int = 0
    map_size: int = 8 << 30

    def __post_init__(self) -> None:
        o = "JoinerConfig"
        require(is_int(self.window_s) and self.window_s >= 0, o, "window_s", "an int >= 0",
                self.window_s)
        require(is_int(self.allowed_lateness_s) and self.allowed_lateness_s >= 0, o,
                "allowed_lateness_s", "an int >= 0", self.allowed_lateness_s)
        require(isinstance(self.actions, tuple) and len(self.actions) >= 1
                and all(isinstance(a, str) and a.isidentifier() for a in self.actions)
                and len(set(self.actions)) == len(self.actions), o, "actions",
                "a non-empty tuple of distinct identifier strings", self.actions)
        require(is_number(self.negative_rate) and 0 < self.negative_rate <= 1, o,
                "negative_rate", "a number in (0, 1]", self.negative_rate)
        require(is_int(self.max_pending_in_memory) and self.max_pending_in_memory >= 0, o,
                "max_pending_in_memory", "an int >= 0", self.max_pending_in_memory)
        require(is_int(self.dedupe_horizon_s) and self.dedupe_horizon_s >= 0, o,
                "dedupe_horizon_s", "an int >= 0", self.dedupe_horizon_s)
        require(is_int(self.max_dedupe_keys_in_memory) and self.max_dedupe_keys_in_memory >= 0,
                o, "max_dedupe_keys_in_memory", "an int >= 0", self.max_dedupe_keys_in_memory)
        require(is_int(self.max_event_bytes) and self.max_event_bytes >= 64, o,
                "max_event_bytes", "an int >= 64", self.max_event_bytes)
        require(is_number(self.checkpoint_every_s) and self.checkpoint_every_s >= 0, o,
                "checkpoint_every_s", "a number >= 0", self.checkpoint_every_s)
        require(self.validation is None or isinstance(self.validation, ValidationConfig), o,
                "validation", "None or a ValidationConfig", self.validation)
        require(self.idle_partition_s is None or (is_number(self.idle_partition_s)
                                                   and self.idle_partition_s >= 0), o,
                "idle_partition_s", "None or a number >= 0", self.idle_partition_s)
        require(is_int(self.max_future_skew_s) and self.max_future_skew_s >= 0, o,
                "max_future_skew_s", "an int >= 0", self.max_future_skew_s)
        require(is_int(self.jump_confirm_records) and self.jump_confirm_records >= 1, o,
                "jump_confirm_records", "an int >= 1", self.jump_confirm_records)
        require(is_int(self.max_candidates) and self.max_candidates >= 1, o,
                "max_candidates", "an int >= 1", self.max_candidates)
        require(is_int(self.map_size) and self.map_size >= 1 << 20, o, "map_size",
                "an int >= 1 MiB", self.map_size)


@dataclass(frozen=True, kw_only=True)
class JoinJobConfig(JoinerConfig):
    """``freshrec join``: the joiner's settings plus what it reads, writes and how it runs.

    The ``join`` section of the config document. The locations have no default; the command
    refuses to start without ``source``, ``output`` and ``state``.

    Parameters
    ----------
    source, output
        Log specs (``file:PATH``, ``redis://HOST:PORT/DB#NAME``) of the events read and of the
        examples written.
    state
        State directory (LMDB, checkpoints); workers use ``STATE/p<partitions>``.
    dead_letter, quarantine
        Log specs for bad events and for quarantined validation windows (None: none).
    partitions
        Source partitions this joiner reads, such as ``"0-3"`` or ``"0,2"`` (None: all).
    source_partitions
        Partitions the source log has (None: what the log records; fewer is an error).
    workers
        Processes the partitions are divided among (restarted when they die).
    idle_timeout_s
        Stop after the source was idle this long (``.inf``: never).
    flush
        Emit everything still pending when stopping.
    progress
        Draw a progress line.
    retain_heap
        Keep the memory the joiner frees in its heap for the next batches (glibc only,
        :func:`freshrec._heap.retain_freed_heap`: fewer page faults, 1.1x examples/s at 35
        candidates; the resident size stays at its peak, with up to 256 MiB of it free).
        ``false``: the C library's defaults.
    """

    source: str = ""
    output: str = ""
    state: str = ""
    dead_letter: str | None = None
    quarantine: str | None = None
    partitions: str | None = None
    source_partitions: int | None = None
    workers: int = 1
    idle_timeout_s: float = 2.0
    flush: bool = False
    progress: bool = True
    retain_heap: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        o = "JoinJobConfig"
        if is_int(self.partitions):  # YAML reads "partitions: 3" as an int
            object.__setattr__(self, "partitions", str(self.partitions))
        for f in ("source", "output", "state"):
            require(isinstance(getattr(self, f), str), o, f, "a string", getattr(self, f))
        for f in ("dead_letter", "quarantine", "partitions"):
            v = getattr(self, f)
            require(v is None or (isinstance(v, str) and bool(v)), o, f,
                    "None or a non-empty string", v)
        require(self.source_partitions is None or (is_int(self.source_partitions)
                                                   and self.source_partitions >= 1), o,
                "source_partitions", "None or an int >= 1", self.source_partitions)
        require(is_int(self.workers) and self.workers >= 1, o, "workers", "an int >= 1",
                self.workers)
        require(is_number(self.idle_timeout_s) and self.idle_timeout_s >= 0, o,
                "idle_timeout_s", "a number of seconds >= 0", self.idle_timeout_s)
        for f in ("flush", "progress", "retain_heap"):
            require(isinstance(getattr(self, f), bool), o, f, "true or false", getattr(self, f))
