"""A model's serving split: its logits regrouped for one user against N candidates.

Serving scores N candidates for one user. The columns of a model's flat input
(:func:`~freshrec.models.layers.flat_input`: ``F * D`` slot embedding columns, then the dense
features) fall into a user part ``xu`` (1, in_u), the same for every candidate, and a
candidate part ``xc`` (N, in_c). Every model regroups its arithmetic around that split in
:meth:`~freshrec.models.base.CTRModel.serving_split`, returning a :class:`ServingSplit`::

    u      = xu @ user + bias            user block: (1, K), once per request
    h      = xc @ cand + u               candidate block: one GEMM over the N candidates
    logits = interaction(ops, h, xu, xc) the rest of the model: (N,)

``user`` and ``cand`` are the rows of the model's first linear map (every output unit linear
in the flat input: Wide & Deep's wide unit and first MLP layer, DeepFM's linear unit, first
MLP layer and FM sum vector, DCN-v2's first cross layer) split by input column. The
interaction is written once against :class:`Ops`, a handful of array operations:
:data:`TORCH_OPS` evaluates it on tensors (``split(xu, xc)``), and the serving engine's ONNX
export (:mod:`freshrec.serve.engine`) records the same calls as an ONNX graph, so both run the
same regrouped arithmetic. A new model gets fast serving by implementing
:meth:`~freshrec.models.base.CTRModel.serving_split`; tests/models check every model's split
against its own ``forward``.

Examples
--------
>>> import torch
>>> from freshrec.models.layers import MLP
>>> _ = torch.manual_seed(0)
>>> wide, mlp = torch.nn.Linear(3, 1), MLP(3, [4], out_dim=1)    # Wide & Deep's dense part
>>> weight, bias, terms = linear_and_mlp(wide, mlp)
>>> split = ServingSplit.from_first_layer(weight, bias, user_cols=[0], cand_cols=[1, 2],
...                                       interaction=Sum(terms))
>>> xu, xc = torch.randn(1, 1), torch.randn(5, 2)
>>> x = torch.cat([xu.expand(5, 1), xc], 1)                     # the flat input, rebuilt
>>> torch.allclose(split(xu, xc), (wide(x) + mlp(x)).squeeze(1), atol=1e-6)
True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import torch
from torch import nn

from freshrec.errors import InputError

__all__ = ["Cross", "FM", "Interaction", "Mlp", "MlpTail", "Ops", "ServingSplit", "Sum",
           "TORCH_OPS", "TorchOps", "Unit", "column_mask", "linear_and_mlp",
           "serving_order"]

T = TypeVar("T")
_HALF = torch.tensor(0.5)


class Ops(Protocol[T]):
    """The operations an interaction is written with (``T``: what holds a value).

    Operands are values or constant tensors (weights, masks), which broadcast as in numpy.
    """

    def gemm(self, x: T, w: torch.Tensor, bias: T | torch.Tensor | None = None) -> T:
        """``x @ w + bias`` (``w``: a constant (k, m) tensor)."""
        ...

    def relu(self, x: T, *, owned: bool = False) -> T:
        """``max(x, 0)``; ``owned``: nothing else reads ``x`` (it may be overwritten)."""
        ...

    def cols(self, x: T, start: int, stop: int) -> T:
        """Columns ``start:stop`` of ``x``."""
        ...

    def add(self, a: T | torch.Tensor, b: T | torch.Tensor) -> T:
        """``a + b``."""
        ...

    def sub(self, a: T | torch.Tensor, b: T | torch.Tensor) -> T:
        """``a - b``."""
        ...

    def mul(self, a: T | torch.Tensor, b: T | torch.Tensor) -> T:
        """``a * b``."""
        ...

    def concat(self, xs: Sequence[T]) -> T:
        """``xs`` side by side (same number of rows)."""
        ...

    def expand_rows(self, x: T, like: T) -> T:
        """The single row of ``x`` repeated for every row of ``like``."""
        ...

    def flatten(self, x: T) -> T:
        """An (n, 1) column as an (n,) vector."""
        ...

    def call(self, module: nn.Module, x: T) -> T:
        """``module(x)``, for a layer no other operation expresses (ONNX cannot export it)."""
        ...


class TorchOps:
    """:class:`Ops` on torch tensors, evaluated at once (the torch engine)."""

    def gemm(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None
             ) -> torch.Tensor:
        return torch.mm(x, w) if bias is None else torch.addmm(bias, x, w)

    def relu(self, x: torch.Tensor, *, owned: bool = False) -> torch.Tensor:
        return x.relu_() if owned else torch.relu(x)

    def cols(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return x[:, start:stop]

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def sub(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a - b

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    def concat(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(xs), dim=1)

    def expand_rows(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.expand(like.shape[0], -1)

    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1)

    def call(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module(x)


#: The torch evaluation of an interaction.
TORCH_OPS = TorchOps()


class Interaction(Protocol):
    """The rest of a model after its first linear map: logits (n, 1) from ``h`` (n, K), the
    user row ``xu`` (1, in_u) and the candidate rows ``xc`` (n, in_c)."""

    def __call__(self, ops: Ops[Any], h: Any, xu: Any, xc: Any) -> Any: ...


@dataclass(frozen=True)
class MlpTail:
    """An MLP after its first ``Linear`` (whose pre-activation is in ``h``) as steps: ``(W^T,
    b)`` for a ``Linear``, ``None`` for a ``ReLU``, a module for any other layer. Dropout and
    Identity are skipped (identities in eval mode).

    >>> tail = MlpTail.from_layers([nn.ReLU(), nn.Dropout(), nn.Linear(3, 1), nn.Tanh()])
    >>> [type(s).__name__ for s in tail.steps]
    ['NoneType', 'tuple', 'Tanh']
    """

    steps: tuple[tuple[torch.Tensor, torch.Tensor | None] | nn.Module | None, ...]

    @classmethod
    def from_layers(cls, layers: Sequence[nn.Module]) -> MlpTail:
        """The steps of ``layers``: ``Linear`` weights copied (later training does not change
        them), any other layer the module itself, run in the mode it is in."""
        steps: list[tuple[torch.Tensor, torch.Tensor | None] | nn.Module | None] = []
        with torch.no_grad():
            for layer in layers:
                if type(layer) is nn.Linear:
                    # a copy even where the transpose is already contiguous (a (1, k) weight)
                    steps.append((layer.weight.detach().t().clone(
                                  memory_format=torch.contiguous_format),
                                  None if layer.bias is None else layer.bias.detach().clone()))
                elif type(layer) is nn.ReLU:
                    steps.append(None)
                elif type(layer) not in (nn.Dropout, nn.Identity):
                    steps.append(layer)
        return cls(tuple(steps))

    def __call__(self, ops: Ops[T], x: T) -> T:
        owned = False  # x may be a view of the caller's value until a step writes anew
        for step in self.steps:
            if step is None:
                x = ops.relu(x, owned=owned)
            elif isinstance(step, tuple):
                x = ops.gemm(x, step[0], step[1])
            else:
                x = ops.call(step, x)
            owned = True
        return x


@dataclass(frozen=True)
class Unit:
    """Column ``k`` of ``h`` as it is: a linear unit (Wide & Deep's wide part)."""

    k: int

    def __call__(self, ops: Ops[T], h: T, xu: T, xc: T) -> T:
        return ops.cols(h, self.k, self.k + 1)


@dataclass(frozen=True)
class Mlp:
    """An MLP whose first layer's pre-activation is ``h[:, start:stop]``, then ``tail``."""

    start: int
    stop: int
    tail: MlpTail

    def __call__(self, ops: Ops[T], h: T, xu: T, xc: T) -> T:
        return self.tail(ops, ops.cols(h, self.start, self.stop))


@dataclass(frozen=True)
class FM:
    """The FM second-order term ``0.5 * (|s|^2 - sum_f |e_f|^2)``: the sum vector ``s`` of the
    slot embeddings is ``h[:, start:start + dim]``; ``user_sq`` (in_u, 1) and ``cand_sq``
    (in_c, 1) mark the embedding columns of ``xu`` and ``xc`` (1.0) among the dense ones (0.0).
    """

    start: int
    dim: int
    user_sq: torch.Tensor
    cand_sq: torch.Tensor
    _ones: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ones", torch.ones(self.dim, 1))

    def __call__(self, ops: Ops[T], h: T, xu: T, xc: T) -> T:
        s = ops.cols(h, self.start, self.start + self.dim)
        ss = ops.gemm(ops.mul(s, s), self._ones)
        q = ops.add(ops.gemm(ops.mul(xc, xc), self.cand_sq),
                    ops.gemm(ops.mul(xu, xu), self.user_sq))
        return ops.mul(ops.sub(ss, q), _HALF)


@dataclass(frozen=True)
class Cross:
    """DCN-v2's cross stack then its MLP, in serving column order (``[xu, xc]``): ``h`` is the
    first cross layer's ``W x0 + b``; ``layers`` the other layers' ``(W^T, b)``; ``first``
    the MLP's first layer ``(W^T, b)``; ``tail`` the rest of the MLP."""

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    first: tuple[torch.Tensor, torch.Tensor]
    tail: MlpTail

    def __call__(self, ops: Ops[T], h: T, xu: T, xc: T) -> T:
        x0 = ops.concat([ops.expand_rows(xu, xc), xc])
        x = ops.add(ops.mul(x0, h), x0)
        for w, b in self.layers:
            x = ops.add(ops.mul(x0, ops.gemm(x, w, b)), x)
        return self.tail(ops, ops.gemm(x, *self.first))


@dataclass(frozen=True)
class Sum:
    """The sum of ``terms``, each an :class:`Interaction`."""

    terms: tuple[Interaction, ...]

    def __call__(self, ops: Ops[T], h: T, xu: T, xc: T) -> T:
        out = self.terms[0](ops, h, xu, xc)
        for term in self.terms[1:]:
            out = ops.add(out, term(ops, h, xu, xc))
        return out


@dataclass(frozen=True)
class ServingSplit:
    """User block, candidate block and interaction of a model (see the module docstring).

    Parameters
    ----------
    user : Tensor (in_u, K)
        The first linear map's rows of the user columns.
    cand : Tensor (in_c, K)
        Its rows of the candidate columns.
    bias : Tensor (K,)
        Its bias.
    interaction : Interaction
        Logits (n, 1) from ``h`` (n, K), ``xu`` and ``xc``.
    """

    user: torch.Tensor
    cand: torch.Tensor
    bias: torch.Tensor
    interaction: Interaction

    @classmethod
    def from_first_layer(cls, weight: torch.Tensor, bias: torch.Tensor,
                         user_cols: Sequence[int], cand_cols: Sequence[int],
                         interaction: Interaction) -> ServingSplit:
        """The split of a first linear map ``weight`` (K, in_dim) over the flat input, ``bias``
        (K,): its columns ``user_cols`` become the user block, ``cand_cols`` the candidate
        block (copies: later training does not change them).

        Raises
        ------
        InputError
            ``user_cols`` and ``cand_cols`` do not split the ``in_dim`` columns.
        """
        serving_order(int(weight.shape[1]), user_cols, cand_cols)
        with torch.no_grad():
            w = weight.detach()
            return cls(user=w[:, list(user_cols)].t().contiguous(),
                       cand=w[:, list(cand_cols)].t().contiguous(),
                       bias=bias.detach().clone(), interaction=interaction)

    @property
    def width(self) -> int:
        """``K``, the width of ``h``."""
        return int(self.bias.shape[0])

    def logits(self, ops: Ops[T], xu: T, xc: T) -> T:
        """Logits (n,) of the candidate rows ``xc`` (n, in_c) for the user row ``xu`` (1, in_u),
        computed with ``ops``."""
        u = ops.gemm(xu, self.user, self.bias)
        h = ops.gemm(xc, self.cand, u)
        return ops.flatten(self.interaction(ops, h, xu, xc))

    def __call__(self, xu: torch.Tensor, xc: torch.Tensor) -> torch.Tensor:
        """:meth:`logits` on torch."""
        return self.logits(TORCH_OPS, xu, xc)


def linear_and_mlp(linear: nn.Linear, mlp: nn.Sequential
                   ) -> tuple[torch.Tensor, torch.Tensor, tuple[Interaction, ...]]:
    """The first linear map of ``linear(x) + mlp(x)`` (``linear`` with one output unit) and
    its terms: the MLP's first layer's H units then the linear unit, as ``(weight (H + 1,
    in_dim), bias (H + 1,), (Mlp, Unit))``."""
    first = cast(nn.Linear, mlp[0])
    hidden = int(first.out_features)
    with torch.no_grad():
        weight = torch.cat([first.weight, linear.weight])
        bias = torch.cat([first.bias, linear.bias])
    return weight, bias, (Mlp(0, hidden, MlpTail.from_layers(list(mlp)[1:])), Unit(hidden))


def serving_order(in_dim: int, user_cols: Sequence[int], cand_cols: Sequence[int]
                  ) -> list[int]:
    """``user_cols + cand_cols``: the flat input's columns in serving order (``[xu, xc]``).

    Raises
    ------
    InputError
        They are not each of the ``in_dim`` columns once (the message says which are not).

    >>> serving_order(4, [2], [0, 1, 3])
    [2, 0, 1, 3]
    >>> serving_order(3, [0], [0, 1])
    Traceback (most recent call last):
    ...
    freshrec.errors.InputError: serving split: user_cols + cand_cols must hold each of the 3 input columns once; missing [2], repeated [0], out of range []
    """
    order = [int(c) for c in user_cols] + [int(c) for c in cand_cols]
    if sorted(order) != list(range(in_dim)):
        repeated = sorted(c for c, k in Counter(order).items() if k > 1)
        raise InputError(
            f"serving split: user_cols + cand_cols must hold each of the {in_dim} input "
            f"columns once; missing {sorted(set(range(in_dim)) - set(order))[:10]}, "
            f"repeated {repeated[:10]}, out of range "
            f"{sorted(c for c in set(order) if not 0 <= c < in_dim)[:10]}")
    return order


def column_mask(cols: Sequence[int], keep: Callable[[int], bool]) -> torch.Tensor:
    """A (len(cols), 1) float column: 1.0 where ``keep(col)``, else 0.0.

    >>> column_mask([0, 5, 2], lambda c: c < 3).flatten().tolist()
    [1.0, 0.0, 1.0]
    """
    return torch.tensor([[1.0 if keep(c) else 0.0] for c in cols]).reshape(len(cols), 1)
