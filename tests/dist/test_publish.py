"""Publishing a model trained on 2 ranks: every rank writes its shard's part of a version,
rank 0 the manifest; a subscriber that follows the registry sees one model (the union of
the shards); a missing or altered part is refused by name; retention removes parts."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from freshrec.errors import SnapshotCorruptError
from freshrec.sync import Registry, Subscriber
from freshrec.sync.health import check_registry
from freshrec.table.table import EmbeddingTable
from tests.dist.ranks import batches, config, merged, run_ranks, table_state

SCENARIO = "tests.dist.test_publish:_batch_publish"


def _batch_publish(out: Path, rank: int) -> None:
    """(per rank) A batch run over 600 rows publishing as it trains: a full snapshot at the
    start and after step 5, a delta every 2 steps, the rest and the dense part at the end;
    then every rank saves its shard."""
    from freshrec.dist import DistTrainer, ShardedPublisher
    from freshrec.sync import PublisherConfig

    # a publish between steps cuts the tables: no lookup of the next batch ahead of it
    trainer = DistTrainer(config("rowwise_adagrad", pipeline_lookup=False))
    trainer.keep_expired_log = True
    pub = ShardedPublisher(Registry(out / "registry"), trainer.tables,
                           trainer.model.state_dict, trainer.exchange,
                           PublisherConfig(auto_gc=False))
    pub.publish_full(event_time=0)

    def on_step(t: Any, _metrics: dict[str, float]) -> None:
        if t.step == 5:
            pub.publish_full(meta={"step": t.step})
        elif t.step % 2 == 0:
            pub.publish_sparse(meta={"step": t.step})
        time.sleep(0.1)  # leave the test's subscriber time to follow

    trainer.fit(batches(600), on_step=on_step)
    pub.publish_sparse()
    pub.publish_dense()
    np.savez(out / f"rank{rank}.npz", **table_state(trainer.tables),
             **{f"dense.{k}": v.numpy() for k, v in trainer.model.state_dict().items()})
    trainer.exchange.barrier()  # leave together (freshrec.dist.run.train_rank says why)


class Follower(threading.Thread):
    """Polls the registry like a server: one model updated in place (:meth:`Subscriber.update`)."""

    def __init__(self, registry: Registry) -> None:
        super().__init__(daemon=True)
        cfg = config("rowwise_adagrad")
        self.tables = {t.name: EmbeddingTable(t) for t in cfg.features.tables}
        self.dense: dict[str, Any] = {}
        self.sub = Subscriber(registry)
        self.seen: list[int] = []
        self.done = threading.Event()
        self.error: BaseException | None = None

    def poll(self) -> None:
        if self.sub.registry.head() is None:
            return
        v = self.sub.update(self.tables, self.dense.update)
        if v is not None and (not self.seen or self.seen[-1] != v):
            self.seen.append(v)

    def run(self) -> None:
        try:
            while not self.done.is_set():
                self.poll()
                time.sleep(0.02)
            self.poll()
        except BaseException as e:  # reported by the test
            self.error = e


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("publish")
    follower = Follower(Registry(out / "registry"))
    follower.start()
    try:
        run_ranks(2, SCENARIO, out)
    finally:
        follower.done.set()
        follower.join(timeout=60)
    assert follower.error is None, follower.error
    np.savez(out / "follower.npz", **table_state(follower.tables),
             **{f"dense.{k}": v.numpy() for k, v in follower.dense.items()})
    (out / "seen.txt").write_text(" ".join(map(str, follower.seen)))
    return out


def _shards(out: Path) -> list[dict[str, np.ndarray]]:
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]


def _assert_union(served: dict[str, np.ndarray], shards: list[dict[str, np.ndarray]],
                  dense: dict[str, np.ndarray]) -> None:
    for name in ("user", "item"):
        want = merged(shards, name)
        order = np.argsort(served[f"{name}.fids"])
        np.testing.assert_array_equal(served[f"{name}.fids"][order], want["fids"])
        np.testing.assert_array_equal(served[f"{name}.values"][order], want["values"])
        np.testing.assert_array_equal(served[f"{name}.last_seen"][order], want["last_seen"])
    for k, v in dense.items():
        np.testing.assert_array_equal(v, shards[0][f"dense.{k}"])


def test_a_subscriber_following_two_ranks_sees_the_union_of_the_shards(batch_run: Path
                                                                        ) -> None:
    reg = Registry(batch_run / "registry")
    ms = reg.manifests()
    assert [m.kind.value for m in ms].count("full") == 2 and len(ms) >= 6
    assert all(m.parts == 2 for m in ms)
    v = ms[-2].version  # the last delta: a part per rank and table, every one listed
    for name in ("user", "item"):
        for r in range(2):
            assert (reg.path_of(v) / "delta" / name / f"part-{r}" / "fids.npy").is_file()
            assert f"delta/{name}/part-{r}/manifest.json" in reg.manifest(v).files
    assert not (reg.path_of(v) / "dense").exists()
    assert (reg.path_of(ms[-1].version) / "dense").is_dir()
    shards = _shards(batch_run)
    # the follower applied the deltas in place as they came (several versions seen)
    seen = [int(s) for s in (batch_run / "seen.txt").read_text().split()]
    assert len(seen) >= 3 and seen[-1] == reg.head()
    follower = dict(np.load(batch_run / "follower.npz"))
    _assert_union(follower, shards, {k[6:]: v for k, v in follower.items()
                                     if k.startswith("dense.")})
    # a fresh subscriber (a full snapshot in parts, then the deltas) sees the same
    state = Subscriber(reg).materialize()
    _assert_union(table_state(state.tables), shards,
                  {k: t.numpy() for k, t in state.dense.items()})
    assert check_registry(reg).ok


def _copy(batch_run: Path, tmp_path: Path) -> Registry:
    shutil.copytree(batch_run / "registry", tmp_path / "registry")
    return Registry(tmp_path / "registry")


def test_a_missing_part_is_refused_by_name(batch_run: Path, tmp_path: Path) -> None:
    reg = _copy(batch_run, tmp_path)
    last_delta = reg.manifests()[-2].version
    part = reg.path_of(last_delta) / "delta" / "user" / "part-1"
    shutil.rmtree(part)
    with pytest.raises(SnapshotCorruptError, match="delta/user/part-1/manifest.json: file "
                                                   "listed in the version manifest is missing"):
        reg.verify(last_delta)
    with pytest.raises(SnapshotCorruptError, match="part-1"):
        Subscriber(reg).materialize(version=last_delta)
    health = {h.version: h for h in check_registry(reg).versions}
    assert "part-1" in str(health[last_delta].damage)
    assert health[last_delta + 1].needs == last_delta  # the dense version after it
    # a server goes around it: the newest loadable state is the one before
    state = Subscriber(reg).materialize()
    assert state.version == last_delta - 1


def test_a_corrupted_part_is_refused_by_name_and_the_model_is_unchanged(
        batch_run: Path, tmp_path: Path) -> None:
    reg = _copy(batch_run, tmp_path)
    fulls = [m.version for m in reg.manifests() if m.kind.value == "full"]
    values = reg.path_of(fulls[-1]) / "full" / "item" / "part-0" / "values.npy"
    data = bytearray(values.read_bytes())
    data[-5] ^= 0xFF  # same size, another checksum
    values.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorruptError, match=r"full/item/part-0/values\.npy: checksum"):
        reg.verify(fulls[-1])
    # following from the version before, a subscriber refuses it and keeps its model
    first_state = Subscriber(reg).materialize(version=fulls[-1] - 1)
    before = table_state(first_state.tables)
    follower = Subscriber(reg, version=first_state.version)
    with pytest.raises(SnapshotCorruptError, match=r"part-0/values\.npy"):
        follower.update(first_state.tables)
    np.testing.assert_array_equal(table_state(first_state.tables)["item.values"],
                                  before["item.values"])
    assert follower.version == first_state.version


def test_retention_removes_every_part_of_old_versions(batch_run: Path,
                                                      tmp_path: Path) -> None:
    reg = _copy(batch_run, tmp_path)
    fulls = [m.version for m in reg.manifests() if m.kind.value == "full"]
    old = [v for v in reg.versions() if v < fulls[-1]]
    removed = reg.gc(keep_full=1)
    assert removed == old
    assert all(not reg.path_of(v).exists() for v in old)
    leftovers = [p for p in (reg.root / "versions").iterdir() if not p.name.isdigit()]
    assert leftovers == []
    _assert_union(table_state(Subscriber(reg).materialize().tables), _shards(batch_run), {})


def test_a_server_loads_and_follows_a_model_published_in_parts(batch_run: Path,
                                                               tmp_path: Path) -> None:
    from freshrec.serve.updater import ModelUpdater

    reg = _copy(batch_run, tmp_path)
    head = reg.head()
    assert head is not None
    fulls = [m.version for m in reg.manifests() if m.kind.value == "full"]
    (reg.root / "HEAD").write_text(json.dumps({"version": fulls[-1] + 1}))
    updater = ModelUpdater(Registry(reg.root), config=config("rowwise_adagrad"))
    pred = updater.load(warm=False)  # a full snapshot in parts, then a delta
    assert pred.version == fulls[-1] + 1
    (reg.root / "HEAD").write_text(json.dumps({"version": head}))
    assert updater.poll()  # the deltas in parts, applied in place; the dense part
    assert updater.current is not None and updater.current.version == head
    _assert_union(table_state(updater.current.tables), _shards(batch_run), {})


def _part_fails(out: Path, rank: int) -> None:
    """(per rank) Rank 1 cannot write its part of the second publish (a full disk): every
    rank raises, nothing is published; the next publish carries those rows."""
    from freshrec.dist import DistTrainer, ShardedPublisher

    trainer = DistTrainer(config("rowwise_adagrad", pipeline_lookup=False))
    trainer.keep_expired_log = True
    pub = ShardedPublisher(Registry(out / "registry"), trainer.tables,
                           trainer.model.state_dict, trainer.exchange)
    pub.publish_full()
    trainer.fit(batches(300))
    write = pub._write_tables
    if rank == 1:
        def full_disk(*args: Any, **kwargs: Any) -> Any:
            raise OSError(28, "No space left on device")

        pub._write_tables = full_disk  # type: ignore[method-assign]
    errors = []
    try:
        pub.publish_sparse()
    except OSError as e:
        errors.append(str(e))
    pub._write_tables = write  # type: ignore[method-assign]
    pub.publish_sparse()
    pub.publish_dense()
    np.savez(out / f"rank{rank}.npz", **table_state(trainer.tables),
             **{f"dense.{k}": v.numpy() for k, v in trainer.model.state_dict().items()})
    (out / f"errors{rank}.txt").write_text("\n".join(errors))
    trainer.exchange.barrier()


def test_a_rank_that_cannot_write_its_part_fails_the_publish_on_every_rank(
        tmp_path: Path) -> None:
    run_ranks(2, "tests.dist.test_publish:_part_fails", tmp_path)
    for r in range(2):
        error = (tmp_path / f"errors{r}.txt").read_text()
        assert "rank 1: OSError: [Errno 28] No space left on device" in error, error
    reg = Registry(tmp_path / "registry")
    assert [m.kind.value for m in reg.manifests()] == ["full", "delta", "delta"]
    assert [p.name for p in (reg.root / "versions").iterdir()
            if not p.name.isdigit()] == []  # the failed version's parts were removed
    state = Subscriber(reg).materialize()
    _assert_union(table_state(state.tables), _shards(tmp_path),
                  {k: t.numpy() for k, t in state.dense.items()})
