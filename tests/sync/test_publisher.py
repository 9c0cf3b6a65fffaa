"""Publisher: the delta chain reproduces the trainer exactly; scheduling; what each kind holds."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from freshrec.errors import IncompatibleFormatError, InputError
from freshrec.sync import Publisher, PublisherConfig, Registry, Subscriber, VersionKind
from freshrec.table import EmbeddingTable, TableConfig
from tests.sync._helpers import (
    DAMAGE,
    Dense,
    assert_dense_equal,
    assert_tables_equal,
    contents,
    damage,
    make_tables,
    train_step,
)


@pytest.mark.parametrize("with_state", [False, True])
def test_delta_chain_equals_trainer_exactly(tmp_path, with_state):
    rng = np.random.default_rng(1)
    gen = torch.Generator().manual_seed(1)
    trainer, model = make_tables(), Dense()
    cfg = PublisherConfig(sparse_interval_s=1, dense_interval_s=4, full_interval_s=9,
                          keep_full=2, with_state=with_state)
    reg = Registry(tmp_path / "reg")
    pub = Publisher(reg, trainer, model.state_dict, cfg)
    follower, follower_dense = make_tables(), {}
    sub = Subscriber(reg)
    kinds = set()
    expired_total = 0
    now = 1000
    for step in range(45):
        now += 3
        before = sum(t.stats().expired for t in trainer.values())
        train_step(rng, trainer, now)
        expired_total += sum(t.stats().expired for t in trainer.values()) - before
        model.perturb(gen)
        m = pub.maybe_publish(float(step), event_time=now, meta={"step": step})
        if m is None:
            continue
        kinds.add((m.kind, m.base is not None, m.dense))
        if m.dense:
            published_dense = {k: v.clone() for k, v in model.state_dict().items()}
        if step % 3 == 0:  # the follower sometimes lags several versions behind
            continue
        assert sub.update(follower, follower_dense.update) == m.version
        assert_tables_equal(trainer, follower, with_state=with_state)
        assert_dense_equal(published_dense, follower_dense)
        if step % 4 != 1:
            continue
        fresh = sub.materialize()
        assert fresh.version == m.version and fresh.meta == {"step": step}
        assert fresh.event_time == now
        assert_tables_equal(trainer, fresh.tables, with_state=with_state)
        assert_dense_equal(published_dense, fresh.dense)
    assert expired_total > 100  # expiry really happened and travelled in deltas
    assert (VersionKind.FULL, True, True) in kinds      # full snapshot carrying a delta
    assert (VersionKind.DELTA, False, False) not in kinds
    assert (VersionKind.DELTA, True, False) in kinds     # sparse only
    assert (VersionKind.DELTA, True, True) in kinds      # sparse + dense
    assert len([m for m in reg.manifests() if m.kind is VersionKind.FULL]) == 2  # auto gc


def test_each_sparse_delta_holds_exactly_the_rows_written_since_the_last_publish(tmp_path):
    table = EmbeddingTable(TableConfig(name="user", dim=4))
    pub = Publisher(Registry(tmp_path), [table])
    pub.publish_full()
    table.lookup(np.arange(10, dtype=np.uint64), now=5, train=True)
    assert pub.publish_sparse().deltas["user"]["rows"] == 10
    table.apply_gradients(np.array([3, 4], np.uint64), np.ones((2, 4), np.float32))
    m = pub.publish_sparse()
    assert m.deltas["user"]["rows"] == 2 and m.delta_rows == 2
    assert pub.publish_sparse() is None  # nothing new: no version
    table.apply_gradients(np.array([7], np.uint64), np.ones((1, 4), np.float32))
    m = pub.publish_full()
    assert m.kind is VersionKind.FULL and m.base == 3 and m.deltas["user"]["rows"] == 1
    table.apply_gradients(np.array([8], np.uint64), np.ones((1, 4), np.float32))
    assert pub.publish_sparse().deltas["user"]["rows"] == 1  # nothing counted twice


def test_dense_only_publish_keeps_table_versions(tmp_path):
    table = EmbeddingTable(TableConfig(name="user", dim=4))
    dense = {"w": torch.arange(4.0)}
    pub = Publisher(Registry(tmp_path), [table], lambda: dense)
    first = pub.publish_full()
    dense["w"] = dense["w"] * 2
    m = pub.publish_dense()
    assert (m.kind, m.dense, m.deltas, m.table_versions) == (
        VersionKind.DELTA, True, {}, first.table_versions)
    assert Subscriber(pub.registry).materialize().dense["w"].tolist() == [0, 2, 4, 6]




def test_zero_dimensional_dense_tensors_round_trip(tmp_path):
    """A scalar parameter or buffer (a learned temperature, BatchNorm's
    ``num_batches_tracked``) came back 1-dimensional: the subscriber found every version
    inconsistent and skipped it as damaged, so serving never got a model."""
    bn = torch.nn.BatchNorm1d(3)
    dense = {"temperature": torch.tensor(0.25), **bn.state_dict()}
    assert dense["num_batches_tracked"].dim() == 0
    pub = Publisher(Registry(tmp_path), [EmbeddingTable(TableConfig(name="user", dim=4))],
                    lambda: dense)
    pub.publish_full()
    got = Subscriber(pub.registry).materialize().dense
    assert got.keys() == dense.keys()
    for name, t in dense.items():
        assert (got[name].dtype, got[name].shape) == (t.dtype, t.shape)
        assert torch.equal(got[name], t)

def test_a_diverged_dense_state_is_not_published(tmp_path):
    """Dense parameters holding NaN or an infinity (a model that diverged) are refused by
    name; the registry keeps serving the last good version."""
    from freshrec.errors import TrainingDivergedError

    table = EmbeddingTable(TableConfig(name="user", dim=4))
    dense = {"w": torch.arange(4.0), "steps": torch.tensor(3)}
    pub = Publisher(Registry(tmp_path), [table], lambda: dense)
    first = pub.publish_full()
    for bad in (float("nan"), float("inf")):
        dense["w"] = torch.tensor([0.0, bad, 1.0, bad])
        with pytest.raises(TrainingDivergedError, match="dense parameter 'w' holds 2 NaN or "
                                                        "infinite values"):
            pub.publish_dense()
    assert pub.registry.head() == first.version
    assert Subscriber(pub.registry).materialize().dense["w"].tolist() == [0, 1, 2, 3]

def test_maybe_publish_follows_the_intervals(tmp_path):
    table = EmbeddingTable(TableConfig(name="user", dim=2))
    cfg = PublisherConfig(sparse_interval_s=10, dense_interval_s=30, full_interval_s=100,
                          skip_empty=False)
    pub = Publisher(Registry(tmp_path), [table], lambda: {"b": torch.zeros(1)}, cfg)
    got = {}
    for t in range(0, 201, 5):
        m = pub.maybe_publish(float(t))
        if m is not None:
            got[t] = (m.kind.value, m.dense)
    assert got[0] == ("full", True)
    assert got[10] == ("delta", False) and 5 not in got
    assert got[30] == ("delta", True)
    assert got[100] == ("full", True) and got[200] == ("full", True)
    assert sorted(got) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150,
                           160, 170, 180, 190, 200]


def test_first_publish_of_a_new_publisher_is_full(tmp_path):
    reg = Registry(tmp_path)
    tables = make_tables()
    Publisher(reg, tables).publish_full()
    again = Publisher(reg, tables)
    train_step(np.random.default_rng(0), tables, 10)
    m = again.publish_sparse()
    assert m.kind is VersionKind.FULL and m.base is None


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_base_gets_a_full_snapshot_instead_of_a_delta(tmp_path, how, caplog):
    reg = Registry(tmp_path)
    tables, rng = make_tables(), np.random.default_rng(0)
    pub = Publisher(reg, tables, config=PublisherConfig(auto_gc=False))
    pub.publish_full()
    train_step(rng, tables, 10)
    pub.publish_sparse()
    path = damage(reg, 2, how)          # HEAD, this publisher's last version
    train_step(rng, tables, 20)
    m = pub.publish_sparse()
    assert (m.version, m.kind, m.base) == (3, VersionKind.FULL, None)
    assert f"base version 2 is damaged ({path}" in caplog.text
    train_step(rng, tables, 30)
    assert pub.publish_sparse().base == 3    # deltas again, on the new snapshot
    state = Subscriber(Registry(reg.root)).materialize()
    assert state.version == 4
    assert_tables_equal(tables, state.tables, with_state=False)


@pytest.mark.parametrize("how", ["no_manifest", "no_version"])
def test_a_version_gone_from_the_chain_gets_a_full_snapshot_instead_of_a_delta(tmp_path, how):
    reg = Registry(tmp_path)
    tables, rng = make_tables(), np.random.default_rng(0)
    pub = Publisher(reg, tables, config=PublisherConfig(auto_gc=False))
    pub.publish_full()
    for now in (10, 20):                # 2, 3
        train_step(rng, tables, now)
        pub.publish_sparse()
    if how == "no_version":
        shutil.rmtree(reg.path_of(2))
    else:
        damage(reg, 2, how)
    train_step(rng, tables, 30)
    m = pub.publish_sparse()
    assert (m.version, m.kind, m.base) == (4, VersionKind.FULL, None)
    assert Subscriber(Registry(reg.root)).materialize().version == 4


def test_registry_refuses_another_model(tmp_path):
    reg = Registry(tmp_path)
    Publisher(reg, [EmbeddingTable(TableConfig(name="user", dim=4))]).publish_full()
    other = Publisher(reg, [EmbeddingTable(TableConfig(name="user", dim=8))])
    with pytest.raises(IncompatibleFormatError, match="table 'user' is dim 4 .* dim 8"):
        other.publish_full()
    assert reg.head() == 1


def test_dense_shape_change_is_refused(tmp_path):
    dense = {"w": torch.zeros(3)}
    pub = Publisher(Registry(tmp_path), [EmbeddingTable(TableConfig(name="u", dim=2))],
                    lambda: dense)
    pub.publish_full()
    dense["w"] = torch.zeros(4)
    with pytest.raises(InputError, match="dense parameters changed"):
        pub.publish_dense()
    assert pub.registry.head() == 1


@pytest.mark.parametrize("bad", [{"w": [1.0]}, {"w": torch.zeros(2).to_sparse()}])
def test_dense_values_must_be_strided_tensors(tmp_path, bad):
    pub = Publisher(Registry(tmp_path), [EmbeddingTable(TableConfig(name="u", dim=2))],
                    lambda: bad)
    with pytest.raises(InputError, match="dense parameter 'w'"):
        pub.publish_full()


def test_publisher_validates_its_inputs(tmp_path):
    t = EmbeddingTable(TableConfig(name="u", dim=2))
    with pytest.raises(InputError, match="stored under key 'x'"):
        Publisher(Registry(tmp_path), {"x": t})
    pub = Publisher(Registry(tmp_path), [t])
    with pytest.raises(InputError, match="event_time must be an int"):
        pub.publish_full(event_time=-1)
    with pytest.raises(InputError, match="JSON-serialisable"):
        pub.publish_full(meta={"x": object()})


def test_expired_log_is_trimmed_after_publishing(tmp_path):
    table = EmbeddingTable(TableConfig(name="u", dim=2, ttl_s=5))
    pub = Publisher(Registry(tmp_path), [table])
    pub.publish_full()
    table.lookup(np.arange(100, dtype=np.uint64), now=0, train=True)
    table.expire(now=100)
    m = pub.publish_sparse()
    assert m.deltas["u"]["expired"] == 100
    table.lookup(np.array([1000], np.uint64), now=101, train=True)
    assert pub.publish_sparse().deltas["u"]["expired"] == 0
    assert len(contents(table)["keys"]) == 1
