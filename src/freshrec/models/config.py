"""Configuration of the CTR models: which model, the MLP sizes, dropout and cross layers.

:class:`ModelConfig` is a frozen, keyword-only dataclass validated when built;
:func:`model_config_from_dict` builds one from a plain mapping (parsed YAML) and rejects
unknown keys, naming them and where they came from.

Examples
--------
>>> ModelConfig(kind="dcn_v2", cross_layers=2).mlp
(400, 400, 400)
>>> model_config_from_dict({"kind": "wide_deep"}).mlp      # Wide & Deep's default: 3 x 256
(256, 256, 256)
>>> model_config_from_dict({"kind": "deepfm", "mlpp": [8]},
...                        where="model in cfg.yaml")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
freshrec.errors.ConfigError: model in cfg.yaml: unknown key 'mlpp' (expected one of: ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum, unique
from typing import Any

from freshrec._validate import check_keys, is_int, is_number, require
from freshrec.errors import ConfigError

__all__ = ["ModelKind", "ModelConfig", "model_config_from_dict"]


@unique
class ModelKind(StrEnum):
    """The models :func:`freshrec.models.build_model` can build."""

    DEEPFM = "deepfm"
    """DeepFM (Guo et al. 2017): linear + FM second-order interactions + MLP."""
    WIDE_DEEP = "wide_deep"
    """Wide & Deep (Cheng et al. 2016): a wide linear part + a deep MLP."""
    DCN_V2 = "dcn_v2"
    """DCN-v2 (Wang et al. 2021): full-rank cross layers, then an MLP (stacked)."""


_DEFAULT_MLP = {
    ModelKind.DEEPFM: (400, 400, 400),
    ModelKind.WIDE_DEEP: (256, 256, 256),
    ModelKind.DCN_V2: (400, 400, 400),
}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which model to build and its dense sizes.

    Parameters
    ----------
    kind : ModelKind
        ``deepfm``, ``wide_deep`` or ``dcn_v2``.
    mlp : tuple of int, optional
        Hidden layer widths of the deep part. Defaults to 400-400-400 for DeepFM and DCN-v2
        and to 256-256-256 for Wide & Deep (the Meituan write-up's model).
    dropout : float
        Dropout probability after each hidden layer, in [0, 1).
    cross_layers : int
        Number of DCN-v2 cross layers (ignored by the other models).
    """

    kind: ModelKind = ModelKind.DEEPFM
    mlp: tuple[int, ...] | None = None
    dropout: float = 0.0
    cross_layers: int = 3

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", ModelKind(self.kind))
        except ValueError as e:
            raise ConfigError(
                f"ModelConfig: kind must be one of {[k.value for k in ModelKind]}, "
                f"got {self.kind!r}"
            ) from e
        if self.mlp is None:
            object.__setattr__(self, "mlp", _DEFAULT_MLP[self.kind])
        require(
            isinstance(self.mlp, list | tuple)
            and all(is_int(w) and w >= 1 for w in self.mlp),
            "ModelConfig", "mlp", "a list of ints >= 1 (hidden layer widths)", self.mlp,
        )
        object.__setattr__(self, "mlp", tuple(int(w) for w in self.mlp))  # type: ignore[union-attr]
        require(is_number(self.dropout) and 0 <= self.dropout < 1, "ModelConfig", "dropout",
                "a number in [0, 1)", self.dropout)
        require(is_int(self.cross_layers) and self.cross_layers >= 0, "ModelConfig",
                "cross_layers", "an int >= 0", self.cross_layers)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping that :func:`model_config_from_dict` reads back."""
        return {"kind": self.kind.value, "mlp": list(self.mlp or ()), "dropout": self.dropout,
                "cross_layers": self.cross_layers}


def model_config_from_dict(data: Mapping[str, Any], where: str = "model") -> ModelConfig:
    """Build a :class:`ModelConfig` from a mapping; unknown keys are a :class:`ConfigError`.

    ``where`` names the source in error messages (e.g. ``"model in configs/criteo.yaml"``).
    """
    check_keys(data, {"kind", "mlp", "dropout", "cross_layers"}, where)
    try:
        return ModelConfig(**data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
