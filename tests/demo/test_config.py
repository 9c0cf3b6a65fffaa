"""The demo's config: the ``demo`` section, and the document that drives the demo."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from freshrec.config import config_from_dict
from freshrec.demo import DemoConfig
from freshrec.errors import ConfigError

DEMO_YAML = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def _doc(**sections: dict) -> dict:
    doc = yaml.safe_load(DEMO_YAML.read_text())
    for name, body in sections.items():
        doc[name] = {**doc.get(name, {}), **body}
    return doc


def test_demo_document_names_the_bad_field():
    with pytest.raises(ConfigError, match=r"demo\.yaml: simulate: .*candidates must be <= "
                                          r"n_items \(10\), got 50"):
        config_from_dict(_doc(simulate={"candidates": 50, "n_items": 10}), where="demo.yaml")
    with pytest.raises(ConfigError, match=r"demo\.yaml: demo: .*redis"):
        config_from_dict(_doc(demo={"redis": "localhost:6379"}), where="demo.yaml")
    with pytest.raises(ConfigError, match=r"demo\.yaml: demo: unknown key 'duration'"):
        config_from_dict(_doc(demo={"duration": 5}), where="demo.yaml")


def test_demo_section_defaults_and_bounds():
    assert DemoConfig().duration_s == 120.0 and DemoConfig().live is None
    assert DemoConfig().until_examples_trained is None
    assert DemoConfig(until_examples_trained=5).until_examples_trained == 5
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(ConfigError, match="until_examples_trained"):
            DemoConfig(until_examples_trained=bad)
    with pytest.raises(ConfigError, match="duration_s must be a number > 0, got 0"):
        DemoConfig(duration_s=0)
    with pytest.raises(ConfigError, match="live must be None, true or false"):
        DemoConfig(live="yes")
