"""DCN-v2 (Wang et al., 2021): full-rank cross layers followed by an MLP (stacked)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from freshrec.models.base import CTRModel, Embedder
from freshrec.models.layers import MLP, flat_input
from freshrec.models.split import Cross, Mlp, MlpTail, ServingSplit, serving_order

__all__ = ["CrossLayer", "DCNv2"]


class CrossLayer(nn.Module):
    """One DCN-v2 cross layer: ``x_next = x0 * (W x + b) + x`` with a full-rank ``W``.

    Examples
    --------
    >>> layer = CrossLayer(3)
    >>> x0 = torch.ones(2, 3)
    >>> torch.equal(layer(x0, x0), x0)   # W and b start at zero: the identity
    True
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class DCNv2(CTRModel):
    """DCN-v2 (stacked) over pooled slot embeddings and dense features.

    ``x0 = [e_flat, x]``; ``cross_layers`` cross layers give ``x_L``; ``logit = MLP(x_L)``.
    Cross weights start at zero, so an untrained cross stack is the identity.

    Parameters
    ----------
    embedding : PooledEmbedding
        Embeds the F sparse slots, all of one dim D.
    n_dense : int
        Number of dense features.
    mlp : sequence of int
        Hidden widths of the MLP after the cross layers.
    dropout : float
        Dropout after each hidden layer.
    cross_layers : int
        Number of cross layers.

    Examples
    --------
    >>> from freshrec.features import JaggedBatch
    >>> from freshrec.nn import PooledEmbedding, SlotSpec
    >>> from freshrec.table import EmbeddingTable, TableConfig
    >>> _ = torch.manual_seed(0)
    >>> emb = PooledEmbedding({"ids": EmbeddingTable(TableConfig(name="ids", dim=4))},
    ...                       {"a": SlotSpec(table="ids"), "b": SlotSpec(table="ids")})
    >>> model = DCNv2(emb, n_dense=1, mlp=[16], cross_layers=2)
    >>> len(model.cross), model.in_dim
    (2, 9)
    >>> batch = JaggedBatch.from_dict({"a": [[1], [2]], "b": [[3], [4, 5]]})
    >>> model(batch, torch.zeros(2, 1), now=0).shape
    torch.Size([2])
    """

    def __init__(self, embedding: Embedder | Any, n_dense: int, *,
                 mlp: Sequence[int] = (400, 400, 400), dropout: float = 0.0,
                 cross_layers: int = 3) -> None:
        super().__init__(embedding, n_dense)
        self.cross = nn.ModuleList(CrossLayer(self.in_dim) for _ in range(cross_layers))
        self.mlp = MLP(self.in_dim, mlp, dropout=dropout, out_dim=1)

    def interact(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Logits (B,) from pooled embeddings (B, F, D) and dense features (B, n_dense)."""
        x0 = flat_input(emb, dense)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.mlp(x).squeeze(1)

    def concat_axes(self) -> dict[str, tuple[int, ...]]:
        """Every cross layer's rows, columns and bias (the cross stack keeps the concat's
        layout), and the MLP's first layer's input columns."""
        cross: dict[str, tuple[int, ...]] = {}
        for i in range(len(self.cross)):
            cross |= {f"cross.{i}.linear.weight": (0, 1), f"cross.{i}.linear.bias": (0,)}
        return {**cross, "mlp.0.weight": (1,)}

    def serving_split(self, user_cols: Sequence[int], cand_cols: Sequence[int]) -> ServingSplit:
        """The first cross layer's ``W x0 + b`` as the first linear map, split into user and
        candidate blocks; the cross stack and the MLP, their weights permuted to serving
        column order ``[xu, xc]`` (cross layers commute with a permutation of their input), as
        the interaction. Without cross layers the MLP's first layer is the first map (see
        :meth:`CTRModel.serving_split <freshrec.models.base.CTRModel.serving_split>`)."""
        order = serving_order(self.in_dim, user_cols, cand_cols)
        first, tail = cast(nn.Linear, self.mlp[0]), MlpTail.from_layers(list(self.mlp)[1:])
        if not len(self.cross):
            return ServingSplit.from_first_layer(first.weight, first.bias, user_cols, cand_cols,
                                                 Mlp(0, int(first.out_features), tail))
        cross = [cast(CrossLayer, c).linear for c in self.cross]
        with torch.no_grad():
            layers = tuple((c.weight[order][:, order].t().contiguous(), c.bias[order].clone())
                           for c in cross[1:])
            mlp_first = (first.weight[:, order].t().contiguous(), first.bias.detach().clone())
            w0, b0 = cross[0].weight[order], cross[0].bias[order]
        return ServingSplit.from_first_layer(w0, b0, user_cols, cand_cols,
                                             Cross(layers, mlp_first, tail))
