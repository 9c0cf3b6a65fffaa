"""DeepFM (Guo et al., 2017): first-order linear + FM second-order interactions + MLP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from freshrec.models.base import CTRModel, Embedder
from freshrec.models.layers import MLP, flat_input
from freshrec.models.split import FM, ServingSplit, Sum, column_mask, linear_and_mlp

__all__ = ["DeepFM"]


class DeepFM(CTRModel):
    """DeepFM over pooled slot embeddings and dense features.

    ``logit = w . [e_flat, x] + b + 0.5 * sum_d((sum_f e_fd)^2 - sum_f e_fd^2) + MLP([e_flat, x])``
    where ``e`` is the (B, F, D) output of the embedder and ``x`` the dense features.

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
    >>> table = EmbeddingTable(TableConfig(name="ids", dim=4))
    >>> emb = PooledEmbedding({"ids": table}, {"user": SlotSpec(table="ids"),
    ...                                        "item": SlotSpec(table="ids")})
    >>> model = DeepFM(emb, n_dense=2, mlp=[8, 8])
    >>> batch = JaggedBatch.from_dict({"user": [[1], [2], [3]], "item": [[10], [11], []]})
    >>> model(batch, torch.zeros(3, 2), now=0).shape
    torch.Size([3])
    """

    def __init__(self, embedding: Embedder | Any, n_dense: int, *,
                 mlp: Sequence[int] = (400, 400, 400), dropout: float = 0.0) -> None:
        super().__init__(embedding, n_dense)
        self.linear = nn.Linear(self.in_dim, 1)
        self.mlp = MLP(self.in_dim, mlp, dropout=dropout, out_dim=1)

    def interact(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Logits (B,) from pooled embeddings (B, F, D) and dense features (B, n_dense)."""
        x = flat_input(emb, dense)
        s = emb.sum(dim=1)
        fm = 0.5 * (s * s - (emb * emb).sum(dim=1)).sum(dim=1)
        return (self.linear(x) + self.mlp(x)).squeeze(1) + fm

    def concat_axes(self) -> dict[str, tuple[int, ...]]:
        """The linear unit's and the MLP's first layer's input columns (the FM term has
        no parameters)."""
        return {"linear.weight": (1,), "mlp.0.weight": (1,)}

    def serving_split(self, user_cols: Sequence[int], cand_cols: Sequence[int]) -> ServingSplit:
        """The MLP's first layer, the linear unit and the FM sum vector ``s = sum_f e_f`` (D
        units of 0/1 weights) as one first linear map, split into user and candidate blocks;
        the rest of the MLP, the linear unit and ``0.5 * (|s|^2 - sum_f |e_f|^2)`` as the
        interaction (see :meth:`CTRModel.serving_split
        <freshrec.models.base.CTRModel.serving_split>`)."""
        weight, bias, terms = linear_and_mlp(self.linear, self.mlp)
        d, fd = self.dim, self.n_slots * self.dim
        sums = torch.zeros(d, self.in_dim)
        sums[:, :fd] = torch.eye(d).repeat(1, self.n_slots)
        fm = FM(start=int(weight.shape[0]), dim=d,
                user_sq=column_mask(user_cols, lambda c: c < fd),
                cand_sq=column_mask(cand_cols, lambda c: c < fd))
        return ServingSplit.from_first_layer(torch.cat([weight, sums]),
                                             torch.cat([bias, torch.zeros(d)]),
                                             user_cols, cand_cols, Sum((*terms, fm)))
