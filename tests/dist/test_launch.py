"""A rank with bad input fails the job with a message naming the rank and the file; a rank
that stops answering fails the others' collectives after dist.timeout_s, not a hang."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.dist.ranks import config, run_ranks, train_cli, write_inputs


def test_malformed_rows_of_one_rank_fail_the_job_naming_rank_and_file(tmp_path: Path) -> None:
    doc, data = write_inputs(tmp_path, config("sgd"), 600)
    table = pq.read_table(data)
    hist = table.column("hist").to_pylist()
    hist[45] = [1, None]  # row 45 of the first global batch of 60: rank 1's slice (30..59)
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("hist"), "hist",
                                    pa.array(hist, pa.list_(pa.int64()))), bad)
    start = time.monotonic()
    done = train_cli(doc, bad, tmp_path / "run", "--nproc", "2", "--set", "dist.timeout_s=60")
    assert done.returncode != 0
    assert f"rank 1: input '{bad}'" in done.stderr
    assert "list values contain nulls" in done.stderr
    assert f"rank 0: input '{bad}'" not in done.stderr
    assert time.monotonic() - start < 240


def test_collective_times_out_when_a_rank_stops_answering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIST_TIMEOUT_S", "3")
    run_ranks(2, "stall", tmp_path)
    stalled = json.loads((tmp_path / "stall.json").read_text())
    assert 2.5 < stalled["waited_s"] < 10
    assert "timed out" in stalled["error"].lower() or "timeout" in stalled["error"].lower()
