"""The hashing kernels against the plain-Python reference (tests/features/_reference.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.features import _kernels as K
from freshrec.features.hashing import slot_key
from tests.features import _reference as R

int64s = st.integers(-(2**63), 2**63 - 1)
#: strings near the decimal rule's edges: digits, signs, spaces, other scripts, big numbers
texts = st.one_of(
    st.text(alphabet="-+0123456789 a٧é", max_size=22),
    st.integers(-(2**64), 2**65).map(str),
    st.text(max_size=8),
)


#: the first example of each test compiles (or loads) a kernel specialisation
at_once = settings(deadline=None)


def _buffers(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    arr = pa.array(strings, pa.large_string())
    bufs = arr.buffers()
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.empty(0, np.uint8)
    return data, np.frombuffer(bufs[1], np.int64, count=len(arr) + 1).copy()


@given(st.binary(max_size=40))
@at_once
def test_fnv1a64(data):
    assert int(K.fnv1a64(np.frombuffer(data, np.uint8), 0, len(data))) == R.fnv1a64(data)


@given(texts)
@settings(max_examples=500, deadline=None)
def test_string_hash(text):
    raw = np.frombuffer(text.encode(), np.uint8)
    assert int(K.string_hash(raw, 0, raw.shape[0])) == R.value_hash(text)


@given(st.text(max_size=3), st.lists(texts, max_size=20))
@at_once
def test_hash_strings(slot, strings):
    data, offsets = _buffers(strings)
    out = np.empty(len(strings), np.uint64)
    K.hash_strings(slot_key(slot), data, offsets, out)
    assert out.tolist() == [R.fid(slot, s) for s in strings]


@given(st.text(max_size=3), st.lists(int64s, max_size=20))
@at_once
def test_hash_ints(slot, values):
    out = np.empty(len(values), np.uint64)
    K.hash_ints(slot_key(slot), np.array(values, np.int64), out)
    assert out.tolist() == [R.fid(slot, v) for v in values]


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "user_id"]), int64s), max_size=20))
@at_once
def test_hash_ints_keyed(pairs):
    keys = np.array([slot_key(s) for s, _ in pairs], np.uint64)
    out = np.empty(len(pairs), np.uint64)
    K.hash_ints_keyed(keys, np.array([v for _, v in pairs], np.int64), out)
    assert out.tolist() == [R.fid(s, v) for s, v in pairs]
