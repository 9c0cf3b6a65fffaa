"""``freshrec demo --user-store redis``: the document it runs moves the user table to Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import yaml

from freshrec._resources import shipped_dir
from freshrec.config import apply_overrides, config_from_dict
from freshrec.store import RedisTable, open_table
from freshrec.store.demo import start_store, stop_store, store_overrides

pytestmark = pytest.mark.redis


def test_user_store_redis_document(tmp_path: Path) -> None:
    url, proc = start_store(None, tmp_path)
    try:
        assert redis.Redis.from_url(url).ping()
        raw = yaml.safe_load((shipped_dir("configs") / "demo.yaml").read_text())
        cfg = config_from_dict(apply_overrides(raw, store_overrides(url, "demo-x")),
                               where="demo.yaml")
        user = open_table(cfg.features.table("user"))
        assert isinstance(user, RedisTable) and user.config.store.url == url
        assert not isinstance(open_table(cfg.features.table("item")), RedisTable)
        assert cfg.online.checkpoint_every_s == 2.0
        user.close()
    finally:
        stop_store(proc)
    assert proc is not None and proc.poll() is not None
    assert start_store("redis://h:1/0", tmp_path) == ("redis://h:1/0", None)
