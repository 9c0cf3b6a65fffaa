"""Tests of the generic tabular reader on generated CSV, TSV, JSON-lines, Parquet and Arrow."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from freshrec.data import HistoryBuilder, TabularReader, open_reader
from freshrec.data.base import DataNotFoundError
from freshrec.data.config import LabelRule, tabular_config_from_options
from freshrec.errors import ConfigError, InputError


def _table(reader) -> pa.Table:
    batches = list(reader)
    assert all(b.num_rows <= reader.chunk_rows for b in batches)
    return pa.Table.from_batches(batches) if batches else pa.table({})


def _ratings(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "user": [f"u{x}" for x in rng.integers(0, 30, n)],
        "movie": rng.integers(0, 50, n),
        "rating": rng.integers(1, 6, n).astype(np.float64),
        "ts": rng.permutation(np.arange(1_000, 1_000 + n)),  # not in time order
        "genres": ["|".join(f"g{g}" for g in range(int(k))) for k in rng.integers(0, 3, n)],
        "age": rng.normal(30, 5, n).round(1),
    })


def _write_csv(table: pa.Table, path, sep: str = ",") -> None:
    lines = [sep.join(table.column_names)]
    for row in table.to_pylist():
        lines.append(sep.join("" if v is None else str(v) for v in row.values()))
    path.write_text("\n".join(lines) + "\n")


OPTIONS = {"label_column": "rating >= 4", "time_column": "ts",
           "columns": {"genres": {"list": "|"}, "age": "dense", "user": "id", "movie": "id"}}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "arrow", "csv.gz"])
def test_every_format_gives_the_same_sorted_rows(tmp_path, fmt):
    src = _ratings(500)
    path = tmp_path / f"r.{fmt}"
    if fmt in ("csv", "tsv"):
        _write_csv(src, path, "," if fmt == "csv" else "\t")
    elif fmt == "csv.gz":
        _write_csv(src, tmp_path / "plain.csv")
        path.write_bytes(gzip.compress((tmp_path / "plain.csv").read_bytes()))
    elif fmt == "jsonl":
        rows = src.to_pylist()
        for r in rows:
            r["genres"] = r["genres"].split("|") if r["genres"] else []  # a JSON list
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "parquet":
        pq.write_table(src, path, row_group_size=128)
    else:
        feather.write_feather(src, path)
    reader = TabularReader(path, chunk_rows=128, **OPTIONS)
    out = _table(reader)
    assert reader.report.bad_lines == 0 and reader.report.rows == 500
    order = np.argsort(src.column("ts").to_numpy(), kind="stable")
    assert out.column("event_time").to_pylist() == sorted(src.column("ts").to_pylist())
    want_label = (src.column("rating").to_numpy()[order] >= 4).astype(np.float32)
    assert out.column("label").to_numpy().tolist() == want_label.tolist()
    assert out.column("label").type == pa.float32()
    assert [str(x) for x in out.column("movie").to_pylist()] == \
        [str(src.column("movie")[int(k)].as_py()) for k in order]
    genres = out.column("genres").to_pylist()
    want = [src.column("genres")[int(k)].as_py() for k in order]
    assert [g or [] for g in genres] == [w.split("|") if w else [] for w in want]
    np.testing.assert_allclose(out.column("age").to_numpy(),
                               src.column("age").to_numpy()[order], rtol=1e-6)


def test_every_bad_value_is_reported_with_file_line_and_column_and_counted(tmp_path):
    path = tmp_path / "bad.csv"
    lines = [
        "user,movie,rating,ts,age,w,kind",        # 1 header
        "u1,m1,5,100,30,1.0,buy",                 # 2 good
        "u1,m2,4,101,31",                         # 3 too few fields
        "u1,m2,4,101,31,1,buy,extra",             # 4 too many fields
        "",                                       # 5 empty line
        "u1,m3,five,102,30,1,buy",                # 6 rating not a number (label rule)
        "u1,m3,,102,30,1,buy",                    # 7 rating missing
        "u2,m1,3,yesterday,30,1,view",            # 8 time not a time
        "u2,m1,3,,30,1,view",                     # 9 time missing
        "u2,m4,3,103,old,1,view",                 # 10 dense not a number
        "u2,m4,3,103,inf,1,view",                 # 11 dense not finite
        "u2,m4,3,103,nan,1,view",                 # 12 dense NaN
        "u2,m5,2,104,30,-1,view",                 # 13 negative weight
        "u2,m5,2,104,30,heavy,view",              # 14 weight not a number
        "u2,m5,2,104,30,,view",                   # 15 weight missing
        'u3,"m6,quoted",1,105,30,1,view',          # 16 good: a quoted field with a comma
        'u3,"m7 unterminated,1,105,30,1,view',     # 17 runs to end of file: not valid CSV
    ]
    path.write_text("\n".join(lines) + "\n")
    reader = TabularReader(path, label_column="rating >= 4", time_column="ts",
                           columns={"age": "dense", "kind": "categorical"}, weight_column="w",
                           max_reported=100)
    out = _table(reader)
    assert out.column("movie").to_pylist() == ["m1", "m6,quoted"]
    assert out.column("label").to_pylist() == [1.0, 0.0]
    assert out.column("weight").to_pylist() == [1.0, 1.0]
    report = reader.report
    got = {b.line: b.reason for b in report.examples}
    assert report.bad_lines == len(got) == 14, got
    assert all(b.path == str(path) for b in report.examples)
    assert got[3] == "expected 7 fields, got 5"
    assert got[4] == "expected 7 fields, got 8"
    assert got[5] == "empty line"
    assert got[6] == "field rating: 'five' is not a number (label rule rating >= 4)"
    assert got[7] == "field rating: missing value"
    assert got[8].startswith("field ts: 'yesterday' is not a time")
    assert got[9] == "field ts: missing value"
    assert got[10] == "field age: 'old' is not a finite number"
    assert got[11] == "field age: 'inf' is not a finite number"
    assert got[12] == "field age: 'nan' is not a finite number"
    assert got[13] == "field w: '-1' is not a weight (a finite number >= 0)"
    assert got[14] == "field w: 'heavy' is not a weight (a finite number >= 0)"
    assert got[15] == "field w: missing value"
    assert got[17] == "not valid CSV (unexpected end of data)"
    assert str(report.examples[0]) == f"{path}:3: expected 7 fields, got 5"


def test_bad_values_of_labels_times_and_json(tmp_path):
    # a click column with a stray value, a label map with an unknown value, time formats
    path = tmp_path / "c.csv"
    path.write_text("u,click,when,act\n"
                    "a,1,2024-01-01 00:00:05,buy\n"
                    "a,2,2024-01-01 00:00:06,buy\n"
                    "a,0,2024-01-01 00:00:07,view\n"
                    "a,0,01/01/2024,view\n")
    clicks = TabularReader(path, label_column="click", time_column="when",
                           time_format="%Y-%m-%d %H:%M:%S")
    out = _table(clicks)
    assert out.column("label").to_pylist() == [1.0, 0.0]
    assert out.column("event_time").to_pylist() == [1704067205, 1704067207]
    reasons = {b.line: b.reason for b in clicks.report.examples}
    assert reasons[3].startswith("field click: '2' is not a label in [0, 1]")
    assert reasons[5].startswith("field when: '01/01/2024' is not a time in the format")
    mapped = TabularReader(path, label_column="act", label_map={"buy": 1, "view": 0},
                           time_column="when", time_format="iso")
    assert _table(mapped).column("label").to_pylist() == [1.0, 1.0, 0.0]
    assert mapped.report.examples[0].reason.startswith("field when: '01/01/2024' is not an ISO")
    path.write_text("u,act,ts\na,buy,5\na,like,6\n")
    m2 = TabularReader(path, label_column="act", label_map={"buy": 1, "view": 0},
                       time_column="ts")
    assert _table(m2).num_rows == 1
    assert m2.report.examples[0].reason == \
        "field act: 'like' is not one of ['buy', 'view'] (data.options.label_map)"
    # JSON lines: invalid JSON, not an object, an empty line; missing keys are null
    jl = tmp_path / "e.jsonl"
    jl.write_text('{"u": "a", "click": 1, "t": 5}\n{"u": "b", "click": \n[1, 2]\n\n'
                  '{"u": "c", "t": 7, "click": 0}\n{"u": "d", "click": 0}\n')
    j = TabularReader(jl, label_column="click", time_column="t", time_unit="s")
    assert _table(j).column("u").to_pylist() == ["a", "c"]
    reasons = {b.line: b.reason for b in j.report.examples}
    assert reasons[2].startswith("not valid JSON") and reasons[4] == "empty line"
    assert reasons[3] == "expected a JSON object, got list"
    assert reasons[6] == "field t: missing value"
    # ISO times with and without zone; millisecond numbers
    p2 = tmp_path / "iso.csv"
    p2.write_text("u,click,ts\na,1,2019-11-24 00:00:17.004+00:00\nb,0,2019-11-24T00:00:19\n")
    assert _table(TabularReader(p2, time_column="ts", label_column="click")
                  ).column("event_time").to_pylist() == [1574553617, 1574553619]
    p3 = tmp_path / "ms.csv"
    p3.write_text("u,click,ts\na,1,1574553617004\n")
    assert _table(TabularReader(p3, time_column="ts", time_unit="ms", label_column="click")
                  ).column("event_time").to_pylist() == [1574553617]


def test_a_rating_used_as_a_label_is_an_error_naming_the_column_and_key(tmp_path):
    path = tmp_path / "r.csv"
    _write_csv(_ratings(50), path)
    with pytest.raises(InputError, match=r"r.csv:2: label column 'rating' holds \d, not a "
                                         r"label in \[0, 1\]: set data.options.label_column "
                                         r"to a rule such as 'rating >= 4'"):
        list(TabularReader(path, label_column="rating", time_column="ts"))


def test_time_column_is_required_unless_row_order(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,click\na,1\nb,0\n")
    with pytest.raises(InputError, match="no time column: set data.options.time_column.*"
                                         "row_order"):
        list(TabularReader(path, label_column="click"))
    out = _table(TabularReader(path, label_column="click", time_column="row_order"))
    assert out.column("event_time").to_pylist() == [0, 1]
    # a column named event_time is the time without options
    path.write_text("user,label,event_time\na,1,9\nb,0,8\n")
    out = _table(TabularReader(path))
    assert out.column("event_time").to_pylist() == [8, 9]
    assert out.column("user").to_pylist() == ["b", "a"]
    with pytest.raises(InputError, match="no column 'when' \\(named by data.options.time_column"):
        list(TabularReader(path, time_column="when"))


def test_unsorted_data_larger_than_the_sort_budget_is_an_error_saying_how_to_sort(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,click,ts\na,1,5\nb,0,7\nc,1,6\n")
    with pytest.raises(InputError, match=r"r.csv:4: event time 6 is before the previous "
                                         r"row's 7: .*max_sort_bytes.*Sort it by 'ts' first"):
        list(TabularReader(path, label_column="click", time_column="ts", max_sort_bytes=0))
    path.write_text("user,click,ts\na,1,5\nb,0,6\nc,1,6\n")  # sorted data streams
    out = _table(TabularReader(path, label_column="click", time_column="ts", max_sort_bytes=0,
                               chunk_rows=1))
    assert out.column("user").to_pylist() == ["a", "b", "c"]


def test_history_is_leak_free_and_the_same_streamed_or_sorted(tmp_path):
    rng = np.random.default_rng(3)
    n = 3000
    table = pa.table({"user": rng.integers(0, 40, n), "item": rng.integers(0, 300, n),
                      "click": rng.integers(0, 2, n),
                      "ts": np.sort(rng.integers(0, 1500, n))})  # many ties
    pq.write_table(table, tmp_path / "s.parquet")
    shuffled = table.take(pa.array(rng.permutation(n)))
    pq.write_table(shuffled, tmp_path / "u.parquet")
    hist = {"user": "user", "item": "item", "length": 5}
    streamed = _table(TabularReader(tmp_path / "s.parquet", label_column="click",
                                    time_column="ts", history=hist, max_sort_bytes=0,
                                    chunk_rows=97))
    for positives_only in (False, True):
        h = {**hist, "positives_only": positives_only}
        out = _table(TabularReader(tmp_path / "u.parquet", label_column="click",
                                   time_column="ts", history=h, chunk_rows=97))
        rows = out.to_pylist()
        # brute force: the last 5 items of the user's rows strictly earlier in time
        for k in range(0, n, 7):
            r = rows[k]
            earlier = [x["item"] for x in rows[:k] if x["user"] == r["user"]
                       and x["event_time"] < r["event_time"]
                       and (x["label"] == 1 or not positives_only)]
            assert r["hist_items"] == earlier[-5:], k
            # leak-free: an item seen by this user only at this time is never in it
            same_time = {x["item"] for x in rows if x["user"] == r["user"]
                         and x["event_time"] == r["event_time"]}
            assert not (same_time - set(earlier)) & set(r["hist_items"])
    # the sorted file streamed in small batches gives what it gives read whole
    whole = _table(TabularReader(tmp_path / "s.parquet", label_column="click",
                                 time_column="ts", history=hist))
    assert whole.column("hist_items").to_pylist() == streamed.column("hist_items").to_pylist()


def test_history_builder_across_calls_equals_one_call():
    rng = np.random.default_rng(0)
    users = pa.array(rng.integers(0, 5, 200))
    items = pa.array(rng.integers(0, 20, 200))
    times = np.sort(rng.integers(0, 50, 200))
    one = HistoryBuilder(length=3).extend(users, items, times, None).to_pylist()
    h = HistoryBuilder(length=3)
    parts = [h.extend(users[a:b], items[a:b], times[a:b], None).to_pylist()
             for a, b in ((0, 33), (33, 34), (34, 200))]
    assert one == parts[0] + parts[1] + parts[2]


def test_globs_directories_and_paths(tmp_path):
    t = _ratings(300)
    _write_csv(t.slice(0, 100), tmp_path / "day-1.csv")
    _write_csv(t.slice(100), tmp_path / "day-2.csv")
    out = _table(open_reader("csv", tmp_path / "day-*.csv", **OPTIONS))
    assert out.num_rows == 300
    assert out.column("event_time").to_pylist() == sorted(t.column("ts").to_pylist())
    assert _table(open_reader("table", tmp_path, **OPTIONS)).num_rows == 300
    with pytest.raises(DataNotFoundError, match="no file matches"):
        TabularReader(tmp_path / "nope-*.csv")
    with pytest.raises(DataNotFoundError, match="does not exist"):
        TabularReader(tmp_path / "nope.csv")
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(InputError, match="mixes file formats"):
        TabularReader(tmp_path)
    (tmp_path / "blob.bin").write_text("a,b\n")
    with pytest.raises(ConfigError, match="set data.options.file_format"):
        TabularReader(tmp_path / "blob.bin")
    assert _table(TabularReader(tmp_path / "blob.bin", file_format="csv",
                                time_column="row_order")).num_rows == 0
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="the file is empty"):
        list(TabularReader(tmp_path / "empty.csv", time_column="row_order"))
    (tmp_path / "dup.csv").write_text("a,a\n1,2\n")
    with pytest.raises(InputError, match="column 'a' appears twice"):
        list(TabularReader(tmp_path / "dup.csv", time_column="row_order"))


def test_options_are_validated_naming_the_key():
    with pytest.raises(ConfigError, match="data.options: unknown key 'lable_column'"):
        tabular_config_from_options({"lable_column": "click"})
    with pytest.raises(ConfigError, match="data.options.label_column: 'rating =< 4' is not"):
        tabular_config_from_options({"label_column": "rating =< 4"})
    with pytest.raises(ConfigError, match="data.options.label_map.x: expected a label"):
        tabular_config_from_options({"label_column": "k", "label_map": {"x": 3}})
    with pytest.raises(ConfigError, match="data.options.time_unit: must be one of"):
        tabular_config_from_options({"time_unit": "h"})
    with pytest.raises(ConfigError, match="data.options.history: needs 'user' and 'item'"):
        tabular_config_from_options({"history": {"user": "u"}})
    with pytest.raises(ConfigError, match="data.options.history.length: expected an int"):
        tabular_config_from_options({"history": {"user": "u", "item": "i", "length": 0}})
    assert LabelRule.parse("score < 0.5") == LabelRule(column="score", op="<", threshold=0.5)


def test_json_floats_that_are_integers_are_the_same_ids_and_labels(tmp_path):
    # JSON has one number type: writers that emit 5.0 for 5 (pandas with a NaN in an int
    # column) must give the same id, list element and label-map key as 5
    jl = tmp_path / "f.jsonl"
    jl.write_text('{"user": 5, "item": 7.0, "tags": [1, 2.0], "stars": 5, "t": 1}\n'
                  '{"user": 5.0, "item": 7, "tags": [1.0, 2], "stars": 5.0, "t": 2.0}\n'
                  '{"user": 5.5, "item": -3.0, "tags": [], "stars": 1.0, "t": 3}\n')
    reader = TabularReader(jl, label_column="stars", label_map={5: 1, 1.0: 0},
                           time_column="t", columns={"tags": {"list": "|"}})
    out = _table(reader)
    assert reader.report.bad_lines == 0, reader.report.examples
    assert out.column("user").to_pylist() == ["5", "5", "5.5"]
    assert out.column("item").to_pylist() == ["7", "7", "-3"]
    assert out.column("tags").to_pylist()[:2] == [["1", "2"], ["1", "2"]]
    assert out.column("label").to_pylist() == [1.0, 1.0, 0.0]
    assert out.column("event_time").to_pylist() == [1, 2, 3]
