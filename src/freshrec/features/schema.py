"""Raw columnar records -> fids and dense tensors, as the model consumes them.

:class:`FeatureSchema` turns a ``pyarrow.RecordBatch`` of raw values (ids, strings, lists of
ids, floats) into an :class:`EncodedBatch`: one :class:`JaggedBatch` of fids for all slots, a
float32 matrix of normalised dense fields, the label matrix, and per-example weight, sample
rate and event time. This is the batch path; :mod:`freshrec.features.values` is serving's
per-request path over the same hashing kernels (:mod:`freshrec.features.hashing`, one rule
for ids of every type) and the same :class:`~freshrec.features.dense.DenseNormalizer`.

Examples
--------
>>> import pyarrow as pa
>>> from freshrec.features.config import feature_config_from_dict
>>> cfg = feature_config_from_dict({
...     "tables": {"item": {"dim": 4}},
...     "slots": {"item_id": {"table": "item"},
...               "hist": {"table": "item", "kind": "multi", "max_len": 2}},
...     "dense": {"price": {"norm": "log"}}, "labels": ["click"]})
>>> rb = pa.RecordBatch.from_pydict({
...     "item_id": [10, None], "hist": [[1, 2, 3], []], "price": [0.0, None],
...     "click": [1, 0], "event_time": [100, 101]})
>>> enc = FeatureSchema(cfg).encode(rb)
>>> enc.sparse.lengths().tolist()      # item_id: 1, 0 (null) | hist: 2 (last 2 kept), 0
[1, 0, 2, 0]
>>> enc.labels[:, 0].tolist(), enc.dense.shape, enc.event_time.tolist()
([1.0, 0.0], (2, 1), [100, 101])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from freshrec.errors import InputError
from freshrec.features.config import FeatureConfig, SlotKind
from freshrec.features.dense import DenseNormalizer
from freshrec.features.hashing import hash_array
from freshrec.features.jagged import JaggedBatch

__all__ = ["FeatureSchema", "EncodedBatch", "RowsOutOfRange"]


class RowsOutOfRange(InputError):
    """Rows of a batch whose label is missing (null) or not in [0, 1], whose weight is not a
    finite number >= 0, whose sample rate is not in (0, 1] (NaN and infinities included) or
    whose dense value is an infinity or normalises past float32's range; ``rows`` marks them,
    so that a caller can keep the others."""

    def __init__(self, message: str, rows: npt.NDArray[np.bool_]) -> None:
        super().__init__(message)
        self.rows = rows


def _out_of_range(labels: npt.NDArray[np.float32], label_names: tuple[str, ...],
                  weight: npt.NDArray[np.float32], rate: npt.NDArray[np.float32],
                  more: list[tuple[str, npt.NDArray[Any], str, npt.NDArray[np.bool_]]]) -> None:
    """Raise :class:`RowsOutOfRange` naming the first bad value, if any row has one;
    ``more``: other ``(what, values, expected, ok)`` checks (the dense columns')."""
    checks = [(f"label column {name!r}", labels[:, j], "a number in [0, 1]",
               (labels[:, j] >= 0) & (labels[:, j] <= 1)) for j, name in enumerate(label_names)]
    checks += [("weight", weight, "a finite number >= 0", np.isfinite(weight) & (weight >= 0)),
               ("sample rate", rate, "a number in (0, 1]", (rate > 0) & (rate <= 1)), *more]
    bad = np.zeros(len(weight), np.bool_)
    first = ""
    for what, values, expected, ok in checks:  # NaN fails every comparison
        if not ok.all():
            if not first:
                i = int(np.flatnonzero(~ok)[0])
                v = float(values[i])
                first = (f"{what}: row {i} of the batch is "
                         f"{'missing (null) or NaN' if np.isnan(v) else v}, expected {expected}")
            bad |= ~ok
    if first:
        raise RowsOutOfRange(f"{first} ({int(bad.sum())} of {len(bad)} rows out of range)",
                             bad)


@dataclass(frozen=True)
class EncodedBatch:
    """One batch ready for a model: fids, dense fields, labels and per-example metadata."""

    sparse: JaggedBatch
    dense: npt.NDArray[np.float32]
    labels: npt.NDArray[np.float32]
    weight: npt.NDArray[np.float32]
    sample_rate: npt.NDArray[np.float32]
    event_time: npt.NDArray[np.int64]

    @property
    def size(self) -> int:
        """Examples in the batch."""
        return int(self.labels.shape[0])


class FeatureSchema:
    """Encodes raw record batches for the slots, dense fields and labels of a config.

    Parameters
    ----------
    config : FeatureConfig
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self._normalizer = DenseNormalizer(config.dense)

    @property
    def slot_names(self) -> list[str]:
        """Slot names in encoding order."""
        return [s.name for s in self.config.slots]

    @property
    def n_dense(self) -> int:
        """Width of the dense matrix."""
        return len(self.config.dense)

    def encode(self, batch: pa.RecordBatch | pa.Table, *, with_labels: bool = True
               ) -> EncodedBatch:
        """Encode ``batch``; missing label columns are an error only with ``with_labels``.
        Raises :class:`InputError` for a column that cannot be read, and its subclass
        :class:`RowsOutOfRange` for rows whose label, weight, sample rate or dense value is
        out of range."""
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else \
                pa.RecordBatch.from_pylist([], schema=batch.schema)
        n = batch.num_rows
        cfg = self.config
        names = set(batch.schema.names)
        values, lengths = [], []
        for slot in cfg.slots:
            if slot.column not in names:
                # an absent column is all-missing (e.g. an optional feature at serving time)
                values.append(np.empty(0, np.uint64))
                lengths.append(np.zeros(n, np.int32))
                continue
            col = batch.column(slot.column)
            if slot.kind is SlotKind.MULTI or pa.types.is_list(col.type) or \
                    pa.types.is_large_list(col.type):
                v, ln = self._encode_list(slot.id_space, col, slot.max_len)
            else:
                valid = col.is_valid()
                ln = np.asarray(valid, dtype=np.int32) if col.null_count else \
                    np.ones(n, np.int32)
                v = hash_array(slot.id_space, col.drop_null() if col.null_count else col)
            values.append(v)
            lengths.append(ln)
        sparse = JaggedBatch(self.slot_names,
                             np.concatenate(values) if values else np.empty(0, np.uint64),
                             np.concatenate(lengths) if lengths else np.empty(0, np.int32))
        dense = np.empty((n, len(cfg.dense)), np.float32)
        # an infinity, or a value whose normalised value is past float32's range, reached
        # the model as an infinity (its output NaN): refused with its row, as serving does
        unbounded: list[tuple[str, npt.NDArray[Any], str, npt.NDArray[np.bool_]]] = []
        for j, d in enumerate(cfg.dense):
            raw = (_floats(batch.column(d.column), np.nan, f"dense column {d.column!r}",
                           np.float64) if d.column in names else np.full(n, np.nan))
            with np.errstate(over="ignore", invalid="ignore"):
                dense[:, j] = self._normalizer.column(j, raw)  # an absent column: all missing
            finite = np.isfinite(dense[:, j])
            if not finite.all():
                unbounded.append((f"dense column {d.column!r}", raw,
                                  "a number that normalises to a finite float32", finite))
        labels = np.zeros((n, len(cfg.labels)), np.float32)
        for j, name in enumerate(cfg.labels):
            if name in names:
                # a null label is not a negative: NaN, refused below with the row
                labels[:, j] = _floats(batch.column(name), np.nan, f"label column {name!r}")
            elif with_labels:
                raise InputError(f"batch has no label column {name!r} (columns: "
                                 f"{batch.schema.names})")
        weight = (_floats(batch.column(cfg.weight_column), 1.0, cfg.weight_column)
                  if cfg.weight_column in names else np.ones(n, np.float32))
        rate = (_floats(batch.column(cfg.sample_rate_column), 1.0, cfg.sample_rate_column)
                if cfg.sample_rate_column in names else np.ones(n, np.float32))
        _out_of_range(labels, cfg.labels, weight, rate, unbounded)
        if cfg.time_column in names:
            t = batch.column(cfg.time_column).cast(pa.int64()).fill_null(0)
            event_time = np.asarray(t.to_numpy(zero_copy_only=False), dtype=np.int64)
        else:
            event_time = np.zeros(n, np.int64)
        return EncodedBatch(sparse=sparse, dense=dense, labels=labels, weight=weight,
                            sample_rate=rate, event_time=event_time)

    @staticmethod
    def _encode_list(slot: str, col: pa.Array, max_len: int
                     ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32]]:
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            raise InputError(f"slot {slot!r}: multi-valued slot needs a list column, "
                             f"got {col.type}")
        col = col.fill_null(pa.scalar([], type=col.type))
        ln = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False), np.int64)
        flat = col.flatten()
        if flat.null_count:
            raise InputError(f"slot {slot!r}: list values contain nulls")
        v = hash_array(slot, flat)
        if (ln > max_len).any():
            ends = np.cumsum(ln)
            keep = np.minimum(ln, max_len)
            starts = ends - keep
            idx = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
            v = v[idx.astype(np.int64)]
            ln = keep
        return v, ln.astype(np.int32)


def _floats(col: pa.Array, fill: float, what: str, dtype: type[np.floating] = np.float32
            ) -> npt.NDArray[Any]:
    try:
        arr = col.cast(pa.from_numpy_dtype(dtype)).fill_null(fill)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise InputError(f"{what}: expected numbers, got {col.type} ({e})") from e
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=dtype)
