"""check_registry: each kind of damage found, what it breaks, what a missing manifest leaves."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from freshrec.sync import Publisher, PublisherConfig, Registry, check_registry
from tests.sync._helpers import DAMAGE, damage, make_tables, train_step


@pytest.fixture
def reg(tmp_path):
    """Versions 1 full, 2 and 3 deltas, 4 full (on 3), 5 delta."""
    tables, rng = make_tables(), np.random.default_rng(1)
    reg = Registry(tmp_path / "reg")
    pub = Publisher(reg, tables, config=PublisherConfig(auto_gc=False))
    for i, kind in enumerate("FSSFS"):
        train_step(rng, tables, 10 * i)
        pub.publish_full() if kind == "F" else pub.publish_sparse()
    return Registry(reg.root)  # as a new process sees it


def _statuses(health):
    return [h.status.split(":")[0] for h in health.versions]


def test_a_healthy_registry(reg):
    health = check_registry(reg)
    assert _statuses(health) == ["ok"] * 5 and health.ok and health.damaged == []
    assert (health.head, health.newest_servable, health.checksums) == (5, 5, True)


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_delta_breaks_the_versions_up_to_the_next_full(reg, how):
    path = damage(reg, 2, how)
    health = check_registry(reg)
    assert _statuses(health) == ["ok", "damaged", "needs version 2 (damaged)", "ok", "ok"]
    assert str(path) in health.versions[1].damage
    assert health.damaged == [2] and health.ok and health.newest_servable == 5


def test_damaged_head_is_not_ok(reg):
    damage(reg, 5, "corrupt")
    health = check_registry(reg)
    assert not health.ok and health.newest_servable == 4 and health.damaged == [5]


def test_a_deleted_version_is_missing(reg):
    shutil.rmtree(reg.path_of(4))
    health = check_registry(reg)
    assert [h.version for h in health.versions] == [1, 2, 3, 5]
    assert health.versions[-1].status == "needs version 4 (missing)"
    assert health.newest_servable == 3 and not health.ok


@pytest.mark.parametrize(("how", "found"), [("corrupt", False), ("truncate", True),
                                             ("no_file", True), ("no_manifest", True)])
def test_without_checksums_only_sizes_and_manifests_are_checked(reg, how, found):
    damage(reg, 3, how)
    assert (check_registry(reg, checksums=False).damaged == [3]) is found
    assert check_registry(reg).damaged == [3]


def test_a_version_without_manifest_is_described_from_its_files(reg):
    m = reg.manifest(2)
    damage(reg, 2, "no_manifest")
    h = check_registry(Registry(reg.root)).versions[1]
    assert h.manifest is None and h.damage.endswith("manifest.json: version manifest missing")
    assert h.salvaged["kind"] == "delta" and h.salvaged["rows"] == m.delta_rows > 0
    assert not h.salvaged["dense"] and h.salvaged["bytes"] >= m.nbytes
