"""Wide & Deep (Cheng et al., 2016): a wide linear part plus a deep MLP, summed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from freshrec.models.base import CTRModel, Embedder
from freshrec.models.layers import MLP, flat_input
from freshrec.models.split import ServingSplit, Sum, linear_and_mlp

__all__ = ["WideDeep"]


class WideDeep(CTRModel):
    """Wide & Deep over pooled slot embeddings and dense features.

    ``logit = w . [e_flat, x] + b  +  MLP([e_flat, x])``. The wide part is linear over the
    same flat input as the deep part; the default deep part is the Meituan write-up's
    3 x 256 MLP.

    Parameters
    ----------
    embedding : PooledEmbedding
        Embeds the F sparse slots, all of one dim D.
    n_dense : int
        Number of dense features.
    mlp : sequence of int
        Hidden widths of the deep part.
    dropout : float
        Dropout after each hidden layer.

    Examples
    --------
    >>> from freshrec.features import JaggedBatch
    >>> from freshrec.nn import PooledEmbedding, SlotSpec
    >>> from freshrec.table import EmbeddingTable, TableConfig
    >>> _ = torch.manual_seed(0)
    >>> emb = PooledEmbedding({"ids": EmbeddingTable(TableConfig(name="ids", dim=4))},
    ...                       {"ad": SlotSpec(table="ids")})
    >>> model = WideDeep(emb, n_dense=3)
    >>> [m.out_features for m in model.deep if isinstance(m, nn.Linear)]
    [256, 256, 256, 1]
    >>> model(JaggedBatch.from_dict({"ad": [[7], [8]]}), torch.ones(2, 3), now=0).shape
    torch.Size([2])
    """

    def __init__(self, embedding: Embedder | Any, n_dense: int, *,
                 mlp: Sequence[int] = (256, 256, 256), dropout: float = 0.0) -> None:
        super().__init__(embedding, n_dense)
        self.wide = nn.Linear(self.in_dim, 1)
        self.deep = MLP(self.in_dim, mlp, dropout=dropout, out_dim=1)

    def interact(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Logits (B,) from pooled embeddings (B, F, D) and dense features (B, n_dense)."""
        x = flat_input(emb, dense)
        return (self.wide(x) + self.deep(x)).squeeze(1)

    def concat_axes(self) -> dict[str, tuple[int, ...]]:
        """The wide unit's and the MLP's first layer's input columns."""
        return {"wide.weight": (1,), "deep.0.weight": (1,)}

    def serving_split(self, user_cols: Sequence[int], cand_cols: Sequence[int]) -> ServingSplit:
        """The wide unit and the MLP's first layer as one first linear map, split into user and
        candidate blocks; the rest of the MLP plus the wide unit as the interaction (see
        :meth:`CTRModel.serving_split <freshrec.models.base.CTRModel.serving_split>`)."""
        weight, bias, terms = linear_and_mlp(self.wide, self.deep)
        return ServingSplit.from_first_layer(weight, bias, user_cols, cand_cols, Sum(terms))
