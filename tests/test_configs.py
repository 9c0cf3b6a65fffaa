"""Every file in configs/ loads, validates and builds its model."""

from __future__ import annotations

from pathlib import Path

import pytest

from freshrec.config import load_config
from freshrec.errors import ConfigError
from freshrec.train.trainer import Trainer

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert {p.stem for p in CONFIGS} >= {"movielens", "criteo", "obd", "simulator", "demo"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_builds(path):
    cfg = load_config(path)
    trainer = Trainer(cfg)
    assert set(trainer.tables) == {t.name for t in cfg.features.tables}
    assert trainer.schema.slot_names == [s.name for s in cfg.features.slots]
    assert sum(p.numel() for p in trainer.model.parameters()) > 0


def test_unknown_key_names_the_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIGS[0].read_text() + "\ntrian: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'trian'"):
        load_config(bad)


def test_overrides_are_applied_and_validated():
    cfg = load_config(CONFIGS[0], ["train.epochs=3"])
    assert cfg.train.epochs == 3
    with pytest.raises(ConfigError, match="epochs must be an int >= 1"):
        load_config(CONFIGS[0], ["train.epochs=0"])
