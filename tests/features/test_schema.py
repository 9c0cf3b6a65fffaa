from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from freshrec.errors import ConfigError, InputError
from freshrec.features import FeatureSchema, feature_config_from_dict, hash_array
from freshrec.features.schema import RowsOutOfRange

CFG = {
    "tables": {"user": {"dim": 4}, "item": {"dim": 4}},
    "slots": {"user_id": {"table": "user"}, "item_id": {"table": "item"},
              "genre": {"table": "item", "column": "genres", "kind": "multi", "max_len": 2}},
    "dense": {"age": {"norm": "standard", "mean": 30, "std": 10, "fill": 30}},
    "labels": ["click"],
}


def test_encode_slots_dense_labels_and_nulls():
    schema = FeatureSchema(feature_config_from_dict(CFG, where="t.yaml"))
    rb = pa.RecordBatch.from_pydict({
        "user_id": ["u1", None, "u1"], "item_id": [3, 4, 3],
        "genres": [["a", "b", "c"], None, []], "age": [40.0, None, 20.0],
        "click": [1, 0, 1], "event_time": [5, 6, 7],
    })
    enc = schema.encode(rb)
    d = enc.sparse.to_dict()
    assert d["user_id"][0] == d["user_id"][2] and d["user_id"][1] == []
    assert d["genre"][0] == hash_array("genre", ["b", "c"]).tolist()  # last max_len kept
    assert d["genre"][1] == [] and d["genre"][2] == []
    np.testing.assert_allclose(enc.dense[:, 0], [1.0, 0.0, -1.0])
    assert enc.labels[:, 0].tolist() == [1.0, 0.0, 1.0]
    assert enc.weight.tolist() == [1.0] * 3 and enc.sample_rate.tolist() == [1.0] * 3


def test_missing_label_column_is_an_error_naming_it():
    schema = FeatureSchema(feature_config_from_dict(CFG))
    rb = pa.RecordBatch.from_pydict({"user_id": [1], "item_id": [1]})
    with pytest.raises(InputError, match="no label column 'click'"):
        schema.encode(rb)
    assert schema.encode(rb, with_labels=False).size == 1


@pytest.mark.parametrize(("column", "value", "match"), [
    ("click", float("nan"), "label column 'click': row 1 of the batch is missing "
                            "\\(null\\) or NaN, expected a number in \\[0, 1\\]"),
    ("click", None, "label column 'click': row 1 of the batch is missing \\(null\\) or NaN"),
    ("click", 2.0, "label column 'click': row 1 of the batch is 2.0"),
    ("click", -1.0, "label column 'click': row 1 of the batch is -1.0"),
    ("weight", -0.5, "weight: row 1 of the batch is -0.5, expected a finite number >= 0"),
    ("weight", float("inf"), "weight: row 1 of the batch is inf"),
    ("sample_rate", 0.0, "sample rate: row 1 of the batch is 0.0, expected a number in \\(0, 1\\]"),
    ("sample_rate", 1.5, "sample rate: row 1 of the batch is 1.5"),
    ("age", float("inf"), "dense column 'age': row 1 of the batch is inf, expected a number "
                          "that normalises to a finite float32"),
    ("age", -1e300, "dense column 'age': row 1 of the batch is -1e\\+300"),
])
def test_rows_out_of_range_are_an_error_that_marks_them(column, value, match):
    """A label outside [0, 1], a negative or infinite weight, a sample rate outside (0, 1], a
    dense value that does not normalise to a finite float32: the error names the column,
    the row and the value, and marks every such row."""
    schema = FeatureSchema(feature_config_from_dict({**CFG, "weight_column": "weight"}))
    cols = {"user_id": [1, 2, 3, 4], "item_id": [1, 2, 3, 4], "click": [1.0, 0.0, 1.0, 0.0],
            "weight": [1.0, 2.0, 1.0, 0.0], "sample_rate": [1.0, 0.5, 1.0, 0.25],
            "age": [20.0, None, 1e30, 40.0]}  # missing and large but finite: in range
    assert schema.encode(pa.RecordBatch.from_pydict(cols)).size == 4  # 0 and 1 in range
    cols[column] = [cols[column][0], value, cols[column][2], value]
    with pytest.raises(RowsOutOfRange, match=f"{match}.* \\(2 of 4 rows out of range\\)") as e:
        schema.encode(pa.RecordBatch.from_pydict(cols))
    assert e.value.rows.tolist() == [False, True, False, True]


@pytest.mark.parametrize("bad, match", [
    ({**CFG, "slotz": {}}, "unknown key 'slotz'"),
    ({**CFG, "slots": {"x": {"table": "nope"}}}, "slots.x.table: table 'nope' is not defined"),
    ({**CFG, "slots": {"x": {"table": "user", "max_len": 0}}}, "max_len must be an int >= 1"),
    ({**CFG, "dense": {"a": {"norm": "zscore"}}}, "norm must be one of"),
    ({**CFG, "tables": {"user": {"dim": "16"}}}, "dim must be an int"),
    ({**CFG, "labels": "click"}, None),
])
def test_config_errors_name_key_and_file(bad, match):
    if match is None:
        assert feature_config_from_dict(bad, where="m.yaml").labels == ("click",)
        return
    with pytest.raises(ConfigError, match=match) as e:
        feature_config_from_dict(bad, where="m.yaml")
    assert "m.yaml" in str(e.value)
