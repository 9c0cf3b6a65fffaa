"""Subscriber: plans, updates from nothing / old versions / collected history, rollback,
corruption and gaps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.errors import IncompatibleFormatError, SnapshotCorruptError, StaleDeltaError
from freshrec.sync import (
    Publisher,
    PublisherConfig,
    Registry,
    StepAction,
    Subscriber,
    SubscriberConfig,
    VersionKind,
)
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


class Trainer:
    """Tables + dense model + publisher, with one-call 'train then publish'."""

    def __init__(self, root, *, auto_gc=False, tables=None):
        self.rng = np.random.default_rng(7)
        self.gen = torch.Generator().manual_seed(7)
        self.tables = tables if tables is not None else make_tables()
        self.model = Dense()
        self.now = 100
        self.reg = Registry(root)
        self.pub = Publisher(self.reg, self.tables, self.model.state_dict,
                             PublisherConfig(auto_gc=auto_gc))
        self.snapshots = {}

    def step(self, kind="sparse", batch=150):
        self.now += 3
        train_step(self.rng, self.tables, self.now, batch=batch)
        self.model.perturb(self.gen)
        m = getattr(self.pub, f"publish_{kind}")(event_time=self.now)
        # remember every published state to compare subscribers with later
        self.snapshots[m.version] = Subscriber(self.reg).materialize(m.version)
        return m


@pytest.fixture
def trainer(tmp_path):
    t = Trainer(tmp_path / "reg")
    t.step("full")
    for i in range(8):
        t.step("dense" if i == 3 else "sparse")
    t.step("full")          # version 10, carries the delta from 9
    for _ in range(3):
        t.step("sparse")    # 11..13
    return t


def _expect(trainer, tables, dense, version):
    ref = trainer.snapshots[version]
    assert_tables_equal(ref.tables, tables, with_state=False)
    assert_dense_equal(ref.dense, dense)


def test_versions_are_consecutive_and_trainer_state_matches_head(trainer):
    assert trainer.reg.versions() == list(range(1, 14))
    assert trainer.reg.head() == 13
    assert_tables_equal(trainer.tables, trainer.snapshots[13].tables, with_state=False)


def test_plan_from_nothing_loads_the_newest_full_then_deltas(trainer):
    plan = Subscriber(trainer.reg).plan()
    assert plan.versions == [10, 11, 12, 13] and plan.reloads
    assert [s.action for s in plan.steps] == [StepAction.LOAD_FULL] + [
        StepAction.APPLY_DELTA] * 3


def test_update_from_nothing(trainer):
    tables, dense = make_tables(), {}
    sub = Subscriber(trainer.reg)
    assert sub.update(tables, dense.update) == 13 == sub.version
    _expect(trainer, tables, dense, 13)
    assert sub.update(tables, dense.update) == 13  # nothing new: no-op
    assert sub.plan().steps == ()


def test_update_from_an_old_version_applies_deltas_through_a_full_version(trainer):
    state = Subscriber(trainer.reg).materialize(4)
    sub = Subscriber(trainer.reg, version=4)
    plan = sub.plan()
    assert plan.versions == list(range(5, 14)) and not plan.reloads  # deltas cost less
    dense = dict(state.dense)
    assert sub.update(state.tables, dense.update) == 13
    _expect(trainer, state.tables, dense, 13)


def _no_sketch_tables():
    # without admission, so the full snapshot holds no count-min sketch (16 MiB by default)
    cfgs = [TableConfig(name="user", dim=8), TableConfig(name="item", dim=4)]
    return {c.name: EmbeddingTable(c) for c in cfgs}


def test_prefers_the_full_snapshot_when_it_reads_fewer_bytes(tmp_path):
    t = Trainer(tmp_path / "reg", tables=_no_sketch_tables())
    t.step("full")
    for _ in range(10):
        t.step("sparse", batch=1500)     # big deltas
    t.step("full")
    sub = Subscriber(t.reg, version=1)
    plan = sub.plan()
    assert plan.reloads and plan.versions == [12]
    deltas = Subscriber(t.reg, version=1, config=SubscriberConfig(prefer="deltas")).plan()
    assert deltas.versions == list(range(2, 13)) and deltas.nbytes > plan.nbytes
    state = sub.materialize(1)
    dense = dict(state.dense)
    assert sub.update(state.tables, dense.update) == 12
    assert_tables_equal(t.tables, state.tables, with_state=True)  # a full reload: state too
    assert_dense_equal(t.snapshots[12].dense, dense)


def test_update_across_collected_history_falls_back_to_the_newest_full(trainer):
    state = Subscriber(trainer.reg).materialize(3)
    removed = trainer.reg.gc(keep_full=1)
    assert removed == list(range(1, 10))
    assert trainer.reg.versions() == [10, 11, 12, 13]
    sub = Subscriber(trainer.reg, version=3)
    assert sub.plan().versions == [10, 11, 12, 13] and sub.plan().reloads
    dense = {}
    assert sub.update(state.tables, dense.update) == 13
    _expect(trainer, state.tables, dense, 13)
    with pytest.raises(Exception, match="no version 3"):
        sub.materialize(3)


def test_a_version_with_its_history_collected_cannot_be_reached(trainer):
    trainer.reg.gc(keep_full=1)
    sub = Subscriber(trainer.reg)
    sub.plan()  # head is reachable
    import shutil

    shutil.rmtree(trainer.reg.path_of(10))  # lose the only full snapshot
    with pytest.raises(StaleDeltaError, match="no way from version None to 13"):
        sub.plan()


def test_rollback_moves_head_and_subscribers_reload_that_state(trainer):
    tables, dense = make_tables(), {}
    sub = Subscriber(trainer.reg)
    sub.update(tables, dense.update)
    m = trainer.reg.rollback(6)
    assert (m.version, m.kind, m.base, m.rolled_back_from) == (14, VersionKind.ROLLBACK, 6, 13)
    assert trainer.reg.head() == 14
    assert m.table_versions == trainer.reg.manifest(6).table_versions
    plan = sub.plan()
    assert plan.reloads and plan.versions == [1, 2, 3, 4, 5, 6, 14]
    assert plan.steps[-1].action is StepAction.MARK
    assert sub.update(tables, dense.update) == 14
    _expect(trainer, tables, dense, 6)
    fresh = sub.materialize()
    assert fresh.version == 14
    assert_tables_equal(trainer.snapshots[6].tables, fresh.tables, with_state=False)
    # a subscriber that was at the target only marks; rolling forward again works too
    at6 = Subscriber(trainer.reg, version=6)
    assert [s.action for s in at6.plan().steps] == [StepAction.MARK]
    assert trainer.reg.rollback(13).version == 15
    sub.update(tables, dense.update)
    _expect(trainer, tables, dense, 13)
    assert trainer.reg.rollback(13).version == 15  # already there: nothing published


def test_publisher_after_a_rollback_publishes_a_full_snapshot(trainer):
    trainer.reg.rollback(6)
    m = trainer.step("sparse")
    assert m.kind is VersionKind.FULL and m.base is None
    tables, dense = make_tables(), {}
    Subscriber(trainer.reg).update(tables, dense.update)
    assert_tables_equal(trainer.tables, tables, with_state=True)


def test_gc_keeps_what_head_needs_after_a_rollback(trainer):
    trainer.reg.rollback(4)                    # version 14, needs 1..4
    removed = trainer.reg.gc(keep_full=1)
    assert removed == [5, 6, 7, 8, 9]
    state = Subscriber(trainer.reg).materialize()
    assert_tables_equal(trainer.snapshots[4].tables, state.tables, with_state=False)


def test_corrupted_delta_raises_naming_the_file_and_changes_nothing(trainer):
    state = Subscriber(trainer.reg).materialize(11)
    before = {n: contents(t) for n, t in state.tables.items()}
    bad = trainer.reg.path_of(13) / "delta" / "item" / "values.npy"
    data = bytearray(bad.read_bytes())
    data[-3] ^= 0xFF
    bad.write_bytes(bytes(data))
    sub = Subscriber(trainer.reg, version=11)
    dense = {}
    with pytest.raises(SnapshotCorruptError, match=r"13/delta/item/values\.npy: checksum"):
        sub.update(state.tables, dense.update)
    assert sub.version == 11 and dense == {}
    for n, t in state.tables.items():  # version 12 was not applied either
        np.testing.assert_array_equal(contents(t)["values"], before[n]["values"])


def test_truncated_part_manifest_is_detected(trainer):
    path = trainer.reg.path_of(12) / "delta" / "user" / "manifest.json"
    path.write_bytes(path.read_bytes()[:-5])
    sub = Subscriber(trainer.reg, version=11)
    with pytest.raises(SnapshotCorruptError, match="12/delta/user/manifest.json: truncated"):
        sub.update(Subscriber(trainer.reg).materialize(11).tables)
    assert sub.version == 11


@pytest.mark.parametrize("how", DAMAGE)
def test_a_restarted_subscriber_loads_the_newest_verifiable_version(trainer, how):
    path = damage(trainer.reg, 12, how)      # HEAD 13 is a delta on 12
    sub = Subscriber(Registry(trainer.reg.root))  # a new process: nothing cached
    state = sub.materialize()
    assert state.version == 11
    _expect(trainer, state.tables, state.dense, 11)
    assert list(sub.damaged) == [12] and str(path) in sub.damaged[12]
    with pytest.raises(StaleDeltaError, match=r"no way from version None to 13: .*damaged: \[12\]"):
        sub.materialize(13)                  # asked for by number: no way around


@pytest.mark.parametrize(("damaged", "newest"), [
    (13, 12),   # HEAD itself
    (10, 9),    # the newest full snapshot: back to the chain of the one before
    (6, 13),    # a delta before the newest full snapshot breaks nothing served
])
def test_damage_anywhere_leaves_the_newest_version_whose_chain_verifies(trainer, damaged,
                                                                         newest):
    damage(trainer.reg, damaged, "corrupt")
    state = Subscriber(Registry(trainer.reg.root)).materialize()
    assert state.version == newest
    _expect(trainer, state.tables, state.dense, newest)


def test_nothing_verifiable_is_a_clear_error(trainer):
    damage(trainer.reg, 1, "truncate")
    damage(trainer.reg, 10, "no_manifest")
    with pytest.raises(StaleDeltaError, match=r"no way from version None to 13: .*damaged: "
                                              r"\[1, 10\]"):
        Subscriber(Registry(trainer.reg.root)).materialize()


def test_a_running_subscriber_moves_past_damage_once_a_newer_snapshot_is_published(trainer):
    def publish_sparse():  # no reference snapshot: the trainer's would need version 14
        trainer.now += 3
        train_step(trainer.rng, trainer.tables, trainer.now)
        return trainer.pub.publish_sparse(event_time=trainer.now)

    tables, dense = make_tables(), {}
    sub = Subscriber(trainer.reg)
    assert sub.update(tables, dense.update) == 13
    publish_sparse()                        # 14
    publish_sparse()                        # 15 (its base 14 verified when it was published)
    damage(trainer.reg, 14, "corrupt")
    with pytest.raises(SnapshotCorruptError, match="14/delta/ad/values.npy"):
        sub.update(tables, dense.update)    # reported once ...
    assert sub.update(tables, dense.update) == 13  # ... then planned around, no error
    assert list(sub.damaged) == [14]
    assert publish_sparse().kind is VersionKind.DELTA  # 16, on 15 (not damaged)
    assert sub.update(tables, dense.update) == 13
    m = trainer.step("full")                # 17: a full snapshot after the damage
    assert sub.update(tables, dense.update) == m.version == 17
    _expect(trainer, tables, dense, 17)


def test_a_deleted_registry_json_does_not_stop_a_restart(trainer):
    (trainer.reg.root / "registry.json").unlink()   # the next publish writes it again
    state = Subscriber(Registry(trainer.reg.root)).materialize()
    assert state.version == 13
    _expect(trainer, state.tables, state.dense, 13)


def test_gap_between_local_tables_and_delta_raises_stale(trainer):
    state = Subscriber(trainer.reg).materialize(5)
    sub = Subscriber(trainer.reg, version=8)  # claims 8, tables are at 5
    with pytest.raises(StaleDeltaError, match="version 9 holds table '.*' from table version"):
        sub.update(state.tables)
    assert sub.version == 8
    _expect(trainer, state.tables, state.dense, 5)


def test_local_tables_must_be_the_registrys(trainer):
    other = [EmbeddingTable(TableConfig(name="user", dim=8))]
    with pytest.raises(IncompatibleFormatError, match="holds tables"):
        Subscriber(trainer.reg).update(other)
    wrong = make_tables()
    wrong["item"] = EmbeddingTable(TableConfig(name="item", dim=5))
    with pytest.raises(IncompatibleFormatError, match="table 'item' is dim 4"):
        Subscriber(trainer.reg).update(wrong)


def test_subscriber_on_an_empty_registry(tmp_path):
    sub = Subscriber(Registry(tmp_path / "none"))
    assert sub.plan().steps == () and sub.update(make_tables()) is None


def test_subscriber_polling_while_the_trainer_publishes(tmp_path):
    """A reader thread updating in a loop never sees a half-written version."""
    import threading

    t = Trainer(tmp_path / "reg")
    t.pub.publish_full()
    follower, errors, seen = make_tables(), [], []
    done = threading.Event()

    def poll():
        sub = Subscriber(t.reg)
        try:
            while not done.is_set() or sub.version != t.reg.head():
                v = sub.update(follower)
                if v is not None and (not seen or seen[-1] != v):
                    seen.append(v)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    reader = threading.Thread(target=poll)
    reader.start()
    for _ in range(25):
        t.now += 3
        train_step(t.rng, t.tables, t.now)
        t.pub.publish_sparse()
    done.set()
    reader.join(timeout=120)
    assert not reader.is_alive() and errors == []
    assert seen[-1] == t.reg.head() == 26 and seen == sorted(seen)
    assert_tables_equal(t.tables, follower, with_state=False)
