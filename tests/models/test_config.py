from __future__ import annotations

import pytest

from freshrec.errors import ConfigError
from freshrec.models import ModelConfig, ModelKind, model_config_from_dict


def test_defaults_per_kind():
    assert ModelConfig().kind is ModelKind.DEEPFM
    assert ModelConfig().mlp == (400, 400, 400)
    assert ModelConfig(kind="wide_deep").mlp == (256, 256, 256)
    assert ModelConfig(kind="dcn_v2").cross_layers == 3


def test_round_trip_through_dict():
    cfg = ModelConfig(kind="dcn_v2", mlp=[32, 16], dropout=0.1, cross_layers=2)
    assert cfg.mlp == (32, 16)
    assert model_config_from_dict(cfg.to_dict()) == cfg


def test_positional_arguments_are_refused():
    with pytest.raises(TypeError):
        ModelConfig("deepfm")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "fm"}, "kind must be one of"),
        ({"mlp": [400, 0]}, "mlp must be a list of ints >= 1"),
        ({"mlp": 400}, "mlp must be a list of ints >= 1"),
        ({"mlp": [1.5]}, "mlp must be a list of ints >= 1"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\), got 1.0"),
        ({"dropout": True}, "dropout must be"),
        ({"cross_layers": -1}, "cross_layers must be an int >= 0, got -1"),
    ],
)
def test_invalid_values_name_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)


def test_from_dict_names_unknown_key_and_source():
    with pytest.raises(ConfigError, match=r"model in a\.yaml: unknown key 'layers'"):
        model_config_from_dict({"kind": "deepfm", "layers": [8]}, where="model in a.yaml")
    with pytest.raises(ConfigError, match=r"model in a\.yaml: ModelConfig: dropout"):
        model_config_from_dict({"dropout": -0.1}, where="model in a.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        model_config_from_dict(["deepfm"], where="model")  # type: ignore[arg-type]
