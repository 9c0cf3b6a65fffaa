"""Kafka log over confluent-kafka (optional extra: ``pip install 'freshrec[kafka]'``).

**Experimental**: this backend has never run against a broker (its contract tests run only
when ``KAFKA_BOOTSTRAP`` names one), and without ``truncate`` a joiner cannot write its output
to it exactly once. Use the file log or Redis Streams.

Offsets are Kafka's (dense per partition). ``read`` assigns a consumer to the partition at
the offset; ``commit``/``committed`` use the group's offsets stored by the broker; ``lag`` is
the high watermark minus the committed offset. ``truncate`` is not supported (Kafka has no
tail deletion; exactly-once output to Kafka would need its transactions).

Examples
--------
A broker is needed, so this example is not run here::

    log = KafkaLog(KafkaLogConfig(bootstrap="127.0.0.1:9092", topic="events", partitions=2))
    log.append([b"a"], partition=1)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from freshrec.errors import ConfigError, InputError
from freshrec.stream.base import Log, Record
from freshrec.stream.config import KafkaLogConfig

__all__ = ["KafkaLog"]


class KafkaLog(Log):
    """:class:`~freshrec.stream.base.Log` over one Kafka topic (see the module docstring)."""

    def __init__(self, config: KafkaLogConfig) -> None:
        try:
            import confluent_kafka as ck
            from confluent_kafka.admin import AdminClient, NewTopic
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise ConfigError("KafkaLog needs confluent-kafka: pip install 'freshrec[kafka]'"
                              ) from e
        self._ck = ck
        self.config = config
        self.partitions = config.partitions
        admin = AdminClient({"bootstrap.servers": config.bootstrap})
        meta = admin.list_topics(timeout=10)
        if config.topic not in meta.topics:
            fut = admin.create_topics([NewTopic(config.topic, config.partitions, 1)])
            for f in fut.values():
                f.result(timeout=30)
        else:
            self.partitions = len(meta.topics[config.topic].partitions)
        self._producer = ck.Producer({"bootstrap.servers": config.bootstrap, "acks": "all",
                                      "enable.idempotence": True, "linger.ms": 1})
        self._reader: Any = None
        self._groups: dict[str, Any] = {}

    def _check(self, partition: int) -> None:
        if not (isinstance(partition, int) and 0 <= partition < self.partitions):
            raise InputError(f"kafka log {self.config.topic!r}: partition must be in "
                             f"[0, {self.partitions}), got {partition!r}")

    def _consumer(self, group: str) -> Any:
        c = self._groups.get(group)
        if c is None:
            c = self._ck.Consumer({"bootstrap.servers": self.config.bootstrap,
                                   "group.id": group, "enable.auto.commit": False,
                                   "auto.offset.reset": "earliest"})
            self._groups[group] = c
        return c

    def append(self, records: Sequence[bytes], partition: int = 0) -> list[int]:
        self._check(partition)
        offsets: list[int] = [-1] * len(records)
        errors: list[str] = []

        def done(err: Any, msg: Any, i: int) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                offsets[i] = msg.offset()

        for i, rec in enumerate(records):
            self._producer.produce(self.config.topic, bytes(rec), partition=partition,
                                   on_delivery=lambda err, msg, i=i: done(err, msg, i))
            self._producer.poll(0)
        self._producer.flush(30)
        if errors or -1 in offsets:
            raise OSError(f"kafka log {self.config.topic!r}: delivery failed: {errors[:3]}")
        return offsets

    def read(
        self, partition: int, offset: int, max_records: int = 1000, timeout_s: float = 0.0
    ) -> list[Record]:
        self._check(partition)
        if self._reader is None:
            self._reader = self._consumer("freshrec-reader")
        tp = self._ck.TopicPartition(self.config.topic, partition, offset)
        self._reader.assign([tp])
        deadline = time.monotonic() + max(timeout_s, 0.5)
        out: list[Record] = []
        while not out and time.monotonic() < deadline:
            for m in self._reader.consume(max_records, timeout=0.1):
                if m.error() is None and m.offset() >= offset:
                    value = m.value()  # None for a message without a value (a tombstone)
                    out.append(Record(partition, m.offset(), b"" if value is None else value))
        return out

    def end_offset(self, partition: int) -> int:
        self._check(partition)
        c = self._consumer("freshrec-reader")
        _low, high = c.get_watermark_offsets(
            self._ck.TopicPartition(self.config.topic, partition), timeout=10)
        return int(high)

    def commit(self, group: str, partition: int, offset: int) -> None:
        self._check(partition)
        tp = self._ck.TopicPartition(self.config.topic, partition, offset)
        self._consumer(group).commit(offsets=[tp], asynchronous=False)

    def committed(self, group: str, partition: int) -> int:
        self._check(partition)
        tp = self._ck.TopicPartition(self.config.topic, partition)
        got = self._consumer(group).committed([tp], timeout=10)[0].offset
        return int(got) if got >= 0 else 0

    def lag(self, group: str, partition: int | None = None) -> int:
        parts = range(self.partitions) if partition is None else [partition]
        return sum(max(0, self.end_offset(p) - self.committed(group, p)) for p in parts)

    def truncate(self, partition: int, offset: int) -> None:
        raise NotImplementedError("Kafka topics cannot be truncated at the tail")

    def close(self) -> None:
        self._producer.flush(10)
        for c in self._groups.values():
            c.close()
        self._groups.clear()
        self._reader = None
