"""The predictor: scores one user against N candidates with one model version.

What it does per request, and what it does once per model version instead:

* **Layout, once per feature config.** Each slot and dense field is classified by its
  column name (the joiner's naming, :func:`column_side`): ``user_id``/``u_*`` are read from
  the request's user, ``item_id``/``i_*`` from each candidate, ``position`` is the
  candidate's index. User-side features are encoded and embedded **once** per request.
* **Feature index, shared across versions.** The write-up's ``Feature_index``: a candidate's
  raw features are hashed to fids the first time they are seen and kept by ``item_id``
  (:class:`FeatureIndex`); a later request with an equal candidate dict reuses the fids
  (one dict comparison instead of hashing). Fids do not depend on the model version, so
  the index survives swaps.
* **Fused first layer, once per dense version.** For Wide & Deep and DeepFM the wide/linear
  part and the MLP's first layer both read the flat input, so their weights are stacked
  into one matrix and split by column into a user block and a candidate block: the user
  block is applied once per request (a 1 x H row) and broadcast as the bias of one GEMM
  over the candidates; that and the rest of the MLP run on the dense engine
  (:mod:`freshrec.serve.engine`: ONNX Runtime when installed, else torch). The result is
  the model's own arithmetic, regrouped (the tests compare it with ``model(sparse,
  dense)``). Other models get the full input, with the user part broadcast.
* **Candidates by id.** A request with ``candidate_ids`` gets, for each item the index
  holds, the feature dict it holds (:meth:`FeatureIndex.known`; filled from an item
  catalogue or from earlier requests).
* Candidate embeddings are looked up in one batched call per table; rows are never cached,
  because sparse deltas rewrite them in place every few seconds (a gather of a few
  thousand rows costs tens of microseconds).
* Predictions get the log-odds correction for the training's negative down-sampling
  (``logit + log(rate)``, :attr:`TrainConfig.correction` ``"logit"``), as
  :class:`~freshrec.train.Trainer` applies it.

Examples
--------
>>> import torch
>>> from freshrec.config import config_from_dict
>>> from freshrec.serve.request import ScoreRequest
>>> cfg = config_from_dict({
...     "features": {"tables": {"t": {"dim": 4}},
...                  "slots": {"u_age": {"table": "t"}, "item_id": {"table": "t"}},
...                  "labels": ["click"]},
...     "model": {"kind": "wide_deep", "mlp": [8]},
...     "train": {"negative_sample_rate": 0.5}})
>>> _ = torch.manual_seed(0)
>>> pred = Predictor.build(cfg, version=1)
>>> req = ScoreRequest(request_id="r", user={"age": 30}, candidates=[{"item_id": 1},
...                                                                    {"item_id": 2}])
>>> scores = pred.score(req)
>>> scores.shape, bool(((scores > 0) & (scores < 1)).all())
((2,), True)
"""

from __future__ import annotations

import logging
import math
import operator
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import torch

from freshrec.config import FreshrecConfig
from freshrec.errors import IncompatibleFormatError
from freshrec.features.config import DenseConfig, DenseNorm, FeatureConfig, SlotKind
from freshrec.features.hashing import hash_array, slot_key
from freshrec.features.schema import normalize_dense
from freshrec.models import build_model
from freshrec.models.base import CTRModel
from freshrec.models.deepfm import DeepFM
from freshrec.models.wide_deep import WideDeep
from freshrec.nn.pooled import PooledEmbedding, SlotSpec
from freshrec.serve._kernels import hash_ints_keyed
from freshrec.serve.engine import FusedLayers, OnnxDense, TorchDense, dense_engine
from freshrec.serve.request import RequestError, ScoreRequest
from freshrec.table import EmbeddingTable

__all__ = ["FeatureIndex", "FeatureLayout", "Predictor", "candidate_fragment", "column_side"]

log = logging.getLogger(__name__)

USER, CAND, POS = "user", "candidate", "position"
_ITEM_ID = operator.itemgetter("item_id")


def column_side(column: str) -> tuple[str, str]:
    """Where a feature column's value comes from in a request, and under which key.

    >>> column_side("u_age"), column_side("i_category"), column_side("item_id")
    (('user', 'age'), ('candidate', 'category'), ('candidate', 'item_id'))
    >>> column_side("position"), column_side("user_id"), column_side("hour")
    (('position', ''), ('user', 'user_id'), ('user', 'hour'))
    """
    if column == "item_id":
        return CAND, "item_id"
    if column == "position":
        return POS, ""
    if column.startswith("i_"):
        return CAND, column[2:]
    if column.startswith("u_"):
        return USER, column[2:]
    return USER, column


@dataclass(frozen=True)
class _Slot:
    name: str
    side: str
    key: str
    id_space: str
    multi: bool
    max_len: int
    mean: bool
    table: str
    index: int  # position among the model's slots (F)


@dataclass(frozen=True)
class _Dense:
    cfg: DenseConfig
    side: str
    key: str
    index: int  # position among the dense fields


class _DenseNormalizer:
    """:func:`~freshrec.features.schema.normalize_dense` of several fields at once (the same float64 arithmetic per value).

    ``x`` is ``(..., k)`` raw values (NaN: missing, replaced by the field's ``fill``).
    """

    def __init__(self, cfgs: Sequence[DenseConfig]) -> None:
        self.fill = np.array([d.fill for d in cfgs], np.float64)
        std = {DenseNorm.STANDARD: lambda d: (d.mean, d.std),
               DenseNorm.MINMAX: lambda d: (d.min, d.max - d.min)}
        sd = [std[d.norm](d) if d.norm in std else (0.0, 1.0) for d in cfgs]
        self.sub = np.array([a for a, _ in sd], np.float64)
        self.div = np.array([b for _, b in sd], np.float64)
        self.log = np.array([d.norm is DenseNorm.LOG for d in cfgs], np.bool_)
        self.any_log = bool(self.log.any())

    def __call__(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        nan = np.isnan(x)
        if nan.any():
            x = np.where(nan, self.fill, x)
        y = (x - self.sub) / self.div
        if self.any_log:
            y = np.where(self.log, np.log1p(np.maximum(x, 0.0)), y)
        return y.astype(np.float32)


def hash_values(id_space: str, values: Sequence[Any], where: Any
                ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
    """Fids of categorical values (``None``: missing) and which ones are present.

    Ints (and bools) and strings hash as :func:`~freshrec.features.hash_array` hashes them
    in training; floats are rounded. ``where(i)`` names the field of value ``i`` in errors.

    >>> f, ok = hash_values("s", [1, None, "a"], lambda i: f"x[{i}]")
    >>> ok.tolist(), int(f[0]) == int(hash_array("s", [1])[0])
    ([True, False, True], True)
    >>> hash_values("s", [{"a": 1}], lambda i: f"x[{i}]")
    Traceback (most recent call last):
    ...
    freshrec.serve.request.RequestError: x[0]: must be an int or a string, got {'a': 1}
    """
    n = len(values)
    try:
        arr = np.array(values)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is not None and arr.ndim == 1 and n:
        kind = arr.dtype.kind
        if kind in "iub":
            return hash_array(id_space, arr.astype(np.int64)), np.ones(n, np.bool_)
        if kind == "f" and np.isfinite(arr).all():
            return hash_array(id_space, np.round(arr).astype(np.int64)), np.ones(n, np.bool_)
        if kind == "U" and all(type(v) is str for v in values):
            return hash_array(id_space, list(values)), np.ones(n, np.bool_)
    out = np.zeros(n, np.uint64)
    ok = np.zeros(n, np.bool_)
    ints: list[int] = []
    ints_at: list[int] = []
    strs: list[str] = []
    strs_at: list[int] = []
    for i, v in enumerate(values):
        if v is None:
            continue
        t = type(v)
        if t is int or t is bool:
            if not -(1 << 63) <= v < (1 << 64):
                raise RequestError(where(i), f"integer {v} does not fit in 64 bits")
            ints.append(v if v < (1 << 63) else v - (1 << 64))
            ints_at.append(i)
        elif t is float and math.isfinite(v):
            ints.append(round(v))
            ints_at.append(i)
        elif t is str:
            strs.append(v)
            strs_at.append(i)
        else:
            raise RequestError(where(i), f"must be an int or a string, "
                                         f"got {v!r:.60}")
    if ints:
        out[ints_at] = hash_array(id_space, np.array(ints, np.int64))
        ok[ints_at] = True
    if strs:
        out[strs_at] = hash_array(id_space, strs)
        ok[strs_at] = True
    return out, ok


def dense_values(d: DenseConfig, values: Sequence[Any], where: Any) -> npt.NDArray[np.float32]:
    """Normalised dense values (``None``: the field's ``fill``); errors name the field."""
    try:
        x = np.array(values, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError
    except (ValueError, TypeError):
        for i, v in enumerate(values):
            if v is not None and (type(v) not in (int, float, bool)):
                raise RequestError(where(i), f"must be a number (a dense feature), got "
                                             f"{v!r:.60}") from None
        raise RequestError(where(0), "must be numbers") from None
    if np.isnan(x).any():
        x[np.isnan(x)] = d.fill
    return normalize_dense(x, d)


def _multi(slot: _Slot, lists: Sequence[Any], where: Any
           ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32]]:
    """Fids and lengths of a list feature per entity (``None``: empty), last ``max_len`` kept."""
    flat: list[Any] = []
    lengths = np.zeros(len(lists), np.int32)
    for i, v in enumerate(lists):
        if v is None:
            continue
        if type(v) is not list:
            raise RequestError(where(i), f"must be a list of ids (a list feature), got {v!r:.60}")
        if len(v) > slot.max_len:
            v = v[-slot.max_len:]
        flat.extend(v)
        lengths[i] = len(v)
    if not flat:
        return np.empty(0, np.uint64), lengths
    fids, ok = hash_values(slot.id_space, flat, lambda k: f"{where(0)}[{k}]")
    if not ok.all():
        raise RequestError(where(0), "list values must not be null")
    return fids, lengths


class FeatureLayout:
    """Which slots and dense fields come from the user, the candidates or the position.

    Parameters
    ----------
    features : FeatureConfig

    Examples
    --------
    >>> from freshrec.features import feature_config_from_dict
    >>> fc = feature_config_from_dict({"tables": {"t": {"dim": 2}}, "slots": {
    ...     "u_age": {"table": "t"}, "item_id": {"table": "t"}, "position": {"table": "t"}}})
    >>> lay = FeatureLayout(fc)
    >>> [s.name for s in lay.user_slots], [s.name for s in lay.cand_slots]
    (['u_age'], ['item_id', 'position'])
    """

    def __init__(self, features: FeatureConfig) -> None:
        self.features = features
        slots = [(s, *column_side(s.column)) for s in features.slots]
        made = [_Slot(name=s.name, side=side, key=key, id_space=s.id_space,
                      multi=s.kind is SlotKind.MULTI, max_len=s.max_len,
                      mean=s.pooling == "mean", table=s.table, index=i)
                for i, (s, side, key) in enumerate(slots)]
        self.user_slots = [s for s in made if s.side == USER]
        # candidate side (position included), grouped by table: one lookup per table
        cand = [s for s in made if s.side != USER]
        order = list(dict.fromkeys(s.table for s in cand))
        self.cand_slots = [s for t in order for s in cand if s.table == t]
        self.cand_single = [s for s in self.cand_slots if s.side == CAND and not s.multi]
        self.cand_multi = [s for s in self.cand_slots if s.side == CAND and s.multi]
        dense = [_Dense(cfg=d, side=column_side(d.column)[0],
                        key=column_side(d.column)[1], index=j)
                 for j, d in enumerate(features.dense)]
        for d in dense:
            if d.side == POS:
                object.__setattr__(d, "side", CAND)
        self.user_dense = [d for d in dense if d.side == USER]
        self.cand_dense = [d for d in dense if d.side == CAND]
        self.position_dense = [d for d in dense if d.cfg.column == "position"]
        self.n_slots = len(made)
        self.n_dense = len(dense)

    def generate_requests(self, n: int, candidates: int, seed: int = 0) -> list[ScoreRequest]:
        """Synthetic requests with every feature present (for warm-up)."""
        rng = np.random.default_rng(seed)
        out = []
        for k in range(n):
            user: dict[str, Any] = {}
            for s in self.user_slots:
                v = int(rng.integers(0, 1000))
                user[s.key] = [v, v + 1] if s.multi else v
            for d in self.user_dense:
                user[d.key] = float(rng.random())
            cands = []
            for _ in range(candidates):
                c: dict[str, Any] = {"item_id": int(rng.integers(0, 1 << 20))}
                for s in self.cand_single + self.cand_multi:
                    if s.key != "item_id":
                        v = int(rng.integers(0, 1000))
                        c[s.key] = [v] if s.multi else v
                for d in self.cand_dense:
                    if d.cfg.column != "position":
                        c[d.key] = float(rng.random())
                cands.append(c)
            out.append(ScoreRequest(request_id=f"warmup-{seed}-{k}", user=user,
                                    candidates=cands, user_id=user.get("user_id")))
        return out


def candidate_fragment(c: Mapping[str, Any]) -> tuple[bytes, bytes] | None:
    """The impression-event JSON of candidate ``c`` around its position: ``head + b"3" +
    tail`` is ``{"item_id": .., "position": 3, "features": {..}}`` (``None`` when a value is
    not JSON-serialisable).

    >>> h, t = candidate_fragment({"item_id": 7, "cat": 2, "position": 9})
    >>> h + b"3" + t
    b'{"item_id":7,"position":3,"features":{"cat":2}}'
    """
    try:
        feats = {k: v for k, v in c.items() if k != "item_id" and k != "position"}
        return (b'{"item_id":' + orjson.dumps(c["item_id"]) + b',"position":',
                b',"features":' + orjson.dumps(feats) + b"}")
    except (TypeError, KeyError, orjson.JSONEncodeError):
        return None


class FeatureIndex:
    """Candidate raw features -> fids and dense values, kept by ``item_id`` (see module doc).

    An entry is reused only when the request's candidate dict equals the one it was built
    from, so the index can never serve stale features; changed features get a new row (the
    old one is garbage until the index is cleared, which happens when it would exceed
    ``max_items`` rows). Thread-safe (one lock around each batch).

    Parameters
    ----------
    layout : FeatureLayout
    max_items : int

    Examples
    --------
    >>> from freshrec.features import feature_config_from_dict
    >>> fc = feature_config_from_dict({"tables": {"t": {"dim": 2}}, "slots": {
    ...     "item_id": {"table": "t"}, "i_cat": {"table": "t"}}})
    >>> index = FeatureIndex(FeatureLayout(fc))
    >>> rows = index.rows([{"item_id": 1, "cat": 3}, {"item_id": 2}])
    >>> index.valid[rows].tolist()                  # item 2 has no 'cat': an empty bag
    [[True, True], [True, False]]
    >>> _ = index.rows([{"item_id": 1, "cat": 3}]); index.hits, len(index)
    (1, 2)
    """

    def __init__(self, layout: FeatureLayout, max_items: int = 1_000_000) -> None:
        self.layout = layout
        self.max_items = max_items
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._clear(1024)

    def _clear(self, cap: int) -> None:
        lay = self.layout
        self._pos: dict[Any, int] = {}
        self._raw: list[dict[str, Any]] = []
        self._frags: list[tuple[bytes, bytes] | None] = []
        self.fids = np.zeros((cap, len(lay.cand_single)), np.uint64)
        self.valid = np.zeros((cap, len(lay.cand_single)), np.bool_)
        self.dense = np.zeros((cap, len(lay.cand_dense)), np.float32)
        self.multi: list[list[npt.NDArray[np.uint64]]] = [[] for _ in lay.cand_multi]

    def __len__(self) -> int:
        return len(self._raw)

    def known(self, cands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """``cands`` with every candidate whose item the index holds replaced by the feature
        dict it holds (the latest seen); the others as they are. For candidates named by id.

        >>> from freshrec.features import feature_config_from_dict
        >>> fc = feature_config_from_dict({"tables": {"t": {"dim": 2}}, "slots": {
        ...     "item_id": {"table": "t"}, "i_cat": {"table": "t"}}})
        >>> index = FeatureIndex(FeatureLayout(fc))
        >>> index.add([{"item_id": 1, "cat": 3}])
        1
        >>> index.known([{"item_id": 1}, {"item_id": 2}])
        [{'item_id': 1, 'cat': 3}, {'item_id': 2}]
        """
        with self._lock:
            pos, raw = self._pos, self._raw
            return [raw[r] if (r := pos.get(c["item_id"], -1)) >= 0 else c for c in cands]

    def add(self, cands: Sequence[dict[str, Any]], chunk: int = 4096) -> int:
        """Encode and store ``cands`` (e.g. an item catalogue); returns how many.

        Raises
        ------
        RequestError
            A feature value of the wrong type (the message names the candidate and field).
        """
        for start in range(0, len(cands), chunk):
            self.rows(cands[start:start + chunk], store=True, offset=start)
        return len(cands)

    def rows(self, cands: Sequence[dict[str, Any]], *, store: bool = True,
             offset: int = 0, fragments: list[tuple[bytes, bytes] | None] | None = None
             ) -> npt.NDArray[np.intp]:
        """Index rows of ``cands``, encoding (and storing, with ``store``) the ones not there.

        With ``store=False`` unseen candidates are encoded into scratch rows past the end,
        valid until the next call. ``fragments`` (with ``store``): a list that receives each
        candidate's :func:`candidate_fragment`, kept with its row.
        """
        with self._lock:
            pos, raw = self._pos, self._raw
            n = len(cands)
            found = list(map(pos.get, map(_ITEM_ID, cands), repeat(-1, n)))
            if -1 not in found and list(map(raw.__getitem__, found)) == cands:
                miss: list[int] = []  # all hits: one list comparison in C
            else:
                miss = [i for i, r in enumerate(found) if r < 0 or raw[r] != cands[i]]
            out = np.array(found, np.intp)
            self.hits += n - len(miss)
            if miss:
                self.misses += len(miss)
                todo = [cands[i] for i in miss]
                if store and len(raw) + len(todo) > self.max_items:
                    log.info("feature index full (%d items): cleared", len(raw))
                    self._clear(self.fids.shape[0])
                    out = self._rows_unlocked(cands, offset)
                else:
                    out = self._encode(cands, out, miss, todo, store, offset)
            if store and fragments is not None:
                fragments.extend(map(self._frags.__getitem__, out.tolist() if miss else found))
            return out

    def _rows_unlocked(self, cands: Sequence[dict[str, Any]], offset: int) -> npt.NDArray[np.intp]:
        out = np.empty(len(cands), np.intp)
        return self._encode(cands, out, list(range(len(cands))), list(cands), True, offset)

    def _encode(self, cands: Sequence[dict[str, Any]], out: npt.NDArray[np.intp],
                miss: list[int], todo: list[dict[str, Any]], store: bool, offset: int
                ) -> npt.NDArray[np.intp]:
        lay = self.layout
        pos, raw = self._pos, self._raw
        targets = []
        fresh = len(raw)
        for _ in todo:  # always fresh rows: a row read by a hit in this batch stays intact
            targets.append(fresh)
            fresh += 1
        need = fresh
        if need > self.fids.shape[0]:
            cap = max(need, 2 * self.fids.shape[0])
            for name in ("fids", "valid", "dense"):
                old = getattr(self, name)
                new = np.zeros((cap, old.shape[1]), old.dtype)
                new[: old.shape[0]] = old
                setattr(self, name, new)
        t = np.array(targets, np.intp)

        def where(key: str) -> Any:
            return lambda k: f"candidates[{miss[k] + offset}].{key}"

        for j, s in enumerate(lay.cand_single):
            f, ok = hash_values(s.id_space, [c.get(s.key) for c in todo], where(s.key))
            self.fids[t, j] = f
            self.valid[t, j] = ok
        for j, d in enumerate(lay.cand_dense):
            if d.cfg.column == "position":
                continue
            self.dense[t, j] = dense_values(d.cfg, [c.get(d.key) for c in todo], where(d.key))
        for m, s in enumerate(lay.cand_multi):
            f, ln = _multi(s, [c.get(s.key) for c in todo], where(s.key))
            ends = np.cumsum(ln)
            store_m = self.multi[m]
            while len(store_m) < need:
                store_m.append(np.empty(0, np.uint64))
            for k, r in enumerate(targets):
                store_m[r] = f[ends[k] - ln[k]: ends[k]]
        if store:
            raw.extend(todo)
            self._frags.extend([candidate_fragment(c) for c in todo])
            for c, r in zip(todo, targets, strict=True):
                pos[c["item_id"]] = r
        out[miss] = t
        return out


def _pool(table: EmbeddingTable, fids: npt.NDArray[np.uint64], offsets: npt.NDArray[np.int64],
          scale: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Pooled rows of ``fids``; redone if rows were removed between find and pool."""
    while True:
        epoch = table.epoch
        rows = table.find(fids)
        out = table.pool(rows, offsets, scale)
        if table.epoch == epoch:
            return out


def _offsets(lengths: npt.NDArray[np.int32]) -> npt.NDArray[np.int64]:
    off = np.zeros(lengths.shape[0] + 1, np.int64)
    np.cumsum(lengths, out=off[1:])
    return off


class Predictor:
    """Scores requests with one model: tables (shared, updated in place) + dense weights.

    Build with :meth:`build` (new model from a config, optionally with dense weights) or
    :meth:`from_model`. :meth:`with_dense` gives a predictor with new dense weights sharing
    the tables and the feature index (what a dense update swaps in).

    Parameters
    ----------
    config : FreshrecConfig
    model : CTRModel
        Its embedder must be a :class:`~freshrec.nn.PooledEmbedding` over the served tables.
    version : int, optional
        Registry version (reported with every score).
    event_time : int, optional
        Event-time watermark of the model's newest training data (freshness).
    index : FeatureIndex, optional
        Shared candidate feature index (a new one when absent).
    engine : str
        What runs the fused dense part of Wide & Deep and DeepFM: ``"auto"`` (ONNX Runtime
        when installed, else torch), ``"torch"`` or ``"onnxruntime"``
        (:func:`~freshrec.serve.engine.dense_engine`; other models always run on torch).
    """

    def __init__(self, config: FreshrecConfig, model: CTRModel, *, version: int | None = None,
                 event_time: int | None = None, index: FeatureIndex | None = None,
                 engine: str = "auto") -> None:
        self.config = config
        self.engine_name = engine
        self.model = model.eval()
        self.version = version
        self.event_time = event_time
        self.layout = index.layout if index is not None else FeatureLayout(config.features)
        self.index = index if index is not None else FeatureIndex(self.layout)
        emb = model.embedding
        if not isinstance(emb, PooledEmbedding):
            raise IncompatibleFormatError(
                f"Predictor: the model's embedder must be a PooledEmbedding, got "
                f"{type(emb).__name__}")
        self.tables: dict[str, EmbeddingTable] = emb.tables
        self.dim = int(emb.dim)
        tc = config.train
        rate = float(tc.negative_sample_rate)
        self.log_rate = math.log(rate) if tc.correction == "logit" and rate < 1.0 else 0.0
        self._precompute()

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, config: FreshrecConfig, *, tables: Mapping[str, EmbeddingTable] | None = None,
              dense: Mapping[str, torch.Tensor] | None = None, version: int | None = None,
              event_time: int | None = None, index: FeatureIndex | None = None,
              engine: str = "auto") -> Predictor:
        """A predictor for ``config`` over ``tables`` (new empty ones when absent) with the
        dense state dict ``dense`` (the model's initial weights when absent or empty)."""
        fc = config.features
        if tables is None:
            tables = {t.name: EmbeddingTable(t) for t in fc.tables}
        missing = sorted({s.table for s in fc.slots} - set(tables))
        if missing:
            raise IncompatibleFormatError(f"Predictor: tables {missing} are not among the "
                                          f"served tables {sorted(tables)}")
        emb = PooledEmbedding(dict(tables),
                              {s.name: SlotSpec(table=s.table, pooling=s.pooling)
                               for s in fc.slots})
        model = build_model(config.model, emb, len(fc.dense))
        if dense:
            load_dense(model, dense)
        else:
            log.warning("Predictor: no dense parameters given; serving initial weights")
        return cls(config, model, version=version, event_time=event_time, index=index,
                   engine=engine)

    @classmethod
    def from_model(cls, config: FreshrecConfig, model: CTRModel, *, version: int | None = None,
                   event_time: int | None = None, engine: str = "auto") -> Predictor:
        """A predictor serving ``model`` itself (e.g. a trainer's, in tests and benchmarks)."""
        return cls(config, model, version=version, event_time=event_time, engine=engine)

    def with_dense(self, dense: Mapping[str, torch.Tensor], *, version: int | None = None,
                   event_time: int | None = None) -> Predictor:
        """A new predictor with dense weights ``dense``, sharing tables and feature index."""
        return Predictor.build(self.config, tables=self.tables, dense=dense,
                               version=self.version if version is None else version,
                               event_time=self.event_time if event_time is None else event_time,
                               index=self.index, engine=self.engine_name)

    def _precompute(self) -> None:
        """Column maps of the user/candidate blocks, per-slot hashing keys and the fused
        first-layer weights."""
        lay, d = self.layout, self.dim
        f = lay.n_slots
        # user slots grouped by table (one find + pool per table, pooled rows contiguous)
        utables = list(dict.fromkeys(s.table for s in lay.user_slots))
        self._uslots = [s for t in utables for s in lay.user_slots if s.table == t]
        self._ucols = [c for s in self._uslots for c in range(s.index * d, (s.index + 1) * d)]
        self._ucols += [f * d + x.index for x in lay.user_dense]
        self._ccols = [c for s in lay.cand_slots for c in range(s.index * d, (s.index + 1) * d)]
        self._ccols += [f * d + x.index for x in lay.cand_dense]
        self._in_u, self._in_c = len(self._ucols), len(self._ccols)
        ugroups: dict[str, list[_Slot]] = {}
        for s in self._uslots:
            ugroups.setdefault(s.table, []).append(s)
        self._ugroups = list(ugroups.items())
        self._ucol_of = {s.name: k * d for k, s in enumerate(self._uslots)}
        # fast user path: per slot (slot, read req.user_id, multi); keys and bag ranges
        self._uplan = [(s, s.key == "user_id", s.multi) for s in self._uslots]
        self._ukeys = np.array([slot_key(s.id_space) for s in self._uslots], np.uint64)
        self._umean = np.array([s.mean for s in self._uslots], np.bool_)
        self._ubags: list[tuple[str, int, int]] = []
        b = 0
        for table, slots in self._ugroups:
            self._ubags.append((table, b, b + len(slots)))
            b += len(slots)
        self._udense_keys = [x.key for x in lay.user_dense]
        self._udense_norm = _DenseNormalizer([x.cfg for x in lay.user_dense])
        # candidate-side slot groups per table: (table, [(kind, j)]) in x_c column order
        groups: dict[str, list[tuple[str, int]]] = {}
        single = {s.name: j for j, s in enumerate(lay.cand_single)}
        multi = {s.name: m for m, s in enumerate(lay.cand_multi)}
        for s in lay.cand_slots:
            kind = POS if s.side == POS else ("multi" if s.multi else "single")
            j = multi[s.name] if s.multi else single.get(s.name, -1)
            groups.setdefault(s.table, []).append((kind, j))
        self._cgroups = list(groups.items())
        self._cmean = {s.table: [x.mean for x in lay.cand_slots if x.table == s.table]
                       for s in lay.cand_slots}
        # groups of single-valued slots (and the position): one gather of the index's fid
        # rows, item-major bags, pooled rows reshaped straight into x_c's columns
        self._cfast: list[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], list[int]] | None]
        self._cfast = []
        for _table, members in self._cgroups:
            if any(kind == "multi" for kind, _ in members):
                self._cfast.append(None)
                continue
            at = [g for g, (kind, _) in enumerate(members) if kind == "single"]
            js = [j for kind, j in members if kind == "single"]
            pos = [g for g, (kind, _) in enumerate(members) if kind == POS]
            self._cfast.append((np.array(at, np.intp), np.array(js, np.intp), pos))
        pos_space = [s.id_space for s in lay.cand_slots if s.side == POS]
        cap = 1024
        self._pos_fids = (hash_array(pos_space[0], np.arange(cap, dtype=np.int64))
                          if pos_space else np.empty(0, np.uint64))
        self.engine: TorchDense | OnnxDense | None = None
        m = self.model
        first_pairs: tuple[Any, Any] | None = None
        if type(m) is WideDeep:
            first_pairs = (m.wide, m.deep)
        elif type(m) is DeepFM:
            first_pairs = (m.linear, m.mlp)
        if first_pairs is not None and first_pairs[0].out_features == 1:
            lin, mlp = first_pairs
            fused = FusedLayers.from_modules(mlp[0], lin, list(mlp)[1:], self._ucols,
                                             self._ccols)
            self.engine = dense_engine(fused, self.engine_name)

    # ------------------------------------------------------------------ scoring
    def _user_block(self, req: ScoreRequest) -> npt.NDArray[np.float32]:
        xu = self._user_fast(req)
        return xu if xu is not None else self._user_block_checked(req)

    def _user_fast(self, req: ScoreRequest) -> npt.NDArray[np.float32] | None:
        """The user block when every user id is an int and every dense value a number: all
        slots hashed in one call; ``None`` sends the request to the checked path (strings,
        floats as ids, wrong types and their errors)."""
        u = req.user
        vals: list[int] = []
        lens: list[int] = []
        for s, is_uid, multi in self._uplan:
            raw = req.user_id if is_uid and "user_id" not in u else u.get(s.key)
            if raw is None:
                lens.append(0)
            elif type(raw) is int and not multi:
                vals.append(raw)
                lens.append(1)
            elif multi and type(raw) is list:
                if len(raw) > s.max_len:
                    raw = raw[-s.max_len:]
                for v in raw:
                    if type(v) is not int:
                        return None
                vals.extend(raw)
                lens.append(len(raw))
            else:
                return None
        xu = np.empty(self._in_u, np.float32)
        if self._uslots:
            try:
                v = np.array(vals, np.int64)
            except OverflowError:
                return None
            ln = np.array(lens, np.int32)
            fids = np.empty(v.shape[0], np.uint64)
            hash_ints_keyed(np.repeat(self._ukeys, ln), v, fids)
            off = _offsets(ln)
            scale = np.ones(ln.shape[0], np.float32)
            mean = self._umean & (ln > 0)
            if mean.any():
                scale[mean] = (1.0 / ln[mean].astype(np.float64)).astype(np.float32)
            d = self.dim
            for table, b0, b1 in self._ubags:
                pooled = _pool(self.tables[table], fids[off[b0]:off[b1]],
                               off[b0:b1 + 1] - off[b0], scale[b0:b1])
                xu[b0 * d:b1 * d] = pooled.reshape(-1)
        if self._udense_keys:
            try:
                x = np.array([u.get(k) for k in self._udense_keys], np.float64)
            except (ValueError, TypeError):
                return None
            if x.ndim != 1:
                return None
            xu[len(self._uslots) * self.dim:] = self._udense_norm(x)
        return xu

    def _user_block_checked(self, req: ScoreRequest) -> npt.NDArray[np.float32]:
        lay, d = self.layout, self.dim
        u = req.user
        xu = np.zeros(self._in_u, np.float32)
        col = self._ucol_of
        for table, slots in self._ugroups:
            vals, lens, scale = [], [], []
            for s in slots:
                raw = req.user_id if s.key == "user_id" and "user_id" not in u else u.get(s.key)
                if s.multi:
                    fids, ln = _multi(s, [raw], lambda i, s=s: f"user.{s.key}")
                    n = int(ln[0])
                else:
                    fids, ok = hash_values(s.id_space, [raw], lambda i, s=s: f"user.{s.key}")
                    fids = fids[ok]
                    n = int(ok[0])
                vals.append(fids)
                lens.append(n)
                scale.append(1.0 / n if s.mean and n else 1.0)
            pooled = _pool(self.tables[table], np.concatenate(vals),
                           _offsets(np.array(lens, np.int32)), np.array(scale, np.float32))
            for s, row in zip(slots, pooled, strict=True):
                xu[col[s.name]: col[s.name] + d] = row
        base = len(lay.user_slots) * d
        for j, x in enumerate(lay.user_dense):
            xu[base + j] = dense_values(x.cfg, [u.get(x.key)], lambda i, x=x: f"user.{x.key}")[0]
        return xu

    def _positions(self, n: int) -> npt.NDArray[np.uint64]:
        if n > self._pos_fids.shape[0]:
            space = [s.id_space for s in self.layout.cand_slots if s.side == POS][0]
            self._pos_fids = hash_array(space, np.arange(2 * n, dtype=np.int64))
        return self._pos_fids[:n]

    def _cand_block(self, req: ScoreRequest, store: bool) -> npt.NDArray[np.float32]:
        lay, d = self.layout, self.dim
        idx = self.index
        if req.by_id:
            req.candidates = idx.known(req.candidates)
        cands = req.candidates
        n = len(cands)
        frags: list[tuple[bytes, bytes] | None] | None = [] if store else None
        rows = idx.rows(cands, store=store, fragments=frags)
        if store:
            req.fragments = frags
        xc = np.empty((n, self._in_c), np.float32)
        fids_all = valid_all = None
        off = 0
        for (table, members), fast in zip(self._cgroups, self._cfast, strict=True):
            g = len(members)
            if fast is not None:
                at, js, pos = fast
                if fids_all is None:
                    fids_all, valid_all = idx.fids[rows], idx.valid[rows]
                f = np.empty((n, g), np.uint64)
                ok = np.empty((n, g), np.bool_)
                f[:, at] = fids_all[:, js]
                ok[:, at] = valid_all[:, js]
                for p in pos:
                    f[:, p] = self._positions(n)
                    ok[:, p] = True
                ok = ok.reshape(-1)
                lengths = ok.astype(np.int32)
                fids = f.reshape(-1) if ok.all() else f.reshape(-1)[ok]
                pooled = _pool(self.tables[table], fids, _offsets(lengths),
                               np.ones(n * g, np.float32))
                xc[:, off:off + g * d] = pooled.reshape(n, g * d)
                off += g * d
                continue
            vals, lens = [], []
            for kind, j in members:
                if kind == "single":
                    ok = idx.valid[rows, j]
                    vals.append(idx.fids[rows, j][ok])
                    lens.append(ok.astype(np.int32))
                elif kind == POS:
                    vals.append(self._positions(n))
                    lens.append(np.ones(n, np.int32))
                else:
                    parts = [idx.multi[j][r] for r in rows]
                    vals.append(np.concatenate(parts) if parts else np.empty(0, np.uint64))
                    lens.append(np.array([p.shape[0] for p in parts], np.int32))
            lengths = np.concatenate(lens)
            scale = np.ones(lengths.shape[0], np.float32)
            for gi, mean in enumerate(self._cmean[table]):
                if mean:
                    ln = lengths[gi * n:(gi + 1) * n]
                    scale[gi * n:(gi + 1) * n] = np.where(ln > 0, 1.0 / np.maximum(ln, 1), 0.0)
            pooled = _pool(self.tables[table], np.concatenate(vals), _offsets(lengths), scale)
            xc[:, off:off + g * d] = pooled.reshape(g, n, d).transpose(1, 0, 2).reshape(n, g * d)
            off += g * d
        if lay.cand_dense:
            xc[:, off:] = idx.dense[rows] if not lay.position_dense else \
                self._with_position(idx.dense[rows], n)
        return xc

    def _with_position(self, dense: npt.NDArray[np.float32], n: int) -> npt.NDArray[np.float32]:
        for j, x in enumerate(self.layout.cand_dense):
            if x.cfg.column == "position":
                dense[:, j] = normalize_dense(np.arange(n, dtype=np.float64), x.cfg)
        return dense

    def logits(self, req: ScoreRequest, *, store: bool = True) -> torch.Tensor:
        """Uncorrected logits (N,) of the request's candidates."""
        n = len(req.candidates)
        if n == 0:
            return torch.empty(0)
        xu = torch.from_numpy(self._user_block(req)).unsqueeze(0)
        xc = torch.from_numpy(self._cand_block(req, store))
        if self.engine is not None:
            out = self.engine(xu.numpy(), xc.numpy())
            if type(self.model) is DeepFM:
                with torch.inference_mode():
                    out = out + self._fm(xu, xc, n).numpy()
            return torch.from_numpy(out)
        with torch.inference_mode():
            x = torch.empty(n, self._in_u + self._in_c)
            x[:, self._ucols] = xu
            x[:, self._ccols] = xc
            f, d = self.layout.n_slots, self.dim
            return self.model.interact(x[:, : f * d].reshape(n, f, d), x[:, f * d:])

    def _fm(self, xu: torch.Tensor, xc: torch.Tensor, n: int) -> torch.Tensor:
        d = self.dim
        eu = xu[:, : len(self.layout.user_slots) * d].reshape(1, -1, d)
        ec = xc[:, : len(self.layout.cand_slots) * d].reshape(n, -1, d)
        s = eu.sum(dim=1) + ec.sum(dim=1)
        q = (eu * eu).sum(dim=(1, 2)) + (ec * ec).sum(dim=(1, 2))
        return 0.5 * ((s * s).sum(dim=1) - q)

    def score(self, req: ScoreRequest, *, store: bool = True) -> npt.NDArray[np.float32]:
        """Click probabilities (N,) of the request's candidates, corrected for the negative
        sampling of training.

        Raises
        ------
        RequestError
            A feature value of the wrong type (the message names the field).
        """
        logits = self.logits(req, store=store)
        if self.log_rate:
            logits = logits + self.log_rate
        return torch.sigmoid(logits).numpy()

    def warmup(self, requests: Sequence[ScoreRequest]) -> int:
        """Score ``requests`` without storing their candidates; returns how many succeeded."""
        ok = 0
        for r in requests:
            try:
                self.score(r, store=False)
                ok += 1
            except RequestError as e:
                log.debug("warm-up request skipped: %s", e)
        return ok

    def __repr__(self) -> str:
        return (f"Predictor(model={type(self.model).__name__}, version={self.version}, "
                f"slots={self.layout.n_slots}, dense={self.layout.n_dense})")


def load_dense(model: CTRModel, dense: Mapping[str, torch.Tensor]) -> None:
    """Load a published dense state dict into ``model``; mismatches name the parameters."""
    want = model.state_dict()
    missing = sorted(set(want) - set(dense))
    extra = sorted(set(dense) - set(want))
    bad = sorted(k for k in set(want) & set(dense) if tuple(want[k].shape) !=
                 tuple(dense[k].shape))
    if missing or extra or bad:
        raise IncompatibleFormatError(
            f"dense parameters do not fit the {type(model).__name__} of the config: missing "
            f"{missing[:5]}, unexpected {extra[:5]}, wrong shape {bad[:5]}")
    model.load_state_dict({k: torch.as_tensor(v) for k, v in dense.items()})
