"""numba kernels of the collisionless embedding table (private).

Pure functions over arrays and scalars: no classes, config or logging. The Python class in
``table.py`` validates inputs, fixes dtypes and holds the locks; these only compute.

Layout shared by the kernels
----------------------------
``index``     int64[capacity]  open-addressing slots (capacity a power of two, linear probing):
                               ``EMPTY`` (-1), ``TOMBSTONE`` (-2), or a live entry
                               ``row << 32 | tag`` where ``tag`` is the high half of the fid's
                               hash (the low bits chose the slot). A probe compares the tag in
                               the slot it already holds and reads a row's key only when the
                               tags agree, so slots of other fids cost no extra cache miss.
``keys``      uint64[rows]     the fid stored in each row (compared exactly: collisionless).
``emb``       float32[rows, dim]
``state``     float32[rows, state_dim]   optimizer state beside the row.
``last_seen`` uint32[rows]     event time (s) of the last training lookup.
``touched``   uint32[rows]     table version of the last write; 0 marks a free row.

``keys``, ``touched`` and ``last_seen`` may be strided views of one 16-byte record per row
(the table keeps them so: a training lookup then touches one cache line per row, not three).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir  # type: ignore[import-untyped]
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

EMPTY = -1
TOMBSTONE = -2

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_INV_2_53 = 1.0 / 9007199254740992.0


@njit(cache=True, nogil=True, inline="always")
def mix64(x: np.uint64) -> np.uint64:
    """splitmix64's finaliser: a bijective 64-bit mix (every output bit depends on every input)."""
    x = np.uint64(x)
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@njit(cache=True, nogil=True, inline="always")
def unit_float(seed: np.uint64, fid: np.uint64, j: int | np.uint64) -> float:
    """Deterministic uniform draw in [0, 1) from (seed, fid, j)."""
    h = mix64(mix64(np.uint64(fid) ^ mix64(np.uint64(seed))) + np.uint64(j) * _GOLDEN)
    return float(h >> np.uint64(11)) * _INV_2_53


_LOW32 = np.int64(0xFFFFFFFF)
#: How many fids ahead a probe loop prefetches the index slot (half as far: the row's key),
#: and how many rows ahead the pool and optimizer loops prefetch a row. The prefetch lines
#: are written out in each loop: the same lines in a numba helper taking the arrays (even
#: ``inline="always"``) made those loops 1.6-1.9x slower on cold rows (measured).
PREFETCH_DISTANCE = 16


@intrinsic
def prefetch(typingctx: Any, arr: Any, i: Any) -> Any:
    """``prefetch(arr, i)``: hint the CPU to load the cache line of ``arr[i]`` (1-d arrays).

    LLVM's ``llvm.prefetch`` (x86 ``prefetcht0``): no fault, no effect on results, so a probe
    loop can start the misses of later fids while it works on the current one.
    """
    if not isinstance(arr, types.Array) or arr.ndim != 1 or not isinstance(i, types.Integer):
        return None
    sig = types.void(arr, i)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        i = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = cgutils.get_item_pointer(  # type: ignore[no-untyped-call]
            context, builder, aty, ary, [i], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(  # type: ignore[no-untyped-call]
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


_prefetch: Callable[[np.ndarray, Any], None] = prefetch  # type: ignore[assignment]
"""``prefetch`` as the kernels call it (typed for mypy; numba resolves the intrinsic)."""


@njit(cache=True, nogil=True, inline="always")
def slot_of(fid: np.uint64, mask: np.int64) -> tuple[np.int64, np.int64]:
    """``(first slot, tag)`` of ``fid`` in an index of ``mask + 1`` slots."""
    hv = mix64(fid)
    return np.int64(hv & np.uint64(mask)), np.int64(hv >> np.uint64(32))


@njit(cache=True, nogil=True, inline="always")
def slot_entry(row: int, tag: np.int64) -> np.int64:
    """The index value of a live entry: row in the high half, tag in the low half."""
    return (np.int64(row) << np.int64(32)) | tag


@njit(cache=True, nogil=True, inline="always")
def entry_row(s: np.int64) -> np.int64:
    """The row of a slot value (negative for ``EMPTY`` and ``TOMBSTONE``)."""
    return s >> np.int64(32)


@njit(cache=True, nogil=True, inline="always")
def _probe_find(index: np.ndarray, keys: np.ndarray, fid: np.uint64) -> int:
    mask = np.int64(index.shape[0] - 1)
    h, tag = slot_of(fid, mask)
    while True:
        s = index[h]
        if s == EMPTY:
            return -1
        if s >= 0 and (s & _LOW32) == tag:
            r = int(entry_row(s))
            if keys[r] == fid:
                return r
        h = (h + 1) & mask


@njit(cache=True, nogil=True)
def find_rows(index: np.ndarray, keys: np.ndarray, fids: np.ndarray, out: np.ndarray) -> int:
    """Write the row of each fid (or -1) into ``out``; return how many were missing."""
    missing = 0
    mask = np.int64(index.shape[0] - 1)
    for i in range(fids.shape[0]):
        ahead = i + PREFETCH_DISTANCE  # this fid's slot
        if ahead < fids.shape[0]:
            _prefetch(index, slot_of(fids[ahead], mask)[0])
        ahead = i + PREFETCH_DISTANCE // 2  # the key of the row its slot (prefetched) names
        if ahead < fids.shape[0]:
            s = index[slot_of(fids[ahead], mask)[0]]
            if s >= 0:
                _prefetch(keys, entry_row(s))
        r = _probe_find(index, keys, fids[i])
        out[i] = r
        if r < 0:
            missing += 1
    return missing


@njit(cache=True, nogil=True)
def count_absent(index: np.ndarray, keys: np.ndarray, fids: np.ndarray) -> int:
    """How many distinct fids of ``fids`` have no row (the room an insert of them needs)."""
    n = fids.shape[0]
    size = 16
    while size < 2 * n:
        size *= 2
    seen = np.empty(size, np.uint64)
    used = np.zeros(size, np.bool_)
    smask = np.int64(size - 1)
    count = 0
    mask = np.int64(index.shape[0] - 1)
    for i in range(n):
        ahead = i + PREFETCH_DISTANCE  # this fid's slot
        if ahead < fids.shape[0]:
            _prefetch(index, slot_of(fids[ahead], mask)[0])
        ahead = i + PREFETCH_DISTANCE // 2  # the key of the row its slot (prefetched) names
        if ahead < fids.shape[0]:
            s = index[slot_of(fids[ahead], mask)[0]]
            if s >= 0:
                _prefetch(keys, entry_row(s))
        fid = fids[i]
        if _probe_find(index, keys, fid) >= 0:
            continue
        h = np.int64(mix64(fid) >> np.uint64(20)) & smask
        while used[h] and seen[h] != fid:
            h = (h + 1) & smask
        if not used[h]:
            used[h] = True
            seen[h] = fid
            count += 1
    return count


@njit(cache=True, nogil=True)
def lookup_copy(
    index: np.ndarray, keys: np.ndarray, emb: np.ndarray, fids: np.ndarray,
    default: np.ndarray, out: np.ndarray,
) -> int:
    """Fused probe + row copy: ``out[i] = emb[row(fids[i])]`` or ``default``; returns misses.

    Works in blocks of 32 fids and three passes (slot reads, key compares, row copies), so
    the cache misses of a block are independent loads the CPU overlaps instead of one
    dependent chain per fid (1.2-1.3x on uniform keys over 10 M entries).
    """
    dim = emb.shape[1]
    mask = np.int64(index.shape[0] - 1)
    block = 32
    slots = np.empty(block, np.int64)
    tags = np.empty(block, np.int64)
    rows = np.empty(block, np.int64)
    first_col = emb[:, 0]  # prefetch(first_col, r) starts the load of row r
    missing = 0
    n = fids.shape[0]
    for base in range(0, n, block):
        m = min(block, n - base)
        for k in range(m):
            h, tag = slot_of(fids[base + k], mask)
            slots[k] = h
            tags[k] = tag
            rows[k] = index[h]
        for k in range(m):
            s = rows[k]
            h = slots[k]
            fid = fids[base + k]
            while s != EMPTY and (s < 0 or (s & _LOW32) != tags[k]
                                  or keys[entry_row(s)] != fid):
                h = (h + 1) & mask
                s = index[h]
            rows[k] = entry_row(s)
            if s >= 0:
                _prefetch(first_col, entry_row(s))
        for k in range(m):
            r = rows[k]
            i = base + k
            if r >= 0:
                for j in range(dim):
                    out[i, j] = emb[r, j]
            else:
                missing += 1
                for j in range(dim):
                    out[i, j] = default[j]
    return missing


@njit(cache=True, nogil=True)
def gather(emb: np.ndarray, rows: np.ndarray, default: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = emb[rows[i]]``, or ``default`` where ``rows[i] < 0``."""
    dim = emb.shape[1]
    for i in range(rows.shape[0]):
        r = rows[i]
        if r >= 0:
            for j in range(dim):
                out[i, j] = emb[r, j]
        else:
            for j in range(dim):
                out[i, j] = default[j]


@njit(cache=True, nogil=True)
def touch_last_seen(
    last_seen: np.ndarray, touched: np.ndarray, rows: np.ndarray, now: np.uint32,
    version: np.uint32,
) -> None:
    """Stamp ``last_seen`` of every present row with ``now``.

    A row whose ``last_seen`` changes is also stamped with ``version``, so that the next
    delta carries it (receivers expire by ``last_seen``).
    """
    for i in range(rows.shape[0]):
        r = rows[i]
        if r >= 0 and last_seen[r] != now:
            last_seen[r] = now
            touched[r] = version


@njit(cache=True, nogil=True, inline="always")
def _index_put(index: np.ndarray, fid: np.uint64, row: int) -> None:
    """Put ``row`` for an absent ``fid`` into the first free or tombstoned slot."""
    mask = np.int64(index.shape[0] - 1)
    h, tag = slot_of(fid, mask)
    while index[h] >= 0:
        h = (h + 1) & mask
    index[h] = slot_entry(row, tag)


@njit(cache=True, nogil=True, inline="always")
def _take_row(free_rows: np.ndarray, n_free: int, n_used: int) -> tuple[int, int, int]:
    """A row for a new entry: the top of the free stack, else the next unused one.

    Returns ``(row, n_free, n_used)``.
    """
    if n_free > 0:
        return free_rows[n_free - 1], n_free - 1, n_used
    return n_used, n_free, n_used + 1


@njit(cache=True, nogil=True)
def insert_new(
    index: np.ndarray, keys: np.ndarray, touched: np.ndarray, last_seen: np.ndarray,
    free_rows: np.ndarray, n_free: int, n_used: int, fids: np.ndarray, version: np.uint32,
    now: np.uint32, out_rows: np.ndarray,
) -> tuple[int, int, int]:
    """Insert distinct, absent fids; rows come from the free stack first, then ``n_used``.

    Returns ``(n_free, n_used, tombstones_reused)``. The caller has reserved room.
    """
    mask = np.int64(index.shape[0] - 1)
    reused = 0
    for i in range(fids.shape[0]):
        r, n_free, n_used = _take_row(free_rows, n_free, n_used)
        fid = fids[i]
        keys[r] = fid
        touched[r] = version
        last_seen[r] = now
        h, tag = slot_of(fid, mask)
        while index[h] >= 0:
            h = (h + 1) & mask
        if index[h] == TOMBSTONE:
            reused += 1
        index[h] = slot_entry(r, tag)
        out_rows[i] = r
    return n_free, n_used, reused


@njit(cache=True, nogil=True)
def remove_rows(
    index: np.ndarray, keys: np.ndarray, touched: np.ndarray, free_rows: np.ndarray,
    n_free: int, rows: np.ndarray,
) -> int:
    """Delete live rows (their index slot becomes a tombstone); returns the new ``n_free``."""
    mask = np.int64(index.shape[0] - 1)
    for i in range(rows.shape[0]):
        r = rows[i]
        h, _ = slot_of(keys[r], mask)
        while entry_row(index[h]) != r:
            h = (h + 1) & mask
        index[h] = TOMBSTONE
        touched[r] = 0
        free_rows[n_free] = r
        n_free += 1
    return n_free


@njit(cache=True, nogil=True)
def build_index(keys: np.ndarray, touched: np.ndarray, n_used: int, index: np.ndarray) -> int:
    """Fill an all-EMPTY ``index`` with every live row below ``n_used``; returns entries.

    Rows are read in order, their slots at random: the slot of the row
    ``PREFETCH_DISTANCE`` ahead is prefetched, so those misses overlap (2x on 4 M rows).
    """
    n = 0
    mask = np.int64(index.shape[0] - 1)
    for r in range(n_used):
        ahead = r + PREFETCH_DISTANCE
        if ahead < n_used:
            _prefetch(index, slot_of(keys[ahead], mask)[0])
        if touched[r] != 0:
            _index_put(index, keys[r], r)
            n += 1
    return n


@njit(cache=True, nogil=True, inline="always")
def _init_row(
    emb: np.ndarray, r: int, fid: np.uint64, kind: int, scale: float, std: float,
    seed: np.uint64,
) -> None:
    for j in range(emb.shape[1]):
        if kind == 0:
            emb[r, j] = 0.0
        elif kind == 1:
            emb[r, j] = (2.0 * unit_float(seed, fid, j) - 1.0) * scale
        else:
            u1 = unit_float(seed, fid, 2 * j)
            u2 = unit_float(seed, fid, 2 * j + 1)
            emb[r, j] = std * np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2.0 * np.pi * u2)


@njit(cache=True, nogil=True)
def init_rows(
    emb: np.ndarray, rows: np.ndarray, fids: np.ndarray, kind: int, scale: float, std: float,
    seed: np.uint64,
) -> None:
    """Fill new rows; ``kind`` 0 zeros, 1 uniform(-scale, scale), 2 normal(0, std).

    Deterministic per (seed, fid, column), so every process gets the same row for a fid.
    """
    for i in range(rows.shape[0]):
        _init_row(emb, rows[i], fids[i], kind, scale, std, seed)


@njit(cache=True, nogil=True)
def fill_state(state: np.ndarray, rows: np.ndarray, value: float) -> None:
    """Set the optimizer state of ``rows`` to ``value``."""
    for i in range(rows.shape[0]):
        r = rows[i]
        for j in range(state.shape[1]):
            state[r, j] = value


@njit(cache=True, nogil=True)
def sketch_admit(
    counts: np.ndarray, fids: np.ndarray, seed: np.uint64, min_count: int, probability: float,
    admit: np.ndarray,
) -> None:
    """Count each occurrence in a count-min sketch; mark occurrences that admit their fid.

    An occurrence admits when the sketch's estimate (after counting it) reaches ``min_count``
    and a deterministic coin drawn from (seed, fid, estimate) is below ``probability``.
    """
    depth = counts.shape[0]
    wmask = np.uint64(counts.shape[1] - 1)
    for i in range(fids.shape[0]):
        fid = fids[i]
        est = np.uint32(0xFFFFFFFF)
        for d in range(depth):
            c = np.int64(mix64(fid ^ mix64(seed + np.uint64(d) * _GOLDEN)) & wmask)
            if counts[d, c] < np.uint32(0xFFFFFFFF):
                counts[d, c] += np.uint32(1)
            if counts[d, c] < est:
                est = counts[d, c]
        ok = int(est) >= min_count
        if ok and probability < 1.0:
            ok = unit_float(seed, fid, np.uint64(est)) < probability
        admit[i] = ok


@njit(cache=True, nogil=True, inline="always")
def _map_slot(map_keys: np.ndarray, key: int) -> np.int64:
    mask = np.int64(map_keys.shape[0] - 1)
    h = np.int64(mix64(np.uint64(key)) & np.uint64(mask))
    while map_keys[h] != -1 and map_keys[h] != key:
        h = (h + 1) & mask
    return h


@njit(cache=True, nogil=True)
def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows >= 0 in order of first appearance, and each entry's index among them.

    Returns ``(unique_rows, inverse)``: ``unique_rows[inverse[k]] == rows[k]`` where
    ``rows[k] >= 0``; ``inverse[k] == -1`` where ``rows[k] < 0``.
    """
    n = rows.shape[0]
    size = 16
    while size < 2 * n:
        size *= 2
    map_keys = np.full(size, -1, np.int64)
    map_pos = np.empty(size, np.int32)
    urows = np.empty(n, np.int32)
    inverse = np.empty(n, np.int32)
    m = 0
    for k in range(n):
        r = rows[k]
        if r < 0:
            inverse[k] = -1
            continue
        h = _map_slot(map_keys, r)
        if map_keys[h] == -1:
            map_keys[h] = r
            map_pos[h] = m
            urows[m] = r
            m += 1
        inverse[k] = map_pos[h]
    return urows[:m], inverse


@njit(cache=True, nogil=True)
def unique_fids(fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct fids in order of first appearance, and each entry's index among them.

    Returns ``(unique, inverse)`` with ``unique[inverse[k]] == fids[k]``. The map (an int32
    position per slot, keys read from ``unique``) is 12 bytes per fid, so for a batch it stays
    in cache: deduplicating a batch before probing the table costs far less than the table
    probes of the repeats it saves.
    """
    n = fids.shape[0]
    size = 16
    while size < 2 * n:
        size *= 2
    pos = np.full(size, -1, np.int32)
    mask = np.uint64(size - 1)
    unique = np.empty(n, np.uint64)
    inverse = np.empty(n, np.int32)
    m = 0
    for k in range(n):
        fid = fids[k]
        h = mix64(fid) & mask
        while True:
            p = pos[h]
            if p < 0:
                pos[h] = m
                unique[m] = fid
                inverse[k] = m
                m += 1
                break
            if unique[p] == fid:
                inverse[k] = p
                break
            h = (h + np.uint64(1)) & mask
    return unique[:m], inverse


@njit(cache=True, nogil=True)
def sum_by_row(rows: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum gradient rows that target the same table row; rows < 0 are dropped.

    Returns ``(unique_rows, summed_grads)`` in order of first appearance.
    """
    urows, inverse = unique_rows(rows)
    ugrads = np.zeros((urows.shape[0], grads.shape[1]), np.float32)
    for i in range(rows.shape[0]):
        p = inverse[i]
        if p >= 0:
            for j in range(grads.shape[1]):
                ugrads[p, j] += grads[i, j]
    return urows, ugrads


@njit(cache=True, nogil=True)
def sum_bag_grads(
    inverse: np.ndarray, n_unique: int, offsets: np.ndarray, scale: np.ndarray,
    grad_out: np.ndarray,
) -> np.ndarray:
    """Gradients of pooled bags summed per distinct row, without per-value grads.

    ``inverse`` is :func:`unique_rows`' second result for the bags' rows. Value ``k`` of bag
    ``b`` (``offsets[b] <= k < offsets[b+1]``) adds ``grad_out[b] * scale[b]`` to row
    ``inverse[k]`` of the (n_unique, dim) result, in order of ``k``; ``inverse[k] < 0`` adds
    nothing.
    """
    dim = grad_out.shape[1]
    ugrads = np.zeros((n_unique, dim), np.float32)
    for b in range(offsets.shape[0] - 1):
        s = scale[b]
        for k in range(offsets[b], offsets[b + 1]):
            p = inverse[k]
            if p >= 0:
                for j in range(dim):
                    ugrads[p, j] += grad_out[b, j] * s
    return ugrads


@njit(cache=True, nogil=True)
def pool(
    emb: np.ndarray, rows: np.ndarray, offsets: np.ndarray, scale: np.ndarray,
    default: np.ndarray, out: np.ndarray,
) -> None:
    """``out[b] = scale[b] * sum(row(v) for v in bag b)``; absent rows read as ``default``."""
    dim = emb.shape[1]
    first_col = emb[:, 0]
    for b in range(offsets.shape[0] - 1):
        for j in range(dim):
            out[b, j] = 0.0
        for k in range(offsets[b], offsets[b + 1]):
            ahead = k + PREFETCH_DISTANCE  # start the load of a later row: misses overlap
            if ahead < rows.shape[0] and rows[ahead] >= 0:
                _prefetch(first_col, rows[ahead])
            r = rows[k]
            if r >= 0:
                for j in range(dim):
                    out[b, j] += emb[r, j]
            else:
                for j in range(dim):
                    out[b, j] += default[j]
        s = scale[b]
        if s != 1.0:
            for j in range(dim):
                out[b, j] *= s


@njit(cache=True, nogil=True, inline="always")
def _finite_row(g: np.ndarray, i: int) -> bool:
    for j in range(g.shape[1]):  # noqa: SIM110 - numba: no generators
        if not np.isfinite(g[i, j]):
            return False
    return True


@njit(cache=True, nogil=True)
def step_sgd(
    emb: np.ndarray, touched: np.ndarray, rows: np.ndarray, grads: np.ndarray, version: np.uint32,
    lr: float, weight_decay: float,
) -> int:
    """One SGD step per row; returns rows rejected for non-finite gradients."""
    rejected = 0
    emb_col, state_col = emb[:, 0], emb[:, 0]
    for i in range(rows.shape[0]):
        ahead = i + PREFETCH_DISTANCE  # start the misses of a later row: they overlap
        if ahead < rows.shape[0]:
            _prefetch(emb_col, rows[ahead])
            _prefetch(state_col, rows[ahead])
            _prefetch(touched, rows[ahead])
        if not _finite_row(grads, i):
            rejected += 1
            continue
        r = rows[i]
        for j in range(emb.shape[1]):
            emb[r, j] -= lr * (grads[i, j] + weight_decay * emb[r, j])
        touched[r] = version
    return rejected


@njit(cache=True, nogil=True, error_model="numpy")
def step_adagrad(
    emb: np.ndarray, state: np.ndarray, touched: np.ndarray, rows: np.ndarray, grads: np.ndarray,
    version: np.uint32, lr: float, eps: float, weight_decay: float,
) -> int:
    """Element-wise Adagrad (as ``torch.optim.Adagrad``): ``state`` holds sum of g**2.

    Compiled with numpy's error model: no zero-division check in the inner loop, so it
    vectorises (2.6x); a 0/0 (only possible with ``eps == 0``) gives NaN, as in torch.
    """
    rejected = 0
    lr32, eps32, wd32 = np.float32(lr), np.float32(eps), np.float32(weight_decay)  # as torch
    emb_col, state_col = emb[:, 0], state[:, 0]
    for i in range(rows.shape[0]):
        ahead = i + PREFETCH_DISTANCE  # start the misses of a later row: they overlap
        if ahead < rows.shape[0]:
            _prefetch(emb_col, rows[ahead])
            _prefetch(state_col, rows[ahead])
            _prefetch(touched, rows[ahead])
        if not _finite_row(grads, i):
            rejected += 1
            continue
        r = rows[i]
        for j in range(emb.shape[1]):
            g = grads[i, j] + wd32 * emb[r, j]
            acc = state[r, j] + g * g
            state[r, j] = acc
            emb[r, j] -= lr32 * g / (np.sqrt(acc) + eps32)
        touched[r] = version
    return rejected


@njit(cache=True, nogil=True)
def step_rowwise_adagrad(
    emb: np.ndarray, state: np.ndarray, touched: np.ndarray, rows: np.ndarray, grads: np.ndarray,
    version: np.uint32, lr: float, eps: float, weight_decay: float,
) -> int:
    """Row-wise Adagrad: one accumulator per row, grown by the mean of g**2 over the row."""
    rejected = 0
    dim = emb.shape[1]
    emb_col, state_col = emb[:, 0], state[:, 0]
    for i in range(rows.shape[0]):
        ahead = i + PREFETCH_DISTANCE  # start the misses of a later row: they overlap
        if ahead < rows.shape[0]:
            _prefetch(emb_col, rows[ahead])
            _prefetch(state_col, rows[ahead])
            _prefetch(touched, rows[ahead])
        if not _finite_row(grads, i):
            rejected += 1
            continue
        r = rows[i]
        sq = 0.0
        for j in range(dim):
            g = grads[i, j] + weight_decay * emb[r, j]
            sq += g * g
        acc = state[r, 0] + np.float32(sq / dim)
        state[r, 0] = acc
        step = lr / (np.sqrt(acc) + eps)
        for j in range(dim):
            emb[r, j] -= step * (grads[i, j] + weight_decay * emb[r, j])
        touched[r] = version
    return rejected


@njit(cache=True, nogil=True)
def step_adam(
    emb: np.ndarray, state: np.ndarray, touched: np.ndarray, rows: np.ndarray, grads: np.ndarray,
    version: np.uint32, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
) -> int:
    """Adam with a per-row step count: ``state = [m (dim), v (dim), t]``."""
    rejected = 0
    dim = emb.shape[1]
    emb_col, state_col = emb[:, 0], state[:, 0]
    for i in range(rows.shape[0]):
        ahead = i + PREFETCH_DISTANCE  # start the misses of a later row: they overlap
        if ahead < rows.shape[0]:
            _prefetch(emb_col, rows[ahead])
            _prefetch(state_col, rows[ahead])
            _prefetch(touched, rows[ahead])
        if not _finite_row(grads, i):
            rejected += 1
            continue
        r = rows[i]
        t = state[r, 2 * dim] + 1.0
        state[r, 2 * dim] = t
        bc1 = 1.0 - beta1**t
        bc2 = 1.0 - beta2**t
        for j in range(dim):
            g = grads[i, j] + weight_decay * emb[r, j]
            m = beta1 * state[r, j] + (1.0 - beta1) * g
            v = beta2 * state[r, dim + j] + (1.0 - beta2) * g * g
            state[r, j] = m
            state[r, dim + j] = v
            emb[r, j] -= lr * (m / bc1) / (np.sqrt(v / bc2) + eps)
        touched[r] = version
    return rejected


@njit(cache=True, nogil=True)
def step_ftrl(
    emb: np.ndarray, state: np.ndarray, touched: np.ndarray, rows: np.ndarray, grads: np.ndarray,
    version: np.uint32, alpha: float, beta: float, l1: float, l2: float,
) -> int:
    """FTRL-Proximal per element: ``state = [z (dim), n (dim)]``; weights are re-derived."""
    rejected = 0
    dim = emb.shape[1]
    emb_col, state_col = emb[:, 0], state[:, 0]
    for i in range(rows.shape[0]):
        ahead = i + PREFETCH_DISTANCE  # start the misses of a later row: they overlap
        if ahead < rows.shape[0]:
            _prefetch(emb_col, rows[ahead])
            _prefetch(state_col, rows[ahead])
            _prefetch(touched, rows[ahead])
        if not _finite_row(grads, i):
            rejected += 1
            continue
        r = rows[i]
        for j in range(dim):
            g = grads[i, j]
            n_old = state[r, dim + j]
            n_new = n_old + g * g
            sigma = (np.sqrt(n_new) - np.sqrt(n_old)) / alpha
            z = state[r, j] + g - sigma * emb[r, j]
            state[r, j] = z
            state[r, dim + j] = n_new
            if abs(z) <= l1:
                emb[r, j] = 0.0
            else:
                sign = 1.0 if z > 0 else -1.0
                emb[r, j] = -(z - sign * l1) / ((beta + np.sqrt(n_new)) / alpha + l2)
        touched[r] = version
    return rejected


@njit(cache=True, nogil=True)
def write_rows(
    emb: np.ndarray, state: np.ndarray, last_seen: np.ndarray, touched: np.ndarray,
    rows: np.ndarray, values: np.ndarray, states: np.ndarray, seen: np.ndarray,
    version: np.uint32, with_state: bool,
) -> None:
    """Overwrite rows with values (and optimizer state when ``with_state``) from a delta."""
    for i in range(rows.shape[0]):
        r = rows[i]
        for j in range(emb.shape[1]):
            emb[r, j] = values[i, j]
        if with_state:
            for j in range(state.shape[1]):
                state[r, j] = states[i, j]
        last_seen[r] = seen[i]
        touched[r] = version


@njit(cache=True, nogil=True)
def find_or_insert(
    index: np.ndarray, keys: np.ndarray, emb: np.ndarray, state: np.ndarray,
    touched: np.ndarray, last_seen: np.ndarray, free_rows: np.ndarray, n_free: int,
    n_used: int, fids: np.ndarray, start: int, version: np.uint32, now: np.uint32,
    init_kind: int, scale: float, std: float, seed: np.uint64, state_value: float,
    slot_budget: int, out_rows: np.ndarray,
) -> tuple[int, int, int, int, int]:
    """Fused training lookup for tables that admit every fid: one probe per fid.

    From position ``start`` on, write each fid's row into ``out_rows``; a present row gets
    ``last_seen = now`` (and ``touched = version`` when that changes it); an absent fid is
    inserted on the spot, exactly as :func:`insert_new` + :func:`init_rows` +
    :func:`fill_state` would (rows from the free stack first, then ``n_used``). Stops before
    the first fid that needs a row beyond ``keys.shape[0]`` or an EMPTY index slot beyond
    ``slot_budget``, so the caller can make room and call again from there.

    Returns ``(stopped_at, n_free, n_used, tombstones_reused, inserted)``; ``stopped_at`` is
    ``fids.shape[0]`` when all were resolved.
    """
    mask = np.int64(index.shape[0] - 1)
    capacity = keys.shape[0]
    reused = 0
    inserted = 0
    for i in range(start, fids.shape[0]):
        ahead = i + PREFETCH_DISTANCE  # this fid's slot
        if ahead < fids.shape[0]:
            _prefetch(index, slot_of(fids[ahead], mask)[0])
        ahead = i + PREFETCH_DISTANCE // 2  # the key of the row its slot (prefetched) names
        if ahead < fids.shape[0]:
            s = index[slot_of(fids[ahead], mask)[0]]
            if s >= 0:
                _prefetch(keys, entry_row(s))
        fid = fids[i]
        h, tag = slot_of(fid, mask)
        tomb = np.int64(-1)
        r = -1
        while True:
            s = index[h]
            if s == EMPTY:
                break
            if s == TOMBSTONE:
                if tomb < 0:
                    tomb = h
            elif (s & _LOW32) == tag and keys[entry_row(s)] == fid:
                r = int(entry_row(s))
                break
            h = (h + 1) & mask
        if r >= 0:
            if last_seen[r] != now:
                last_seen[r] = now
                touched[r] = version
            out_rows[i] = r
            continue
        if (n_free == 0 and n_used >= capacity) or (tomb < 0 and slot_budget <= 0):
            return i, n_free, n_used, reused, inserted
        r, n_free, n_used = _take_row(free_rows, n_free, n_used)
        if tomb >= 0:
            h = tomb
            reused += 1
        else:
            slot_budget -= 1
        index[h] = slot_entry(r, tag)
        keys[r] = fid
        touched[r] = version
        last_seen[r] = now
        _init_row(emb, r, fid, init_kind, scale, std, seed)
        for j in range(state.shape[1]):
            state[r, j] = state_value
        out_rows[i] = r
        inserted += 1
    return fids.shape[0], n_free, n_used, reused, inserted
