"""Tests of the chunked readers on generated files (and the shared real data sets)."""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from freshrec.data import (
    CRITEO_COLUMNS,
    CriteoReader,
    MovieLensReader,
    OpenBanditReader,
    TabularReader,
    open_reader,
)
from freshrec.data.base import DataNotFoundError
from freshrec.errors import ConfigError, FreshrecError, InputError


def _table(reader) -> pa.Table:
    batches = list(reader)
    assert all(b.num_rows <= reader.chunk_rows for b in batches)
    return pa.Table.from_batches(batches)


# --- Criteo -----------------------------------------------------------------------------------


def _criteo_line(rng, label=None, trim=False) -> str:
    ints = [str(rng.integers(-1, 500)) if rng.random() < 0.8 else "" for _ in range(13)]
    cats = [f"{rng.integers(0, 2**32):08x}" if rng.random() < 0.9 else "" for _ in range(26)]
    fields = [str(rng.integers(0, 2) if label is None else label), *ints, *cats]
    if trim:
        while fields[-1] == "":
            fields.pop()
        fields = fields[:30]
    return "\t".join(fields)


def test_criteo_reads_generated_file_in_chunks(tmp_path):
    rng = np.random.default_rng(0)
    lines = [_criteo_line(rng, trim=(i % 3 == 0)) for i in range(250)]
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines))  # no trailing newline, like the Kaggle sample
    reader = CriteoReader(path, chunk_rows=64)
    batches = list(reader)
    assert [b.num_rows for b in batches] == [64, 64, 64, 58]
    table = pa.Table.from_batches(batches)
    assert table.column_names == [*CRITEO_COLUMNS, "event_time"]
    assert table.schema.field("label").type == pa.float32()
    assert table.schema.field("I1").type == pa.int64()
    assert table.schema.field("C1").type == pa.string()
    assert table.column("event_time").to_pylist() == list(range(250))
    for i in (0, 3, 100, 249):
        fields = lines[i].split("\t") + [""] * 40
        row = table.slice(i, 1).to_pylist()[0]
        assert row["label"] == float(fields[0])
        assert row["I5"] == (int(fields[5]) if fields[5] else None)
        assert row["C26"] == (fields[39] or None)
    assert reader.report.rows == 250 and reader.report.bad_lines == 0


def test_criteo_malformed_lines_are_reported_and_skipped(tmp_path, caplog):
    rng = np.random.default_rng(1)
    good = [_criteo_line(rng) for _ in range(6)]
    bad_int = good[0].split("\t")
    bad_int[3] = "12x"
    bad_hex = good[0].split("\t")
    bad_hex[20] = "zz12"
    bad_label = good[0].split("\t")
    bad_label[0] = "yes"
    lines = [
        good[0],
        "\t".join(bad_int),  # line 2
        good[1],
        good[2] + "\textra",  # line 4: 41 fields
        "\t".join(bad_hex),  # line 5
        "",  # line 6
        good[3],
        "\t".join(bad_label),  # line 8
        "1\t5",  # line 9: short row, padded, kept
        good[4],
    ]
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="freshrec.data.base"):
        reader = CriteoReader(path, chunk_rows=4, max_reported=3)
        table = _table(reader)
    report = reader.report
    assert report.bad_lines == 5
    assert report.rows == table.num_rows == 5
    assert len(report.examples) == 3
    found = {b.line: b.reason for b in report.examples}
    assert set(found) <= {2, 4, 5, 6, 8}
    assert "malformed line skipped" in caplog.text
    # the row numbers of the kept lines do not shift when lines are skipped
    assert table.column("event_time").to_pylist() == [0, 2, 6, 8, 9]
    short = table.slice(3, 1).to_pylist()[0]
    assert short["label"] == 1.0 and short["I1"] == 5 and short["I2"] is None
    assert short["C26"] is None


def test_criteo_bad_line_reasons_name_field_and_line(tmp_path):
    rng = np.random.default_rng(2)
    ok = _criteo_line(rng)
    bad = ok.split("\t")
    bad[2] = "abc"
    bad_hex = ok.split("\t")
    bad_hex[14] = "0xff"
    path = tmp_path / "t.txt"
    path.write_text("\n".join([ok, "\t".join(bad), ok + "\tmore", "\t".join(bad_hex)]) + "\n")
    reader = CriteoReader(path)
    _table(reader)
    reasons = {b.line: b.reason for b in reader.report.examples}
    assert reasons[2] == "field I2: 'abc' is not an integer"
    assert reasons[3] == "expected at most 40 fields, got 41"
    assert reasons[4] == "field C1: '0xff' is not hexadecimal"
    assert str(reader.report.examples[0]).startswith(f"{path}:")


def test_criteo_comma_with_header_and_float_ints(tmp_path):
    header = ",".join(CRITEO_COLUMNS)
    row = ["1", "", "3", "260.0", *[""] * 10, "05db9164", *[""] * 25]
    bad = list(row)
    bad[3] = "2.5"  # not an integer
    path = tmp_path / "criteo_sample.txt"
    path.write_text("\n".join([header, ",".join(row), ",".join(bad)]) + "\n")
    reader = CriteoReader(path)
    table = _table(reader)
    assert table.num_rows == 1
    assert table.column("I3").to_pylist() == [260]
    assert table.column("C1").to_pylist() == ["05db9164"]
    assert [(b.line, b.reason) for b in reader.report.examples] == [
        (3, "field I3: '2.5' is not an integer")
    ]
    # forcing header=False treats the header as a (bad) data line
    forced = CriteoReader(path, header=False, sep=",")
    assert _table(forced).num_rows == 1 and forced.report.examples[0].line == 1


def test_criteo_rejects_unknown_header(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("click,a,b\n1,2,3\n")
    with pytest.raises(InputError, match=r"x.csv:1: header expected the 40 Criteo columns"):
        list(CriteoReader(path))


def test_criteo_gzip_and_empty_file(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "day.txt.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(_criteo_line(rng) for _ in range(10)) + "\n")
    assert _table(CriteoReader(path)).num_rows == 10
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert list(CriteoReader(empty)) == []


def test_reader_bad_paths_and_options(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataNotFoundError, match="nope.txt"):
        CriteoReader(missing)
    with pytest.raises(InputError, match="must be a file, got a directory"):
        CriteoReader(tmp_path)
    (tmp_path / "f.txt").write_text("")
    with pytest.raises(InputError, match="chunk_rows must be an int >= 1, got 0"):
        CriteoReader(tmp_path / "f.txt", chunk_rows=0)
    with pytest.raises(InputError, match="must be a directory"):
        MovieLensReader(tmp_path / "f.txt")
    # a missing data file is a FreshrecError (one error line in the CLI), still a
    # FileNotFoundError; another MovieLens layout is pointed to the csv format
    with pytest.raises(DataNotFoundError, match="u.data.*use format csv"):
        MovieLensReader(tmp_path)
    assert issubclass(DataNotFoundError, FreshrecError)
    assert issubclass(DataNotFoundError, FileNotFoundError)
    with pytest.raises(DataNotFoundError, match="holds no all.csv"):
        OpenBanditReader(tmp_path)
    with pytest.raises(InputError, match="fmt must be one of"):
        open_reader("xls", tmp_path / "f.txt")


def test_reiterating_reads_again_with_fresh_report(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("1\t2\nbad\n0\t3\n")
    reader = CriteoReader(path)
    first = _table(reader)
    second = _table(reader)
    assert first.equals(second)
    assert reader.report.bad_lines == 1 and reader.report.rows == 2


# --- MovieLens --------------------------------------------------------------------------------


def _write_movielens(root, rng, n_ratings=300, n_users=8, n_items=12):
    root.mkdir()
    rows = []
    for _ in range(n_ratings):
        u, i = rng.integers(1, n_users + 1), rng.integers(1, n_items + 1)
        rows.append((int(u), int(i), int(rng.integers(1, 6)), int(rng.integers(1000, 1200))))
    (root / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    users = [f"{u}|{20 + u}|{'MF'[u % 2]}|job{u % 3}|{10000 + u}\n" for u in range(1, n_users)]
    (root / "u.user").write_text("".join(users))  # the last user is missing
    items = []
    for i in range(1, n_items + 1):
        flags = ["0"] * 19
        flags[i % 19] = "1"
        flags[(i * 7) % 19] = "1"
        date = f"01-Jan-{1990 + i}" if i != 3 else ""
        items.append(f"{i}|Movie {i} (x)|{date}||http://x|" + "|".join(flags) + "\n")
    (root / "u.item").write_text("".join(items), encoding="latin-1")
    return rows


def test_movielens_time_order_join_label_and_history(tmp_path):
    rng = np.random.default_rng(4)
    rows = _write_movielens(tmp_path / "ml", rng)
    reader = MovieLensReader(tmp_path / "ml", chunk_rows=70, history=3)
    table = _table(reader)
    assert table.num_rows == len(rows)
    t = table.column("event_time").to_numpy()
    assert np.all(np.diff(t) >= 0)
    # stable: ties keep file order
    expected = sorted(range(len(rows)), key=lambda k: rows[k][3])
    assert table.column("user_id").to_pylist() == [rows[k][0] for k in expected]
    assert table.column("item_id").to_pylist() == [rows[k][1] for k in expected]
    ratings = np.array([rows[k][2] for k in expected])
    assert table.column("label").to_numpy().tolist() == (ratings >= 4).astype(float).tolist()
    seen: dict[int, list[int]] = {}
    for r in table.to_pylist():
        assert r["hist_items"] == seen.get(r["user_id"], [])[-3:]
        seen.setdefault(r["user_id"], []).append(r["item_id"])
        if r["user_id"] == 8:  # not in u.user: row kept, attributes null
            assert r["age"] is None and r["gender"] is None
        else:
            assert r["age"] == 20 + r["user_id"]
            assert r["zip"] == str(10000 + r["user_id"])
        i = r["item_id"]
        assert r["release_year"] == (None if i == 3 else 1990 + i)
        names = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western"]  # fmt: skip
        assert sorted(r["genres"]) == sorted({names[i % 19], names[(i * 7) % 19]})


def test_movielens_malformed_rating_lines(tmp_path):
    rng = np.random.default_rng(5)
    _write_movielens(tmp_path / "ml", rng, n_ratings=20)
    data = (tmp_path / "ml" / "u.data").read_text().splitlines()
    data[4] = "1\t2\tfive\t1100"
    data[9] = "1\t2\t3"
    (tmp_path / "ml" / "u.data").write_text("\n".join(data) + "\n")
    reader = MovieLensReader(tmp_path / "ml")
    assert _table(reader).num_rows == 18
    assert sorted(b.line for b in reader.report.examples) == [5, 10]
    assert all(b.path.endswith("u.data") for b in reader.report.examples)


# --- Open Bandit ------------------------------------------------------------------------------

_OBD_HEADER = (
    ",timestamp,item_id,position,click,propensity_score,user_feature_0,user_feature_1,"
    "user-item_affinity_0,user-item_affinity_1"
)


def _obd_row(k, item, click, second=0):
    return (
        f"{k},2019-11-24 00:0{second // 60}:{second % 60:02d}.5+00:00,{item},{1 + k % 3},"
        f"{click},0.0125,u{k % 4},v{k % 2},0.{k},0.0"
    )


def test_obd_reads_joins_context_and_reports_bad_lines(tmp_path):
    d = tmp_path / "random" / "all"
    d.mkdir(parents=True)
    rows = [_obd_row(k, item=k % 5, click=int(k % 7 == 0), second=k) for k in range(40)]
    rows[10] = rows[10].replace("2019-11-24", "yesterday")
    rows[20] = rows[20] + ",extra"
    rows[30] = rows[30].replace(",0.0125,", ",high,")
    (d / "all.csv").write_text(_OBD_HEADER + "\n" + "\n".join(rows) + "\n")
    (d / "item_context.csv").write_text(
        ",item_id,item_feature_0,item_feature_1\n"
        + "".join(f"{i},{i},{i / 10},f{i}\n" for i in range(4))  # item 4 has no context
    )
    reader = OpenBanditReader(d, chunk_rows=16)
    table = _table(reader)
    assert table.num_rows == 37
    assert sorted(b.line for b in reader.report.examples) == [12, 22, 32]
    assert "user_item_affinity_0" in table.column_names
    assert "timestamp" not in table.column_names and "click" not in table.column_names
    t = table.column("event_time").to_numpy()
    assert t[0] == 1574553600 and np.all(np.diff(t) >= 0)
    for r in table.to_pylist():
        if r["item_id"] == 4:
            assert r["item_feature_1"] is None and r["item_feature_0"] is None
        else:
            assert r["item_feature_1"] == f"f{r['item_id']}"
            assert r["item_feature_0"] == pytest.approx(r["item_id"] / 10)
    labels = table.column("label").to_numpy()
    assert labels.sum() == sum(1 for k in range(40) if k % 7 == 0 and k not in (10, 20, 30))
    # the CSV path works too and the context file is optional
    (d / "item_context.csv").unlink()
    no_ctx = _table(OpenBanditReader(d / "all.csv"))
    assert no_ctx.num_rows == 37 and "item_feature_1" not in no_ctx.column_names
    # a campaign directory without all.csv: <directory>.csv, else its only other CSV
    men = tmp_path / "men"
    men.mkdir()
    (d / "all.csv").rename(men / "men.csv")
    assert _table(OpenBanditReader(men)).num_rows == 37
    (men / "men.csv").rename(men / "log.csv")
    assert OpenBanditReader(men).path == men / "log.csv"
    (men / "other.csv").write_text("")
    with pytest.raises(DataNotFoundError, match="several CSV files.*pass the impression log"):
        OpenBanditReader(men)


def test_obd_header_must_name_required_columns(tmp_path):
    path = tmp_path / "all.csv"
    path.write_text(",timestamp,item_id,position\n0,2019-11-24 00:00:00+00:00,1,1\n")
    with pytest.raises(InputError, match="all.csv:1: header must name.*missing click"):
        list(OpenBanditReader(path))


# --- Parquet / Arrow --------------------------------------------------------------------------


def test_tabular_reader_on_parquet_ipc_and_columns(tmp_path):
    n = 1000
    rng = np.random.default_rng(6)
    ts = pa.array(
        (1_600_000_000 + np.arange(n)).astype("datetime64[s]").astype("datetime64[us]"),
        pa.timestamp("us"),
    )
    table = pa.table({"user": [f"u{i % 13}" for i in range(n)],
                      "click": rng.integers(0, 2, n), "ts": ts})  # fmt: skip
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=300)
    feather.write_feather(table, tmp_path / "a.arrow")
    for path, fmt in ((tmp_path / "a.parquet", "parquet"), (tmp_path / "a.arrow", "arrow")):
        reader = open_reader(fmt, path, chunk_rows=256, label_column="click", time_column="ts")
        out = _table(reader)
        assert out.num_rows == n and reader.report.rows == n
        assert out.column("label").type == pa.float32()
        assert out.column("label").to_numpy().tolist() == table.column("click").to_pylist()
        assert out.column("event_time").to_pylist() == list(range(1_600_000_000, 1_600_000_000 + n))
        assert out.column("user").to_pylist() == table.column("user").to_pylist()
    # with time_column row_order the row number is the time; a directory is read whole
    d = tmp_path / "parts"
    d.mkdir()
    pq.write_table(table.slice(0, 400), d / "p0.parquet")
    pq.write_table(table.slice(400), d / "p1.parquet")
    out = _table(TabularReader(d, chunk_rows=128, label_column="click", time_column="row_order"))
    assert out.column("event_time").to_pylist() == list(range(n))


def test_tabular_reader_on_errors(tmp_path):
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "a.parquet")
    with pytest.raises(InputError, match="no column 'click'"):
        list(TabularReader(tmp_path / "a.parquet", label_column="click", time_column="x"))
    with pytest.raises(ConfigError, match="data.options.file_format: must be"):
        TabularReader(tmp_path / "a.parquet", file_format="xls")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="junk.parquet"):
        list(TabularReader(tmp_path / "junk.parquet", time_column="row_order"))


# --- the real data sets (shared_data fixture) -----------------------------------------------


def test_real_criteo_files(shared_data):
    kaggle = CriteoReader(shared_data / "criteo-sample" / "train.txt", chunk_rows=256)
    table = _table(kaggle)
    assert table.num_rows == 1000 and kaggle.report.bad_lines == 0
    assert 0.1 < table.column("label").to_numpy().mean() < 0.4
    assert table.column("C1").null_count == 0
    assert table.column("event_time").to_pylist() == list(range(1000))
    deepctr = CriteoReader(shared_data / "deepctr_samples" / "criteo_sample.txt")
    sample = _table(deepctr)
    assert sample.num_rows == 200 and deepctr.report.bad_lines == 0
    assert 0.1 < sample.column("label").to_numpy().mean() < 0.4


def test_real_movielens(shared_data):
    reader = MovieLensReader(shared_data / "ml-100k", chunk_rows=25_000)
    batches = list(reader)
    assert [b.num_rows for b in batches] == [25_000] * 4
    table = pa.Table.from_batches(batches)
    assert reader.report.bad_lines == 0
    assert np.all(np.diff(table.column("event_time").to_numpy()) >= 0)
    assert 0.5 < table.column("label").to_numpy().mean() < 0.6  # 55% of ratings are >= 4
    assert table.column("age").null_count == 0 and table.column("genres").null_count == 0
    hist_len = pc.list_value_length(table.column("hist_items")).to_numpy()
    assert hist_len.max() == 20 and hist_len[0] == 0


@pytest.mark.parametrize("policy", ["random", "bts"])
def test_real_open_bandit(shared_data, policy):
    reader = OpenBanditReader(shared_data / "obd" / policy / "all", chunk_rows=4096)
    table = _table(reader)
    assert table.num_rows == 10_000 and reader.report.bad_lines == 0
    assert np.all(np.diff(table.column("event_time").to_numpy()) >= 0)
    assert 0.001 < table.column("label").to_numpy().mean() < 0.02
    assert table.column("item_feature_1").null_count == 0
    assert len([c for c in table.column_names if c.startswith("user_item_affinity_")]) == 80
