"""open_log: which backend each spec opens, and the partitions of a Redis log."""

from __future__ import annotations

import uuid

import pytest

from freshrec.errors import InputError
from freshrec.stream import FileLog, RedisLog, open_log


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
def test_redis_log_keeps_its_partitions(redis_server):
    spec = f"{redis_server}#t{uuid.uuid4().hex[:8]}"
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
