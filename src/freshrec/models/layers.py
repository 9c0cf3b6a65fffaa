"""Building blocks shared by the models: the MLP tower and the flat feature concatenation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "flat_input"]


class MLP(nn.Sequential):
    """Linear -> ReLU (-> Dropout) per hidden width, then an optional linear output layer.

    Parameters
    ----------
    in_dim : int
        Input width.
    hidden : sequence of int
        Hidden layer widths.
    dropout : float
        Dropout probability after each hidden activation (0 adds no dropout layer).
    out_dim : int or None
        Width of a final linear layer without activation; ``None`` for none.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> mlp = MLP(6, [8, 4], out_dim=1)
    >>> mlp(torch.zeros(3, 6)).shape
    torch.Size([3, 1])
    >>> mlp.out_dim
    1
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], *, dropout: float = 0.0,
                 out_dim: int | None = None) -> None:
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        super().__init__(*layers)
        self.out_dim = width


def flat_input(emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``[emb.flatten(1), dense]``: the (B, F*D + n_dense) input of the linear and deep parts.

    >>> flat_input(torch.zeros(2, 3, 4), torch.ones(2, 5)).shape
    torch.Size([2, 17])
    """
    return torch.cat([emb.flatten(1), dense], dim=1)
