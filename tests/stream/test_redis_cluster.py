"""The Redis log on a real Redis Cluster of 3 masters: keys spread over the nodes with each
operation in one hash slot, joiner workers over the partitions, and a master killed with
SIGKILL and restarted from its append-only file mid-run. (The log contract suite, the
RedisLog tests and the open_log tests also run on the cluster.)"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from freshrec.data.simulate import ClickStreamSimulator, write_to_log
from freshrec.stream import FileLog, FileLogConfig, Joiner, RedisLog, RedisLogConfig, open_log
from freshrec.stream._redis import connect
from tests.conftest import RedisClusterNodes
from tests.stream.test_workers import CFG, SIM, _per_partition

pytestmark = pytest.mark.redis


def _reference(tmp_path, recs, partitions):
    """The records on a file log, and what one joiner makes of them, partition by partition."""
    src = FileLog(tmp_path / "ref-in", FileLogConfig(partitions=partitions, fsync="never"))
    write_to_log(iter(recs), src)
    out = FileLog(tmp_path / "ref-out", FileLogConfig(partitions=partitions, fsync="never"))
    j = Joiner(src, out, tmp_path / "ref-state", CFG)
    j.run(idle_timeout_s=0.0, flush_at_end=True)
    j.close()
    values = [[r.value for r in src.read(p, 0, 100_000)] for p in range(partitions)]
    return values, _per_partition(out)


def test_partitions_spread_over_the_nodes_and_each_keeps_its_keys_in_one_slot(redis_cluster):
    log = open_log(f"{redis_cluster}#spread", partitions=6)
    rc = connect(redis_cluster, "spread")
    try:
        for p in range(6):
            log.append([b"p%d" % p], partition=p)
            log.commit("g", p, log.end_offset(p))
        nodes = {rc.get_node_from_key(log.keys.stream(p)).name for p in range(6)}
        assert len(nodes) == 3  # every master holds a stream of the log
        for p in range(6):
            slot = rc.keyslot(log.keys.stream(p))
            tokens = list(rc.scan_iter(match=f"{log.keys.stream(p)}:append:*"))
            assert len(tokens) == 1  # the append's token, beside its stream
            assert {rc.keyslot(k) for k in [log.keys.commits(p), *tokens]} == {slot}
            assert rc.hget(log.keys.commits(p), "g") == str(log.end_offset(p)).encode()
        log.delete()
        assert not any(rc.exists(log.keys.stream(p), log.keys.commits(p)) for p in range(6))
    finally:
        rc.delete(log.keys.partitions)
        rc.close()
        log.close()


def test_joiner_workers_on_the_cluster_write_what_one_joiner_writes(tmp_path, redis_cluster):
    recs = list(ClickStreamSimulator(SIM).records(n_requests=300))
    name = f"w{uuid.uuid4().hex[:8]}"
    src = open_log(f"{redis_cluster}#{name}-in", partitions=4)
    write_to_log(iter(recs), src)
    _, expected = _reference(tmp_path, recs, 4)
    out = open_log(f"{redis_cluster}#{name}-out", partitions=4)

    def work(parts: tuple[int, ...]) -> None:  # a worker process of `join --workers`
        logs = [open_log(f"{redis_cluster}#{name}-{end}") for end in ("in", "out")]
        w = Joiner(*logs, tmp_path / f"state-{parts}", CFG, partitions=parts)
        w.run(idle_timeout_s=0.0, flush_at_end=True)
        w.close()
        for handle in logs:
            handle.close()

    workers = [threading.Thread(target=work, args=(parts,)) for parts in [(0, 3), (1,), (2,)]]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    assert sum(map(len, expected)) > 2000 and all(expected)
    assert _per_partition(out) == expected
    for log in (src, out):
        log.delete()
        log.close()


@pytest.fixture
def cluster(tmp_path):
    """A Redis Cluster of this test's own, for killing its nodes."""
    nodes = RedisClusterNodes(tmp_path / "cluster")
    try:
        yield nodes.start()
    finally:
        nodes.stop()


@pytest.mark.slow
def test_a_master_killed_and_restarted_mid_run_loses_nothing_acknowledged(tmp_path, cluster):
    # a producer appends while a joiner reads and writes; the master holding partition 0 of
    # the source is SIGKILLed and restarted from its AOF a second later: every event is in
    # the source once, and the joiner writes what it writes from a file log
    recs = list(ClickStreamSimulator(SIM).records(n_requests=300))
    events, expected = _reference(tmp_path, recs, 3)

    def log(name: str) -> RedisLog:
        return RedisLog(RedisLogConfig(url=cluster.url, name=name, partitions=3))

    producer_log, watch, src, out = log("in"), log("in"), log("in"), log("out")
    assert len({cluster.node_of(src.keys.stream(p)) for p in range(3)}) > 1  # spread
    produced = threading.Event()

    def produce() -> None:  # about 3 s of events
        write_to_log(iter(recs), producer_log, rate=400.0, batch=16)
        produced.set()

    victim = cluster.node_of(src.keys.stream(0))

    def chaos() -> None:
        while not all(watch.end_offset(p) for p in range(3)):
            time.sleep(0.01)
        time.sleep(0.3)  # well into the run
        cluster.kill(victim)
        time.sleep(1.0)
        cluster.restart(victim)

    threads = [threading.Thread(target=produce), threading.Thread(target=chaos)]
    for t in threads:
        t.start()
    j = Joiner(src, out, tmp_path / "state", CFG)
    while not produced.is_set():
        j.step(max_records=200)
    j.run(idle_timeout_s=0.0, flush_at_end=True)
    j.close()
    for t in threads:
        t.join(timeout=60)
    assert producer_log.reconnects > 0 and src.reconnects + out.reconnects > 0  # both waited
    assert [[r.value for r in src.read(p, 0, 100_000)] for p in range(3)] == events
    assert _per_partition(out) == expected
    for handle in (producer_log, watch, src, out):
        handle.close()


def test_a_partition_moved_to_another_node_mid_run_is_followed(redis_cluster_nodes):
    # resharding moves the slot of partition 0 while a writer appends one record at a time:
    # the handles follow it (MOVED, ASK, TRYAGAIN; their slot maps refreshed), nothing is lost
    nodes = redis_cluster_nodes
    name = f"m{uuid.uuid4().hex[:8]}"
    writer = open_log(f"{nodes.url}#{name}", partitions=2)
    reader = open_log(f"{nodes.url}#{name}")
    first = writer.append([b"first"])
    reader.commit("g", 0, first[0] + 1)
    before = nodes.node_of(writer.keys.stream(0))
    after = next(p for p in nodes.bus if p != before)
    values = [b"%d" % i for i in range(300)]
    moved = threading.Event()

    def write() -> None:
        for i, v in enumerate(values):
            writer.append([v])
            if i == 50:
                moved.wait(timeout=10)

    t = threading.Thread(target=write)
    t.start()
    while writer.end_offset(0) <= first[0] + 1:
        time.sleep(0.001)
    nodes.move(writer.keys.stream(0), after)
    moved.set()
    t.join(timeout=60)
    assert nodes.node_of(writer.keys.stream(0)) == after
    assert [r.value for r in reader.read(0, 0, 1000)] == [b"first", *values]
    assert reader.committed("g", 0) == first[0] + 1 and reader.lag("g") == 300
    nodes.move(writer.keys.stream(0), before)  # the session's cluster as it was
    for log in (writer, reader):
        log.delete()
        log.close()
