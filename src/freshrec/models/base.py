"""What every CTR model shares: an embedder for the sparse slots and a dense interaction part.

A model is ``logits = interact(embedder(sparse, now), dense)``. The embedder is usually a
:class:`freshrec.nn.PooledEmbedding` (all slots of one dim ``D``), but any module with the same
call signature, ``slot_names`` and ``dim`` will do, which is how benchmarks run the same model
on static ``nn.EmbeddingBag`` tables or on no embeddings at all (``interact`` alone).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from freshrec.errors import InputError
from freshrec.features.jagged import JaggedBatch

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
    :meth:`interact`. Attributes ``n_slots`` (``F``), ``dim`` (``D``), ``n_dense`` and
    ``in_dim`` (``F * D + n_dense``, the width of the flat input) are set here.
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
