"""Joiner under faults: several partitions read at uneven speeds, kill -9 with several
partitions, poison records of every kind, far-future and far-past timestamps, fuzzed input.

Each test here failed on the joiner with one global watermark and no record bounds."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import textwrap
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig, write_to_log
from freshrec.errors import ConfigError
from freshrec.stream import FileLog, FileLogConfig, Joiner, JoinerConfig, RedisLog, RedisLogConfig
from freshrec.stream import events as ev
from freshrec.stream.base import Log, Record
from tests.stream._helpers import kill_when
from tests.stream.test_join import _act, _imp, _read_all, _read_examples, _reference

SIM = SimulatorConfig(seed=11, n_users=300, n_items=400, candidates=20, requests_per_s=20.0,
                      click_delay_median_s=8.0, bias=-2.0, duplicate_rate=0.03)
CFG = JoinerConfig(window_s=30, allowed_lateness_s=5, checkpoint_every_s=0.0)


class SlowPartitionLog(Log):
    """A log whose partition ``slow`` hands out at most ``per_read`` records per read: one
    partition arriving late, as when its broker or producer lags."""

    def __init__(self, inner: Log, slow: int = 1, per_read: int = 3) -> None:
        self.inner, self.slow, self.per_read = inner, slow, per_read
        self.partitions = inner.partitions

    def read(self, partition: int, offset: int, max_records: int = 1000,
             timeout_s: float = 0.0) -> list[Record]:
        n = self.per_read if partition == self.slow else max_records
        return self.inner.read(partition, offset, min(n, max_records), timeout_s)

    def append(self, records, partition=0):  # pragma: no cover - read-only in these tests
        return self.inner.append(records, partition)

    def end_offset(self, partition):  # pragma: no cover
        return self.inner.end_offset(partition)

    def commit(self, group, partition, offset):  # pragma: no cover
        self.inner.commit(group, partition, offset)

    def committed(self, group, partition):  # pragma: no cover
        return self.inner.committed(group, partition)

    def lag(self, group, partition=None):  # pragma: no cover
        return self.inner.lag(group, partition)

    def truncate(self, partition, offset):  # pragma: no cover
        self.inner.truncate(partition, offset)


def _sim_log(path, partitions, n_requests=500):
    log = FileLog(path, FileLogConfig(partitions=partitions, fsync="never"))
    recs = list(ClickStreamSimulator(SIM).records(n_requests=n_requests))
    write_to_log(iter(recs), log)
    return log, recs


def _join(src, tmp_path, name, cfg=CFG, side=None, max_records=5000):
    out = FileLog(tmp_path / name, FileLogConfig(partitions=2, fsync="never"))
    j = Joiner(src, out, tmp_path / f"{name}-state", cfg, side_logs=side)
    while j.step(max_records=max_records) or any(
            src.read(p, j.offsets[p], 1) for p in range(src.partitions)):
        pass
    j.flush()
    m = j.metrics()
    j.close()
    return _read_examples(out), m


def _labels(examples):
    return {(e["request_id"], e["item_id"]): (e["click"],) for e in examples}


@pytest.mark.parametrize("partitions", [2, 4])
def test_a_slow_partition_changes_nothing(tmp_path, partitions):
    src, recs = _sim_log(tmp_path / "in", partitions)
    ref = _reference(recs, CFG.window_s, CFG.actions)
    even, _ = _join(src, tmp_path, "even")
    uneven, m = _join(SlowPartitionLog(src), tmp_path, "uneven")
    small, _ = _join(src, tmp_path, "small", max_records=7)
    assert _labels(even) == ref
    assert sum(v[0] for v in ref.values()) > 100  # there are clicks to miss
    assert uneven == even and small == even  # same examples, same order
    assert m.get("late_impressions", 0) == 0 and m.get("late_actions", 0) == 0


_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from freshrec.stream import FileLog, Joiner, JoinerConfig
    from tests.stream.test_join_faults import SlowPartitionLog
    src, out, state, slow = sys.argv[1:5]
    cfg = JoinerConfig(window_s=30, allowed_lateness_s=5, checkpoint_every_s=0.0,
                       max_pending_in_memory=50)
    j = Joiner(SlowPartitionLog(FileLog(src), slow=int(slow)), FileLog(out), state, cfg)
    while True:
        j.step(max_records=97)
        sys.stdout.write(f"{{j.counters.get('events_in', 0)}}\\n")
        sys.stdout.flush()
""")


@pytest.mark.slow
def test_kill_9_with_several_partitions_gives_the_same_examples(tmp_path):
    src, recs = _sim_log(tmp_path / "in", 3, n_requests=400)
    straight, _ = _join(src, tmp_path, "straight")
    out = FileLog(tmp_path / "out", FileLogConfig(partitions=2, fsync="never"))
    out.close()
    script = tmp_path / "child.py"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script.write_text(_CHILD.format(tests=root))
    rng = random.Random(5)
    total = sum(1 for _ in recs)
    for k in range(6):
        stop_at = (k + 1) * total // 8 + rng.randrange(50)
        kill_when([sys.executable, str(script), str(tmp_path / "in"), str(tmp_path / "out"),
                   str(tmp_path / "state"), str(k % 3)], stop_at)
    out = FileLog(tmp_path / "out")
    j = Joiner(src, out, tmp_path / "state", CFG)
    assert j.counters["restarts"] >= 5
    j.run(idle_timeout_s=0.0, flush_at_end=True)
    j.close()
    assert _read_examples(out) == straight


def test_a_full_state_map_names_its_setting_and_a_larger_map_resumes(tmp_path):
    """LMDB's "map full" is an error naming join.map_size (it was lmdb's own message);
    the joiner restarted with a larger map resumes from its last checkpoint, exactly."""
    src, _ = _sim_log(tmp_path / "in", 2, n_requests=3000)
    straight, _ = _join(src, tmp_path, "straight")
    out = FileLog(tmp_path / "out", FileLogConfig(partitions=2, fsync="never"))
    j = Joiner(src, out, tmp_path / "state", dataclasses.replace(CFG, map_size=1 << 20))
    with pytest.raises(ConfigError, match=r"LMDB map of 1048576 bytes is full; raise "
                                          r"join.map_size \(e.g. --set join.map_size=2097152\)"):
        for _ in range(10_000):
            j.step(max_records=200)
    assert 0 < j.counters["events_in"] < sum(src.end_offset(p) for p in range(2))
    j.close()
    j = Joiner(src, out, tmp_path / "state", CFG)
    j.run(idle_timeout_s=0.0, flush_at_end=True)
    j.close()
    assert _read_examples(out) == straight


def _good_and_garbage(tmp_path):
    """Good events around one of every kind of poison record; returns the log, the good
    records, and how many poison records must be dead-lettered."""
    t0 = 1_700_000_000
    good = [_imp("r1", t0), _act("a1", "r1", 2, t0 + 3)]
    long_rid = "R" * 700
    good += [_imp(long_rid, t0 + 1, items=(5, 6)), _act("a" * 600, long_rid, 6, t0 + 2)]
    poison = [
        {**_imp("p1", 1e30)},
        {**_act("p2", "r1", 1, 1e25)},
        ev.encode(_imp("p3", 1)).replace(b'"timestamp":1', b'"timestamp":' + b"9" * 25),
        {**_imp("p4", -1e9)},
        {**_imp("p5", t0 + 2, items=tuple(range(12_000)))},
        {**_act("p6", "r1", 1, 4_102_444_800)},  # 2100-01-01: would label r1's item 1
        {**_imp("p7", 4_102_444_800)},
        b"{\"type\": \"action\", \"timestamp\": NaN}",
        b"\xff\xfe",
        {"type": "impression", "event_id": "p8", "request_id": ["r"], "user_id": 1,
         "timestamp": t0, "user": {}, "candidates": []},
        {**_imp("p9", t0), "candidates": [{"item_id": 1.5, "position": 0}]},
        {**_act("p10", "r1", {"x": 1}, t0)},
    ]
    later = [_imp(f"r{k}", t0 + 5 + k) for k in range(2, 80)]
    later += [_act(f"b{k}", f"r{k}", 1, t0 + 6 + k) for k in range(2, 80, 3)]
    later.sort(key=lambda e: e["timestamp"])
    src = FileLog(tmp_path / "in")
    payloads = [ev.encode(e) for e in good]
    payloads += [p if isinstance(p, bytes) else ev.encode(p) for p in poison]
    payloads += [ev.encode(e) for e in later]
    src.append(payloads)
    return src, [(0, ev.encode(e)) for e in good + later], len(poison)


def test_poison_records_are_dead_lettered_and_nothing_else_is_lost(tmp_path):
    src, good, n_poison = _good_and_garbage(tmp_path)
    dl = FileLog(tmp_path / "dl")
    examples, m = _join(src, tmp_path, "out", side={"dead_letter": dl})
    assert _labels(examples) == _reference(good, CFG.window_s, CFG.actions)
    assert _labels(examples)[("R" * 700, 6)] == (1.0,)  # long ids are joined, by hash
    assert _labels(examples)[("r1", 1)] == (0.0,)  # the year-2100 click did not count
    dead = _read_all(dl)
    assert m["dead_letters"] == n_poison == len(dead)
    reasons = " | ".join(d["reason"] for d in dead)
    for what in ("'timestamp' must be seconds in", "max_candidates",
                 "ahead of partition 0", "not valid JSON", "'request_id' must be",
                 "'item_id' must be"):
        assert what in reasons
    assert m.get("internal_errors", 0) == 0


def test_one_far_future_record_does_not_move_the_watermark(tmp_path):
    src = FileLog(tmp_path / "in")
    src.append([ev.encode(e) for e in [
        _imp("r1", 100), _act("x", "r0", 1, 4_102_444_800), _act("a1", "r1", 2, 120),
        _imp("r2", 200)]])
    examples, m = _join(src, tmp_path, "out")
    assert _labels(examples) == {("r1", 1): (0.0,), ("r1", 2): (1.0,),
                                 ("r2", 1): (0.0,), ("r2", 2): (0.0,)}
    assert m["future_timestamps"] == 1 and m["dead_letters"] == 1


def test_a_real_jump_in_event_time_is_accepted_once_confirmed(tmp_path):
    cfg = JoinerConfig(window_s=30, allowed_lateness_s=5, checkpoint_every_s=0.0,
                       max_future_skew_s=600, jump_confirm_records=4)
    src = FileLog(tmp_path / "in")
    gap = 100 + 7200  # two hours without events
    src.append([ev.encode(e) for e in [
        _imp("r1", 100), _act("a1", "r1", 1, 110),
        _imp("r2", gap), _act("a2", "r2", 2, gap + 1), _imp("r3", gap + 2),
        _imp("r4", gap + 3), _imp("r5", gap + 40)]])
    examples, m = _join(src, tmp_path, "out", cfg=cfg)
    assert m.get("dead_letters", 0) == 0 and m["event_time_jumps"] == 1
    got = _labels(examples)
    assert got[("r1", 1)] == (1.0,) and got[("r2", 2)] == (1.0,) and len(got) == 10


def test_held_records_survive_a_restart(tmp_path):
    cfg = JoinerConfig(window_s=30, allowed_lateness_s=5, checkpoint_every_s=0.0,
                       max_future_skew_s=600, jump_confirm_records=3)
    src = FileLog(tmp_path / "in")
    src.append([ev.encode(e) for e in [_imp("r1", 100), _imp("r2", 5000), _imp("r3", 5001)]])
    out = FileLog(tmp_path / "out")
    j = Joiner(src, out, tmp_path / "state", cfg)
    j.step()
    assert j.metrics()["held_records"] == 2
    j.close()
    src.append([ev.encode(_imp("r4", 5002))])  # the third: the jump is confirmed
    j = Joiner(src, out, tmp_path / "state", cfg)
    j.step()
    assert j.metrics()["held_records"] == 0 and j.counters["event_time_jumps"] == 1
    j.flush()
    j.close()
    assert {e["request_id"] for e in _read_examples(out)} == {"r1", "r2", "r3", "r4"}


def test_far_past_records_are_late_not_wrong(tmp_path):
    """Rule: an impression read after its partition's watermark passed its deadline is
    dead-lettered as late; an action read after the watermark passed its impression's
    deadline labels nothing; timestamps below 0 are refused."""
    src = FileLog(tmp_path / "in")
    src.append([ev.encode(e) for e in [
        _imp("r1", 1000), _imp("r2", 1100), _imp("r0", 0), _act("a1", "r1", 1, 1001),
        _imp("r3", 1101)]])
    dl = FileLog(tmp_path / "dl")
    examples, m = _join(src, tmp_path, "out", side={"dead_letter": dl})
    assert m["late_impressions"] == 1 and m["late_after_emit"] == 1
    assert _labels(examples)[("r1", 1)] == (0.0,)
    assert "late impression" in _read_all(dl)[0]["reason"]


def _nested(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=600),
    _nested, max_leaves=8)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["event_id", "request_id", "user_id", "timestamp", "user",
                              "candidates", "item_id", "action", "type", "v", "position"]),
       value=_JSON, kind=st.sampled_from(["impression", "action"]))
def test_no_record_can_stop_the_joiner(tmp_path, field, value, kind):
    base = _imp("r1", 100) if kind == "impression" else _act("a1", "r1", 1, 105)
    bad = dict(base)
    if field == "position" and kind == "impression":
        bad["candidates"] = [{**bad["candidates"][0], "position": value}]
    else:
        bad[field] = value
    d = tmp_path / uuid.uuid4().hex
    src = FileLog(d / "in")
    src.append([ev.encode(_imp("r0", 99)), json.dumps(bad).encode(),
                ev.encode(_imp("r9", 300))])
    out = FileLog(d / "out")
    j = Joiner(src, out, d / "state", CFG)
    j.step()
    j.flush()
    m = j.metrics()
    j.close()
    assert m["events_in"] == 3 and m.get("internal_errors", 0) == 0
    rb, _ = ev.decode_examples([r.value for r in out.read(0, 0, 100)])
    src.close()
    out.close()
    # the good records around it were joined (a record whose ids have another type than
    # the rest of the stream's may be left out by the reader, never the others), but for
    # r9 when a valid timestamp of the record moved the watermark past r9's deadline
    joined = set(rb.column("request_id").to_pylist())
    assert "r0" in joined
    assert "r9" in joined or (field == "timestamp" and m.get("late_impressions") == 1)


def test_an_empty_request_id_is_joined_and_checkpointed(tmp_path):
    """LMDB refuses empty keys: an empty request id is keyed by its hash (it stopped the
    joiner at its first checkpoint); it joins, survives a restart and dedupes as any id."""
    src = FileLog(tmp_path / "in")
    src.append([ev.encode(e) for e in (_imp("", 100), _act("a1", "", 2, 101))])
    out = FileLog(tmp_path / "out")
    j = Joiner(src, out, tmp_path / "state", CFG)
    j.step()
    j.checkpoint()
    j.close()
    src.append([ev.encode(_imp("", 100) | {"event_id": "again"}), ev.encode(_imp("r9", 200))])
    j = Joiner(src, out, tmp_path / "state", CFG)
    j.step()
    j.flush()
    m = j.metrics()
    j.close()
    rows = _read_examples(out)
    assert m["duplicates"] == 1 and m.get("internal_errors", 0) == 0
    assert sorted((r["request_id"], r["item_id"], r["click"]) for r in rows) == [
        ("", 1, 0.0), ("", 2, 1.0), ("r9", 1, 0.0), ("r9", 2, 0.0)]


@pytest.mark.redis
def test_cli_join_reads_every_partition_of_a_redis_log(tmp_path, redis_server):
    name = f"j{uuid.uuid4().hex[:8]}"
    src = RedisLog(RedisLogConfig(url=redis_server, name=name, partitions=2))
    recs = list(ClickStreamSimulator(SIM).records(n_requests=120))
    write_to_log(iter(recs), src)
    assert all(src.end_offset(p) > 0 for p in range(2))
    out = tmp_path / "out"
    cmd = [os.path.join(os.path.dirname(sys.executable), "freshrec"), "join", "--source", f"{redis_server}#{name}",
           "--output", f"file:{out}", "--state", str(tmp_path / "state"), "--window-s", "30",
           "--lateness-s", "5", "--idle-timeout-s", "0.5", "--flush"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout.strip().splitlines()[-1])
    assert m["events_in"] == len(recs)
    ref = _reference(recs, 30, ("click",))
    assert _labels(_read_examples(FileLog(out))) == ref
    few = subprocess.run([*cmd[:-1], "--source-partitions", "1"], capture_output=True, text=True,
                         timeout=120)
    assert few.returncode != 0 and "has 2 partitions" in few.stderr
    src.delete()
    src.close()


def test_readers_see_only_committed_output(tmp_path, monkeypatch):
    """Output appended at a checkpoint whose commit a kill prevented is rolled back and
    rewritten (perhaps framed differently) on restart: the committed end a reader (the
    online trainer) stops at never covers it."""
    from freshrec.stream import committed_end
    from freshrec.stream import join as join_module

    src, _ = _sim_log(tmp_path / "in", 1, n_requests=2000)
    out = FileLog(tmp_path / "out", FileLogConfig(fsync="never"))
    j = Joiner(src, out, tmp_path / "state", CFG)
    j.step(max_records=4000)
    marked = committed_end(out, 0)
    assert marked is not None and marked == out.end_offset(0) > 0

    real = join_module.orjson.dumps

    def killed(obj, *a, **k):  # the kill lands after the output append, before the commit
        if isinstance(obj, dict) and "offsets" in obj:
            raise SystemExit("SIGKILL")
        return real(obj, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(join_module.orjson, "dumps", killed)
        with pytest.raises(SystemExit):
            j.step(max_records=4000)
    assert out.end_offset(0) > marked == committed_end(out, 0)  # appended, not committed
    j._txn.abort()  # what the kill leaves: an uncommitted transaction
    j._env.close()
    j = Joiner(src, out, tmp_path / "state", CFG)  # the restart rolls the append back
    assert out.end_offset(0) == marked == committed_end(out, 0)
    j.run(idle_timeout_s=0.0, flush_at_end=True)
    j.close()
    assert committed_end(out, 0) == out.end_offset(0)
    ref = FileLog(tmp_path / "ref", FileLogConfig(fsync="never"))
    r = Joiner(src, ref, tmp_path / "ref-state", CFG)
    r.run(idle_timeout_s=0.0, flush_at_end=True)
    r.close()
    assert _read_examples(out) == _read_examples(ref)
