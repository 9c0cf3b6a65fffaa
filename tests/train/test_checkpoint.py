"""Checkpoints carry the progressive metrics: saved with the rest, restored or reported."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from freshrec.errors import SnapshotCorruptError
from freshrec.train.checkpoint import load_metrics, save_checkpoint
from freshrec.train.metrics import default_metrics


@pytest.fixture
def ckpt(tmp_path):
    ms = default_metrics(window_s=600)
    rng = np.random.default_rng(0)
    for now in range(0, 1000, 100):
        ms.update(rng.integers(0, 2, 50), rng.random(50), now=now)
    return save_checkpoint(tmp_path, "step-1", {}, {}, None, {}, metrics=ms), ms


def test_metrics_are_restored_from_a_checkpoint(ckpt):
    path, ms = ckpt
    manifest = json.loads((path / "metrics" / "manifest.json").read_text())
    assert (manifest["format"], manifest["format_version"]) == ("freshrec.metrics", 1)
    assert len(manifest["files"]) <= 2  # one array per dtype, however many metrics
    restored = default_metrics(window_s=600)
    assert load_metrics(path, restored)
    assert restored.get() == ms.get()


@pytest.mark.parametrize("damage", ["absent", "newer format"])
def test_metrics_restart_with_a_warning_when_they_cannot_be_read(ckpt, damage, caplog):
    path, _ = ckpt
    if damage == "absent":  # a checkpoint of an older version
        shutil.rmtree(path / "metrics")
    else:
        m = path / "metrics" / "manifest.json"
        m.write_text(m.read_text().replace('"format_version": 1', '"format_version": 2'))
    fresh = default_metrics(window_s=600)
    with caplog.at_level(logging.WARNING):
        assert not load_metrics(path, fresh)
    assert "progressive metrics restart" in caplog.text and str(path) in caplog.text
    assert fresh.get()["count"] == 0.0


def test_corrupt_metrics_are_an_error_naming_the_file(ckpt):
    path, _ = ckpt
    npy = next((path / "metrics").glob("*.npy"))
    npy.write_bytes(npy.read_bytes()[:-8])
    with pytest.raises(SnapshotCorruptError, match=npy.name):
        load_metrics(path, default_metrics(window_s=600))
