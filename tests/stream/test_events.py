"""Joined-example records: the column-wise builder against the row form, decode_examples."""

from __future__ import annotations

import random

import orjson
import pyarrow as pa
import pytest

from freshrec.errors import InputError
from freshrec.stream import events as ev


def _impression(rng: random.Random, rid: str) -> dict:
    n = rng.randint(0, 6)
    cands = []
    for j in range(n):
        c: dict = {"item_id": rng.choice([rng.randint(0, 9), rng.randint(10, 99)]),
                   "position": j}
        if rng.random() < 0.8:
            feats = {"cat": rng.randint(0, 3)}
            if rng.random() < 0.5:
                feats["tags"] = [rng.randint(0, 5) for _ in range(rng.randint(0, 3))]
            c["features"] = feats
        if rng.random() < 0.7:
            c["true_p"] = rng.random()
        cands.append(c)
    user = {"age": rng.randint(0, 9)} if rng.random() < 0.7 else {}
    if rng.random() < 0.5:
        user["recent"] = [rng.randint(0, 9) for _ in range(rng.randint(0, 3))]
    return {"request_id": rid, "user_id": rng.randint(0, 5), "timestamp": rng.random() * 100,
            "user": user, "candidates": cands}


def _emitted(rng: random.Random, imp: ev.CompactImpression) -> ev.EmittedImpression:
    n = len(imp)
    labels = {j: rng.sample(["click", "buy"], rng.randint(1, 2))
              for j in range(n) if rng.random() < 0.3}
    keep = None
    if rng.random() < 0.5:
        keep = [j for j in range(n) if j in labels or rng.random() < 0.5]
    return ev.EmittedImpression(imp, labels, keep, 1.0 if keep is None else 0.5)


def _norm(rows: list[dict]) -> list[dict]:
    """Rows as a record batch reads them back (absent and null are the same)."""
    return ev.examples_to_record_batch(rows).to_pylist() if rows else []


@pytest.mark.parametrize("seed", range(20))
def test_columnar_builder_matches_the_row_form(seed):
    rng = random.Random(seed)
    emitted = [_emitted(rng, ev.compact_impression(_impression(rng, f"r{k}")))
               for k in range(rng.randint(1, 8))]
    rb = ev.emitted_to_record_batch(emitted, ["click", "buy"])
    rows = ev.emitted_to_rows(emitted, ["click", "buy"])
    assert rb.num_rows == len(rows) == sum(len(e) for e in emitted)
    got = rb.to_pylist()
    want = _norm(rows)
    keys = set(rb.schema.names) | {k for r in want for k in r}
    assert [{k: r.get(k) for k in keys} for r in got] == [
        {k: r.get(k) for k in keys} for r in want]
    for e, r in zip([x for x in emitted for _ in range(len(x))], got, strict=True):
        assert r["sample_rate"] == (1.0 if r["click"] or r["buy"] else e.negative_rate)


def test_compact_impression_rejects_what_validate_event_rejects():
    good = {"type": "impression", "event_id": "e", "request_id": "r", "user_id": 1,
            "timestamp": 1, "user": {}, "candidates": [{"item_id": 1, "position": 0}]}
    for bad, msg in [([{"position": 0}], "'item_id' is missing"),
                     (["x"], "must be an object"),
                     ([{"item_id": 1.5, "position": 0}], "'item_id' must be"),
                     ([{"item_id": True, "position": 0}], "'item_id' must be"),
                     ([{"item_id": 1, "position": "0"}], "'position' must be"),
                     ([{"item_id": 1, "position": 0, "features": [1]}], "'features'")]:
        with pytest.raises(InputError, match=msg):
            ev.compact_impression({**good, "candidates": bad})
    imp = ev.compact_impression(good)
    assert imp.items == [1] and imp.true_p is None and imp.item_type is int


def test_decode_examples_mixes_formats_in_order_and_counts_rejects():
    a = ev.encode_examples(pa.RecordBatch.from_pylist([{"item_id": 1, "click": 1.0},
                                                       {"item_id": 2, "click": 0.0}]))
    legacy = orjson.dumps({"item_id": 3, "click": 0.0, "u_age": 4})
    future = ev.EXAMPLES_MAGIC + b"\x02\x00\x00\x00" + a[8:]
    rb, bad = ev.decode_examples([legacy, a, b"[1]", b"\xff", future, a[:20], legacy])
    assert bad == 4  # not an object, not JSON, unknown version, truncated Arrow
    assert rb.column("item_id").to_pylist() == [3, 1, 2, 3]
    assert rb.column("u_age").to_pylist() == [4, None, None, 4]
    assert ev.decode_examples([]) == (None, 0)
    rb, _ = ev.decode_examples([orjson.dumps({"a": 1}), orjson.dumps({"a": 2, "b": 3})])
    assert rb.to_pylist() == [{"a": 1, "b": None}, {"a": 2, "b": 3}]  # every row's keys
    assert ev.decode_examples([b"nope"]) == (None, 1)


def test_decode_examples_rejects_records_whose_types_do_not_unify():
    ints = ev.encode_examples(pa.RecordBatch.from_pylist([{"item_id": 1}]))
    strs = ev.encode_examples(pa.RecordBatch.from_pylist([{"item_id": "x"}]))
    rb, bad = ev.decode_examples([ints, strs, ints])
    assert bad == 1 and rb.column("item_id").to_pylist() == [1, 1]
    rows = [orjson.dumps({"item_id": 1}), orjson.dumps({"item_id": "x"})]
    rb, bad = ev.decode_examples(rows)
    assert bad == 1 and rb.column("item_id").to_pylist() == [1]


def test_example_record_layout_is_versioned():
    rec = ev.encode_examples(pa.RecordBatch.from_pylist([{"x": 1}]))
    assert rec[:4] == ev.EXAMPLES_MAGIC and rec[4:8] == b"\x01\x00\x00\x00"
    assert pa.ipc.open_stream(pa.py_buffer(rec)[8:]).read_all().num_rows == 1


def test_example_record_is_the_arrow_stream_writer_output():
    rb = pa.RecordBatch.from_pylist([{"x": 1, "tags": [1, 2], "s": "a"}, {"x": None,
                                     "tags": [], "s": None}]).slice(1)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rb.schema) as w:
        w.write_batch(rb)
    assert ev.encode_examples(rb) == ev._HEADER + sink.getvalue().to_pybytes()
