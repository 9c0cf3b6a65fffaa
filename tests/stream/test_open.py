"""open_log: which backend each spec opens, and the partitions of a Redis log (on one server
and on a Redis Cluster)."""

from __future__ import annotations

import uuid

import pytest
import redis

from freshrec.errors import ConfigError, InputError
from freshrec.stream import FileLog, RedisLog, open_log
from freshrec.stream._redis import connect


@pytest.mark.parametrize("prefix", ["file:", ""])
def test_file_spec_and_bare_path_open_a_file_log(tmp_path, prefix):
    log = open_log(f"{prefix}{tmp_path / 'log'}", partitions=3)
    try:
        assert isinstance(log, FileLog) and log.partitions == 3
        assert (tmp_path / "log").is_dir()
    finally:
        log.close()


def test_a_path_with_a_colon_is_a_file_log(tmp_path):
    log = open_log(str(tmp_path / "a:b"))
    try:
        assert isinstance(log, FileLog) and (tmp_path / "a:b").is_dir()
    finally:
        log.close()


@pytest.mark.redis
@pytest.mark.parametrize("server", ["redis_server", "redis_cluster"])
def test_redis_log_keeps_its_partitions(request, server):
    spec = f"{request.getfixturevalue(server)}#t{uuid.uuid4().hex[:8]}"
    first = open_log(spec, partitions=3)
    try:
        assert isinstance(first, RedisLog) and first.partitions == 3
        first.append([b"x"], partition=2)
        again = open_log(spec)  # no partitions asked: the log's own
        assert again.partitions == 3
        again.close()
        with pytest.raises(InputError, match="has 3 partitions; asked for 2"):
            open_log(spec, partitions=2)
        with pytest.raises(InputError, match="holds records; growing it to 4"):
            open_log(spec, partitions=4)
    finally:
        first.close()


@pytest.mark.redis
def test_redis_log_name_defaults_to_events(redis_server):
    log = open_log(redis_server)
    try:
        assert isinstance(log, RedisLog) and log.config.name == "events"
    finally:
        log.close()


@pytest.mark.redis
def test_streams_of_the_layout_before_hash_tags_are_refused(redis_server):
    name = f"t{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(redis_server)
    r.xadd(f"{name}:p0", {"v": b"x"})
    try:
        with pytest.raises(InputError, match=rf"key layout before hash tags \({name}:p0\); "
                                             rf"this version reads \{{{name}:p0\}}"):
            open_log(f"{redis_server}#{name}")
    finally:
        r.delete(f"{name}:p0")
        r.close()


@pytest.mark.redis
def test_a_redis_url_of_a_cluster_node_names_the_cluster_scheme(redis_cluster):
    seed = redis_cluster.removeprefix("redis+cluster://")
    rc = connect(redis_cluster, "moved")
    try:  # a name whose partition count another node serves: the seed answers MOVED
        name = next(n for n in (f"moved{i}" for i in range(100))
                    if rc.get_node_from_key(f"{n}:partitions").name != seed.split("/")[0])
    finally:
        rc.close()
    with pytest.raises(ConfigError, match=f"is a node of a Redis Cluster .* open it as "
                                          f"redis\\+cluster://{seed}"):
        open_log(f"redis://{seed}#{name}")


@pytest.mark.redis
def test_a_cluster_url_of_a_plain_server_names_the_redis_scheme(redis_server):
    rest = redis_server.removeprefix("redis://")
    with pytest.raises(ConfigError, match=f"is not a node of a Redis Cluster .* open it as "
                                          f"redis://{rest}"):
        open_log(f"redis+cluster://{rest}#x")
