"""Automatic rollback: a real registry is rolled back to the last good version on an injected
drop of the serving AUC, with the reason recorded and an alert sent, and not on noise within
the threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from freshrec.ops.alerts import Alert
from freshrec.ops.config import RollbackConfig
from freshrec.ops.rollback import RollbackGuard
from freshrec.sync.registry import Registry, VersionKind
from tests.ops.conftest import online_run

CONFIG = RollbackConfig(enabled=True, max_auc_drop=0.05, window_s=60, min_examples=2000,
                        patience=2)


class _ListSink:
    def __init__(self) -> None:
        self.alerts: list[tuple[Alert, str]] = []

    def send(self, alert: Alert, state: str) -> bool:
        self.alerts.append((alert, state))
        return True


def _window(rng: np.random.Generator, signal: float, n: int = 3000
            ) -> tuple[np.ndarray, np.ndarray]:
    """Clicks and scores whose AUC grows with ``signal`` (1.0: about 0.76; 0.3: about 0.58)."""
    y = (rng.random(n) < 0.2).astype(float)
    s = 1 / (1 + np.exp(-(signal * y + rng.normal(0, 1, n))))
    return s, y


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    run = online_run(tmp_path_factory.mktemp("rb"), ["user_id", "item_id"], n=1500)
    return run["registry"]


def test_rolls_back_on_an_injected_drop(registry: Path, tmp_path: Path) -> None:
    import shutil

    reg_dir = tmp_path / "registry"
    shutil.copytree(registry, reg_dir)
    reg = Registry(reg_dir)
    versions = reg.versions()
    assert len(versions) >= 3
    good, bad = versions[-2], versions[-1]
    sink = _ListSink()
    guard = RollbackGuard(CONFIG, reg, [sink])
    rng = np.random.default_rng(0)
    t = 0.0
    for _ in range(4):  # version `good` serves well
        assert guard.observe(t, *_window(rng, 1.0), version=good) is None
        t += 60
    actions = []
    for _ in range(3):  # version `bad` is served and its AUC drops by ~0.18
        a = guard.observe(t, *_window(rng, 0.3), version=bad)
        actions += [a] if a else []
        t += 60
    assert len(actions) == 1
    a = actions[0]
    assert (a.served_version, a.to_version) == (bad, good)
    m = reg.manifest()
    assert m.kind is VersionKind.ROLLBACK and m.base == good and m.version == a.registry_version
    assert "serving AUC" in m.meta["rollback_reason"]
    ev = reg.events()[-1]
    assert ev["kind"] == "rollback" and ev["to"] == good and ev["from"] == bad
    assert [(al.rule, st) for al, st in sink.alerts] == [("auto_rollback", "firing")]


@pytest.mark.parametrize("seed", range(3))
def test_no_rollback_on_noise_within_the_threshold(registry: Path, tmp_path: Path,
                                                   seed: int) -> None:
    import shutil

    reg_dir = tmp_path / "registry"
    shutil.copytree(registry, reg_dir)
    reg = Registry(reg_dir)
    head = reg.head()
    guard = RollbackGuard(CONFIG, reg)
    rng = np.random.default_rng(seed)
    versions = reg.versions()
    for w in range(40):  # every version serves about as well: AUC noise ~0.01, signal 0.9..1.0
        guard.observe(60.0 * w, *_window(rng, 1.0 - 0.1 * (w % 2)),
                      version=versions[w * len(versions) // 40])
    aucs = [h[1] for h in guard.history]
    assert max(aucs) - min(aucs) > 0.02  # there is noise
    assert guard.actions == [] and reg.head() == head


def test_small_windows_are_not_judged() -> None:
    guard = RollbackGuard(CONFIG, None)
    rng = np.random.default_rng(0)
    for w in range(5):
        guard.observe(60.0 * w, *_window(rng, 1.0 if w < 2 else -1.0, n=100), version=1)
    assert all(h[3] is None for h in guard.history) and guard.actions == []


def test_patience_counts_the_bad_windows_of_one_version() -> None:
    """A bad window of one version then one of the next is not two in a row; the windows of
    a version rolled back from (the server has not loaded the restored one yet) are not
    judged, so they do not roll back again."""
    guard = RollbackGuard(CONFIG, None)
    rng = np.random.default_rng(1)
    t = 0.0
    for v, signal in ((1, 1.0), (1, 1.0), (1, 1.0), (2, 0.3), (3, 0.3)):
        assert guard.observe(t, *_window(rng, signal), version=v) is None
        t += 60
    actions = [guard.observe(t + 60 * k, *_window(rng, 0.3), version=3) for k in range(4)]
    # window 3 (v2) then window 4 (v3) bad: no action; window 5 (v3's second) rolls back
    assert [a is not None for a in actions] == [False, True, False, False]
    assert (actions[1].served_version, actions[1].to_version) == (3, 1)
    assert guard.rolled_back == {2, 3}
    assert [h[3] for h in guard.history[-2:]] == [None, None]  # v3 after the rollback
