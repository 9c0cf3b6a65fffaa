from __future__ import annotations

import json

from freshrec.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("freshrec ")


def test_unknown_bench_is_a_clear_error(capsys):
    assert main(["bench", "no-such-bench"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'no-such-bench'" in err and "table" in err


def test_bench_table_prints_json_keys(capsys):
    assert main(["bench", "table", "--json", "--entries", "20000", "--batch", "4096",
                 "--batches", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(out)
    for key in ("lookup_fids_per_s_zipf", "lookup_fids_per_s_uniform",
                "dict_lookup_fids_per_s_zipf", "index_select_rows_per_s", "insert_fids_per_s",
                "update_rows_per_s", "bytes_per_entry", "threads"):
        assert result[key] > 0, key
    assert result["entries"] == 20000
