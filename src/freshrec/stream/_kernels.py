"""numba kernel of the joiner's event decoding (private). See
:func:`freshrec.stream.events.decode_events`.

:func:`parse_candidates` takes the ``"candidates"`` array of JSON impressions apart into
columns when every candidate has the plain shape the simulator and serving write: an object
with ``item_id`` and ``position`` (JSON integers), optionally ``true_p`` (a JSON decimal
without exponent) and ``features`` (an object of integers or decimals), the same fields, and
the same feature keys in the same order in every candidate. Anything else -- another field,
a string id, null, an exponent, a duplicate key, an escape or a non-ASCII byte in a key,
more digits than parse exactly here, invalid JSON -- is reported as "not parsed" and left to
the general decoder (orjson), so the fast path changes no result.

Every function here is compiled with ``_nrt=False`` (numba's runtime off: none of them
allocates or returns an array). With the runtime on, each call of a helper increments and
decrements the reference count of every array it is passed, with atomic instructions: on
35-candidate records those took about half of the kernel's time (``perf``: ``lock incq`` /
``lock decq`` of ``NRT_incref`` / ``NRT_decref``), 240-300 MB/s; without them 550-600 MB/s
(docs/stream.md, round 5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast

import numpy as np
from numba import njit
from numba.core.cpu import CPUTargetOptions

_F = TypeVar("_F", bound=Callable[..., Any])

#: ``_nrt`` is not a public option: a numba without it (an unknown option fails the first
#: call) compiles these kernels with its runtime on, slower and with the same results
_RUNTIME_OFF: dict[str, Any] = {"_nrt": False} if hasattr(CPUTargetOptions, "_nrt") else {}


def _jit(inline: Literal["never", "always"] = "never") -> Callable[[_F], _F]:
    """``njit`` with the options of every function here (``_nrt``: the module docstring)."""
    return cast(Callable[[_F], _F], njit(cache=True, nogil=True, inline=inline, **_RUNTIME_OFF))

#: columns of ``info`` (one row per record)
OK, SPAN_START, SPAN_END, N, K, INT_OFF, FLOAT_OFF, KEY_OFF, SCHEMA = range(9)
INFO_COLS = 9
#: ``info[r, OK]`` of a record that is one JSON object without a ``"candidates"`` key (an
#: action): nothing parsed, but its bytes are one value with balanced brackets and strings
WHOLE = 2
#: ``has`` bits of a candidate's fields
_ITEM, _POS, _TRUE_P, _FEATURES = 1, 2, 4, 8
_MAX_INT_DIGITS = 18  # fits int64
_MAX_FLOAT_DIGITS = 15  # < 2**53: mantissa / 10**f is then correctly rounded
_POW10 = np.array([10.0 ** i for i in range(23)])  # exact doubles


def _words(*names: str) -> np.ndarray:
    out = np.zeros((len(names), 16), np.uint8)
    for w, name in enumerate(names):
        out[w, :len(name)] = np.frombuffer(name.encode(), np.uint8)
        out[w, -1] = len(name)
    return out


#: the field names the kernel knows, one row each (zero-padded, length in the last column)
WORDS = _words("item_id", "position", "true_p", "features", "candidates")


@_jit(inline="always")
def _ws(buf: np.ndarray, i: int, end: int) -> int:
    # written without ``break``: numba compiles a break out of this loop ~8x slower
    while i < end and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
        i += 1
    return i


@_jit()
def _string_end(buf: np.ndarray, i: int, end: int) -> int:
    """Index after the JSON string starting at ``buf[i] == '"'``; -1: unterminated."""
    i += 1
    while i < end:
        c = buf[i]
        if c == 92:  # backslash: skip the escaped byte
            i += 2
            continue
        if c == 34:
            return i + 1
        i += 1
    return -1


@_jit()
def _plain_key_end(buf: np.ndarray, i: int, end: int) -> int:
    """Index after the key string at ``buf[i] == '"'`` when it is printable ASCII without
    escapes; -1 otherwise."""
    if i >= end or buf[i] != 34:
        return -1
    i += 1
    while i < end:
        c = buf[i]
        if c == 34:
            return i + 1
        if c == 92 or c < 32 or c > 126:
            return -1
        i += 1
    return -1


@_jit()
def _value_end(buf: np.ndarray, i: int, end: int) -> int:
    """Index after the JSON value starting at ``buf[i]`` (skipped, not validated: the
    general decoder validates it); -1: unterminated."""
    c = buf[i]
    if c == 34:
        return _string_end(buf, i, end)
    if c == 123 or c == 91:  # { [
        depth = 0
        while i < end:
            c = buf[i]
            if c == 34:
                i = _string_end(buf, i, end)
                if i < 0:
                    return -1
                continue
            if c == 123 or c == 91:
                depth += 1
            elif c == 125 or c == 93:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return -1
    while i < end:  # number or literal
        c = buf[i]
        if c == 44 or c == 125 or c == 93 or c == 32 or c == 10 or c == 13 or c == 9:
            return i
        i += 1
    return i


@_jit()
def _same(buf: np.ndarray, a: int, b: int, n: int) -> bool:
    for t in range(n):  # noqa: SIM110 (a generator is slower in numba)
        if buf[a + t] != buf[b + t]:
            return False
    return True


@_jit()
def _is(buf: np.ndarray, s: int, e: int, words: np.ndarray, w: int) -> bool:
    """Whether the key ``buf[s:e]`` (quotes included) is word ``w`` of ``words``."""
    n = words[w, words.shape[1] - 1]
    if e - s != n + 2:
        return False
    for t in range(n):  # noqa: SIM110 (a generator is slower in numba)
        if buf[s + 1 + t] != words[w, t]:
            return False
    return True


@_jit(inline="always")
def _number(buf: np.ndarray, i: int, end: int) -> tuple[int, int, int, int]:
    """The JSON number at ``buf[i]`` without exponent: ``(index after, negative,
    mantissa digits as int, digits after the point or -1 without a point)``; index -1 when
    it is not such a number or has too many digits to be parsed exactly here."""
    neg = 0
    if i < end and buf[i] == 45:
        neg = 1
        i += 1
    if i >= end or buf[i] < 48 or buf[i] > 57:
        return -1, 0, 0, 0
    if buf[i] == 48 and i + 1 < end and 48 <= buf[i + 1] <= 57:
        return -1, 0, 0, 0  # leading zero: not JSON
    m = 0
    s = i
    while i < end and 48 <= buf[i] <= 57:  # no ``break``: see _ws
        m = m * 10 + (buf[i] - 48)
        i += 1
    digits = i - s
    frac = -1
    if i < end and buf[i] == 46:
        i += 1
        s = i
        while i < end and 48 <= buf[i] <= 57:
            m = m * 10 + (buf[i] - 48)
            i += 1
        frac = i - s
        digits += frac
        if frac == 0 or digits > _MAX_FLOAT_DIGITS:
            return -1, 0, 0, 0
    if digits > _MAX_INT_DIGITS or (i < end and (buf[i] == 101 or buf[i] == 69)):
        return -1, 0, 0, 0  # an exponent is left to the general decoder
    return i, neg, m, frac


@_jit()
def _int_field(buf: np.ndarray, i: int, end: int, out: np.ndarray, at: int) -> int:
    """The JSON integer at ``buf[i]`` into ``out[at]``; the index after it, -1: not one."""
    i, neg, m, frac = _number(buf, i, end)
    if i < 0 or frac >= 0:
        return -1
    out[at] = -m if neg else m
    return i


@_jit()
def _float_field(buf: np.ndarray, i: int, end: int, out: np.ndarray, at: int) -> int:
    """The JSON decimal (with a point) at ``buf[i]`` into ``out[at]``; -1: not one."""
    i, neg, m, frac = _number(buf, i, end)
    if i < 0 or frac < 0 or frac >= _POW10.shape[0]:
        return -1
    x = m / _POW10[frac]
    out[at] = -x if neg else x
    return i


@_jit(inline="always")
def _parse_features(buf: np.ndarray, i: int, end: int, ints: np.ndarray, fints: np.ndarray,
                    row: int, keys: np.ndarray, ktype: np.ndarray, ko: int, first: bool,
                    k: int) -> tuple[int, int]:
    """The features object at ``buf[i]`` into slots ``row + 2 ..``: ``(index after, number
    of keys)``; index -1 when it is not plain. The first candidate names the keys (``keys``,
    ``ktype``: 0 integer, 1 decimal), the others must repeat them in the same order."""
    if i >= end or buf[i] != 123:
        return -1, 0
    i = _ws(buf, i + 1, end)
    if i < end and buf[i] == 125:
        return i + 1, 0
    nf = 0
    while True:
        fs = i
        fe = _plain_key_end(buf, i, end)
        if fe < 0:
            return -1, 0
        if first:
            for q in range(nf):  # a duplicate key (JSON keeps the last): not plain
                a, b = keys[ko + q, 0], keys[ko + q, 1]
                if b - a == fe - fs and _same(buf, a, fs, fe - fs):
                    return -1, 0
            keys[ko + nf, 0], keys[ko + nf, 1] = fs, fe
        else:
            if nf >= k:
                return -1, 0
            a, b = keys[ko + nf, 0], keys[ko + nf, 1]
            if b - a != fe - fs or not _same(buf, a, fs, fe - fs):
                return -1, 0
        i = _ws(buf, fe, end)
        if i >= end or buf[i] != 58:
            return -1, 0
        i = _ws(buf, i + 1, end)
        j, _, _, frac = _number(buf, i, end)
        if j < 0:
            return -1, 0
        t = 0 if frac < 0 else 1
        if first:
            ktype[ko + nf] = t
        elif ktype[ko + nf] != t:
            return -1, 0
        if t == 0:
            i = _int_field(buf, i, end, ints, row + 2 + nf)
        else:
            i = _float_field(buf, i, end, fints, row + 2 + nf)
        if i < 0:
            return -1, 0
        nf += 1
        i = _ws(buf, i, end)
        if i < end and buf[i] == 44:
            i = _ws(buf, i + 1, end)
        elif i < end and buf[i] == 125:
            return i + 1, nf
        else:
            return -1, 0


@_jit()
def _parse_array(buf: np.ndarray, i: int, end: int, ints: np.ndarray, fints: np.ndarray,
                 floats: np.ndarray, keys: np.ndarray, ktype: np.ndarray, info: np.ndarray,
                 r: int, words: np.ndarray) -> int:
    """The candidate array at ``buf[i] == '['``, row-major from ``info[r, INT_OFF]`` (one
    row per candidate: item, position, features...), true_p from ``info[r, FLOAT_OFF]``;
    fills ``info[r, N]`` and ``info[r, K]``; returns the index after the array, -1 when the
    array does not have the plain shape."""
    io, fo, ko = info[r, INT_OFF], info[r, FLOAT_OFF], info[r, KEY_OFF]
    n, k, has0 = 0, 0, 0
    i = _ws(buf, i + 1, end)
    if i < end and buf[i] == 93:
        info[r, N], info[r, K] = 0, 0
        return i + 1
    while True:
        if i >= end or buf[i] != 123:
            return -1
        row = io + n * (2 + k)  # the width is known from the second candidate on
        i = _ws(buf, i + 1, end)
        has, nf = 0, 0
        while True:
            ks = i
            ke = _plain_key_end(buf, i, end)
            if ke < 0:
                return -1
            i = _ws(buf, ke, end)
            if i >= end or buf[i] != 58:
                return -1
            i = _ws(buf, i + 1, end)
            if _is(buf, ks, ke, words, 0):
                bit = _ITEM
                i = _int_field(buf, i, end, ints, row)
            elif _is(buf, ks, ke, words, 1):
                bit = _POS
                i = _int_field(buf, i, end, ints, row + 1)
            elif _is(buf, ks, ke, words, 2):
                bit = _TRUE_P
                i = _float_field(buf, i, end, floats, fo + n)
            elif _is(buf, ks, ke, words, 3):
                bit = _FEATURES
                i, nf = _parse_features(buf, i, end, ints, fints, row, keys, ktype, ko,
                                        n == 0, k)
            else:
                return -1
            if i < 0 or has & bit:
                return -1
            has |= bit
            i = _ws(buf, i, end)
            if i < end and buf[i] == 44:
                i = _ws(buf, i + 1, end)
            elif i < end and buf[i] == 125:
                i += 1
                break
            else:
                return -1
        if n == 0:
            has0, k = has, nf
        if has != has0 or nf != k or not has & _ITEM or not has & _POS:
            return -1
        n += 1
        i = _ws(buf, i, end)
        if i < end and buf[i] == 44:
            i = _ws(buf, i + 1, end)
        elif i < end and buf[i] == 93:
            break
        else:
            return -1
    info[r, N], info[r, K] = n, k
    if not has0 & _TRUE_P:
        info[r, FLOAT_OFF] = -1
    return i + 1


@_jit()
def parse_candidates(buf: np.ndarray, offsets: np.ndarray, words: np.ndarray,
                     ints: np.ndarray, fints: np.ndarray, floats: np.ndarray,
                     keys: np.ndarray, ktype: np.ndarray, info: np.ndarray) -> None:
    """Records ``buf[offsets[r]:offsets[r + 1]]`` (uint8) -> their candidate columns.

    ``words``: :data:`WORDS`. For record ``r``, ``info[r, OK]`` is 1
    when it is one object (nothing but whitespace around it) with one ``"candidates"`` key
    (no escapes in any top-level key) whose array has the plain shape (module docstring),
    :data:`WHOLE` when it is such an object without a ``"candidates"`` key, 0 for anything
    else. For a record with ``OK`` 1, ``info[r]`` holds the
    array's span (relative to the record), ``N`` candidates and ``K`` feature keys, and
    ``ints[INT_OFF:]`` the candidates row-major (``2 + K`` int64 slots per candidate:
    item, position, features; a decimal feature is stored as the bits of a float64 through
    ``fints``, the same buffer viewed as float64), ``floats[FLOAT_OFF:]`` their true_p
    (``FLOAT_OFF`` is -1 without one), ``keys[KEY_OFF:]`` the byte spans (quotes included,
    relative to ``buf``) of the feature keys and ``ktype`` their types (0 int, 1 decimal),
    and ``info[r, SCHEMA]`` the first record of a run of parsed records with the same feature
    keys and types (``r`` itself when the parsed record before it has others), so that the
    caller reads the key names once per run. The output arrays must have room for
    ``len(buf) // 4`` ints, ``len(buf) // 8`` floats and keys.
    """
    io = fo = ko = 0
    last = -1  # the parsed record before this one
    for r in range(offsets.shape[0] - 1):
        start, end = offsets[r], offsets[r + 1]
        info[r, OK] = 0
        info[r, INT_OFF], info[r, FLOAT_OFF], info[r, KEY_OFF] = io, fo, ko
        i = _ws(buf, start, end)
        if i >= end or buf[i] != 123:
            continue
        i = _ws(buf, i + 1, end)
        found = 0
        bad = False
        while i < end and buf[i] == 34:
            ks = i
            ke = _string_end(buf, i, end)
            if ke < 0:
                bad = True
                break
            for t in range(ks, ke):
                if buf[t] == 92:
                    bad = True
            i = _ws(buf, ke, end)
            if bad or i >= end or buf[i] != 58:
                bad = True
                break
            i = _ws(buf, i + 1, end)
            if i >= end:
                bad = True
                break
            if _is(buf, ks, ke, words, 4) and buf[i] == 91:
                found += 1
                info[r, SPAN_START] = i - start
                i = _parse_array(buf, i, end, ints, fints, floats, keys, ktype, info, r,
                                 words)
                if i < 0:
                    bad = True
                    break
                info[r, SPAN_END] = i - start
            else:
                i = _value_end(buf, i, end)
                if i < 0:
                    bad = True
                    break
            i = _ws(buf, i, end)
            if i < end and buf[i] == 44:
                i = _ws(buf, i + 1, end)
        # the object closes and nothing but whitespace follows: the record is one JSON
        # value on its own, so a batch of such records decoded as one JSON array gives
        # one element per record (events.decode_events)
        if bad or found > 1 or i >= end or buf[i] != 125 or _ws(buf, i + 1, end) != end:
            continue
        if found == 0:
            info[r, OK] = WHOLE
            continue
        info[r, OK] = 1
        n, k = info[r, N], info[r, K]
        info[r, SCHEMA] = r
        if last >= 0 and info[last, K] == k:
            lk = info[last, KEY_OFF]
            same = 1
            for q in range(k):
                a, b = keys[lk + q, 0], keys[lk + q, 1]
                c, d = keys[ko + q, 0], keys[ko + q, 1]
                if b - a != d - c or ktype[lk + q] != ktype[ko + q] or not _same(buf, a, c,
                                                                                  b - a):
                    same = 0
            if same:
                info[r, SCHEMA] = info[last, SCHEMA]
        last = r
        io += n * (2 + k)
        if info[r, FLOAT_OFF] >= 0:
            fo += n
        ko += k
