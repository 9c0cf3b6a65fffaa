"""WireClient against real redis-servers: values as redis-py reads them, the URL's database
and password, the time budget on a paused server (and no late reply read as the next
one's), a stopped and restarted server, a cluster node's MOVED, a forked child."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from redis import exceptions as rx

from freshrec.store.served import read_client
from freshrec.store.wire import WireClient
from freshrec.stream._redis import is_lost
from tests.conftest import DURABLE, RedisClusterNodes, start_redis, stop_process

pytestmark = pytest.mark.redis


def test_mget_reads_what_redis_py_reads(redis_server: str, prefix: str,
                                        closing: list[Any]) -> None:
    plain = redis.Redis.from_url(redis_server)
    wire = WireClient(redis_server, timeout_s=5.0)
    closing += [plain, wire]
    rng = np.random.default_rng(0)
    values = {f"{prefix}:{i}".encode(): rng.bytes(int(rng.integers(0, 300)))
              for i in range(2500)}  # binary, some empty, with \r\n inside: ~375 KB
    values[f"{prefix}:crlf".encode()] = b"\r\n$-1\r\n*2\r\n"
    plain.mset(values)
    keys = [*values, f"{prefix}:absent".encode()]
    assert wire.mget(keys) == plain.mget(keys) == [*values.values(), None]
    assert wire.mget([]) == []
    assert wire.mget(keys[:1]) == [values[keys[0]]]  # the same connection, in step
    assert wire.connects == 1


def test_the_urls_database_password_and_unix_socket(tmp_path: Path, prefix: str,
                                        closing: list[Any]) -> None:
    sock = tmp_path / "redis.sock"
    proc, port = start_redis(tmp_path, None, "--requirepass", "s3cret", "--save", "",
                             "--unixsocket", str(sock))
    try:
        admin = redis.Redis(port=port, db=3, password="s3cret")
        closing.append(admin)
        admin.set(b"k", b"in db 3")
        db3 = WireClient(f"redis://:s3cret@127.0.0.1:{port}/3", timeout_s=5.0)
        db0 = WireClient(f"redis://default:s3cret@127.0.0.1:{port}/0", timeout_s=5.0)
        unix3 = WireClient(f"unix://:s3cret@{sock}?db=3", timeout_s=5.0)
        wrong = WireClient(f"redis://:nope@127.0.0.1:{port}/0", timeout_s=5.0)
        closing += [db3, db0, unix3, wrong]
        assert db3.mget([b"k"]) == [b"in db 3"] and db0.mget([b"k"]) == [None]
        assert unix3.mget([b"k"]) == [b"in db 3"]
        with pytest.raises(rx.AuthenticationError):
            wrong.mget([b"k"])
    finally:
        stop_process(proc)


def test_a_paused_server_costs_the_budget_not_more(redis_server: str, prefix: str,
                                                   closing: list[Any]) -> None:
    admin = redis.Redis.from_url(redis_server)
    wire = WireClient(redis_server, timeout_s=0.05)
    closing += [admin, wire]
    a, b = f"{prefix}:a".encode(), f"{prefix}:b".encode()
    admin.mset({a: b"A", b: b"B"})
    assert wire.mget([a]) == [b"A"]
    admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
    t0 = time.perf_counter()
    with pytest.raises(rx.TimeoutError) as e:
        wire.mget([a])
    assert time.perf_counter() - t0 < 1.0  # gave up at the budget, not when Redis answered
    assert is_lost(e.value)
    admin.execute_command("CLIENT", "UNPAUSE")
    # the reply to the abandoned MGET of a never reaches the next command
    assert wire.mget([b]) == [b"B"] and wire.connects == 2


def test_a_stopped_server_is_lost_and_a_restarted_one_read_again(
        tmp_path: Path, prefix: str, closing: list[Any]) -> None:
    proc, port = start_redis(tmp_path, None, *DURABLE)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        redis.Redis.from_url(url).set(b"k", b"v")
        wire = WireClient(url, timeout_s=2.0)
        closing.append(wire)
        assert wire.mget([b"k"]) == [b"v"]
        stop_process(proc)
        for _ in range(2):  # the dropped connection, then the refused one
            with pytest.raises(rx.ConnectionError) as e:
                wire.mget([b"k"])
            assert is_lost(e.value)
        proc, _ = start_redis(tmp_path, port, *DURABLE)
        assert wire.mget([b"k"]) == [b"v"]
    finally:
        stop_process(proc)


def test_cluster_urls_use_the_cluster_client(redis_cluster_nodes: RedisClusterNodes,
                                             prefix: str, closing: list[Any]) -> None:
    key = f"{prefix}:x"
    other = next(p for p in redis_cluster_nodes.bus if p != redis_cluster_nodes.node_of(key))
    wire = WireClient(f"redis://127.0.0.1:{other}/0", timeout_s=5.0)
    cluster = read_client(redis_cluster_nodes.url, "t", 5.0)
    closing += [wire, cluster]
    with pytest.raises(rx.MovedError):  # a node answers MOVED for another node's key
        wire.mget([key.encode()])
    assert type(cluster).__name__ == "RedisCluster"
    assert type(read_client("redis://127.0.0.1:1/0", "t", 5.0, wire=False)).__name__ == "Redis"


def test_threads_take_turns_on_the_connection(redis_server: str, prefix: str,
                                              closing: list[Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    keys = [f"{prefix}:t{i}".encode() for i in range(8)]
    redis.Redis.from_url(redis_server).mset({k: k * 50 for k in keys})
    wire = WireClient(redis_server, timeout_s=30.0)
    closing.append(wire)

    def reads(k: bytes) -> bool:
        return all(wire.mget([k]) == [k * 50] for _ in range(200))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(reads, keys))  # each thread got its own replies, none mixed
    assert wire.connects == 1


def _child_read(client: WireClient, key: bytes, out: Any) -> None:
    out.send((client.mget([key]), client.connects))


def test_a_forked_child_opens_its_own_connection(redis_server: str, prefix: str,
                                                 closing: list[Any]) -> None:
    key = f"{prefix}:fork".encode()
    redis.Redis.from_url(redis_server).set(key, b"v")
    wire = WireClient(redis_server, timeout_s=5.0)
    closing.append(wire)
    assert wire.mget([key]) == [b"v"]
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_read, args=(wire, key, send))
    child.start()
    child.join(30)
    assert recv.recv() == ([b"v"], 2)  # the child connected again
    assert wire.mget([key]) == [b"v"] and wire.connects == 1  # the parent's is intact
