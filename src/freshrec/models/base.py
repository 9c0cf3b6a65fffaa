"""What every CTR model shares: an embedder for the sparse slots and a dense interaction part.

A model is ``logits = interact(embedder(sparse, now), dense)``. The embedder is usually a
:class:`freshrec.nn.PooledEmbedding` (all slots of one dim ``D``), but any module with the same
call signature, ``slot_names`` and ``dim`` will do, which is how benchmarks run the same model
on static ``nn.EmbeddingBag`` tables or on no embeddings at all (``interact`` alone).

For serving, a model regroups its arithmetic around the user/candidate split of its input
(:meth:`CTRModel.serving_split`, :mod:`freshrec.models.split`): serving knows no model class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from freshrec.errors import InputError
from freshrec.features.jagged import JaggedBatch
from freshrec.models.split import Ops, ServingSplit, serving_order

T = TypeVar("T")

__all__ = ["Embedder", "CTRModel"]


@runtime_checkable
class Embedder(Protocol):
    """A module mapping a sparse batch to pooled embeddings of shape (B, F, D)."""

    slot_names: list[str]

    @property
    def dim(self) -> int:
        """The common embedding width ``D``."""
        ...

    def __call__(self, batch: JaggedBatch, now: int | None = None) -> torch.Tensor: ...


class CTRModel(nn.Module):
    """Base class: embeds the sparse slots, checks the dense input, calls :meth:`interact`.

    Subclasses build their layers in ``__init__`` (after calling this one) and implement
    :meth:`interact`, and :meth:`serving_split` for fast serving. Attributes ``n_slots``
    (``F``), ``dim`` (``D``), ``n_dense`` and ``in_dim`` (``F * D + n_dense``, the width of the
    flat input :func:`~freshrec.models.layers.flat_input`) are set here.
    """

    def __init__(self, embedding: Embedder | Any, n_dense: int) -> None:
        super().__init__()
        if isinstance(n_dense, bool) or not isinstance(n_dense, int) or n_dense < 0:
            raise InputError(f"{type(self).__name__}: n_dense must be an int >= 0, "
                             f"got {n_dense!r}")
        self.embedding = embedding
        self.n_slots = len(embedding.slot_names)
        self.dim = int(embedding.dim)
        self.n_dense = n_dense
        self.in_dim = self.n_slots * self.dim + n_dense

    def forward(self, sparse: JaggedBatch, dense: torch.Tensor,
                now: int | None = None) -> torch.Tensor:
        """Logits of shape (B,) for a sparse batch and dense features (B, n_dense) float32.

        ``now`` (event-time seconds) is required in training mode: it admits new fids and
        stamps their last-seen time.
        """
        b = sparse.batch_size
        if dense.dim() != 2 or dense.shape != (b, self.n_dense):
            raise InputError(f"{type(self).__name__}: dense must have shape ({b}, "
                             f"{self.n_dense}), got {tuple(dense.shape)}")
        if dense.dtype != torch.float32:
            raise InputError(f"{type(self).__name__}: dense must be float32, got {dense.dtype}")
        return self.interact(self.embedding(sparse, now), dense)

    def interact(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Logits (B,) from pooled embeddings (B, F, D) and dense features (B, n_dense)."""
        raise NotImplementedError

    def concat_axes(self) -> dict[str, tuple[int, ...]]:
        """The parameters (``state_dict`` names) indexed by the columns of the flat input
        ``[e_flat, x]`` (:func:`~freshrec.models.layers.flat_input`), each with those axes:
        what a warm start re-positions when features are added or removed
        (:func:`freshrec.train.warm.warm_start`).

        Raises
        ------
        NotImplementedError
            The model does not say (a model class must override this to be warm-started).
        """
        raise NotImplementedError(f"{type(self).__name__}.concat_axes: the model does not say "
                                  "which parameters read the concat")

    def serving_split(self, user_cols: Sequence[int], cand_cols: Sequence[int]) -> ServingSplit:
        """The model regrouped for one user against N candidates (:mod:`freshrec.models.split`):
        ``user_cols`` are the flat input's columns that hold the user's features (the same for
        every candidate), ``cand_cols`` the others, each in the order of ``xu`` and ``xc``.

        This default rebuilds the whole input per request and calls :meth:`interact` (any
        model, torch only, reading the model's parameters); models override it with a
        regrouped split that serving runs fast, holding copies of the current parameters.

        Raises
        ------
        InputError
            ``user_cols`` and ``cand_cols`` do not split the ``in_dim`` columns.
        """
        order = serving_order(self.in_dim, user_cols, cand_cols)
        return ServingSplit(user=torch.zeros(len(user_cols), 0),
                            cand=torch.zeros(len(cand_cols), 0), bias=torch.zeros(0),
                            interaction=_Whole(_InServingOrder(self, order)))


class _InServingOrder(nn.Module):
    """``model.interact`` over the flat input in serving column order ``order``, as (n, 1)."""

    inverse: torch.Tensor

    def __init__(self, model: CTRModel, order: list[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("inverse", torch.argsort(torch.tensor(order, dtype=torch.long)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = x[:, self.inverse]
        fd = m.n_slots * m.dim
        return m.interact(x[:, :fd].reshape(-1, m.n_slots, m.dim), x[:, fd:]).unsqueeze(1)

    def __repr__(self) -> str:
        return f"{type(self.model).__name__}.interact (the model has no serving split)"


class _Whole:
    """The interaction of the default split: ``module([xu, xc])``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, ops: Ops[T], h: T, xu: T, xc: T) -> T:
        return ops.call(self.module, ops.concat([ops.expand_rows(xu, xc), xc]))
