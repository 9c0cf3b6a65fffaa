"""Joiner: brute-force reference, dedupe, spill, bad events, validation, restart equivalence."""

from __future__ import annotations

import sys
import textwrap
import uuid

import orjson
import pytest

from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig, write_to_log
from freshrec.errors import InputError
from freshrec.stream import (
    FileLog,
    Joiner,
    JoinerConfig,
    RedisLog,
    RedisLogConfig,
    ValidationConfig,
    examples_to_record_batch,
)
from freshrec.stream import events as ev
from tests.stream._helpers import kill_when

SIM = SimulatorConfig(seed=3, n_users=200, n_items=300, candidates=20, requests_per_s=20.0,
                      click_delay_median_s=20.0, bias=-2.5, malformed_rate=0.01,
                      duplicate_rate=0.05)
CFG = JoinerConfig(window_s=60, allowed_lateness_s=10, actions=("click", "purchase"),
                   checkpoint_every_s=0.0)


def _source(tmp_path, n_requests=400, partitions=1):
    log = FileLog(tmp_path / "in", _fl(partitions))
    recs = list(ClickStreamSimulator(SIM).records(n_requests=n_requests))
    write_to_log(iter(recs), log)
    return log, recs


def _fl(partitions=1):
    from freshrec.stream import FileLogConfig

    return FileLogConfig(partitions=partitions, fsync="never")


def _records(log):
    out = []
    for p in range(log.partitions):
        off = 0
        while recs := log.read(p, off, 10_000):
            out += [r.value for r in recs]
            off = recs[-1].offset + 1
    return out


def _read_all(log):
    """Side logs: orjson rows."""
    return [orjson.loads(v) for v in _records(log)]


def _read_examples(log):
    """The joiner's output: Arrow example records, decoded per partition, in order."""
    out = []
    for p in range(log.partitions):
        off, values = 0, []
        while recs := log.read(p, off, 10_000):
            values += [r.value for r in recs]
            off = recs[-1].offset + 1
        rb, bad = ev.decode_examples(values)
        assert bad == 0
        assert all(v[:4] == ev.EXAMPLES_MAGIC for v in values)
        out += rb.to_pylist() if rb is not None else []
    return out


def _reference(recs, window_s, actions):
    """Brute force: dedupe, then label each candidate by any action within the window."""
    seen, imps, acts = set(), {}, {}
    for _, payload in recs:
        try:
            e = ev.decode(payload)
            kind = ev.validate_event(e)
        except InputError:
            continue
        if len(payload) > CFG.max_event_bytes or e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        if kind == "impression":
            imps.setdefault(e["request_id"], e)
        elif e["action"] in actions:
            acts.setdefault((e["request_id"], e["item_id"]), []).append(e)
    out = {}
    for rid, imp in imps.items():
        for c in imp["candidates"]:
            got = {a["action"] for a in acts.get((rid, c["item_id"]), [])
                   if a["timestamp"] - imp["timestamp"] <= window_s}
            out[(rid, c["item_id"])] = tuple(float(a in got) for a in actions)
    return out


def _run(src, tmp_path, cfg=CFG, name="out", side=None, partitions=1):
    out = FileLog(tmp_path / name, _fl(partitions))
    j = Joiner(src, out, tmp_path / f"{name}-state", cfg, side_logs=side)
    j.run(idle_timeout_s=0.0, flush_at_end=True)
    m = j.metrics()
    j.close()
    return _read_examples(out), m, out


@pytest.mark.parametrize("partitions", [1, 3])
def test_matches_brute_force_reference_join(tmp_path, partitions):
    src, recs = _source(tmp_path, partitions=partitions)
    examples, m, _ = _run(src, tmp_path, partitions=partitions)
    got = {(e["request_id"], e["item_id"]): (e["click"], e["purchase"]) for e in examples}
    assert len(got) == len(examples)  # no duplicates
    ref = _reference(recs, CFG.window_s, CFG.actions)
    assert got == ref
    assert sum(v[0] for v in ref.values()) > 50  # the test has positives to find
    assert m["duplicates"] > 0 and m["dead_letters"] > 0 and m["outside_window"] > 0
    assert all(e["sample_rate"] == 1.0 for e in examples)
    assert all(0 < e["true_p"] < 1 and "u_recent_clicks" in e and "i_category" in e
               for e in examples)


def test_negative_downsampling_keeps_positives_and_records_rate(tmp_path):
    src, recs = _source(tmp_path)
    cfg = JoinerConfig(window_s=60, allowed_lateness_s=10, negative_rate=0.25,
                       checkpoint_every_s=0.0)
    examples, m, _ = _run(src, tmp_path, cfg)
    ref = _reference(recs, 60, ("click",))
    pos = {k for k, v in ref.items() if v[0] == 1.0}
    got_pos = {(e["request_id"], e["item_id"]) for e in examples if e["click"] == 1.0}
    assert got_pos == pos
    negs = [e for e in examples if e["click"] == 0.0]
    assert all(e["sample_rate"] == 0.25 for e in negs)
    assert all(e["sample_rate"] == 1.0 for e in examples if e["click"] == 1.0)
    frac = len(negs) / (len(ref) - len(pos))
    assert 0.2 < frac < 0.3
    assert m["negatives_dropped"] == len(ref) - len(pos) - len(negs)


@pytest.mark.parametrize("cap", [0, 3])
def test_spill_to_disk_gives_the_same_examples(tmp_path, cap):
    """Spilled impressions keep their labels, also those spilled as soon as they are read
    (``max_pending_in_memory=0``: every label is given to an impression read back)."""
    src, _ = _source(tmp_path, n_requests=200)
    full, _, _ = _run(src, tmp_path, CFG, name="a")
    cfg = JoinerConfig(window_s=60, allowed_lateness_s=10, actions=("click", "purchase"),
                       max_pending_in_memory=cap, checkpoint_every_s=0.0)
    spilled, m, _ = _run(src, tmp_path, cfg, name="b")
    assert sum(e["click"] for e in full) > 50  # labels to lose
    assert spilled == full
    assert m["spilled"] > 100 and m["unspilled"] > 0
    assert m["pending_in_memory"] <= cap


def test_dedupe_keys_beyond_memory_are_found_in_lmdb(tmp_path):
    """Dedupe keys over ``max_dedupe_keys_in_memory`` are looked up in LMDB: the same
    examples and duplicate counts as with every key in memory, across a restart."""
    src, _ = _source(tmp_path, n_requests=300)
    full, m_full, _ = _run(src, tmp_path, CFG, name="a")
    cfg = JoinerConfig(window_s=60, allowed_lateness_s=10, actions=("click", "purchase"),
                       max_dedupe_keys_in_memory=4, checkpoint_every_s=0.0)
    out = FileLog(tmp_path / "b", _fl())
    for last in (False, True):  # a restart halfway: the keys are read back from LMDB
        j = Joiner(src, out, tmp_path / "b-state", cfg)
        j.run(idle_timeout_s=0.0, flush_at_end=last,
              max_events=None if last else m_full["events_in"] // 2)
        m = j.metrics()
        j.close()
    assert m["restarts"] == 1
    assert _read_examples(out) == full
    assert m["duplicates"] == m_full["duplicates"] > 0
    assert m["events_in"] == m_full["events_in"]


def _imp(rid, ts, items=(1, 2)):
    return {"type": "impression", "event_id": f"i-{rid}", "request_id": rid, "user_id": 1,
            "timestamp": ts, "user": {}, "candidates": [
                {"item_id": i, "position": k, "features": {}} for k, i in enumerate(items)]}


def _act(eid, rid, item, ts, action="click"):
    return {"type": "action", "event_id": eid, "request_id": rid, "item_id": item,
            "action": action, "timestamp": ts}


def test_bad_events_go_to_the_dead_letter_log(tmp_path):
    src = FileLog(tmp_path / "in")
    bad = [
        b"\x00not json",
        b"[1, 2]",
        ev.encode({"type": "refund", "event_id": "x", "timestamp": 1}),
        ev.encode({"type": "action", "event_id": "x", "request_id": "r"}),
        ev.encode(_act("y", "r", 1, "noon")),
        ev.encode({**_imp("r9", 5), "candidates": [{"position": 0}]}),
        ev.encode({**_act("z", "r", 1, 5), "blob": "x" * 5000}),
    ]
    src.append([ev.encode(_imp("r1", 0)), *bad, ev.encode(_act("a1", "r1", 2, 3))])
    dl = FileLog(tmp_path / "dl")
    cfg = JoinerConfig(window_s=10, allowed_lateness_s=0, max_event_bytes=4096)
    examples, m, _ = _run(src, tmp_path, cfg, side={"dead_letter": dl})
    assert m["dead_letters"] == len(bad)
    reasons = [d["reason"] for d in _read_all(dl)]
    assert len(reasons) == len(bad)
    assert "not valid JSON" in reasons[0] and "unknown type 'refund'" in reasons[2]
    assert "'item_id' is missing" in reasons[3] and "'timestamp' must be" in reasons[4]
    assert "candidates[0]" in reasons[5] and "max_event_bytes" in reasons[6]
    assert [(e["item_id"], e["click"]) for e in examples] == [(1, 0.0), (2, 1.0)]


def test_orphans_late_actions_and_corrections(tmp_path):
    src = FileLog(tmp_path / "in")
    src.append([ev.encode(e) for e in [
        _act("a0", "r1", 1, 2),  # before its impression
        _imp("r1", 1),
        _imp("r2", 3),
        _imp("r3", 40),  # moves the watermark past both deadlines
        _act("a1", "r2", 2, 5),  # after r2 was emitted as a negative
        _act("a1", "r2", 2, 5),  # duplicate
        _act("a2", "rX", 1, 41),  # no impression ever
        _imp("r4", 100),
    ]])
    cfg = JoinerConfig(window_s=10, allowed_lateness_s=0, emit_corrections=True,
                       checkpoint_every_s=0.0)
    examples, m, _ = _run(src, tmp_path, cfg)
    by = {(e["request_id"], e["item_id"], e["correction"]): e["click"] for e in examples}
    assert by[("r1", 1, 0)] == 1.0 and by[("r2", 2, 0)] == 0.0
    assert by[("r2", 2, 1)] == 1.0  # the correction
    assert m["late_after_emit"] == 1 and m["duplicates"] == 1 and m["unjoined_actions"] == 1


def test_validation_quarantines_a_window_until_released(tmp_path):
    src, _ = _source(tmp_path, n_requests=300)
    q = FileLog(tmp_path / "q")
    v = ValidationConfig(window_s=5, min_positive_ratio=0.5)  # every window fails
    cfg = JoinerConfig(window_s=60, allowed_lateness_s=10, validation=v, checkpoint_every_s=0.0)
    out = FileLog(tmp_path / "out")
    j = Joiner(src, out, tmp_path / "state", cfg, side_logs={"quarantine": q})
    j.run(idle_timeout_s=0.0, flush_at_end=True)
    assert _read_examples(out) == []
    held = _read_all(q)
    windows = sorted({h["window"] for h in held})
    assert len(windows) >= 3 and j.metrics()["quarantined_windows"] == len(windows)
    n = j.release(windows[0])
    assert n == sum(h["window"] == windows[0] for h in held) > 0
    assert j.release(windows[0]) == 0  # idempotent
    j.close()
    assert len(_read_examples(out)) == n


def test_validation_passes_windows_within_bounds(tmp_path):
    src, recs = _source(tmp_path, n_requests=200)
    v = ValidationConfig(window_s=5, max_positive_ratio=1.0)
    cfg = JoinerConfig(window_s=60, allowed_lateness_s=10, validation=v, checkpoint_every_s=0.0)
    examples, m, _ = _run(src, tmp_path, cfg)
    assert len(examples) == len(_reference(recs, 60, ("click",)))
    assert m.get("quarantined_windows", 0) == 0


def test_examples_to_record_batch(tmp_path):
    src, _ = _source(tmp_path, n_requests=50)
    examples, _, _ = _run(src, tmp_path)
    rb = examples_to_record_batch(examples)
    assert rb.num_rows == len(examples)
    assert {"request_id", "item_id", "event_time", "click", "sample_rate",
            "u_recent_clicks", "i_category"} <= set(rb.schema.names)


_CHILD = textwrap.dedent("""
    import sys
    from freshrec.stream import FileLog, FileLogConfig, Joiner, JoinerConfig, RedisLog
    from freshrec.stream import RedisLogConfig
    kind, a, b, state, cap = sys.argv[1:6]
    if kind == "file":
        src = FileLog(a, FileLogConfig(fsync="never"))
        out = FileLog(b, FileLogConfig(fsync="never"))
    else:
        src = RedisLog(RedisLogConfig(url=a, name=b + "-in"))
        out = RedisLog(RedisLogConfig(url=a, name=b + "-out"))
    cfg = JoinerConfig(window_s=60, allowed_lateness_s=10, actions=("click", "purchase"),
                       checkpoint_every_s=0.0, max_pending_in_memory=int(cap))
    j = Joiner(src, out, state, cfg)
    while True:
        j.step(max_records=40)
        sys.stdout.write(f"{j.counters.get('events_in', 0)}\\n")
        sys.stdout.flush()
""")


def _kill_and_resume(tmp_path, kind, src, make_out, args, cap=20):
    """Kill a joiner twice mid-run, then finish; ``cap``: its ``max_pending_in_memory``
    (20: most pending impressions are spilled to LMDB items of their own; large: they are
    durable in the checkpoints' batches)."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    state = tmp_path / "state"
    for stop_at in (300, 700):
        kill_when([sys.executable, str(script), kind, *args, str(state), str(cap)], stop_at)
    out = make_out()
    cfg = JoinerConfig(window_s=60, allowed_lateness_s=10, actions=("click", "purchase"),
                       checkpoint_every_s=0.0, max_pending_in_memory=cap)
    j = Joiner(src, out, state, cfg)
    assert j.counters["restarts"] >= 2
    assert j.metrics()["pending_on_disk"] > 0  # the run is resumed with impressions pending
    j.run(idle_timeout_s=0.0, flush_at_end=True)
    j.close()
    return _read_examples(out)


@pytest.mark.slow
@pytest.mark.parametrize("cap", [20, 100_000], ids=["spilled", "batched"])
def test_kill_9_and_restart_gives_the_same_examples_file_log(tmp_path, cap):
    src, _ = _source(tmp_path, n_requests=300)
    straight, _, _ = _run(src, tmp_path, JoinerConfig(
        window_s=60, allowed_lateness_s=10, actions=("click", "purchase"),
        checkpoint_every_s=0.0), name="straight")
    resumed = _kill_and_resume(tmp_path, "file", src, lambda: FileLog(tmp_path / "out"),
                               [str(tmp_path / "in"), str(tmp_path / "out")], cap)
    assert len(resumed) == len(straight) > 1000
    assert resumed == straight


@pytest.mark.redis
@pytest.mark.slow
def test_kill_9_and_restart_gives_the_same_examples_redis(tmp_path, redis_server):
    name = f"j{uuid.uuid4().hex[:8]}"
    src = RedisLog(RedisLogConfig(url=redis_server, name=name + "-in"))
    recs = list(ClickStreamSimulator(SIM).records(n_requests=300))
    write_to_log(iter(recs), src)
    straight, _, _ = _run(src, tmp_path, JoinerConfig(
        window_s=60, allowed_lateness_s=10, actions=("click", "purchase"),
        checkpoint_every_s=0.0), name="straight")
    out_log = RedisLog(RedisLogConfig(url=redis_server, name=name + "-out"))
    resumed = _kill_and_resume(tmp_path, "redis", src, lambda: out_log,
                               [redis_server, name])
    assert len(resumed) == len(straight) > 1000
    assert resumed == straight
    src.delete()
    out_log.delete()
    src.close()
    out_log.close()


def test_ids_of_mixed_types_fall_back_to_row_records(tmp_path):
    """Arrow cannot hold int and str item ids in one column: those examples are written as
    the legacy orjson rows instead (and still labelled right)."""
    src = FileLog(tmp_path / "in")
    src.append([ev.encode(e) for e in [
        _imp("r1", 0, items=(1, 2)),
        _imp("r2", 0, items=("a", "b")),
        _act("a1", "r2", "b", 1),
        _imp("r3", 100),
    ]])
    out = FileLog(tmp_path / "out")
    j = Joiner(src, out, tmp_path / "state", JoinerConfig(window_s=10, allowed_lateness_s=0,
                                                          checkpoint_every_s=60.0))
    j.run(idle_timeout_s=0.0, flush_at_end=True)
    j.close()
    values = _records(out)
    assert values and all(v[:1] == b"{" for v in values)
    got = {(r["request_id"], r["item_id"]): r["click"] for r in map(orjson.loads, values)}
    assert got == {("r1", 1): 0.0, ("r1", 2): 0.0, ("r2", "a"): 0.0, ("r2", "b"): 1.0,
                   ("r3", 1): 0.0, ("r3", 2): 0.0}
    rb, bad = ev.decode_examples(values)  # the trainer keeps what unifies
    assert rb is not None and bad == 2 and rb.num_rows == 4


def test_pending_impressions_are_read_back_from_the_input_after_a_restart(tmp_path):
    src = FileLog(tmp_path / "in")
    src.append([ev.encode(_imp("r1", 0, items=(1, 2, 3))), ev.encode(_act("a1", "r1", 3, 1))])
    cfg = JoinerConfig(window_s=10, allowed_lateness_s=0, checkpoint_every_s=0.0)
    out = FileLog(tmp_path / "out")
    j = Joiner(src, out, tmp_path / "state", cfg)
    assert j.step() == 0 and j.metrics()["pending_on_disk"] == 1
    j.close()
    src.append([ev.encode(_imp("r2", 50))])
    j = Joiner(src, out, tmp_path / "state", cfg)  # nothing of r1 in memory now
    assert j.step() == 3
    j.close()
    assert [(e["item_id"], e["click"]) for e in _read_examples(out)] == [
        (1, 0.0), (2, 0.0), (3, 1.0)]


def test_pending_impressions_in_checkpoint_batches_survive_a_restart(tmp_path):
    """Unlabelled pending impressions are durable as one batch per checkpoint: after a
    restart the ones still pending are emitted once (not those emitted before it), and one
    labelled after its batch was written keeps its label."""
    cfg = JoinerConfig(window_s=10, allowed_lateness_s=0, checkpoint_every_s=0.0)
    parts = [[_imp(f"r{k}", k) for k in range(10)],
             [_act("a5", "r5", 2, 10), _imp("r10", 13)],
             [_imp("r11", 40)]]
    whole = FileLog(tmp_path / "whole")
    whole.append([ev.encode(e) for part in parts for e in part])
    straight, _, _ = _run(whole, tmp_path, cfg, name="straight")
    src, out = FileLog(tmp_path / "in"), FileLog(tmp_path / "out")
    src.append([ev.encode(e) for e in parts[0]])
    j = Joiner(src, out, tmp_path / "state", cfg)
    assert j.step() == 0 and j.metrics()["pending_on_disk"] == 10
    src.append([ev.encode(e) for e in parts[1]])
    assert j.step() == 8  # r0-r3 emitted; r5 labelled: an LMDB item of its own
    m = j.metrics()
    assert m["pending_in_memory"] == m["pending_on_disk"] == 7
    assert j._txn.stat(j._db["pending"])["entries"] == 1
    j.close()
    src.append([ev.encode(e) for e in parts[2]])
    j = Joiner(src, out, tmp_path / "state", cfg)  # r4-r10 are read back from the input
    assert j.metrics()["pending_on_disk"] == 7 and j.step() == 14 and j.flush() == 2
    j.close()
    assert _read_examples(out) == straight
    assert [e["request_id"] for e in straight if e["click"]] == ["r5"]


def test_expired_dedupe_keys_stay_expired_across_a_restart(tmp_path, monkeypatch):
    """Expired keys are deleted from LMDB a slice per checkpoint; a restart must not bring
    back the ones still there (the horizon is checkpointed): a replayed old event is late
    with or without a restart in between, never a duplicate."""
    from freshrec.stream import dedupe

    monkeypatch.setattr(dedupe, "PURGE_PER_FLUSH", 0)  # a few deleted per checkpoint
    cfg = JoinerConfig(window_s=10, allowed_lateness_s=0, checkpoint_every_s=0.0,
                       dedupe_horizon_s=0)
    parts = [[_imp(f"r{k}", k) for k in range(10)], [_imp("r10", 200)]]
    replay = [_imp("r5", 5)]  # bucket 0, expired once the watermark is at 200
    counts = []
    for restart in (False, True):
        src, out = FileLog(tmp_path / f"in{restart}"), FileLog(tmp_path / f"out{restart}")
        state = tmp_path / f"state{restart}"
        j = Joiner(src, out, state, cfg)
        for part in parts:  # the second checkpoint deletes 2 of the 10 expired event ids
            src.append([ev.encode(e) for e in part])
            j.step()
        if restart:
            j.close()
            j = Joiner(src, out, state, cfg)
        src.append([ev.encode(e) for e in replay])
        j.step()
        counts.append((j.counters.get("duplicates", 0), j.counters.get("late_impressions", 0)))
        j.close()
    assert counts == [(0, 1), (0, 1)]


def test_an_impression_far_ahead_of_its_partition_does_not_hold_its_chunk_mates(tmp_path):
    """An impression dated more than a window ahead stays pending after the records decoded
    with it are emitted: it must keep only its own candidates in memory (before, it held
    the columns of every impression of its 64-record decode chunk)."""
    cfg = JoinerConfig(window_s=10, allowed_lateness_s=0, checkpoint_every_s=0.0)

    def imp(i, ts):
        return ev.encode({"type": "impression", "event_id": f"e{i}", "request_id": f"r{i}",
                          "user_id": i, "timestamp": ts, "user": {},
                          "candidates": [{"item_id": 100 * i + k, "position": k,
                                          "features": {"c": k, "d": i}} for k in range(20)]})

    src = FileLog(tmp_path / "in", _fl())
    src.append([imp(i, 1000 + i * 0.01) for i in range(40)] + [imp(40, 1100)])
    out = FileLog(tmp_path / "out", _fl())
    j = Joiner(src, out, tmp_path / "state", cfg)
    j.step()
    j.checkpoint()
    assert list(j._mem) == ["r40"]  # the others are emitted; the one far ahead waits
    pending = j._mem["r40"].imp
    assert pending.chunk.ints.size == 20 * (2 + 2)  # its 20 candidates x (item, pos, c, d)
    j.flush()
    j.close()
    rows = [r for r in _read_examples(out) if r["request_id"] == "r40"]
    assert [(r["item_id"], r["position"], r["i_c"], r["i_d"]) for r in rows] == [
        (4000 + k, k, k, 40) for k in range(20)]
