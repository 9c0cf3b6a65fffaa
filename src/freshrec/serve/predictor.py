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
* **Encoding** of raw values is :mod:`freshrec.features.values`, the per-request path over
  the hashing kernels and dense normalisation that training's
  :class:`~freshrec.features.FeatureSchema` uses (one fid rule for ids of every JSON type).
* **The model's serving split, once per dense version.** The predictor hands the model the
  columns of its flat input that come from the user and from the candidates, and runs what
  :meth:`~freshrec.models.CTRModel.serving_split` returns on the dense engine
  (:mod:`freshrec.serve.engine`: ONNX Runtime when installed, else torch): the user block
  once per request (a 1 x K row), broadcast as the bias of one GEMM over the candidates,
  then the model's interaction. The predictor knows no model class; the result is the
  model's own arithmetic, regrouped (the tests compare it with ``model(sparse, dense)``).
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
from freshrec.errors import FieldError, IncompatibleFormatError
from freshrec.features.config import DenseConfig, FeatureConfig, SlotConfig, SlotKind
from freshrec.features.dense import DenseNormalizer
from freshrec.features.hashing import hash_array
from freshrec.features.values import RecordEncoder, dense_values, hash_lists, hash_values
from freshrec.models import build_model
from freshrec.models.base import CTRModel
from freshrec.nn.pooled import PooledEmbedding, SlotSpec
from freshrec.serve.engine import OnnxDense, TorchDense, dense_engine
from freshrec.serve.request import RequestError, ScoreRequest
from freshrec.store.served import serving_tables
from freshrec.table import EmbeddingTable

__all__ = ["FeatureIndex", "FeatureLayout", "Predictor", "candidate_fragment", "column_side"]

log = logging.getLogger(__name__)

USER, CAND, POS = "user", "candidate", "position"
_ITEM_ID = operator.itemgetter("item_id")
#: Bytes a stored row costs beyond its features' JSON (arrays, dict entry), for max_bytes.
_ROW_BYTES = 256


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
    config: SlotConfig
    side: str
    key: str
    index: int  # position among the model's slots (F)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def table(self) -> str:
        return self.config.table

    @property
    def multi(self) -> bool:
        return self.config.kind is SlotKind.MULTI

    @property
    def mean(self) -> bool:
        return self.config.pooling == "mean"


@dataclass(frozen=True)
class _Dense:
    cfg: DenseConfig
    side: str
    key: str
    index: int  # position among the dense fields


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
        made = [_Slot(config=s, side=side, key=key, index=i)
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
        #: The fields a model reads from a candidate and from the user; any other field of
        #: a request is dropped (:meth:`known_fields`) before it is stored or logged.
        self.cand_keys = frozenset(["item_id", *(s.key for s in made if s.side == CAND),
                                    *(d.key for d in self.cand_dense if d.key)])
        self.user_keys = frozenset([*(s.key for s in self.user_slots),
                                    *(d.key for d in self.user_dense)])

    @staticmethod
    def known_fields(records: list[dict[str, Any]], keys: frozenset[str]
                     ) -> list[dict[str, Any]]:
        """``records`` without the fields that are not in ``keys`` (the same list, when none
        has another field): what a request carries beyond the model's features is neither
        stored in the feature index nor written to the impressions.

        >>> FeatureLayout.known_fields([{"item_id": 1, "junk": "x" * 3000}],
        ...                            frozenset(["item_id"]))
        [{'item_id': 1}]
        """
        if all(map(keys.issuperset, records)):
            return records
        return [r if keys.issuperset(r) else {k: v for k, v in r.items() if k in keys}
                for r in records]

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
        Rows kept before the index is cleared.
    max_bytes : int
        Bytes of stored features (their JSON, as the impressions carry them, plus 256 a row)
        kept before the index is cleared: long string values cannot grow it without bound
        either. The default holds over a million rows of a few short features.

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

    def __init__(self, layout: FeatureLayout, max_items: int = 1_000_000,
                 max_bytes: int = 512 << 20) -> None:
        self.layout = layout
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._clear(1024)

    def _clear(self, cap: int) -> None:
        lay = self.layout
        self._pos: dict[Any, int] = {}
        self._raw: list[dict[str, Any]] = []
        self._frags: list[tuple[bytes, bytes] | None] = []
        self.nbytes = 0  # JSON bytes of the stored features (see max_bytes)
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
        """Encode and store ``cands`` (e.g. an item catalogue) without the fields the model
        does not read; returns how many.

        Raises
        ------
        FieldError
            A feature value of the wrong type (the message names the candidate and field).
        """
        lay = self.layout
        for start in range(0, len(cands), chunk):
            self.rows(lay.known_fields(list(cands[start:start + chunk]), lay.cand_keys),
                      store=True, offset=start)
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
                if store and (len(raw) + len(todo) > self.max_items
                              or self.nbytes >= self.max_bytes):
                    log.info("feature index full (%d items, %d bytes): cleared", len(raw),
                             self.nbytes)
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
            f, ok = hash_values(s.config.id_space, [c.get(s.key) for c in todo], where(s.key))
            self.fids[t, j] = f
            self.valid[t, j] = ok
        for j, d in enumerate(lay.cand_dense):
            if d.cfg.column == "position":
                continue
            self.dense[t, j] = dense_values(d.cfg, [c.get(d.key) for c in todo], where(d.key))
        for m, s in enumerate(lay.cand_multi):
            f, ln = hash_lists(s.config.id_space, s.config.max_len, [c.get(s.key) for c in todo],
                               where(s.key))
            ends = np.cumsum(ln)
            store_m = self.multi[m]
            while len(store_m) < need:
                store_m.append(np.empty(0, np.uint64))
            for k, r in enumerate(targets):
                store_m[r] = f[ends[k] - ln[k]: ends[k]]
        if store:
            raw.extend(todo)
            frags = [candidate_fragment(c) for c in todo]
            self._frags.extend(frags)
            self.nbytes += sum(_ROW_BYTES if f is None else _ROW_BYTES + len(f[0]) + len(f[1])
                               for f in frags)
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
        What runs the model's serving split: ``"auto"`` (ONNX Runtime when installed and the
        split exports, else torch), ``"torch"`` or ``"onnxruntime"``
        (:func:`~freshrec.serve.engine.dense_engine`).
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
        tables = serving_tables(tables)  # backend: redis tables read rows from Redis
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
        """Column maps of the user/candidate blocks, the user encoder and the model's serving
        split on its engine."""
        lay, d = self.layout, self.dim
        f = lay.n_slots
        # user slots grouped by table (one find + pool per table, pooled rows contiguous)
        utables = list(dict.fromkeys(s.table for s in lay.user_slots))
        self._uslots = [s for t in utables for s in lay.user_slots if s.table == t]
        ucols = [c for s in self._uslots for c in range(s.index * d, (s.index + 1) * d)]
        ucols += [f * d + x.index for x in lay.user_dense]
        ccols = [c for s in lay.cand_slots for c in range(s.index * d, (s.index + 1) * d)]
        ccols += [f * d + x.index for x in lay.cand_dense]
        self._in_u, self._in_c = len(ucols), len(ccols)
        self._user = RecordEncoder([s.config for s in self._uslots],
                                   [x.cfg for x in lay.user_dense],
                                   [f"user.{k}" for k in [*(s.key for s in self._uslots),
                                                          *(x.key for x in lay.user_dense)]])
        self._uid = [s.key == "user_id" for s in self._uslots]
        self._ukeys = [s.key for s in self._uslots]
        self._udense_keys = [x.key for x in lay.user_dense]
        self._umean = np.array([s.mean for s in self._uslots], np.bool_)
        self._ubags: list[tuple[str, int, int]] = []
        b = 0
        for table in utables:
            k = sum(s.table == table for s in self._uslots)
            self._ubags.append((table, b, b + k))
            b += k
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
        pos_space = [s.config.id_space for s in lay.cand_slots if s.side == POS]
        self._pos_space = pos_space[0] if pos_space else ""
        self._pos_fids = (hash_array(self._pos_space, np.arange(1024, dtype=np.int64))
                          if pos_space else np.empty(0, np.uint64))
        self._pos_dense = [(j, DenseNormalizer([x.cfg])) for j, x in enumerate(lay.cand_dense)
                           if x.cfg.column == "position"]
        self.engine: TorchDense | OnnxDense = dense_engine(
            self.model.serving_split(ucols, ccols), self.engine_name)

    # ------------------------------------------------------------------ scoring
    def _user_block(self, req: ScoreRequest) -> npt.NDArray[np.float32]:
        """The user row ``xu``: every user slot encoded and pooled, then the dense fields."""
        u = req.user
        has_uid = "user_id" in u
        fids, ln = self._user.ids([req.user_id if uid and not has_uid else u.get(key)
                                   for uid, key in zip(self._uid, self._ukeys, strict=True)])
        xu = np.empty(self._in_u, np.float32)
        if self._uslots:
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
            xu[len(self._uslots) * self.dim:] = self._user.dense(
                [u.get(k) for k in self._udense_keys])
        return xu

    def _positions(self, n: int) -> npt.NDArray[np.uint64]:
        if n > self._pos_fids.shape[0]:
            self._pos_fids = hash_array(self._pos_space, np.arange(2 * n, dtype=np.int64))
        return self._pos_fids[:n]

    def _cand_block(self, req: ScoreRequest, store: bool) -> npt.NDArray[np.float32]:
        lay, d = self.layout, self.dim
        idx = self.index
        if req.by_id:
            req.candidates = idx.known(req.candidates)
        else:
            req.candidates = lay.known_fields(req.candidates, lay.cand_keys)
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
        for j, norm in self._pos_dense:
            dense[:, j] = norm.column(0, np.arange(n, dtype=np.float64))
        return dense

    def logits(self, req: ScoreRequest, *, store: bool = True) -> torch.Tensor:
        """Uncorrected logits (N,) of the request's candidates.

        Raises
        ------
        RequestError
            A feature value of the wrong type (the message names the field).
        """
        if not req.candidates:
            return torch.empty(0)
        req.user = self.layout.known_fields([req.user], self.layout.user_keys)[0]
        try:
            xu = self._user_block(req)
            xc = self._cand_block(req, store)
        except RequestError:
            raise
        except FieldError as e:
            raise RequestError(e.field, e.message) from e
        return torch.from_numpy(self.engine(xu[None, :], xc))

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
        scores = torch.sigmoid(logits).numpy()
        if not np.isfinite(scores).all():  # finite inputs whose products overflow the model
            raise RequestError("candidates", f"candidate {int(np.argmin(np.isfinite(scores)))}: "
                                             "its features give the model a non-finite score")
        return scores

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
