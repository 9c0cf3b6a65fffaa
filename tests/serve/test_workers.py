"""``serve --workers 2``: two real worker processes on one port over shared tables."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from freshrec.serve import ServeConfig
from freshrec.serve.workers import WorkerPool
from freshrec.stream import FileLog
from freshrec.sync import Registry, Subscriber
from tests.serve._helpers import (
    make_config,
    reference_scores,
    request,
    train_and_publish,
    train_more,
)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerPool, Any, Any, Path]]:
    """``(pool, config, publisher, log dir)``: 2 workers over a trained model."""
    root = tmp_path_factory.mktemp("workers")
    cfg = make_config()
    reg = Registry(root / "reg")
    trainer, pub = train_and_publish(reg, cfg)
    # a generous queue budget: a request delayed by a busy test machine is not shed (the
    # tests below count every request; admission control has its own tests)
    p = WorkerPool(reg.root, ServeConfig(port=0, workers=2, poll_interval_s=0.05,
                                         queue_budget_s=5.0), log=f"file:{root / 'log'}")
    p.start()
    yield p, cfg, (trainer, pub), root / "log"
    p.stop()


def _by_worker(pool: WorkerPool, body: dict[str, Any], want: int = 2,
               tries: int = 60) -> dict[int, list[dict[str, Any]]]:
    """Responses to ``body`` grouped by the worker process that answered (new connections
    until ``want`` workers answered)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for _ in range(tries):
        with httpx.Client(base_url=pool.url, timeout=30) as c:  # one connection: one worker
            pid = c.get("/readyz").json()["pid"]
            r = c.post("/score", json=body)
            assert r.status_code == 200, r.text
            out.setdefault(pid, []).append(r.json())
        if len(out) >= want and min(len(v) for v in out.values()) >= 2:
            break
    return out


def _wait_served(pool: WorkerPool, version: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while pool.served_versions() != [version] * 2:
        assert time.monotonic() < deadline, (pool.served_versions(), version)
        time.sleep(0.02)


def test_every_worker_serves_the_same_version_and_scores_after_each_update(pool):
    pool_, cfg, (trainer, pub), _ = pool
    reg = pool_.registry
    body = request(np.random.default_rng(3), n=12)
    for step, kind in enumerate(["", "sparse", "dense", "sparse", "full"]):
        if kind:
            train_more(trainer, seed=10 + step)
            getattr(pub, f"publish_{kind}")(event_time=6000 + step)
        version = reg.head()
        _wait_served(pool_, version)
        answers = _by_worker(pool_, body)
        assert len(answers) == 2, f"{kind}: one worker answered every connection"
        ref = reference_scores(cfg, reg, body, version)
        for pid, replies in answers.items():
            for r in replies:
                assert r["model_version"] == version, (kind, pid)
                np.testing.assert_allclose(r["scores"], ref, rtol=1e-4, atol=1e-6,
                                           err_msg=f"{kind}: worker {pid}")


def test_the_rows_are_one_shared_copy_mapped_by_every_worker(pool):
    pool_ = pool[0]
    segments = {t.segment for t in pool_.updater.shared.values()}
    assert segments
    for pid in pool_.worker_pids():
        maps = Path(f"/proc/{pid}/maps").read_text()
        mapped = {seg for seg in segments if f"/dev/shm/{seg}" in maps}
        assert mapped == segments, (pid, segments, mapped)
    # the rows are in shared memory only: the updater's own tables are empty, the shared
    # ones hold the registry's rows
    assert all(len(t) == 0 for t in pool_.updater.current.tables.values())
    want = Subscriber(pool_.registry).materialize().tables
    assert {n: len(t) for n, t in pool_.updater.shared.items()} == \
        {n: len(t) for n, t in want.items()}


def test_impressions_of_every_worker_reach_the_log(pool):
    pool_, _, _, log_dir = pool
    before = pool_.metrics.impressions.get()
    body = request(np.random.default_rng(4), n=3)
    answered = _by_worker(pool_, body)
    n = sum(len(v) for v in answered.values())
    deadline = time.monotonic() + 10
    while pool_.metrics.impressions.get() < before + n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool_.metrics.impressions.get() == before + n
    with FileLog(log_dir) as log:
        assert sum(log.end_offset(p) for p in range(log.partitions)) >= n


def _metric(text: str, series: str) -> float:
    found = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith(series + " ")]
    assert len(found) == 1, (series, text[:2000])
    return found[0]


def _scrape(pool: WorkerPool) -> tuple[int, str]:
    """``(pid of the worker that answered, /metrics text)``."""
    with httpx.Client(base_url=pool.url, timeout=30) as c:
        pid = c.get("/readyz").json()["pid"]
        return pid, c.get("/metrics").text


def test_metrics_add_up_over_every_worker(pool):
    pool_ = pool[0]
    series = {"ok": 'freshrec_requests_total{code="200",route="score"}',
              "cands": "freshrec_candidates_total", "lat": "freshrec_request_seconds_count",
              "predict": "freshrec_predict_seconds_count",
              "bucket": 'freshrec_request_seconds_bucket{le="+Inf"}'}
    _, text = _scrape(pool_)
    before = {k: _metric(text, s) for k, s in series.items()}
    imp0 = _metric(text, "freshrec_impressions_total")
    body = request(np.random.default_rng(6), n=7)
    answered = _by_worker(pool_, body)
    assert len(answered) == 2
    n = sum(len(v) for v in answered.values())
    deadline = time.monotonic() + 10
    while pool_.metrics.impressions.get() < imp0 + n and time.monotonic() < deadline:
        time.sleep(0.05)
    scraped_by = set()
    for _ in range(40):  # scrape until both workers answered once: each sums the pool
        pid, text = _scrape(pool_)
        if pid in scraped_by:
            continue
        scraped_by.add(pid)
        after = {k: _metric(text, s) for k, s in series.items()}
        assert {k: after[k] - before[k] for k in series} == \
            {"ok": n, "cands": 7 * n, "lat": n, "predict": n, "bucket": n}, pid
        assert _metric(text, "freshrec_impressions_total") == imp0 + n  # the parent's count
        assert _metric(text, "freshrec_model_version") == pool_.registry.head()
        assert _metric(text, "freshrec_in_flight") == 0
        assert _metric(text, "process_resident_memory_bytes") > 0
        if len(scraped_by) == 2:
            break
    assert len(scraped_by) == 2, "one worker answered every scrape"


def test_deltas_and_swaps_under_load_fail_no_request(pool):
    import threading

    pool_, cfg, (trainer, pub), _ = pool
    reg = pool_.registry
    body = request(np.random.default_rng(7), n=20)
    stop = threading.Event()
    codes: list[int] = []
    versions: list[int] = []

    def client(fresh: bool) -> None:  # keep-alive, or a new connection (any worker) per request
        with httpx.Client(base_url=pool_.url, timeout=30) as c:
            while not stop.is_set():
                if fresh:
                    with httpx.Client(base_url=pool_.url, timeout=30) as one:
                        r = one.post("/score", json=body)
                else:
                    r = c.post("/score", json=body)
                codes.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["model_version"])

    threads = [threading.Thread(target=client, args=(f,)) for f in (False, True, True)]
    for t in threads:
        t.start()
    try:
        for step, kind in enumerate(["sparse", "sparse", "dense", "sparse", "full", "sparse"]):
            time.sleep(0.3)
            train_more(trainer, seed=40 + step)
            getattr(pub, f"publish_{kind}")(event_time=7000 + step)
            _wait_served(pool_, reg.head())
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(codes) > 50 and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
    assert reg.head() in versions and len(set(versions)) >= 4  # served across the updates


def test_a_killed_worker_is_restarted_and_serves_the_current_version(pool):
    pool_ = pool[0]
    victim = pool_.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (pool_.worker_pids()[0] == victim or pool_.served_versions()[0] == 0) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool_.worker_pids()[0] != victim and pool_.restarts >= 1
    _wait_served(pool_, pool_.registry.head())
    assert len(_by_worker(pool_, request(np.random.default_rng(5), n=2))) == 2


def test_a_delta_too_big_for_the_spare_rows_moves_every_table_to_a_new_generation(tmp_path):
    from freshrec.serve.workers import _Control, _SharedUpdater
    from freshrec.table import TableDelta

    cfg = make_config()
    reg = Registry(tmp_path / "reg")
    train_and_publish(reg, cfg)
    ctl = _Control.create(f"frtest_{os.getpid()}_ctl", 1)
    up = _SharedUpdater(reg, None, ServeConfig(), ctl, f"frtest_{os.getpid()}", tmp_path)
    try:
        up.load(warm=False)
        gen, version, _, _ = ctl.read()
        old = {n: t.segment for n, t in up.shared.items()}
        item = up.current.tables["item"]
        n = 5000  # far more new rows than the segment's spare ones
        fids = np.arange(10**9, 10**9 + n, dtype=np.uint64)
        vals = np.random.default_rng(0).standard_normal((n, item.dim)).astype(np.float32)
        delta = TableDelta(table="item", fingerprint=item.config.fingerprint(),
                           from_version=item.applied_version,
                           to_version=item.applied_version + 1, fids=fids, values=vals,
                           last_seen=np.zeros(n, np.uint32), states=None,
                           expired=np.empty(0, np.uint64))
        before = {name: len(t) for name, t in up.shared.items()}
        up.write_rows("item", delta)
        assert up.generation == gen + 1 and up.rebuild
        assert {n: t.segment for n, t in up.shared.items()}.keys() == old.keys()
        assert all(up.shared[name].segment != seg for name, seg in old.items())
        assert len(up.shared["item"]) == before["item"] + n
        assert len(up.shared["user"]) == before["user"]
        rows = up.shared["item"].find(fids[[0, -1]])
        got = up.shared["item"].pool(rows, np.array([0, 1, 2]), np.ones(2, np.float32))
        np.testing.assert_array_equal(got, vals[[0, -1]])
        for seg in old.values():  # the old generation's names are gone
            assert not Path(f"/dev/shm/{seg}").exists()
    finally:
        up.close()
        ctl.shm.close()
        ctl.shm.unlink()
