"""A real server over a model whose user table is in Redis: rows read per request, and no
failed request while Redis is stopped and restarted (fallbacks counted on /metrics)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from freshrec.config import apply_overrides, config_from_dict
from freshrec.serve import ServeConfig, Server
from freshrec.store import flush_tables
from freshrec.sync import Registry
from tests.conftest import DURABLE, start_redis, stop_process
from tests.serve._helpers import make_config, reference_scores, request, train_and_publish

pytestmark = pytest.mark.redis


def metric(text: str, name: str) -> float:
    m = re.search(rf'^{re.escape(name)}{{table="user"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_serving_through_a_redis_outage(tmp_path: Path, prefix: str) -> None:
    proc, port = start_redis(tmp_path, None, *DURABLE)
    try:
        raw = apply_overrides(dict(make_config().raw), [
            ("features.tables.user.backend", "redis"),
            ("features.tables.user.store.url", f"redis://127.0.0.1:{port}/0"),
            ("features.tables.user.store.prefix", prefix),
            ("features.tables.user.store.serve_cache_ms", 0.0),
            ("features.tables.user.store.serve_timeout_ms", 2000.0),
            ("features.tables.user.store.retry_backoff_s", 0.0)])
        cfg = config_from_dict(raw)
        reg = Registry(tmp_path / "reg")
        trainer, _ = train_and_publish(reg, cfg)
        assert flush_tables(trainer.tables) > 0  # the user rows are in Redis
        rng = np.random.default_rng(5)
        warm = [dict(request(rng, 8), user_id=i) for i in range(5)]
        cold = [dict(request(rng, 8), user_id=10 + i) for i in range(5)]  # not asked before
        with Server(reg, ServeConfig(port=0, poll_interval_s=0.05), log=False) as server, \
                httpx.Client(base_url=server.url, timeout=30) as client:
            def scores(body: dict[str, object]) -> np.ndarray:
                r = client.post("/score", json=body)
                assert r.status_code == 200, r.text
                return np.array(r.json()["scores"])

            for body in warm:  # rows read from Redis = the model's rows
                np.testing.assert_allclose(scores(body), reference_scores(cfg, reg, body),
                                           rtol=1e-5, atol=1e-6)
            before = client.get("/metrics").text
            stop_process(proc)
            for body in warm + cold:  # Redis down: every request still answered
                scores(body)
            during = client.get("/metrics").text
            assert metric(during, "freshrec_store_redis_errors_total") > \
                metric(before, "freshrec_store_redis_errors_total")
            assert metric(during, "freshrec_store_fallback_rows_total") > \
                metric(before, "freshrec_store_fallback_rows_total")
            assert metric(during, "freshrec_store_stale_rows_total") > \
                metric(before, "freshrec_store_stale_rows_total")
            proc, _ = start_redis(tmp_path, port, *DURABLE)
            for body in cold:  # back to normal: the users' rows from Redis again
                np.testing.assert_allclose(scores(body), reference_scores(cfg, reg, body),
                                           rtol=1e-5, atol=1e-6)
        trainer.tables["user"].close()  # type: ignore[attr-defined]
    finally:
        stop_process(proc)
