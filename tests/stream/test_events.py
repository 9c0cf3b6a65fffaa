"""Joined-example records: the column-wise builder against the row form, decode_examples."""

from __future__ import annotations

import random

import numpy as np
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


def _general(payload: bytes):
    """What decode_events must give for a record: the general path's result."""
    try:
        e = ev.decode(payload)
        kind = ev.validate_event(e, candidates=False)
        return e, kind, ev.compact_impression(e) if kind == "impression" else None
    except InputError as err:
        return err


def _columns(imp: ev.CompactImpression | None):
    if imp is None:
        return None
    as_list = ev._as_list
    return (imp.request_id, imp.user_id, imp.timestamp, imp.user, as_list(imp.items),
            as_list(imp.positions), None if imp.true_p is None else as_list(imp.true_p),
            imp.feature_keys, [as_list(c) for c in imp.feature_cols], imp.item_type)


def _assert_same(got, want) -> None:
    if isinstance(want, InputError):
        assert isinstance(got, InputError) and str(got) == str(want)
        return
    assert not isinstance(got, InputError), got
    (e, kind, imp), (we, wkind, wimp) = got, want
    assert kind == wkind and _columns(imp) == _columns(wimp)
    for x in (e, we):
        x.pop("candidates", None)
    assert e == we


_PLAIN = (b'{"v":1,"type":"impression","event_id":"e1","request_id":"r1","user_id":3,'
          b'"timestamp":10.5,"user":{"age":[1,2],"s":"x\\"}"},"candidates":[ '
          b'{"item_id":-7,"features":{"c":1,"p":-0.25},  "position":0, "true_p":0.5},\n'
          b'{"item_id":123456789012345678,"features":{"c":0,"p":3.0},"position":1,'
          b'"true_p":-0.0} ]}')


@pytest.mark.parametrize("payload", [
    _PLAIN,
    _PLAIN.replace(b',"true_p":0.5', b"").replace(b', "true_p":-0.0', b""),
    b'{"type":"impression","event_id":1,"request_id":2,"user_id":3,"timestamp":1,'
    b'"user":{},"candidates":[]}',
    b'{"type":"impression","event_id":1,"request_id":2,"user_id":3,"timestamp":1,'
    b'"user":{},"candidates":[{"item_id":1,"position":0,"features":{}}]}',
])
def test_decode_events_parses_plain_candidates_into_arrays(payload):
    got = ev.decode_events([payload])[0]
    kernel = got[0]["candidates"] == []  # the kernel took the candidates out
    _assert_same(got, _general(payload))
    assert kernel
    # columns are numpy views of the batch's columns, whatever the number of candidates
    if b'"item_id"' in payload:
        cands = orjson.loads(payload)["candidates"]
        big = orjson.loads(payload)
        big["candidates"] = cands * 5
        big_got = ev.decode_events([ev.encode(big)])[0]
        _assert_same(big_got, _general(ev.encode(big)))
        assert isinstance(big_got[2].items, np.ndarray)
        assert isinstance(got[2].items, np.ndarray)


@pytest.mark.parametrize("change", [
    (b'"true_p":0.5', b'"true_p":5e-1'),  # exponent
    (b'"true_p":0.5', b'"true_p":null'),
    (b'"true_p":0.5', b'"true_p":1'),  # an integer true_p stays an int
    (b'"item_id":-7', b'"item_id":"7"'),
    (b'"item_id":-7', b'"item_id":1234567890123456789'),  # more digits than int64 holds
    (b'"item_id":-7', b'"item_id":1e2'),
    (b'"item_id":-7', b'"item_id":7.5'),  # dead letter: item_id must be str or int
    (b'"position":0,', b'"position":0.0,'),
    (b'"item_id":-7', b'"item_id":07'),  # invalid JSON
    (b'"c":1,"p":-0.25', b'"c":1,"c":2'),  # duplicate feature key
    (b'"c":1,"p":-0.25', b'"c":1,"p":1'),  # a column mixing decimals and integers
    (b'"c":0,"p":3.0', b'"p":3.0,"c":0'),  # keys in another order
    (b'"c":0,"p":3.0', b'"c":0'),
    (b'"c":1,"p":-0.25', b'"c":1,"p":"x"'),
    (b'"c":1,"p":-0.25', b'"\\u0063":1,"p":-0.25'),  # escaped key
    (b'"features":{"c":1,"p":-0.25},', b""),  # one candidate without features
    (b'"position":0,', b'"position":0,"extra":1,'),
    (b'"position":0,', b'"position":0,"position":1,'),
    (b'"candidates":[', b'"candidates":[[1],'),
    (b'"user_id":3', b'"user_id":3,"candidates":[]'),  # two candidates keys
    (b'"user_id":3', b'"user_id":'),  # invalid JSON outside the candidates
    (b'"user":{', b'"user":['),  # invalid outside; validate_event's error
    (b'"user_id":3', b'"user_id":3.5'),
    (b'"type":"impression"', b'"type":"action"'),
    (b"} ]}", b"} ]} x"),
    (b"} ]}", b"} ]"),
    (b"} ]}", b'} ]},{"x":1}'),  # two values in one record (the batch decodes as one array)
    (b"} ]}", b"} ]}]"),
    (b"} ]}", b"} ]},"),
    (b'"c":1', b'"\xc3\xa9":1'),  # a non-ASCII key
])
def test_decode_events_gives_the_general_result_for_everything_else(change):
    old, new = change
    assert old in _PLAIN
    payload = _PLAIN.replace(old, new, 1)
    _assert_same(ev.decode_events([payload, _PLAIN])[0], _general(payload))


def test_decode_events_reads_each_record_of_a_batch_with_its_own_keys_and_true_p():
    """One batch whose plain impressions change feature keys, key types and true_p from
    record to record (the kernel reads key names once per run of the same keys)."""
    no_p = _PLAIN.replace(b',"true_p":0.5', b"").replace(b', "true_p":-0.0', b"")
    other_keys = _PLAIN.replace(b'"c":', b'"d":')
    int_p = _PLAIN.replace(b'"p":-0.25', b'"p":-2').replace(b'"p":3.0', b'"p":3')
    one = _PLAIN.split(b",\n")[0] + b" ]}"  # one candidate (a decimal feature)
    one_int = int_p.split(b",\n")[0] + b" ]}"
    payloads = [_PLAIN, no_p, one, other_keys, _PLAIN, int_p, one_int, int_p, no_p, one,
                _PLAIN, no_p]
    got = ev.decode_events(payloads)
    assert all(g[0]["candidates"] == [] for g in got)  # every one through the kernel
    for g, payload in zip(got, payloads, strict=True):
        _assert_same(g, _general(payload))


def _events(rng: random.Random, n: int) -> list[bytes]:
    """``n`` random impressions, each followed by an action on it, encoded."""
    payloads = []
    for k in range(n):
        imp = _impression(rng, f"r{k}")
        imp.update(type="impression", event_id=f"e{k}")
        payloads.append(ev.encode(imp))
        payloads.append(ev.encode({"type": "action", "event_id": f"a{k}", "request_id": f"r{k}",
                                   "item_id": 1, "action": "click", "timestamp": 1}))
    return payloads


@pytest.mark.parametrize("seed", range(10))
def test_decode_events_matches_the_general_path_on_random_events(seed):
    payloads = _events(random.Random(seed), 30)
    payloads.append(b"not json")
    for got, payload in zip(ev.decode_events(payloads), payloads, strict=True):
        _assert_same(got, _general(payload))


_ACTION = (b'{"type":"action","event_id":"a1","request_id":"r1","item_id":-7,'
           b'"action":"click","timestamp":11.0}')


@pytest.mark.parametrize("pair", [
    # the first record leaves an array open after its object, the second closes it: as one
    # JSON array the two give two values, neither of them either record's
    (_PLAIN + b',{"x":[1', _PLAIN + b"]}"),
    (_ACTION + b',{"x":[1', _ACTION + b"]}"),
    (_PLAIN + b',{"x":"', b'{"y":1,"z":"' + _ACTION[1:]),
    (_ACTION[:-1] + b',"x":[', b'{"candidates":[]}]}'),
])
def test_decode_events_decodes_each_record_on_its_own(pair):
    """Records that are not one JSON value each never borrow bytes from their neighbours
    in the batch's one JSON array (before the kernel checked that each record's object
    closes at its end, the first record of the first pair was accepted)."""
    payloads = [_PLAIN, *pair, _ACTION]
    for got, payload in zip(ev.decode_events(payloads), payloads, strict=True):
        _assert_same(got, _general(payload))


def test_decode_events_decodes_actions_with_the_batch(monkeypatch):
    """Actions are decoded with the batch's one JSON array, not one record at a time."""
    payloads = [_PLAIN, _ACTION, _ACTION.replace(b'"a1"', b'"a2"'), _PLAIN]
    want = [_general(p) for p in payloads]

    def alone(payload):
        raise AssertionError(f"decoded alone: {payload!r}")

    monkeypatch.setattr(ev, "_decode_one", alone)
    for got, w in zip(ev.decode_events(payloads), want, strict=True):
        _assert_same(got, w)


def _mutated(rng: random.Random, payload: bytes, other: bytes) -> bytes:
    """``payload`` cut, spliced with JSON punctuation, or run into ``other``."""
    k = rng.randint(0, len(payload))
    how = rng.randrange(4)
    if how == 0:
        return payload[:k]
    if how == 1:
        return payload[:k] + rng.choice([b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\",
                                         b'",', b"]}", b'{"a":[']) + payload[k:]
    if how == 2:
        return payload[:k] + other[rng.randint(0, len(other)):]
    return payload + rng.choice([b",", b"", b" "]) + other[:rng.randint(0, len(other))]


@pytest.mark.parametrize("seed", range(20))
def test_decode_events_matches_the_general_path_on_damaged_records(seed):
    """Cut, spliced and run-together records among good ones: each record's result is
    the general path's, whatever its neighbours."""
    rng = random.Random(seed)
    good = [*_events(rng, 12), _PLAIN, _ACTION]
    payloads = [rng.choice(good) if rng.random() < 0.4
                else _mutated(rng, rng.choice(good), rng.choice(good)) for _ in range(40)]
    for got, payload in zip(ev.decode_events(payloads), payloads, strict=True):
        _assert_same(got, _general(payload))


@pytest.mark.parametrize("seed", range(10))
def test_columnar_builder_matches_the_row_form_with_kernel_impressions(seed):
    rng = random.Random(seed)
    imps = []
    for k in range(rng.randint(1, 8)):
        raw = _impression(rng, f"r{k}")
        for c in raw["candidates"]:
            c.get("features", {}).pop("tags", None)
        raw.update(type="impression", event_id=f"e{k}")
        imps.append(ev.decode_events([ev.encode(raw)])[0][2])
    emitted = [_emitted(rng, imp) for imp in imps]
    rb = ev.emitted_to_record_batch(emitted, ["click", "buy"])
    assert rb.to_pylist() == _norm(ev.emitted_to_rows(emitted, ["click", "buy"]))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("every", [1, 6])
def test_gathered_columns_equal_the_general_path(seed, every, monkeypatch):
    """Impressions of several decoded batches with the same feature keys: their columns are
    gathered from the batches' arrays (kept candidates, some impressions without true_p,
    none or one candidate) and equal the batch built from the general path's impressions."""
    rng = random.Random(seed)
    raws = []
    for k in range(rng.randint(40, 90)):
        n = rng.choice([0, 1, 1, 2, 5, 12])
        with_p = rng.random() < 0.7
        cands = []
        for j in range(n):
            c = {"item_id": rng.randint(-5, 10**12), "position": j,
                 "features": {"cat": rng.randint(0, 9), "w": rng.randint(0, 99) / 8}}
            if with_p:
                c["true_p"] = rng.randint(0, 10**6) / 10**6
            cands.append(c)
        raws.append({"type": "impression", "event_id": f"e{k}", "request_id": f"r{k}",
                     "user_id": k, "timestamp": 100.0 + k, "user": {"age": k % 3},
                     "candidates": cands})
    payloads = [ev.encode(r) for r in raws]
    kernel = []
    i = 0
    while i < len(payloads):  # batches of random sizes: several chunks per run
        step = rng.randint(1, 17)
        kernel += [got[2] for got in ev.decode_events(payloads[i:i + step])]
        i += step
    general = [ev.compact_impression(r) for r in raws]
    # every 6th impression: the batches hold mostly others', so only their rows are copied
    kernel, general, raws = kernel[::every], general[::every], raws[::every]
    monkeypatch.setattr(ev, "_GATHER_SLACK", 0)
    keeps = [None if rng.random() < 0.5 else
             sorted(rng.sample(range(len(r["candidates"])),
                               rng.randint(0, len(r["candidates"])))) for r in raws]
    labels = [{j: ["click"]} if keep and rng.random() < 0.5 else {}
              for keep in keeps for j in (keep or [0])[:1]]
    for use_keep in (False, True):
        def emitted(imps, use_keep=use_keep):
            return [ev.EmittedImpression(imp, lab if use_keep else {},
                                         keep if use_keep else None, 0.5 if use_keep else 1.0)
                    for imp, keep, lab in zip(imps, keeps, labels, strict=True)]
        ek, eg = emitted(kernel), emitted(general)
        counts = np.fromiter(map(len, ek), np.int64, len(ek))
        starts = np.cumsum(counts) - counts
        assert ev._gather(ek, [e.imp for e in ek], counts, starts, int(counts.sum()))
        rb_kernel = ev.emitted_to_record_batch(ek, ["click"])
        rb_general = ev.emitted_to_record_batch(eg, ["click"])
        assert rb_kernel.equals(rb_general)
        assert rb_kernel.to_pylist() == _norm(ev.emitted_to_rows(ek, ["click"]))


def test_arrow_conversion_of_python_values_searches_no_module():
    """pyarrow tries to import ``dateutil`` in each conversion of Python values; with it
    missing every call searched ``sys.path`` again (a failed import is not cached), ~6x the
    cost of converting a joiner's request ids. The dependency keeps it found once."""
    import importlib.abc
    import sys

    searched: list[str] = []

    class Recorder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            searched.append(name)

    imp = ev.compact_impression({"request_id": "r1", "user_id": 4, "timestamp": 10.5,
                                 "user": {"age": 3, "recent": [1, 2]},
                                 "candidates": [{"item_id": 9, "position": 0}]})
    emitted = [ev.EmittedImpression(imp, {0: ["click"]}, None, 1.0)]
    ev.emitted_to_record_batch(emitted, ["click"])  # imports made once stay imported
    sys.meta_path.insert(0, Recorder())
    try:
        rb = ev.emitted_to_record_batch(emitted, ["click"])
        pa.array(["r1", "r2"])
    finally:
        sys.meta_path.pop(0)
    assert rb.num_rows == 1
    assert searched == []


def test_decoding_bad_records_leaves_no_reference_cycle():
    """An error kept in the results without the traceback it was raised with: that holds
    the decoder's frame, whose result list holds the error -- a cycle that kept each batch
    with a bad record (and its callers' frames, with their records) alive until the cyclic
    collector ran, which a joiner runs rarely."""
    import gc

    good = orjson.dumps({"v": 1, "type": "action", "event_id": "a1", "request_id": "r1",
                         "user_id": 1, "item_id": 2, "action": "click", "timestamp": 1.0})
    bad = [b"not json", b"[1, 2]", b'{"v": 1, "type": "nope"}', good[:-1], b""]
    ev.decode_events([good, *bad, good])  # first calls (imports, compiled kernels) first
    gc.collect()
    gc.disable()
    try:
        got = ev.decode_events([good, *bad, good])
        assert [isinstance(g, InputError) for g in got] == [False] + [True] * 5 + [False]
        del got
        assert gc.collect() == 0
    finally:
        gc.enable()
