"""``PooledEmbedding.prefetch``: resolving the next batch early changes no result."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest
import torch

from freshrec.errors import InputError
from freshrec.features import JaggedBatch
from freshrec.nn import PooledEmbedding
from freshrec.table import EmbeddingTable, TableConfig
from freshrec.table.table import rows_from_table
from tests.nn._helpers import jagged_batches, three_tables

SLOTS = {"a": ("t1", "sum"), "b": ("t2", "mean"), "c": ("t1", "mean"), "d": ("t3", "sum")}
STATE = ("_keys", "_emb", "_state", "_last_seen", "_touched", "_index")


def _module(opt: str = "adagrad") -> tuple[PooledEmbedding, dict[str, EmbeddingTable]]:
    return three_tables(SLOTS, opt, capacity_hint=16)


def _batches(seed: int, n: int, b: int = 32) -> list[JaggedBatch]:
    """Batches that share ids with the previous one (so backward and prefetch meet on rows),
    repeat ids within a batch, and bring new ids (tables grow past their capacity hint)."""
    return jagged_batches(SLOTS, seed, n, b, vocab=lambda step: 20 + 15 * step)


def _train(module: PooledEmbedding, batches: list[JaggedBatch], weight: torch.Tensor,
           prefetch: bool, as_dict: bool = False) -> list[torch.Tensor]:
    outs = []
    for step, batch in enumerate(batches):
        if as_dict:
            parts = module.forward_dict(batch, now=step)
            out = torch.stack([parts[s] for s in module.slot_names], dim=1)
        else:
            out = module(batch, now=step)
        loss = (out * weight).sum() + (out * out).sum()  # gradient depends on the values
        if prefetch and step + 1 < len(batches):
            module.prefetch(batches[step + 1], now=step + 1)
        loss.backward()
        outs.append(out.detach().clone())
    return outs


def _assert_same_tables(a: dict[str, EmbeddingTable], b: dict[str, EmbeddingTable]) -> None:
    for name in a:
        assert len(a[name]) == len(b[name]) > 0
        assert a[name].stats() == b[name].stats()
        for attr in STATE:
            np.testing.assert_array_equal(getattr(a[name], attr), getattr(b[name], attr))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("opt", ["adagrad", "rowwise_adagrad", "sgd"])
def test_prefetched_training_equals_plain_training(threads, opt):
    batches = _batches(threads, 8)
    weight = torch.randn(4, 3)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        plain, plain_tables = _module(opt)
        piped, piped_tables = _module(opt)
        ref = _train(plain, batches, weight, prefetch=False)
        got = _train(piped, batches, weight, prefetch=True)
    finally:
        torch.set_num_threads(old)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    _assert_same_tables(plain_tables, piped_tables)


def test_prefetch_works_with_forward_dict():
    batches = _batches(5, 5)
    weight = torch.randn(4, 3)
    plain, plain_tables = _module()
    piped, piped_tables = _module()
    ref = _train(plain, batches, weight, prefetch=False, as_dict=True)
    got = _train(piped, batches, weight, prefetch=True, as_dict=True)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    _assert_same_tables(plain_tables, piped_tables)


def test_pooling_waits_for_the_previous_backward():
    # Prefetch the same batch again: a prefetch that pooled early would return pre-update rows.
    module, _ = _module()
    batch = _batches(1, 1)[0]
    first = module(batch, now=0)
    module.prefetch(batch, now=1)
    first.sum().backward()
    second = module(batch, now=1)
    plain, _ = _module()
    plain(batch, now=0).sum().backward()
    torch.testing.assert_close(second, plain(batch, now=1), rtol=0, atol=0)
    assert not torch.equal(first, second)


def test_forward_of_another_batch_or_mode_after_prefetch_is_refused():
    module, _ = _module()
    a, b = _batches(2, 2)
    module.prefetch(a, now=0)
    with pytest.raises(InputError, match="training forward of that batch"):
        module(b, now=0)
    module.prefetch(a, now=1)
    with pytest.raises(InputError, match="training forward of that batch"):
        module(a, now=2)
    module.prefetch(a, now=1)
    with torch.no_grad(), pytest.raises(InputError, match="training forward of that batch"):
        module(a, now=1)
    module.prefetch(a, now=1)
    with pytest.raises(InputError, match="was not trained on"):
        module.prefetch(b, now=2)
    assert module(a, now=1).shape == (32, 4, 3)  # the pending prefetch is still usable


def test_tables_changed_after_prefetch_are_refused():
    module, tables = _module()
    batch = _batches(3, 1)[0]
    module.prefetch(batch, now=0)
    module._pending.future.result()
    tables["t2"].seal_version()
    with pytest.raises(InputError, match="'t2' was changed"):
        module(batch, now=0)


def test_tables_with_a_row_initializer_are_resolved_in_forward():
    module, tables = _module()
    source = EmbeddingTable(TableConfig(name="src", dim=3))
    tables["t3"].row_initializer = rows_from_table(source)
    batch = _batches(4, 1)[0]
    module.prefetch(batch, now=0)
    module._pending.future.result()
    assert len(tables["t3"]) == 0 and len(tables["t1"]) > 0
    module(batch, now=0)
    assert len(tables["t3"]) > 0


def test_prefetch_requires_the_batch_slots_and_now():
    module, _ = _module()
    with pytest.raises(InputError, match="lacks slots"):
        module.prefetch(JaggedBatch.from_dict({"a": [[1]]}), now=0)
    with pytest.raises(InputError, match="`now`"):
        module.prefetch(_batches(0, 1)[0], now=None)  # type: ignore[arg-type]
    assert module._pending is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_prefetch_thread_runs_at_lowest_priority_and_the_process_does_not():
    module, _ = _module()
    before = os.getpriority(os.PRIO_PROCESS, 0)
    batch = _batches(6, 1)[0]
    module.prefetch(batch, now=0)
    module(batch, now=0)
    nice = module._prefetcher.submit(
        lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
    assert nice == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
