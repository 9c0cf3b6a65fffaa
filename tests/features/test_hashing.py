"""The fid rule: known answers pinned between releases, one id whatever its type, every
input form of the batch path, stability across processes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from freshrec.errors import InputError
from freshrec.features import fid, hash_array, hash_keyed, slot_key
from tests.features import _reference as R

#: (slot, value, fid). A failure here means fids changed: every published table and
#: checkpoint would stop matching its data. Change only with a new format version.
KNOWN = [
    ("user_id", 0, 0x7A01CCAAA3120292),
    ("user_id", 1, 0x39CAA6B71654FBE5),
    ("user_id", -1, 0x8B725ABA5F6AE35F),
    ("user_id", 2**63 - 1, 0xCB6FC4D1469E146F),
    ("user_id", -(2**63), 0xFD261FA3A7595784),
    ("user_id", 2**40, 0xA1449A579B88474A),
    ("item_id", 7, 0x729B4C8CFC6D7E6E),
    ("item_id", "-7", 0x411C0ADAD30603AA),
    ("item_id", "007", 0x632EA81D30A296F0),
    ("item_id", "18446744073709551615", 0x1564AA1FF352D9A0),
    ("genre", "Comedy", 0x29BBE2C05550CB8A),
    ("genre", "", 0x5C3C58CCE12831F8),
    ("genre", "Amélie", 0x87069E79D8A15D26),
    ("C1", "68fd1e64", 0xBF4564780FE8CBFF),
    ("flag", True, 0x17584B3CE5720F98),
]


@pytest.mark.parametrize("slot, value, want", KNOWN)
def test_known_answers(slot, value, want):
    assert R.fid(slot, value) == want  # the documented rule itself
    assert int(fid(slot, value)) == want
    assert int(hash_array(slot, pa.array([value]))[0]) == want


@pytest.mark.parametrize("same", [
    [7, "7", 7.0, np.int8(7)],
    [-1, "-1", 2**64 - 1, "18446744073709551615"],
    [-(2**63), "-9223372036854775808"],
    [1, True, "1", 1.4],
    [0, False, "0", -0.4],
])
def test_an_id_is_an_id_whatever_its_type(same):
    assert len({int(fid("item_id", v)) for v in same}) == 1


@pytest.mark.parametrize("a, b", [
    ("007", 7), ("+7", 7), (" 7", 7), ("7 ", 7), ("7.0", 7), ("-0", 0), ("1e3", 1000),
    ("18446744073709551616", 0), ("-9223372036854775809", 2**63 - 1), ("٧", 7),
])
def test_strings_that_are_not_canonical_decimals_are_strings(a, b):
    assert R.decimal(a) is None
    assert int(fid("item_id", a)) == R.fid("item_id", a) != int(fid("item_id", b))


@pytest.mark.parametrize("arr", [
    pa.array(["7", "x", "-3"]), pa.array(["7", "x", "-3"], pa.large_string()),
    pa.array([b"7", b"x", b"-3"], pa.binary()), pa.array([b"7", b"x", b"-3"], pa.large_binary()),
    pa.array(["7", "x", "-3"]).dictionary_encode(),
    pa.chunked_array([pa.array(["7"]), pa.array(["x", "-3"])]),
    pa.array(["pad", "7", "x", "-3"]).slice(1),
])
def test_every_string_array_form_hashes_alike(arr):
    assert hash_array("s", arr).tolist() == [R.fid("s", v) for v in ("7", "x", "-3")]


@pytest.mark.parametrize("arr, ints", [
    (pa.array([5, -2], pa.int8()), [5, -2]), (pa.array([5, -2], pa.int64()), [5, -2]),
    (np.array([5, -2]), [5, -2]), ([5, -2], [5, -2]), (pa.array(["5", "-2"]), [5, -2]),
    (pa.array([5.0, -2.0]), [5, -2]), (pa.array([4.5, -2.5], pa.float32()), [4, -2]),
    (pa.array([True, False]), [1, 0]),
])
def test_every_number_form_hashes_as_its_integer(arr, ints):
    """Floats round half to even, as Python's round does."""
    assert hash_array("s", arr).tolist() == [R.fid("s", i) for i in ints]


def test_uint64_keeps_its_bit_pattern():
    big = pa.array([2**64 - 1, 2**63], pa.uint64())
    assert hash_array("s", big).tolist() == hash_array("s", [-1, -(2**63)]).tolist()


def test_keyed_hashing_equals_slot_by_slot():
    rng = np.random.default_rng(0)
    values = rng.integers(-(2**63), 2**63 - 1, 500, dtype=np.int64)
    slots = rng.choice(["a", "b", "c"], 500)
    keys = np.array([slot_key(s) for s in slots], np.uint64)
    assert hash_keyed(keys, values).tolist() == [R.fid(s, int(v)) for s, v in
                                                 zip(slots, values, strict=True)]


def test_errors_name_the_slot():
    with pytest.raises(InputError, match=r"hash_array\('s'\): values contain 1 nulls"):
        hash_array("s", pa.array([1, None]))
    with pytest.raises(InputError, match=r"hash_array\('s'\): cannot hash values of type"):
        hash_array("s", pa.array([[1]]))


def test_hash_is_stable_across_processes():
    code = ("from freshrec.features import hash_array;"
            "print(hash_array('user_id', [1, 2**40]).tolist(), "
            "hash_array('g', ['Comedy', '7']).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = (f"{hash_array('user_id', [1, 2**40]).tolist()} "
            f"{hash_array('g', ['Comedy', '7']).tolist()}")
    assert out.stdout.strip() == here


def test_distinct_values_get_distinct_fids():
    assert fid("a", 5) != fid("b", 5)
    assert np.unique(hash_array("a", np.arange(200_000))).shape[0] == 200_000
