"""``freshrec.config``: one document, a section per stage, overrides, errors naming the file."""

from __future__ import annotations

import dataclasses

import pytest

from freshrec.config import (
    SECTIONS,
    FreshrecConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    read_document,
    section_from_dict,
)
from freshrec.data.simulate import SimulateJobConfig
from freshrec.errors import ConfigError
from freshrec.serve.config import ServeJobConfig
from freshrec.stream.config import JoinJobConfig, ValidationConfig

MODEL = {"features": {"tables": {"item": {"dim": 4}}, "slots": {"item_id": {"table": "item"}}}}


def test_every_field_is_a_top_level_key():
    fields = {f.name for f in dataclasses.fields(FreshrecConfig)} - {"raw"}
    assert set(SECTIONS) == fields
    assert SECTIONS["join"] is JoinJobConfig and SECTIONS["serve"] is ServeJobConfig
    assert SECTIONS["simulate"] is SimulateJobConfig


def test_stage_sections_are_built_and_typed():
    cfg = config_from_dict({**MODEL, "join": {"actions": ["click", "like"], "window_s": 30,
                                              "validation": {"window_s": 60}},
                            "simulate": {"n_items": 10, "candidates": 5},
                            "serve": {"port": 0, "registry": "reg"}}, where="x.yaml")
    assert cfg.join.actions == ("click", "like") and cfg.join.window_s == 30
    assert cfg.join.validation == ValidationConfig(window_s=60)
    assert (cfg.simulate.n_items, cfg.simulate.candidates) == (10, 5)
    assert (cfg.serve.port, cfg.serve.registry) == (0, "reg")
    assert cfg.demo.duration_s == 120.0  # absent: the dataclass's defaults


@pytest.mark.parametrize("section, body, message", [
    ("join", {"windw_s": 3}, r"x\.yaml: join: unknown key 'windw_s'"),
    ("join", {"validation": {"window": 3}}, r"x\.yaml: join: validation: unknown key 'window'"),
    ("serve", {"engine": "tvm"}, r"x\.yaml: serve: ServeConfig: engine must be one of"),
    ("simulate", {"events": 0}, r"x\.yaml: simulate: SimulateJobConfig: events must be None "
                                r"or an int >= 1, got 0"),
    ("demo", {"duration_s": -1}, r"x\.yaml: demo: DemoConfig: duration_s must be a number > 0"),
])
def test_errors_name_the_file_the_section_and_the_key(section, body, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**MODEL, section: body}, where="x.yaml")
    with pytest.raises(ConfigError, match=message):  # the same without a model
        section_from_dict(section, {section: body}, where="x.yaml")


def test_a_stage_section_needs_no_model_but_the_whole_document_is_checked():
    assert section_from_dict("join", {"join": {"workers": 2}}).workers == 2
    assert section_from_dict("serve", {}).port == 8000
    with pytest.raises(ConfigError, match=r"y\.yaml: serve: unknown key 'prot'"):
        section_from_dict("join", {"join": {}, "serve": {"prot": 1}}, where="y.yaml")
    with pytest.raises(ConfigError, match=r"y\.yaml: unknown key 'jion'"):
        section_from_dict("join", {"jion": {}}, where="y.yaml")
    with pytest.raises(ConfigError, match="'features' is not a stage section"):
        section_from_dict("features", MODEL)
    with pytest.raises(ConfigError, match=r"y\.yaml: missing required key 'features'"):
        config_from_dict({"join": {}}, where="y.yaml")


def test_the_fingerprint_covers_the_model_only():
    a = config_from_dict(MODEL)
    b = config_from_dict({**MODEL, "join": {"window_s": 5}, "serve": {"port": 1},
                          "train": {"batch_size": 8}})
    c = config_from_dict({**MODEL, "model": {"mlp": [8]}})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_the_fingerprint_covers_the_order_of_the_model_inputs():
    """Slots and dense features are the model's input columns, in order: a checkpoint must
    not load under a config that lists them in another order (their mappings' keys were
    sorted before hashing, so a reordered document loaded with its columns swapped)."""
    feats = {"tables": {"t": {"dim": 4}},
             "slots": {"a": {"table": "t"}, "b": {"table": "t"}},
             "dense": {"x": {}, "y": {}}}
    base = config_from_dict({"features": feats})
    slots = config_from_dict({"features": {**feats, "slots": {"b": {"table": "t"},
                                                             "a": {"table": "t"}}}})
    dense = config_from_dict({"features": {**feats, "dense": {"y": {}, "x": {}}}})
    same = config_from_dict({"features": dict(reversed(list(feats.items())))})
    assert len({base.fingerprint(), slots.fingerprint(), dense.fingerprint()}) == 3
    assert same.fingerprint() == base.fingerprint()  # the order of other keys does not count


def test_overrides_apply_in_order_and_create_sections():
    data = {"join": {"validation": None}, "train": {"epochs": 1}}
    apply_overrides(data, ["train.epochs=3", ("join.validation.window_s", 30),
                           ("train.epochs", 5), "serve.engine=torch"])
    assert data == {"join": {"validation": {"window_s": 30}}, "train": {"epochs": 5},
                    "serve": {"engine": "torch"}}
    with pytest.raises(ConfigError, match=r"--set 'train': expected KEY.PATH=VALUE"):
        apply_overrides(data, ["train"])
    with pytest.raises(ConfigError, match=r"--set train.epochs.x: 'epochs' is not a mapping"):
        apply_overrides(data, ["train.epochs.x=1"])


def test_read_document_names_the_file(tmp_path):
    assert read_document(None, ["join.window_s=5"]) == {"join": {"window_s": 5}}
    with pytest.raises(ConfigError, match="config file '.*nope.yaml' does not exist"):
        read_document(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("join: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        read_document(bad)
    bad.write_text("- join\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: expected a mapping at the top level"):
        read_document(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_document(empty) == {}


def test_load_config_applies_overrides_before_validating(tmp_path):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**MODEL, "join": {"window_s": 5}}))
    assert load_config(path, ["join.window_s=7"]).join.window_s == 7
    with pytest.raises(ConfigError, match=r"c\.yaml: join: unknown key 'windw_s'"):
        load_config(path, ["join.windw_s=7"])


def test_a_key_twice_in_one_mapping_is_an_error_naming_both_lines(tmp_path):
    """YAML keeps the last of two equal keys without a word: a second ``dim:`` under a
    table won silently. Now an error naming the key and both lines; the same key in two
    different mappings is fine, and a file that is not UTF-8 is named as such."""
    p = tmp_path / "dup.yaml"
    p.write_text("features:\n  tables:\n    user:\n      dim: 8\n    item:\n      dim: 4\n"
                 "    user:\n      dim: 16\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: not valid YAML \(key 'user' appears "
                                          r"twice in one mapping \(first on line 3\)"
                                          r"(.|\n)*line 7"):
        load_config(p)
    p.write_bytes(b"model:\n  kind: deepfm\n  \xff: 1\n")
    with pytest.raises(ConfigError, match="dup.yaml: not UTF-8 text"):
        load_config(p)
