"""The per-request path (decoded JSON values) equals the batch path (Arrow columns) of
training, and its fast path equals its checked path."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from freshrec.errors import FieldError
from freshrec.features import (
    DenseConfig,
    FeatureSchema,
    RecordEncoder,
    SlotConfig,
    dense_values,
    feature_config_from_dict,
    hash_lists,
    hash_values,
)

CFG = feature_config_from_dict({
    "tables": {"t": {"dim": 2}},
    "slots": {"num": {"table": "t"}, "word": {"table": "t"},
              "hist": {"table": "t", "kind": "multi", "max_len": 3, "id_space": "num"}},
    "dense": {"age": {"norm": "standard", "mean": 30, "std": 7, "fill": 31},
              "price": {"norm": "log", "fill": 2.5}, "score": {"norm": "minmax", "min": -1}},
    "labels": ["click"]})


def _as_sent(rng: np.random.Generator, v):
    """``v`` the way a client may send it: an int id as an int, its decimal string (KServe
    BYTES) or a float."""
    if type(v) is not int:
        return v
    return [v, str(v), float(v)][rng.integers(0, 3)] if abs(v) < 2**53 else [v, str(v)][
        rng.integers(0, 2)]


def _batch(rng: np.random.Generator, n: int) -> dict[str, list]:
    ints = [int(x) for x in rng.integers(-(2**62), 2**62, n)]
    return {
        "num": [None if k % 7 == 3 else ints[k] for k in range(n)],
        "word": [None if k % 5 == 1 else str(rng.choice(["Comedy", "007", "-0", "", "x y"])) for k in
                 range(n)],
        "hist": [None if k % 6 == 2 else [int(x) for x in rng.integers(-50, 50, rng.integers(0, 6))]
                 for k in range(n)],
        "age": [None if k % 4 == 0 else float(rng.normal(30, 10)) for k in range(n)],
        "price": [None if k % 3 == 0 else float(rng.exponential(10)) - 1 for k in range(n)],
        "score": [None if k % 5 == 0 else int(rng.integers(-1, 2)) for k in range(n)],
    }


@pytest.mark.parametrize("seed", range(5))
def test_request_path_equals_training_batch_path(seed):
    rng = np.random.default_rng(seed)
    cols = _batch(rng, 40)
    enc = FeatureSchema(CFG).encode(pa.RecordBatch.from_pydict(
        {**cols, "score": pa.array(cols["score"], pa.int64())}), with_labels=False)
    train = enc.sparse.to_dict()
    dense = {d.name for d in CFG.dense}  # dense values go as JSON numbers (a string is refused)
    sent = {k: vals if k in dense else
            [_as_sent(rng, v) if k != "hist" or v is None else [_as_sent(rng, x) for x in v]
             for v in vals] for k, vals in cols.items()}

    def where(i):
        return f"x[{i}]"

    for name in ("num", "word"):
        f, ok = hash_values(name, sent[name], where)
        got = [[int(x)] if o else [] for x, o in zip(f, ok, strict=True)]
        assert got == train[name], name
    f, lengths = hash_lists("num", 3, sent["hist"], where)
    ends = np.cumsum(lengths)
    assert [f[e - n:e].tolist() for e, n in zip(ends, lengths, strict=True)] == train["hist"]
    for j, d in enumerate(CFG.dense):
        np.testing.assert_array_equal(dense_values(d, sent[d.name], where), enc.dense[:, j])
    # one record at a time, every slot and dense field together
    rec = RecordEncoder(CFG.slots, CFG.dense, [s.name for s in CFG.slots] +
                        [d.name for d in CFG.dense])
    for k in range(40):
        fids, ln = rec.ids([sent[s.name][k] for s in CFG.slots])
        assert [x.tolist() for x in np.split(fids, np.cumsum(ln)[:-1])] == \
            [train[s.name][k] for s in CFG.slots]
        np.testing.assert_array_equal(rec.dense([sent[d.name][k] for d in CFG.dense]),
                                      enc.dense[k])


USER = RecordEncoder(
    [SlotConfig(name="user_id", table="t"), SlotConfig(name="gender", table="t"),
     SlotConfig(name="recent", table="t", kind="multi", max_len=2, id_space="item_id")],
    [DenseConfig(name="age", norm="standard", mean=30, std=10)],
    ["user.user_id", "user.gender", "user.recent", "user.age"])


@pytest.mark.parametrize("values, fast", [
    ([3, 1, [1, 2, 3]], True),
    ([3, None, None], True),
    ([3, "1", [1, 2]], False),           # a string id
    ([3, 1.0, [1, 2]], False),           # a float id (rounded)
    ([3, 1, [1, "2"]], False),           # a string in a list
    ([3, 2**63, None], False),           # an id past int64 (its uint64 bit pattern)
    ([3, True, None], False),            # a bool (0/1)
    ([3, 1, ["x", 5, 6]], True),         # the string is cut off by max_len
])
def test_checked_path_takes_what_the_fast_path_does_not(values, fast):
    assert (USER._ids_fast(values) is not None) is fast
    got, want = USER.ids(values), USER._ids_checked(values)
    assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()


@pytest.mark.parametrize("call, field", [
    (lambda: USER.ids([3, {"a": 1}, None]), "user.gender"),
    (lambda: USER.ids([3, 1, 5]), "user.recent"),
    (lambda: USER.ids([3, 1, [1, None]]), "user.recent[1]"),
    (lambda: USER.ids([2**64, 1, None]), "user.user_id"),
    (lambda: USER.dense(["old"]), "user.age"),
    (lambda: USER.dense([[1, 2]]), "user.age"),
    (lambda: hash_lists("s", 2, [[1], [5, 6, 7, None]], lambda i: f"c[{i}].tags"), "c[1].tags[3]"),
    (lambda: hash_lists("s", 9, [[1], [5, {}]], lambda i: f"c[{i}].tags"), "c[1].tags[1]"),
    (lambda: dense_values(DenseConfig(name="p"), [1.0, "x"], lambda i: f"c[{i}].p"), "c[1].p"),
])
def test_errors_name_the_field(call, field):
    with pytest.raises(FieldError) as e:
        call()
    assert e.value.field == field, str(e.value)


@pytest.mark.parametrize("value", ["40", True, [40], {"v": 40}, 1e308, -1e308])
def test_a_dense_value_is_a_number_that_normalises_to_a_finite_float32(value):
    """A string, a bool or a number whose normalised value overflows float32 is refused
    (naming the field): a request can never make a score inf or NaN."""
    with pytest.raises(FieldError, match=r"^user\.age: (must be a number|out of range)"):
        USER.dense([value])
    with pytest.raises(FieldError, match=r"^x\[1\]: "):
        dense_values(CFG.dense[0], [40, value], lambda i: f"x[{i}]")


def test_a_float_id_past_int64_hashes_as_the_int_it_rounds_to():
    """2.0**63 is the id 2**63 (its uint64 bit pattern), not an OverflowError (a 500)."""
    got, ok = hash_values("c", [0, 2.0**63], lambda i: f"c[{i}]")
    assert ok.all() and got.tolist() == hash_values("c", [0, 2**63], str)[0].tolist()
    with pytest.raises(FieldError, match=r"c\[1\]: integer .* does not fit in 64 bits"):
        hash_values("c", [0, 1e300], lambda i: f"c[{i}]")
