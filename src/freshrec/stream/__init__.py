"""The event log, the event schema and the online joiner.

A :class:`Log` is an append-only, partitioned log of byte records with offsets and consumer
groups; :class:`FileLog` (embedded, segment files) and :class:`RedisLog` (Redis Streams)
implement it, and :class:`KafkaLog` does over Kafka when the ``kafka`` extra is installed;
:func:`open_log` opens any of them from a one-line spec (``file:DIR``,
``redis://HOST:PORT/DB#NAME``, ``redis+cluster://HOST:PORT/0#NAME`` for a Redis Cluster,
``kafka://BOOTSTRAP/TOPIC``). Events (impressions with their
candidates, and actions such as clicks) are JSON rows defined and versioned in
:mod:`freshrec.stream.events`. The
:class:`Joiner` turns the event stream into labelled training examples: it joins actions to
impressions by ``(request_id, item_id)`` inside a label window in event time, dedupes,
down-samples negatives, validates each window, and checkpoints its state with its input
offsets so that a killed joiner restarts without losing or duplicating an example.

Examples
--------
>>> import tempfile
>>> from freshrec.stream import open_log
>>> log = open_log("file:" + tempfile.mkdtemp())
>>> log.append([b"a", b"b"])
[0, 1]
>>> [r.value for r in log.read(0, 0)]
[b'a', b'b']
>>> log.close()
"""

from __future__ import annotations

from freshrec.stream.base import COMMITTED_OUTPUT, Log, Record, committed_end, mark_committed
from freshrec.stream.config import (
    FileLogConfig,
    JoinerConfig,
    JoinJobConfig,
    KafkaLogConfig,
    RedisLogConfig,
    ValidationConfig,
)
from freshrec.stream.events import examples_to_record_batch
from freshrec.stream.filelog import FileLog
from freshrec.stream.join import Joiner
from freshrec.stream.kafkalog import KafkaLog
from freshrec.stream.open import open_log
from freshrec.stream.redislog import RedisLog

__all__ = [
    "COMMITTED_OUTPUT",
    "committed_end",
    "mark_committed",
    "Log",
    "Joiner",
    "examples_to_record_batch",
    "Record",
    "FileLog",
    "RedisLog",
    "KafkaLog",
    "open_log",
    "FileLogConfig",
    "RedisLogConfig",
    "KafkaLogConfig",
    "JoinerConfig",
    "JoinJobConfig",
    "ValidationConfig",
]
