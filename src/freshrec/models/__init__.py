"""CTR models over table-backed embeddings: DeepFM, Wide & Deep and DCN-v2.

Each model holds an embedder (a :class:`freshrec.nn.PooledEmbedding` whose slots share one
dim ``D``) and is called as ``model(sparse, dense, now) -> logits (B,)``: the sparse slots
become a (B, F, D) tensor, which the model's dense part combines with the (B, n_dense) dense
features. Embedding rows are updated by the tables' own optimizers during ``backward``; the
dense parameters are trained by any standard torch optimizer over ``model.parameters()``.
Models are chosen and sized by a :class:`ModelConfig` through :func:`build_model`.

Examples
--------
>>> import torch
>>> from freshrec.features import JaggedBatch
>>> from freshrec.nn import PooledEmbedding, SlotSpec
>>> from freshrec.table import EmbeddingTable, OptimizerConfig, TableConfig
>>> from freshrec.models import build_model
>>> _ = torch.manual_seed(0)
>>> table = EmbeddingTable(TableConfig(name="ids", dim=4,
...                        optimizer=OptimizerConfig(kind="adagrad", lr=0.1)))
>>> emb = PooledEmbedding({"ids": table}, {"user": SlotSpec(table="ids"),
...                                        "item": SlotSpec(table="ids")})
>>> model = build_model(ModelConfig(kind="deepfm", mlp=[8]), emb, n_dense=1)
>>> opt = torch.optim.Adam(model.parameters(), lr=1e-2)
>>> batch = JaggedBatch.from_dict({"user": [[1], [2]], "item": [[5], [6]]})
>>> loss = torch.nn.functional.binary_cross_entropy_with_logits(
...     model(batch, torch.zeros(2, 1), now=0), torch.tensor([1.0, 0.0]))
>>> opt.zero_grad(); loss.backward(); opt.step()     # table rows step inside backward
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from freshrec._lazy import lazy_attribute
from freshrec.models.config import ModelConfig, ModelKind, model_config_from_dict

if TYPE_CHECKING:
    from freshrec.models.base import CTRModel, Embedder
    from freshrec.models.dcn import CrossLayer, DCNv2
    from freshrec.models.deepfm import DeepFM
    from freshrec.models.factory import build_model
    from freshrec.models.layers import MLP, flat_input
    from freshrec.models.wide_deep import WideDeep

#: Public name -> the module that defines it, imported on first use: reading a config
#: (``freshrec.config`` takes this package's section from here) does not load torch.
_LAZY = {"CTRModel": "base", "Embedder": "base", "CrossLayer": "dcn", "DCNv2": "dcn",
         "DeepFM": "deepfm", "build_model": "factory", "MLP": "layers", "flat_input": "layers",
         "WideDeep": "wide_deep"}

__all__ = [
    "CTRModel",
    "CrossLayer",
    "DCNv2",
    "DeepFM",
    "Embedder",
    "MLP",
    "ModelConfig",
    "ModelKind",
    "WideDeep",
    "build_model",
    "flat_input",
    "model_config_from_dict",
]


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)
