"""Hot updates under load: sparse deltas in place, dense and full swaps, rollback; damaged
registry versions skipped at start-up and while running."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from freshrec.errors import SnapshotCorruptError
from freshrec.serve import ServeConfig, Server
from freshrec.sync import Registry, VersionKind
from tests.serve._helpers import (
    make_config,
    reference_scores,
    request,
    train_and_publish,
    train_more,
)
from tests.sync._helpers import damage


class _Load:
    """Requests sent continuously from a thread; every status and version is kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.versions: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(9)
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self._stop.is_set():
                r = c.post("/score", json=request(rng, n=30))
                self.statuses.append(r.status_code)
                if r.status_code == 200:
                    self.versions.add(r.json()["model_version"])

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class _PausedApply:
    """Pauses every delta apply on ``tables`` at its second row lookup (a chunk in) until
    ``load`` has had another answer, so requests are served while a delta is half applied.

    :attr:`answered_during` counts the answers given during the pauses, :attr:`pauses` the
    pauses (an answer not given in ``timeout_s`` ends a pause).
    """

    def __init__(self, tables: dict[str, Any], load: _Load, timeout_s: float = 10.0) -> None:
        self.load = load
        self.timeout_s = timeout_s
        self.pauses = 0
        self.answered_during = 0
        for table in tables.values():
            self._hook(table)

    def _hook(self, table: Any) -> None:
        apply, find = table.apply_delta, table.find
        applying: dict[int, int] = {}  # applying thread -> row lookups so far

        def apply_delta(delta: Any, **kw: Any) -> None:
            applying[threading.get_ident()] = 0
            try:
                apply(delta, **kw)
            finally:
                del applying[threading.get_ident()]

        def find_rows(fids: Any) -> Any:
            me = threading.get_ident()
            if me in applying:
                applying[me] += 1
                if applying[me] == 2:
                    self._pause()
            return find(fids)

        table.apply_delta, table.find = apply_delta, find_rows

    def _pause(self) -> None:
        self.pauses += 1
        seen = len(self.load.statuses)
        deadline = time.monotonic() + self.timeout_s
        while len(self.load.statuses) == seen and time.monotonic() < deadline:
            time.sleep(0.001)
        self.answered_during += len(self.load.statuses) - seen


def _wait_version(client: httpx.Client, version: int) -> None:
    deadline = time.monotonic() + 60
    while client.get("/readyz").json()["model_version"] != version:
        assert time.monotonic() < deadline, f"server never reached version {version}"
        time.sleep(0.02)


@pytest.fixture
def setup(tmp_path):
    cfg = make_config()
    reg = Registry(tmp_path / "reg")
    trainer, pub = train_and_publish(reg, cfg)
    server = Server(reg, ServeConfig(port=0, poll_interval_s=0.02, chunk_rows=16), log=False)
    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield cfg, reg, trainer, pub, server, client
    server.stop()


def test_sparse_delta_under_load_changes_predictions_in_place(setup):
    cfg, reg, trainer, pub, server, client = setup
    body = request(np.random.default_rng(1), n=20)
    before = client.post("/score", json=body).json()
    served = server.updater.current
    tables_before = {n: id(t) for n, t in served.tables.items()}
    with _Load(server.url) as load:
        paused = _PausedApply(served.tables, load)
        train_more(trainer, 2, t0=5000)
        m = pub.publish_sparse(event_time=6000)
        assert m is not None and m.delta_rows > 16  # several chunks
        _wait_version(client, m.version)
    # requests were answered while the delta was half applied, and every answer was a 200
    assert paused.pauses >= 1 and paused.answered_during >= paused.pauses
    assert set(load.statuses) == {200}
    after = client.post("/score", json=body).json()
    assert after["model_version"] == m.version
    np.testing.assert_allclose(after["scores"], reference_scores(cfg, reg, body, m.version),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(after["scores"], before["scores"])
    # applied in place: the same predictor and tables, no copy
    assert server.updater.current is served
    assert {n: id(t) for n, t in server.updater.current.tables.items()} == tables_before
    assert served.event_time == 6000


def test_dense_update_and_full_snapshot_are_swapped(setup):
    cfg, reg, trainer, pub, server, client = setup
    body = request(np.random.default_rng(3), n=10)
    first = server.updater.current
    with _Load(server.url) as load:
        train_more(trainer, 4, t0=5000)
        m_dense = pub.publish_dense(event_time=6000)
        _wait_version(client, m_dense.version)
        dense_pred = server.updater.current
        assert dense_pred is not first
        assert all(dense_pred.tables[n] is t for n, t in first.tables.items())  # shared
        train_more(trainer, 5, t0=7000)
        m_full = pub.publish_full(event_time=8000)
        _wait_version(client, m_full.version)
    assert set(load.statuses) == {200}
    # a full version published on top of a served one also carries the delta from it, so
    # the subscriber takes the cheaper way (in place); the rollback test covers a reload
    out = client.post("/score", json=body).json()
    np.testing.assert_allclose(out["scores"], reference_scores(cfg, reg, body, m_full.version),
                               rtol=1e-5, atol=1e-6)


def test_rollback_is_picked_up(setup):
    cfg, reg, trainer, pub, server, client = setup
    body = request(np.random.default_rng(6), n=10)
    v1 = reg.head()
    old = client.post("/score", json=body).json()["scores"]
    train_more(trainer, 7, t0=5000)
    m2 = pub.publish_full(event_time=6000, meta={"config": dict(cfg.raw)})
    _wait_version(client, m2.version)
    assert not np.allclose(client.post("/score", json=body).json()["scores"], old)
    before = server.updater.current
    rb = reg.rollback(v1)
    _wait_version(client, rb.version)
    reloaded = server.updater.current  # a new model, swapped in whole
    assert reloaded is not before
    assert all(reloaded.tables[n] is not t for n, t in before.tables.items())
    out = client.post("/score", json=body).json()
    assert out["model_version"] == rb.version
    np.testing.assert_allclose(out["scores"], old, rtol=1e-5, atol=1e-6)
    text = client.get("/metrics").text
    assert 'freshrec_updates_total{kind="full"}' in text


def _chain(tmp_path):
    """Version 1 full (with the config), 2 and 3 sparse deltas."""
    cfg = make_config()
    reg = Registry(tmp_path / "reg")
    trainer, pub = train_and_publish(reg, cfg)
    for seed in (2, 3):
        train_more(trainer, seed, t0=1000 * seed)
        pub.publish_sparse(event_time=1000 * seed)
    return cfg, reg, trainer, pub


@contextlib.contextmanager
def _restarted(reg: Registry, **config: Any) -> Iterator[httpx.Client]:
    """A client of a server started on ``reg`` as a new process sees it (nothing cached)."""
    server = Server(Registry(reg.root), ServeConfig(port=0, poll_interval_s=0.02, **config),
                    log=False)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client
    finally:
        server.stop()


def _assert_scores(cfg, reg, body, out, version):
    assert out["model_version"] == version
    np.testing.assert_allclose(out["scores"], reference_scores(cfg, reg, body, version),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("how", ["corrupt", "no_manifest"])
def test_a_restarted_server_serves_the_newest_verifiable_version(tmp_path, how):
    cfg, reg, trainer, pub = _chain(tmp_path)
    damage(reg, 2, how)                                  # HEAD 3 is a delta on 2
    body = request(np.random.default_rng(4), n=10)
    with _restarted(reg) as client:
        ready = client.get("/readyz").json()
        assert ready["model_version"] == 1 and list(ready["damaged_versions"]) == ["2"]
        _assert_scores(cfg, reg, body, client.post("/score", json=body).json(), 1)
        assert "freshrec_registry_damaged_versions 1" in client.get("/metrics").text
        train_more(trainer, 4, t0=4000)
        m = pub.publish_full(event_time=4000)            # a full snapshot after the damage
        _wait_version(client, m.version)
        _assert_scores(cfg, reg, body, client.post("/score", json=body).json(), 4)


def test_a_server_with_nothing_servable_starts_not_ready_and_waits(tmp_path):
    cfg = make_config()
    reg = Registry(tmp_path / "reg")
    trainer, pub = train_and_publish(reg, cfg)
    damage(reg, 1, "truncate")                           # the only version
    with _restarted(reg) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["model_version"] is None
        m = pub.publish_full(event_time=5000, meta={"config": dict(cfg.raw)})
        _wait_version(client, m.version)


def test_a_running_server_moves_past_a_damaged_delta_at_the_next_full_snapshot(tmp_path):
    cfg = make_config()
    reg = Registry(tmp_path / "reg")
    trainer, pub = train_and_publish(reg, cfg)
    server = Server(reg, ServeConfig(port=0), log=False)
    server.start()
    try:
        up = server.updater
        up.stop()                                        # polled by hand below
        for seed in (2, 3):
            train_more(trainer, seed, t0=1000 * seed)
            pub.publish_sparse(event_time=1000 * seed)  # 2, 3
        damage(reg, 2, "corrupt")
        with pytest.raises(SnapshotCorruptError, match="000000000002/delta/.*checksum"):
            up.poll()                                    # reported (and counted) once ...
        assert up.poll() is False                        # ... then skipped
        assert up.current.version == 1 and list(up.status()["damaged_versions"]) == ["2"]
        train_more(trainer, 4, t0=4000)
        m = pub.publish_full(event_time=4000)
        assert m.kind is VersionKind.FULL and up.poll() is True
        assert up.current.version == 4 == m.version
        body = request(np.random.default_rng(5), n=10)
        out = httpx.post(server.url + "/score", json=body, timeout=30).json()
        _assert_scores(cfg, reg, body, out, 4)
    finally:
        server.stop()
