"""Tests of freshrec.data.prefetch."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from freshrec.data import Prefetcher
from freshrec.errors import InputError


def _wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_yields_everything_in_order_with_transform():
    with Prefetcher(range(1000), transform=lambda x: x * 2, depth=3) as it:
        assert list(it) == [2 * x for x in range(1000)]
    assert not it.alive


def test_transform_runs_on_worker_thread():
    threads = set()

    def mark(x):
        threads.add(threading.current_thread().name)
        return x

    assert list(Prefetcher(range(5), transform=mark, name="prep")) == list(range(5))
    assert threads == {"prep"}


def test_source_exception_reaches_consumer_after_earlier_items():
    def source():
        yield 1
        yield 2
        raise ValueError("row 3 is broken")

    it = Prefetcher(source())
    got = []
    with pytest.raises(ValueError, match="row 3 is broken"):
        for x in it:
            got.append(x)
    assert got == [1, 2]
    assert _wait_until(lambda: not it.alive)
    assert list(it) == []  # one-shot: nothing after the error


def test_transform_exception_propagates():
    def bad(x):
        if x == 3:
            raise KeyError(x)
        return x

    with pytest.raises(KeyError):
        list(Prefetcher(range(10), transform=bad))


def test_queue_is_bounded():
    produced = []

    def source():
        for i in range(100):
            produced.append(i)
            yield i

    it = Prefetcher(source(), depth=2)
    assert next(it) == 0
    # the worker runs ahead until the queue is full: 1 consumed, depth=2 waiting, 1 in its
    # hands (blocked on the full queue) ...
    assert _wait_until(lambda: len(produced) == 1 + 2 + 1)
    time.sleep(0.2)  # ... and no further, however long it is given
    assert len(produced) == 4
    assert next(it) == 1  # each item taken lets exactly one more be produced
    assert _wait_until(lambda: len(produced) == 5)
    time.sleep(0.2)
    assert len(produced) == 5
    it.close()


def test_close_early_stops_worker_and_closes_source():
    closed = threading.Event()

    def source():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    it = Prefetcher(source(), depth=1)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert not it.alive
    assert closed.is_set()
    with pytest.raises(StopIteration):
        next(it)
    assert "closed" in repr(it)


def test_abandoned_prefetcher_does_not_leak_its_thread():
    def source():
        while True:
            yield 0

    it = Prefetcher(source(), depth=1, name="abandoned-prefetch")
    next(it)
    thread = it._thread
    assert thread is not None and thread.is_alive()
    del it
    gc.collect()
    assert _wait_until(lambda: not thread.is_alive())


def test_not_started_until_iterated_and_validates_depth():
    it = Prefetcher(range(3))
    assert not it.alive and "not started" in repr(it)
    it.close()
    with pytest.raises(InputError, match="depth must be an int >= 1, got 0"):
        Prefetcher(range(3), depth=0)
