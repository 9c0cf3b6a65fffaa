"""Feature importance at the concat layer: gradient times variance (the SmartNews method).

Every model reads its features through one concat, the flat input
``x = [e_1, ..., e_F, d_1, ..., d_K]`` of :func:`~freshrec.models.layers.flat_input`: the
pooled embedding ``e_f`` (``D`` columns) of each slot ``f`` and one column per dense feature
``d_k``. A feature's *block* ``C`` is its set of columns, of width ``|C|``. Over ``N``
examples ``n`` with logits ``z_n`` and the model's parameters held fixed,

.. math::

    I(C) = \\frac{1}{|C|} \\sum_{j \\in C}
           \\underbrace{\\frac{1}{N} \\sum_n \\Big(\\frac{\\partial z_n}{\\partial x_{nj}}
           \\Big)^2}_{\\text{mean squared gradient}}
           \\cdot
           \\underbrace{\\frac{1}{N} \\sum_n (x_{nj} - \\bar x_j)^2}_{\\text{variance}}

Each column's term is the first-order (delta-method) share of the logit's variance that the
column's variation explains, ``Var z ~ sum_j (dz/dx_j)^2 Var x_j``; dividing by ``|C|``
makes a 16-wide slot comparable with a 1-wide dense feature. A feature the model ignores
(zero gradient) and a feature that never varies (zero variance) both score 0; the score is
unchanged by rescaling a column (``x -> s x`` gives gradients ``/ s`` and variance ``* s^2``).

The statistics are kept per column in float64 and merged batch by batch (Chan's parallel
variance), so :class:`FeatureImportance` reads a data set of any size in one pass.

Examples
--------
>>> import torch
>>> blocks = concat_blocks(["user"], dim=2, dense_names=["age"])
>>> [(b.name, b.kind, b.start, b.stop) for b in blocks]
[('user', 'slot', 0, 2), ('age', 'dense', 2, 3)]
>>> imp = FeatureImportance(blocks)
>>> x = torch.tensor([[1.0, 0.0, 5.0], [-1.0, 0.0, 5.0]])   # age never varies
>>> grad = torch.tensor([[2.0, 2.0, 9.0], [2.0, 2.0, 9.0]])
>>> imp.add(x, grad)
>>> imp.get()   # user: (4 * 1 + 4 * 0) / 2; age: 81 * 0
{'user': 2.0, 'age': 0.0}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
import torch

from freshrec.errors import InputError
from freshrec.features.jagged import JaggedBatch
from freshrec.models.base import CTRModel
from freshrec.models.layers import flat_input

if TYPE_CHECKING:
    import pyarrow as pa

    from freshrec.train.trainer import Trainer

__all__ = ["FeatureBlock", "FeatureImportance", "concat_blocks", "concat_gradient",
           "interact_gradient", "trainer_importance"]

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True)
class FeatureBlock:
    """One feature's columns ``[start, stop)`` of the concat.

    Parameters
    ----------
    name : str
        The slot or dense feature name.
    kind : {"slot", "dense"}
    start, stop : int
        The first column and one past the last.
    """

    name: str
    kind: Literal["slot", "dense"]
    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise InputError(f"FeatureBlock {self.name!r}: columns must satisfy "
                             f"0 <= start < stop, got [{self.start}, {self.stop})")

    @property
    def width(self) -> int:
        """Columns in the block (``D`` for a slot, 1 for a dense feature)."""
        return self.stop - self.start


def concat_blocks(slot_names: Sequence[str], dim: int,
                  dense_names: Sequence[str]) -> list[FeatureBlock]:
    """The blocks of :func:`~freshrec.models.layers.flat_input`: ``D`` columns per slot, in
    slot order, then one column per dense feature.

    Examples
    --------
    >>> [b.stop for b in concat_blocks(["a", "b"], dim=4, dense_names=["x"])]
    [4, 8, 9]
    """
    fd = len(slot_names) * dim
    return ([FeatureBlock(name=s, kind="slot", start=i * dim, stop=(i + 1) * dim)
             for i, s in enumerate(slot_names)]
            + [FeatureBlock(name=d, kind="dense", start=fd + k, stop=fd + k + 1)
               for k, d in enumerate(dense_names)])


def concat_gradient(model: CTRModel, sparse: JaggedBatch,
                    dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The concat ``x`` (B, in_dim) of a batch and ``dz_n/dx_n`` (B, in_dim), in eval mode.

    The embeddings are looked up without writing the tables (``now=None``); the gradient
    goes through :meth:`CTRModel.interact <freshrec.models.base.CTRModel.interact>`, so
    every path from the concat to the logit counts (DeepFM's FM term reads the pooled
    embeddings, which are the same numbers as the concat's slot blocks). Examples do not
    interact in eval mode, so the gradient of the summed logits is each example's own.

    Examples
    --------
    >>> from torch import nn
    >>> from freshrec.models import WideDeep
    >>> from freshrec.nn import PooledEmbedding, SlotSpec
    >>> from freshrec.table import EmbeddingTable, TableConfig
    >>> _ = torch.manual_seed(0)
    >>> emb = PooledEmbedding({"ids": EmbeddingTable(TableConfig(name="ids", dim=2))},
    ...                       {"ad": SlotSpec(table="ids")})
    >>> model = WideDeep(emb, n_dense=1, mlp=[])
    >>> with torch.no_grad():   # logit = x . (1, 2, 3) + bias
    ...     _ = model.wide.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    ...     _ = model.deep[0].weight.zero_()
    >>> x, g = concat_gradient(model, JaggedBatch.from_dict({"ad": [[7]]}), torch.ones(1, 1))
    >>> g.tolist()
    [[1.0, 2.0, 3.0]]
    """
    model.eval()
    with torch.no_grad():
        emb = model.embedding(sparse, None)
    return interact_gradient(model, emb, dense)


def interact_gradient(model: CTRModel, emb: torch.Tensor,
                      dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The concat ``x`` of pooled embeddings ``emb`` (B, F, D) and ``dense`` (B, K), and
    ``dz_n/dx_n`` through :meth:`CTRModel.interact` in the model's current mode.

    Only the gradient with respect to ``x`` is computed: no parameter's ``.grad`` changes
    and no table is read or written, so a trainer can call it between its forward and its
    backward (:class:`~freshrec.analysis.online.OnlineImportance`). Dropout layers must be
    off (eval mode) for the per-example gradients to be the model's.
    """
    b, f, d = emb.shape
    x = flat_input(emb.detach(), dense.detach()).requires_grad_(True)
    with torch.enable_grad():
        z = model.interact(x[:, :f * d].reshape(b, f, d), x[:, f * d:])
        (grad,) = torch.autograd.grad(z.sum(), x)
    return x.detach(), grad


class FeatureImportance:
    """Incremental gradient-times-variance importance of the concat's blocks.

    Feed it batches with :meth:`add` (a concat and its gradients) or :meth:`update` (a
    model and a batch); :meth:`get` returns ``{name: I(C)}`` in block order (module
    docstring), ``nan`` for every block before any example.

    Parameters
    ----------
    blocks : sequence of FeatureBlock
        The features to score, e.g. :func:`concat_blocks`; they must not overlap.

    Examples
    --------
    >>> import torch
    >>> imp = FeatureImportance(concat_blocks([], dim=1, dense_names=["a", "b"]))
    >>> imp.add(torch.tensor([[0.0, 1.0]]), torch.ones(1, 2))
    >>> imp.add(torch.tensor([[2.0, 1.0]]), torch.ones(1, 2))   # a varies, b does not
    >>> imp
    FeatureImportance(a=1, b=0, examples=2)
    """

    def __init__(self, blocks: Sequence[FeatureBlock]) -> None:
        self.blocks = list(blocks)
        names = [b.name for b in self.blocks]
        if len(set(names)) != len(names):
            raise InputError(f"FeatureImportance: block names must be unique, got {names}")
        self.width = max((b.stop for b in self.blocks), default=0)
        covered = np.zeros(self.width, dtype=np.int64)
        for b in self.blocks:
            covered[b.start:b.stop] += 1
        if (covered > 1).any():
            raise InputError(f"FeatureImportance: blocks must not overlap, column "
                             f"{int(np.argmax(covered > 1))} is in more than one")
        self._n = 0
        self._mean: Floats = np.zeros(self.width)
        self._m2: Floats = np.zeros(self.width)
        self._grad_sq: Floats = np.zeros(self.width)

    @property
    def examples(self) -> int:
        """Examples seen so far."""
        return self._n

    def add(self, x: torch.Tensor, grad: torch.Tensor) -> None:
        """Accumulate a batch's concat ``x`` and gradients ``grad``, both (B, >= width).

        Raises
        ------
        InputError
            ``x`` and ``grad`` differ in shape or are narrower than the blocks.
        """
        if x.shape != grad.shape or x.dim() != 2 or x.shape[1] < self.width:
            raise InputError(f"FeatureImportance.add: x and grad must both have shape "
                             f"(B, >= {self.width}), got {tuple(x.shape)} and "
                             f"{tuple(grad.shape)}")
        xs = x[:, :self.width].detach().double().numpy()
        gs = grad[:, :self.width].detach().double().numpy()
        m = xs.shape[0]
        if not m:
            return
        mean = xs.mean(axis=0)
        m2 = ((xs - mean) ** 2).sum(axis=0)
        n = self._n
        delta = mean - self._mean
        self._mean = self._mean + delta * (m / (n + m))
        self._m2 = self._m2 + m2 + delta ** 2 * (n * m / (n + m))
        self._grad_sq = self._grad_sq + (gs ** 2).sum(axis=0)
        self._n = n + m

    def update(self, model: CTRModel, sparse: JaggedBatch, dense: torch.Tensor) -> None:
        """Accumulate one batch scored by ``model`` (:func:`concat_gradient`)."""
        self.add(*concat_gradient(model, sparse, dense))

    def get(self) -> dict[str, float]:
        """``{name: I(C)}`` over the examples seen so far (``nan`` before any)."""
        if not self._n:
            return {b.name: math.nan for b in self.blocks}
        per_col = (self._grad_sq / self._n) * (self._m2 / self._n)
        return {b.name: float(per_col[b.start:b.stop].mean()) for b in self.blocks}

    def __repr__(self) -> str:
        scores = ", ".join(f"{k}={v:.4g}" for k, v in self.get().items())
        return f"FeatureImportance({scores}, examples={self._n})"


def trainer_importance(trainer: Trainer, batches: Iterable[pa.RecordBatch]) -> FeatureImportance:
    """The importance of every slot and dense feature of ``trainer``'s model on ``batches``
    (raw record batches, encoded with the trainer's schema in ``train.batch_size`` rows).

    The model and tables are only read: no training, no table writes.
    """
    from freshrec.train.trainer import rebatch

    cfg = trainer.config
    imp = FeatureImportance(concat_blocks(trainer.schema.slot_names, trainer.model.dim,
                                          [d.name for d in cfg.features.dense]))
    for rb in rebatch(batches, cfg.train.batch_size):
        enc = trainer.schema.encode(rb, with_labels=False)
        imp.update(trainer.model, enc.sparse, torch.from_numpy(enc.dense))
    return imp
