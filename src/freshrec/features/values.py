"""Raw feature values as a request carries them (decoded JSON) -> fids and dense values.

This is the per-request path; :class:`~freshrec.features.schema.FeatureSchema` is the batch
path over Arrow columns. Both hash with the kernels of :mod:`freshrec.features.hashing`,
under its one rule (an id is an id whatever its JSON type: ``7``, ``"7"`` and ``7.0`` are one
id), keep the last ``max_len`` values of a list, and normalise with
:class:`~freshrec.features.dense.DenseNormalizer`, so a value gets the same fid and the same
dense value on both (tests/features/test_values.py compares them).

* :func:`hash_values`, :func:`hash_lists`, :func:`dense_values`: one field's values across
  many records (a candidate feature of N candidates);
* :class:`RecordEncoder`: every slot and dense field of one record (the user of a request),
  with a fast path that hashes all-integer ids of every slot in one kernel call.

Errors are :class:`~freshrec.errors.FieldError` naming the field (``where(i)`` names the
field of value ``i``).

Examples
--------
>>> from freshrec.features.hashing import fid
>>> f, ok = hash_values("item_id", [7, None, "7"], lambda i: f"candidates[{i}].item_id")
>>> ok.tolist(), int(f[0]) == int(f[2]) == int(fid("item_id", 7))
([True, False, True], True)
>>> f, lengths = hash_lists("item_id", 2, [[1, 2, 3], None], lambda i: f"user.recent[{i}]")
>>> lengths.tolist(), f.tolist() == hash_array("item_id", [2, 3]).tolist()
([2, 0], True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from freshrec.errors import FieldError, InputError, brief
from freshrec.features.config import DenseConfig, SlotConfig, SlotKind
from freshrec.features.dense import DenseNormalizer
from freshrec.features.hashing import hash_array, hash_keyed, slot_key

__all__ = ["RecordEncoder", "dense_values", "hash_lists", "hash_values"]

#: Names the field of value ``i`` in error messages.
Where = Callable[[int], str]

_INT64_MIN, _UINT64_END = -(1 << 63), 1 << 64


def hash_values(id_space: str, values: Sequence[Any], where: Where
                ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
    """Fids of categorical values (``None``: missing) and which ones are present.

    Raises
    ------
    FieldError
        A value that is not an int, bool, float or string, or an int outside
        ``[-2**63, 2**64)``.

    Examples
    --------
    >>> hash_values("s", [{"a": 1}], lambda i: f"x[{i}]")
    Traceback (most recent call last):
    ...
    freshrec.errors.FieldError: x[0]: must be an int or a string, got {'a': 1}
    """
    n = len(values)
    if n:
        try:
            arr = np.array(values)
        except (ValueError, TypeError, OverflowError):
            arr = None
        if arr is not None and arr.ndim == 1:
            kind = arr.dtype.kind
            if kind in "iub":  # ints (numpy wraps uint64 past 2**63 to its bit pattern)
                return hash_array(id_space, arr.astype(np.int64)), np.ones(n, np.bool_)
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
        if t is float and math.isfinite(v):  # a float id is the int it rounds to
            v, t = round(v), int
        if t is int or t is bool:
            if not _INT64_MIN <= v < _UINT64_END:
                raise FieldError(where(i), f"integer {v} does not fit in 64 bits")
            ints.append(v if v < (1 << 63) else v - _UINT64_END)
            ints_at.append(i)
        elif t is str:
            strs.append(v)
            strs_at.append(i)
        else:
            raise FieldError(where(i), f"must be an int or a string, got {brief(v)}")
    if ints:
        out[ints_at] = hash_array(id_space, np.array(ints, np.int64))
        ok[ints_at] = True
    if strs:
        out[strs_at] = hash_array(id_space, strs)
        ok[strs_at] = True
    return out, ok


def hash_lists(id_space: str, max_len: int, lists: Sequence[Any], where: Where
               ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32]]:
    """Fids and lengths of a list feature per record (``None``: empty), the last ``max_len``
    values of each list kept.

    Raises
    ------
    FieldError
        A value that is not a list, or a list holding ``None`` or a value
        :func:`hash_values` refuses.
    """
    flat: list[Any] = []
    lengths = np.zeros(len(lists), np.int32)
    dropped: dict[int, int] = {}
    for i, v in enumerate(lists):
        if v is None:
            continue
        if type(v) is not list:
            raise FieldError(where(i), f"must be a list of ids (a list feature), got {brief(v)}")
        if len(v) > max_len:
            dropped[i] = len(v) - max_len
            v = v[-max_len:]
        flat.extend(v)
        lengths[i] = len(v)
    if not flat:
        return np.empty(0, np.uint64), lengths

    def element(k: int) -> str:  # "<field>[j]": value j of its record's list
        ends = np.cumsum(lengths)
        i = int(np.searchsorted(ends, k, side="right"))
        return f"{where(i)}[{k - (ends[i] - lengths[i]) + dropped.get(i, 0)}]"

    fids, ok = hash_values(id_space, flat, element)
    if not ok.all():
        raise FieldError(element(int(np.argmin(ok))), "list values must not be null")
    return fids, lengths


def dense_values(config: DenseConfig, values: Sequence[Any], where: Where
                 ) -> npt.NDArray[np.float32]:
    """Normalised values of one dense field (``None``: missing, the field's ``fill``).

    The rule for a dense value: a JSON number (not a string, not a bool) whose normalised
    value is finite in float32 (``|x| <= 3.4e38``); anything else is refused, so no request
    can turn a score into ``inf`` or ``NaN``.

    Raises
    ------
    FieldError
        A value that is not a number, or out of range (the message names the field).

    Examples
    --------
    >>> cfg = DenseConfig(name="age", norm="standard", mean=30, std=10, fill=30)
    >>> dense_values(cfg, [40, None], lambda i: f"x[{i}]").tolist()
    [1.0, 0.0]
    >>> dense_values(cfg, [1, 1e308], lambda i: f"x[{i}]")
    Traceback (most recent call last):
    ...
    freshrec.errors.FieldError: x[1]: out of range (1e+308; a dense value must normalise to a \
finite float32, |x| <= 3.4e38)
    >>> dense_values(cfg, ["40"], lambda i: f"x[{i}]")
    Traceback (most recent call last):
    ...
    freshrec.errors.FieldError: x[0]: must be a number (a dense feature), got '40'
    """
    return _finite(DenseNormalizer([config]), _floats(values, where)[:, None],
                   lambda i, _: where(i))[:, 0]


def _finite(norm: DenseNormalizer, x: npt.NDArray[np.float64],
            where: Callable[[int, int], str]) -> npt.NDArray[np.float32]:
    """``norm(x)`` (2-D), refused (naming ``where(row, column)``) where a value is not
    finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        y = norm(x)
    if not np.isfinite(y).all():
        r, c = (int(k[0]) for k in np.nonzero(~np.isfinite(y)))
        raise FieldError(where(r, c), f"out of range ({x[r, c]:g}; a dense value must "
                                      f"normalise to a finite float32, |x| <= 3.4e38)")
    return y


#: Types of a dense value (``None``: missing); a bool or a string is no number.
_NUMBERS = (int, float, np.integer, np.floating)


def _floats(values: Sequence[Any], where: Where) -> npt.NDArray[np.float64]:
    """``values`` as float64, ``None`` as NaN; errors name the first value that is no number."""
    for i, v in enumerate(values):
        if v is not None and (isinstance(v, bool) or not isinstance(v, _NUMBERS)):
            raise FieldError(where(i), f"must be a number (a dense feature), got {brief(v)}")
    try:
        return np.array(values, dtype=np.float64).reshape(len(values))
    except OverflowError:  # an int past float64's range
        bad = next(i for i, v in enumerate(values) if v is not None and abs(v) > 1e308)
        raise FieldError(where(bad), f"out of range ({brief(values[bad])}; a dense value "
                                     f"must normalise to a finite float32, |x| <= 3.4e38)"
                         ) from None


class RecordEncoder:
    """Every slot and dense field of one record (the user of a request), encoded together.

    Parameters
    ----------
    slots : sequence of SlotConfig
        The slots, in the order of the fids returned.
    dense : sequence of DenseConfig
        The dense fields, in the order of the values returned.
    fields : sequence of str
        The name of each slot's and then each dense field's value in errors (``user.age``).

    Examples
    --------
    >>> from freshrec.features.hashing import fid
    >>> enc = RecordEncoder([SlotConfig(name="u", table="t"),
    ...                      SlotConfig(name="h", table="t", kind="multi", max_len=2)],
    ...                     [DenseConfig(name="age", norm="log")], ["user.u", "user.h", "user.age"])
    >>> fids, lengths = enc.ids([5, [1, 2, 3]])
    >>> lengths.tolist(), int(fids[0]) == int(fid("u", 5)), int(fids[2]) == int(fid("h", 3))
    ([1, 2], True, True)
    >>> enc.ids(["5", None])[1].tolist(), enc.dense([None]).tolist()
    ([1, 0], [0.0])
    >>> enc.ids([{"a": 1}, None])
    Traceback (most recent call last):
    ...
    freshrec.errors.FieldError: user.u: must be an int or a string, got {'a': 1}
    """

    def __init__(self, slots: Sequence[SlotConfig], dense: Sequence[DenseConfig],
                 fields: Sequence[str]) -> None:
        self.slots = tuple(slots)
        self.dense_fields = tuple(dense)
        self.fields = tuple(fields)
        if len(self.fields) != len(self.slots) + len(self.dense_fields):
            raise InputError(f"RecordEncoder: fields must name {len(self.slots)} slots and "
                             f"{len(self.dense_fields)} dense fields, got {len(self.fields)}")
        self._keys = np.array([slot_key(s.id_space) for s in self.slots], np.uint64)
        self._plan = [(s.kind is SlotKind.MULTI, s.max_len) for s in self.slots]
        self._norm = DenseNormalizer(self.dense_fields)

    def ids(self, values: Sequence[Any]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32]]:
        """Fids of every slot, slot after slot, and the number of each slot's fids
        (``values[i]``: slot ``i``'s raw value; ``None``: missing; a list for a multi slot).

        Raises
        ------
        FieldError
            A value of the wrong type (the message names its field).
        """
        fast = self._ids_fast(values)
        return fast if fast is not None else self._ids_checked(values)

    def _ids_fast(self, values: Sequence[Any]
                  ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32]] | None:
        """All slots in one kernel call when every id is an int of int64 (a list of them for
        a multi slot); ``None`` sends the record to :meth:`_ids_checked`."""
        flat: list[int] = []
        lens: list[int] = []
        for raw, (multi, max_len) in zip(values, self._plan, strict=True):
            if raw is None:
                lens.append(0)
            elif type(raw) is int and not multi:
                flat.append(raw)
                lens.append(1)
            elif multi and type(raw) is list:
                if len(raw) > max_len:
                    raw = raw[-max_len:]
                for v in raw:
                    if type(v) is not int:
                        return None
                flat.extend(raw)
                lens.append(len(raw))
            else:
                return None
        try:
            v = np.array(flat, np.int64)
        except OverflowError:
            return None
        ln = np.array(lens, np.int32)
        return hash_keyed(np.repeat(self._keys, ln), v), ln

    def _ids_checked(self, values: Sequence[Any]
                     ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32]]:
        parts = []
        lens = np.zeros(len(self.slots), np.int32)
        for i, (s, raw) in enumerate(zip(self.slots, values, strict=True)):
            where = self._where(i)
            if s.kind is SlotKind.MULTI:
                f, ln = hash_lists(s.id_space, s.max_len, [raw], where)
                lens[i] = ln[0]
            else:
                f, ok = hash_values(s.id_space, [raw], where)
                f = f[ok]
                lens[i] = f.shape[0]
            parts.append(f)
        return (np.concatenate(parts) if parts else np.empty(0, np.uint64)), lens

    def dense(self, values: Sequence[Any]) -> npt.NDArray[np.float32]:
        """Normalised values of every dense field (``values[j]``: field ``j``'s raw value).

        Raises
        ------
        FieldError
            A value that is not a number (the message names its field).
        """
        n = len(self.slots)
        x = _floats(values, lambda j: self.fields[n + j])
        return _finite(self._norm, x[None, :], lambda _, j: self.fields[n + j])[0]

    def _where(self, i: int) -> Where:
        name = self.fields[i]
        return lambda _: name

    def __repr__(self) -> str:
        return (f"RecordEncoder(slots={[s.name for s in self.slots]}, "
                f"dense={[d.name for d in self.dense_fields]})")
