"""``build_model``: a model from its :class:`~freshrec.models.config.ModelConfig`."""

from __future__ import annotations

from typing import Any

from freshrec.models.base import CTRModel, Embedder
from freshrec.models.config import ModelConfig, ModelKind
from freshrec.models.dcn import DCNv2
from freshrec.models.deepfm import DeepFM
from freshrec.models.wide_deep import WideDeep

__all__ = ["build_model"]


def build_model(config: ModelConfig, embedding: Embedder | Any, n_dense: int) -> CTRModel:
    """Build the model ``config.kind`` around ``embedding`` with ``n_dense`` dense features.

    Parameters
    ----------
    config : ModelConfig
        Which model and its sizes.
    embedding : PooledEmbedding
        Embeds the sparse slots (all of one dim).
    n_dense : int
        Number of dense features.

    Returns
    -------
    CTRModel
        ``model(sparse, dense, now) -> logits (B,)``.

    Examples
    --------
    >>> from freshrec.nn import PooledEmbedding, SlotSpec
    >>> from freshrec.table import EmbeddingTable, TableConfig
    >>> emb = PooledEmbedding({"ids": EmbeddingTable(TableConfig(name="ids", dim=4))},
    ...                       {"ad": SlotSpec(table="ids")})
    >>> type(build_model(ModelConfig(kind="dcn_v2", mlp=[8]), emb, n_dense=2)).__name__
    'DCNv2'
    """
    kind = ModelKind(config.kind)
    mlp = config.mlp or ()
    if kind is ModelKind.DEEPFM:
        return DeepFM(embedding, n_dense, mlp=mlp, dropout=config.dropout)
    if kind is ModelKind.WIDE_DEEP:
        return WideDeep(embedding, n_dense, mlp=mlp, dropout=config.dropout)
    return DCNv2(embedding, n_dense, mlp=mlp, dropout=config.dropout,
                 cross_layers=config.cross_layers)
