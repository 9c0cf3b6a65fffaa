"""The reference join (ground truth of the chaos suite) on small hand-built logs."""

from __future__ import annotations

import json

import pytest

from freshrec.errors import ConfigError
from freshrec.stream.truth import TruthConfig, compare, reference_join

T0 = 1_700_000_000.0
CFG = TruthConfig(window_s=10, allowed_lateness_s=2, actions=("click", "purchase"), now=T0)


def imp(rid, ts, items, eid=None, **extra):
    e = {"type": "impression", "event_id": eid or f"i-{rid}", "request_id": rid, "user_id": 1,
         "timestamp": ts, "user": {"age": 3},
         "candidates": [{"item_id": it, "position": j, "features": {"c": 1}}
                        for j, it in enumerate(items)]}
    e.update(extra)
    return json.dumps(e).encode()


_EID = iter(range(10**9))


def act(rid, item, ts, action="click", **extra):
    e = {"type": "action", "event_id": f"a{next(_EID)}", "request_id": rid, "item_id": item,
         "action": action, "timestamp": ts}
    e.update(extra)
    return json.dumps(e).encode()


def labels(parts, cfg=CFG):
    return reference_join(parts, cfg).labels


def test_window_bounds_are_inclusive_and_per_action():
    t = T0
    log = [imp("r1", t, [1, 2, 3, 4, 5, 6]),
           act("r1", 1, t + 10),             # at the deadline: in
           act("r1", 2, t + 10.001),         # just after: out
           act("r1", 3, t - 2),              # at imp - lateness: in
           act("r1", 4, t - 2.001),          # just before: out
           act("r1", 5, t + 1, "purchase"),  # other label column
           act("r1", 6, t + 1, "like"),      # not a configured action
           act("r1", 99, t + 1),             # not a candidate
           act("r9", 1, t + 1),              # no such impression
           imp("r2", t + 30, [1])]           # moves the watermark past r1's deadline
    got = labels([log])
    assert got == {("r1", "1", 0): (1.0, 0.0), ("r1", "2", 1): (0.0, 0.0),
                   ("r1", "3", 2): (1.0, 0.0), ("r1", "4", 3): (0.0, 0.0),
                   ("r1", "5", 4): (0.0, 1.0), ("r1", "6", 5): (0.0, 0.0),
                   ("r2", "1", 0): (0.0, 0.0)}


def test_first_valid_impression_of_a_request_wins():
    t = T0
    log = [imp("r1", 4102444800.0, [7]),        # the year 2100: dropped, does not block r1
           imp("r1", 1e30, [7]),                # out of range: malformed
           imp("r1", "later", [7]),             # malformed twin
           imp("r1", t, [1, 2]),                # the one that counts
           imp("r1", t + 1, [3], eid="other"),  # a duplicate request: ignored
           act("r1", 2, t + 3), act("r1", 3, t + 3)]
    truth = reference_join([log], CFG)
    assert truth.labels == {("r1", "1", 0): (0.0, 0.0), ("r1", "2", 1): (1.0, 0.0)}
    assert truth.counts["duplicate_impressions"] == 1
    assert truth.counts["far_future"] == 1
    assert truth.counts["malformed:bad_timestamp"] == 1
    assert truth.counts["malformed:timestamp_out_of_range"] == 1


GARBAGE = {
    "not_json": b"\x00{not json",
    "truncated": b'{"type": "action", "event_id": "g1"',
    "not_object": b"[1, 2, 3]",
    "nan": (b'{"type":"action","event_id":"g2","request_id":"r1","item_id":1,'
            b'"action":"click","timestamp":NaN}'),
    "infinity": (b'{"type":"action","event_id":"g3","request_id":"r1","item_id":1,'
                 b'"action":"click","timestamp":Infinity}'),
    "invalid_utf8": b'{"type":"action","event_id":"\xff\xfe","request_id":"r1"}',
    "int_1e25_item": act("r1", 10**25, T0 + 1),
    "int_1e25_candidate": imp("rz", T0, [10**25]),
    "float_item": act("r1", 1.0, T0 + 1),
    "bool_timestamp": act("r1", 1, True),
    "string_timestamp": act("r1", 1, "yesterday"),
    "null_request": act(None, 1, T0 + 1),
    "negative_timestamp": act("r1", 1, -1e9),
    "year_2100_out_of_range": act("r1", 1, 4.2e11),
    "missing_timestamp": json.dumps({"type": "action", "event_id": "g4", "request_id": "r1",
                                     "item_id": 1, "action": "click"}).encode(),
    "missing_candidates": json.dumps({"type": "impression", "event_id": "g5",
                                      "request_id": "rm", "user_id": 1, "timestamp": T0,
                                      "user": {}}).encode(),
    "user_not_object": imp("ru", T0, [1], user=[1]),
    "position_string": json.dumps({"type": "impression", "event_id": "g6", "request_id": "rp",
                                   "user_id": 1, "timestamp": T0, "user": {},
                                   "candidates": [{"item_id": 1, "position": "0"}]}).encode(),
    "unknown_type": json.dumps({"type": "purchase_order", "event_id": "g7"}).encode(),
    "no_type": json.dumps({"event_id": "g8"}).encode(),
    "schema_v2": act("r1", 1, T0 + 1, v=2),
    "too_many_candidates": imp("rbig", T0, list(range(11))),
    "oversized": act("r1", 1, T0 + 1, blob="x" * 300),
}


def test_every_kind_of_garbage_is_excluded():
    cfg = TruthConfig(window_s=10, allowed_lateness_s=2, now=T0, max_candidates=10,
                      max_event_bytes=250)
    good = [imp("r1", T0, [1, 2])]
    truth = reference_join([good + list(GARBAGE.values())], cfg)
    assert truth.labels == {("r1", "1", 0): (0.0,), ("r1", "2", 1): (0.0,)}
    malformed = sum(v for k, v in truth.counts.items() if k.startswith("malformed:"))
    assert malformed == len(GARBAGE)
    assert truth.counts["valid"] == 1
    # each kind on its own is rejected (none is rescued by another)
    for name, rec in GARBAGE.items():
        t = reference_join([[rec]], cfg)
        assert t.counts["valid"] == 0, name


def test_timestamps_zero_and_long_ids_are_valid():
    long_rid = "r" * 700
    log = [imp(long_rid, T0, [1], eid="e" * 650), act(long_rid, 1, T0 + 5),
           act("r1", 1, 0.0)]  # a valid action far in the past labels nothing
    truth = reference_join([log], CFG)
    assert truth.labels == {(long_rid, "1", 0): (1.0, 0.0)}
    assert truth.counts["valid"] == 3


def test_string_and_int_ids_are_the_same_item_and_repeated_candidates_all_count():
    log = [imp(7, T0, [8, "9", 8]), act("7", "8", T0 + 1), act(7, 9, T0 + 2)]
    truth = reference_join([log], CFG)
    assert truth.labels == {("7", "8", 0): (1.0, 0.0), ("7", "9", 1): (1.0, 0.0),
                            ("7", "8", 2): (1.0, 0.0)}
    assert truth.expected == 3


def test_watermarks_are_per_partition():
    # partition 0 runs far ahead; partition 1's action is still on time in partition 1
    p0 = [imp("a", T0, [1]), imp("b", T0 + 100, [1]), act("a", 1, T0 + 5)]
    p1 = [imp("c", T0, [1]), act("c", 1, T0 + 5)]
    truth = reference_join([p0, p1], CFG)
    assert truth.labels[("a", "1", 0)] == (0.0, 0.0)   # read after p0 passed a's deadline
    assert truth.labels[("c", "1", 0)] == (1.0, 0.0)
    assert truth.counts["late_actions"] == 1
    assert truth.counts["beyond_lateness"] == 1


def test_a_redelivered_action_labels_once_and_is_not_late():
    click = act("a", 1, T0 + 3)
    log = [imp("a", T0, [1]), click, imp("b", T0 + 20, [1]), click]
    truth = reference_join([log], CFG)
    assert truth.labels[("a", "1", 0)] == (1.0, 0.0)
    assert truth.counts["duplicate_actions"] == 1
    assert truth.counts["late_actions"] == 0


def test_a_late_impression_produces_nothing():
    log = [imp("a", T0 + 100, [1]), imp("b", T0, [1]), act("b", 1, T0 + 1)]
    truth = reference_join([log], CFG)
    assert set(truth.labels) == {("a", "1", 0)}
    assert truth.counts["late_impressions"] == 1


def test_far_future_records_do_not_move_the_partition_time():
    log = [imp("a", T0, [1]), act("x", 1, 4102444800.0),  # the year 2100
           act("a", 1, T0 + 5)]
    truth = reference_join([log], CFG)
    assert truth.labels == {("a", "1", 0): (1.0, 0.0)}
    assert truth.counts["far_future"] == 1
    # relative to the partition, not the wall clock: 2 h after the newest record is too far
    log = [imp("a", T0, [1]), imp("b", T0 + 7200, [1])]
    assert set(labels([log])) == {("a", "1", 0)}
    # the first record of a partition is compared with ``now``
    assert labels([[imp("a", T0 + 7200, [1])]]) == {}


def test_compare_counts_each_kind_of_error():
    log = [imp("r1", T0, [1, 2, 3]), act("r1", 1, T0 + 1), act("r1", 3, T0 + 1)]
    truth = reference_join([log], CFG)
    out = {"request_id": ["r1", "r1", "r1", "r9", "r1"],
           "item_id": [1, 1, 2, 5, 3],
           "position": [0, 0, 1, 0, 2],
           "click": [1.0, 1.0, 1.0, 0.0, 0.0],
           "purchase": [0.0, 0.0, 0.0, 0.0, 0.0],
           "correction": [0, 0, 0, 0, 1]}
    got = compare(truth, out)
    assert got == {"expected": 3, "emitted": 4, "lost": 1, "duplicated": 1, "spurious": 1,
                   "wrong_labels": 1, "missed_clicks": 1, "corrections": 1}
    exact = {"request_id": ["r1"] * 3, "item_id": [1, 2, 3], "position": [0, 1, 2],
             "click": [1.0, 0.0, 1.0], "purchase": [0.0] * 3}
    assert compare(truth, exact) == {"expected": 3, "emitted": 3, "lost": 0, "duplicated": 0,
                                     "spurious": 0, "wrong_labels": 0, "missed_clicks": 0,
                                     "corrections": 0}
    with pytest.raises(ValueError, match="purchase"):
        compare(truth, {k: v for k, v in exact.items() if k != "purchase"})


def test_config_names_the_bad_field():
    with pytest.raises(ConfigError, match="max_candidates"):
        TruthConfig(window_s=1, allowed_lateness_s=0, max_candidates=-1)
