"""Run an iterator in a background thread so that data preparation overlaps compute.

A :class:`Prefetcher` pulls items from any iterable (a reader, a reader followed by a
``transform`` that builds tensors, ...) on a worker thread and hands them to the consumer
through a bounded queue of ``depth`` items, so at most ``depth`` prepared items wait in
memory. An exception raised by the source or the transform is re-raised in the consumer at
the point where that item would have arrived. :meth:`Prefetcher.close` (or leaving a ``with``
block, or garbage collection) stops the worker and closes the source; no thread outlives it
unless the source itself blocks forever inside ``next``.

Parsing in Python holds the GIL, but Arrow conversions, numpy and torch kernels release it,
so the overlap is real for the usual reader + tensor-building pipelines.

Examples
--------
>>> with Prefetcher(range(5), transform=lambda x: x * x, depth=2) as it:
...     list(it)
[0, 1, 4, 9, 16]
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from freshrec.errors import InputError

__all__ = ["Prefetcher"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_DONE = object()
_POLL_S = 0.05


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _work(
    source: Iterable[Any],
    transform: Callable[[Any], Any] | None,
    out: queue.Queue[Any],
    stop: threading.Event,
) -> None:
    """Worker body; holds no reference to the Prefetcher so that it can be collected."""
    it = iter(source)
    try:
        for item in it:
            if stop.is_set():
                return
            if transform is not None:
                item = transform(item)
            while not stop.is_set():
                try:
                    out.put(item, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            else:
                return
        _put_final(out, _DONE, stop)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
        _put_final(out, _Failure(e), stop)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # pragma: no cover - best effort
                log.exception("prefetch: closing the source failed")


def _put_final(out: queue.Queue[Any], item: object, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


def _shutdown(thread: threading.Thread, out: queue.Queue[Any], stop: threading.Event) -> None:
    stop.set()
    while True:  # unblock a worker waiting on a full queue
        try:
            out.get_nowait()
        except queue.Empty:
            break
    if thread.is_alive() and thread is not threading.current_thread():
        thread.join(timeout=5.0)
        if thread.is_alive():
            log.warning("prefetch: worker %s still blocked in its source after close", thread.name)


class Prefetcher(Generic[T]):
    """Iterate ``source`` (optionally mapped by ``transform``) on a background thread.

    The worker starts on the first ``iter()``/``next()``. A Prefetcher is a one-shot
    iterator: after exhaustion, an error or :meth:`close` it yields nothing more.

    Parameters
    ----------
    source : iterable
        Any iterable; its iterator is closed (``close()``, if it has one) when the worker ends.
    transform : callable or None
        Applied to each item on the worker thread.
    depth : int
        Queue size: how many prepared items may wait (>= 1).
    name : str
        Name of the worker thread.

    Raises
    ------
    InputError
        ``depth`` is not an int >= 1.

    Examples
    --------
    >>> def boom():
    ...     yield 1
    ...     raise KeyError("bad row")
    >>> it = Prefetcher(boom())
    >>> next(it)
    1
    >>> next(it)
    Traceback (most recent call last):
    ...
    KeyError: 'bad row'
    """

    def __init__(
        self,
        source: Iterable[Any],
        *,
        transform: Callable[[Any], T] | None = None,
        depth: int = 2,
        name: str = "freshrec-prefetch",
    ) -> None:
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise InputError(f"Prefetcher: depth must be an int >= 1, got {depth!r}")
        self.source = source
        self.transform = transform
        self.depth = depth
        self.name = name
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=_work,
            args=(self.source, self.transform, self._queue, self._stop),
            name=self.name,
            daemon=True,
        )
        self._thread.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._thread, self._queue, self._stop)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if item is _DONE:
            self._finish()
            raise StopIteration
        if isinstance(item, _Failure):
            self._finish()
            raise item.error
        return item

    def _finish(self) -> None:
        self._finished = True
        if self._finalizer is not None:
            self._finalizer()

    def close(self) -> None:
        """Stop the worker (waiting for it to leave its current item) and close the source."""
        self._finished = True
        if self._finalizer is not None:
            self._finalizer()

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._finished else ("running" if self.alive else "not started")
        return f"Prefetcher(depth={self.depth}, {state})"
