"""The whole freshrec configuration: one YAML document with a section for each stage.

Top-level keys are the fields of :class:`FreshrecConfig`. The model and how it learns:
``features`` (tables, slots, dense fields, labels), ``model``, ``train``, ``data`` (the batch
reader), ``online`` (the online trainer) and ``sync`` (what is published to the registry, and
how often). Then one section per command that runs a stage: ``simulate``, ``join``, ``serve``
and ``demo`` (``configs/demo.yaml`` has them all), and ``ops`` (alerts, the publish gate,
automatic rollback). Every default lives in the section's
dataclass; a command's flags are shorthands for ``--set section.key=value``.

An unknown key anywhere is an error that names the key and the file. ``--set a.b=v``
overrides are applied to the parsed YAML before validation (values parsed as YAML scalars).
Only ``features`` is required, and only to build a model: :func:`section_from_dict` reads
one stage's section of a document that has no model.

Examples
--------
>>> cfg = config_from_dict({
...     "features": {"tables": {"item": {"dim": 8}}, "slots": {"item_id": {"table": "item"}}},
...     "model": {"kind": "deepfm", "mlp": [16]},
...     "join": {"window_s": 60},
... }, where="inline")
>>> cfg.model.kind.value, cfg.train.batch_size, cfg.join.window_s, cfg.serve.port
('deepfm', 512, 60, 8000)
>>> apply_overrides({"train": {"epochs": 1}}, ["train.epochs=3", ("model.kind", "dcn_v2")])
{'train': {'epochs': 3}, 'model': {'kind': 'dcn_v2'}}
>>> section_from_dict("join", {"join": {"workers": 2}}, where="inline").workers
2
>>> section_from_dict("join", {"join": {"wrokers": 2}}, where="j.yaml")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
freshrec.errors.ConfigError: j.yaml: join: unknown key 'wrokers' (expected one of: ...)
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from freshrec._validate import build_config, check_keys
from freshrec.data.simulate import SimulateJobConfig
from freshrec.demo.config import DemoConfig
from freshrec.dist.config import DistConfig
from freshrec.errors import ConfigError
from freshrec.features.config import FeatureConfig, feature_config_from_dict
from freshrec.models.config import ModelConfig, model_config_from_dict
from freshrec.ops.config import OpsConfig
from freshrec.serve.config import ServeJobConfig
from freshrec.stream.config import JoinJobConfig
from freshrec.sync.config import PublisherConfig
from freshrec.train.config import OnlineConfig, TrainConfig

__all__ = [
    "FreshrecConfig",
    "DataConfig",
    "SECTIONS",
    "load_config",
    "read_document",
    "config_from_dict",
    "section_from_dict",
    "apply_overrides",
]

#: An override: ``"a.b=value"`` (value parsed as YAML) or ``("a.b", value)``.
Override = str | tuple[str, Any]


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Default data source of ``freshrec train`` (the CLI's ``--data``/``--format`` set it)."""

    format: str = ""
    path: str = ""
    chunk_rows: int = 8192
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class FreshrecConfig:
    """Every section of the config document, plus the raw mapping they came from."""

    features: FeatureConfig
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    sync: PublisherConfig = field(default_factory=PublisherConfig)
    simulate: SimulateJobConfig = field(default_factory=SimulateJobConfig)
    join: JoinJobConfig = field(default_factory=JoinJobConfig)
    serve: ServeJobConfig = field(default_factory=ServeJobConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def fingerprint(self) -> str:
        """Hash of the features and model sections: checkpoints refuse another one.

        The order of the tables, slots and dense features is part of it (it is the order of
        the model's input columns); the order of other keys is not.
        """
        f = self.features
        key = json.dumps({"features": self.raw.get("features"), "model": self.raw.get("model"),
                          "order": [[t.name for t in f.tables], [s.name for s in f.slots],
                                    [d.name for d in f.dense]]},
                         sort_keys=True, default=str)
        return hashlib.sha256(key.encode()).hexdigest()[:16]


#: Top-level key of the document -> the type of its section.
SECTIONS: Mapping[str, type] = {k: v for k, v in typing.get_type_hints(FreshrecConfig).items()
                                if k != "raw"}

#: Sections with a builder of their own (the others are built by :func:`build_config`).
_BUILDERS: dict[str, Callable[..., Any]] = {
    "features": feature_config_from_dict,
    "model": model_config_from_dict,
}


def _sections(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Every section of ``data``, validated (absent ones at their defaults; no features)."""
    check_keys(data, set(SECTIONS), where)
    out = {}
    for name, cls in SECTIONS.items():
        if name == "features" and name not in data:
            continue
        body, here = data.get(name), f"{where}: {name}"
        out[name] = (_BUILDERS[name](body or {}, where=here) if name in _BUILDERS
                     else build_config(cls, body, here))
    return out


def config_from_dict(data: Mapping[str, Any], where: str = "config") -> FreshrecConfig:
    """Validate a parsed YAML document into a :class:`FreshrecConfig` (``features`` required)."""
    check_keys(data, set(SECTIONS), where)
    if "features" not in data:
        raise ConfigError(f"{where}: missing required key 'features'")
    return FreshrecConfig(**_sections(data, where), raw=json.loads(json.dumps(data, default=str)))


def section_from_dict(name: str, data: Mapping[str, Any], where: str = "config") -> Any:
    """The validated section ``name`` of a parsed YAML document; ``features`` is not required.

    Every section present is validated, so a typo anywhere in the document is reported.
    """
    if name not in SECTIONS or name == "features":
        raise ConfigError(f"{where}: {name!r} is not a stage section "
                          f"(one of: {', '.join(n for n in SECTIONS if n != 'features')})")
    return _sections(data, where)[name]


def apply_overrides(data: dict[str, Any], overrides: Sequence[Override]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) or ``(key, value)`` pairs to a
    nested mapping, in place and in order (the last one wins)."""
    for item in overrides:
        if isinstance(item, str):
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
            key, text = item.split("=", 1)
            value = yaml.safe_load(text)
        else:
            key, value = item
        parts = key.split(".")
        node = data
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a mapping")
        node[parts[-1]] = value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]  # (no stubs for yaml)
    """YAML's safe loader, refusing a key that appears twice in one mapping (YAML keeps the
    last one silently: a second ``dim:`` under a table would win without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice in one mapping (first on line "
                        f"{first[key] + 1})", key_node.start_mark)
                first[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the constructor below says so
                pass
        return super().construct_mapping(node, deep)


def read_document(path: str | Path | None, overrides: Sequence[Override] = ()) -> dict[str, Any]:
    """The YAML document at ``path`` (``None``: an empty one) with ``overrides`` applied.

    Nothing is validated yet; errors in reading it name the file.
    """
    data: Any = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}  # noqa: S506
        except FileNotFoundError as e:
            raise ConfigError(f"config file {str(path)!r} does not exist") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e})") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    return apply_overrides(data, overrides)


def load_config(path: str | Path, overrides: Sequence[Override] = ()) -> FreshrecConfig:
    """Read a YAML config file, apply overrides and validate; errors name the file."""
    return config_from_dict(read_document(path, overrides), where=str(path))
