from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from freshrec.errors import ConfigError, InputError
from freshrec.features import FeatureSchema, feature_config_from_dict, hash_array

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
