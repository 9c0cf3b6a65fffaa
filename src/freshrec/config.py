"""The whole freshrec configuration, loaded from YAML.

Top-level keys are the fields of :class:`FreshrecConfig`: ``features`` (tables, slots,
dense fields, labels), ``model``, ``train``, ``data`` (default reader), ``online`` (the
online trainer) and ``sync`` (what is published to the registry, and how often). An unknown key
anywhere is an error that names the key and the file. ``--set a.b=v`` overrides from the CLI
are applied to the parsed YAML before validation (values parsed as YAML scalars).

Examples
--------
>>> cfg = config_from_dict({
...     "features": {"tables": {"item": {"dim": 8}}, "slots": {"item_id": {"table": "item"}}},
...     "model": {"kind": "deepfm", "mlp": [16]},
... }, where="inline")
>>> cfg.model.kind.value, cfg.train.batch_size
('deepfm', 512)
>>> apply_overrides({"train": {"epochs": 1}}, ["train.epochs=3", "model.kind=dcn_v2"])
{'train': {'epochs': 3}, 'model': {'kind': 'dcn_v2'}}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from freshrec._validate import check_keys
from freshrec.errors import ConfigError
from freshrec.features.config import FeatureConfig, feature_config_from_dict
from freshrec.models.config import ModelConfig, model_config_from_dict
from freshrec.sync.config import PublisherConfig
from freshrec.train.config import OnlineConfig, TrainConfig

__all__ = ["FreshrecConfig", "DataConfig", "load_config", "config_from_dict", "apply_overrides"]


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Default data source of ``freshrec train`` (the CLI's ``--data``/``--format`` win)."""

    format: str = ""
    path: str = ""
    chunk_rows: int = 8192
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class FreshrecConfig:
    """Features, model, training and data settings, plus the raw mapping they came from."""

    features: FeatureConfig
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    sync: PublisherConfig = field(default_factory=PublisherConfig)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def fingerprint(self) -> str:
        """Hash of the features and model sections: checkpoints refuse another one."""
        key = json.dumps({"features": self.raw.get("features"), "model": self.raw.get("model")},
                         sort_keys=True, default=str)
        return hashlib.sha256(key.encode()).hexdigest()[:16]


_TOP = {"features", "model", "train", "data", "online", "sync"}


def _typed(cls: type, data: Any, where: str) -> Any:
    data = data or {}
    check_keys(data, {f.name for f in dataclasses.fields(cls)}, where)
    try:
        return cls(**data)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from e


def config_from_dict(data: Mapping[str, Any], where: str = "config") -> FreshrecConfig:
    """Validate a parsed YAML mapping into a :class:`FreshrecConfig`."""
    check_keys(data, _TOP, where)
    if "features" not in data:
        raise ConfigError(f"{where}: missing required key 'features'")
    return FreshrecConfig(
        features=feature_config_from_dict(data["features"], where=f"{where}: features"),
        model=model_config_from_dict(data.get("model") or {}, where=f"{where}: model"),
        train=_typed(TrainConfig, data.get("train"), f"{where}: train"),
        data=_typed(DataConfig, data.get("data"), f"{where}: data"),
        online=_typed(OnlineConfig, data.get("online"), f"{where}: online"),
        sync=_typed(PublisherConfig, data.get("sync"), f"{where}: sync"),
        raw=json.loads(json.dumps(data, default=str)),
    )


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested mapping in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
        key, value = item.split("=", 1)
        parts = key.split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(value)
    return data


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> FreshrecConfig:
    """Read a YAML config file, apply overrides and validate; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"config file {str(path)!r} does not exist") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return config_from_dict(apply_overrides(data, overrides), where=str(path))
