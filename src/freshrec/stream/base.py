"""The :class:`Log` interface: an append-only, partitioned log with offsets and consumer groups.

Every backend (:class:`~freshrec.stream.filelog.FileLog`,
:class:`~freshrec.stream.redislog.RedisLog`, :class:`~freshrec.stream.kafkalog.KafkaLog`)
implements the same verbs, and ``tests/stream/test_log_contract.py`` runs one suite over all
of them:

- ``append(records, partition)`` -> the offsets given to the records (strictly increasing
  ints per partition; dense ``0, 1, 2, ...`` for the file log and Kafka, sparse for Redis);
- ``read(partition, offset, max_records, timeout_s)`` -> records whose offset is ``>= offset``
  in order (waits up to ``timeout_s`` for the first one); ``count_from(partition, offset)``
  counts them;
- ``poll(group, partition, ...)`` -> the next records for a consumer group, starting at its
  committed position; ``commit(group, partition, offset)`` stores the next offset to read;
  ``committed`` reads it back; ``lag`` counts records at or after the committed position;
- ``truncate(partition, offset)`` removes the records at and after ``offset`` (used by the
  joiner to roll back output written after its last checkpoint).

Records are opaque ``bytes``; events are encoded by :mod:`freshrec.stream.events`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["Log", "Record", "COMMITTED_OUTPUT", "mark_committed", "committed_end"]


class Record(NamedTuple):
    """One record read from a log: where it lives and its payload (a named tuple: readers
    build one per record, and a tuple is built several times faster than a frozen
    dataclass).

    Examples
    --------
    >>> Record(partition=0, offset=7, value=b"x")
    Record(partition=0, offset=7, value=b'x')
    """

    partition: int
    offset: int
    value: bytes


class Log(abc.ABC):
    """An append-only partitioned log (see the module docstring for the contract)."""

    #: number of partitions
    partitions: int

    @abc.abstractmethod
    def append(self, records: Sequence[bytes], partition: int = 0) -> list[int]:
        """Append ``records`` to ``partition``; returns their offsets once acknowledged."""

    @abc.abstractmethod
    def read(
        self, partition: int, offset: int, max_records: int = 1000, timeout_s: float = 0.0
    ) -> list[Record]:
        """Records of ``partition`` with offset ``>= offset``, oldest first, at most
        ``max_records``; waits up to ``timeout_s`` seconds when none is there yet."""

    @abc.abstractmethod
    def end_offset(self, partition: int) -> int:
        """The offset the next appended record will have at least (``0`` when empty)."""

    def count_from(self, partition: int, offset: int) -> int:
        """How many records of ``partition`` have an offset ``>= offset`` (the backlog of a
        reader at ``offset``). This default, ``end_offset - offset``, holds for dense offsets;
        backends with sparse offsets override it."""
        return max(0, self.end_offset(partition) - offset)

    @abc.abstractmethod
    def commit(self, group: str, partition: int, offset: int) -> None:
        """Store ``offset`` (the next offset to read) as ``group``'s position in ``partition``."""

    @abc.abstractmethod
    def committed(self, group: str, partition: int) -> int:
        """``group``'s committed position in ``partition`` (``0``: from the beginning)."""

    @abc.abstractmethod
    def lag(self, group: str, partition: int | None = None) -> int:
        """Records at or after ``group``'s committed position (summed over partitions when
        ``partition`` is None)."""

    @abc.abstractmethod
    def truncate(self, partition: int, offset: int) -> None:
        """Remove the records of ``partition`` at and after ``offset``."""

    def poll(
        self,
        group: str,
        partition: int,
        max_records: int = 1000,
        timeout_s: float = 0.0,
        consumer: str = "c0",
    ) -> list[Record]:
        """The next records for ``group`` in ``partition`` (starting at its committed position
        and advancing an in-process cursor; records not committed are delivered again to the
        next consumer that starts). Backends with server-side groups override this."""
        key = (group, partition)
        cursors: dict[tuple[str, int], int] = self.__dict__.setdefault("_cursors", {})
        if key not in cursors:
            cursors[key] = self.committed(group, partition)
        recs = self.read(partition, cursors[key], max_records, timeout_s)
        if recs:
            cursors[key] = recs[-1].offset + 1
        return recs

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files, locks and connections."""

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Consumer-group name under which a writer that commits its output in steps (the joiner)
#: records, per partition, the end of its committed output plus one (0: nothing recorded).
#: Records at or past that end may still be rolled back and rewritten by a restarted writer,
#: so a reader that must see each record once (the online trainer) stops there.
COMMITTED_OUTPUT = "__committed_output__"


def mark_committed(log: Log, partition: int, end: int) -> None:
    """Record that ``log``'s records before offset ``end`` in ``partition`` are committed.

    >>> from freshrec.stream import FileLog
    >>> import tempfile
    >>> log = FileLog(tempfile.mkdtemp())
    >>> committed_end(log, 0) is None
    True
    >>> mark_committed(log, 0, 0); committed_end(log, 0)
    0
    """
    log.commit(COMMITTED_OUTPUT, partition, end + 1)


def committed_end(log: Log, partition: int) -> int | None:
    """The end of the committed records of ``partition`` (None: no writer records one, so
    every record counts)."""
    v = log.committed(COMMITTED_OUTPUT, partition)
    return None if v == 0 else v - 1
