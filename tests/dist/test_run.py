"""``freshrec train --nproc N`` and ``torchrun -m freshrec train``: real ranks, real files;
``dist.slicing: files``: each rank reads its own files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from freshrec.config import config_from_dict
from freshrec.data.readers import open_reader
from freshrec.dist.run import rank_files
from freshrec.train.trainer import Trainer, rebatch
from tests.dist.ranks import (
    assert_same_model,
    batches,
    checkpoint_state,
    config,
    train_cli,
    train_in_step,
    write_inputs,
)


def test_nproc_then_resume_on_3_then_1_rank_equals_one_process(tmp_path: Path) -> None:
    """2 ranks train 4 steps, 3 ranks resume to step 8, torchrun with 1 rank finishes: the
    model equals one process's uninterrupted run (tables re-sharded 2 -> 3 -> 1 by hash)."""
    cfg = config("rowwise_adagrad", min_count=1, checkpoint_every_steps=2)
    doc, data = write_inputs(tmp_path, cfg, 600)
    run = tmp_path / "run"
    first = train_cli(doc, data, run, "--nproc", "2", "--set", "train.max_steps=4")
    assert first.returncode == 0, first.stderr[-3000:]
    assert checkpoint_state(run)[2] == 2
    second = train_cli(doc, data, run, "--nproc", "3", "--resume", "--set", "train.max_steps=8")
    assert second.returncode == 0, second.stderr[-3000:]
    assert checkpoint_state(run)[2] == 3
    third = train_cli(doc, data, run, "--resume", torchrun=1)
    assert third.returncode == 0, third.stderr[-3000:]
    summary = json.loads(third.stdout.splitlines()[-2])
    assert summary["ranks"] == 1 and summary["steps"] == 10 and summary["count"] == 600
    parts, dense, world = checkpoint_state(run)
    single = Trainer(cfg)
    single.fit(batches(600))
    assert world == 1
    assert_same_model(parts, dense, single)


def _files(root: Path, rows: tuple[int, ...]) -> Path:
    """A directory of Parquet files of ``rows`` rows each (file ``i``: ``batches(n, i)``)."""
    root.mkdir(parents=True)
    for i, n in enumerate(rows):
        pq.write_table(pa.Table.from_batches(batches(n, seed=i)), root / f"part-{i}.parquet")
    return root


def test_rank_files_are_every_file_once(tmp_path: Path) -> None:
    data = _files(tmp_path / "in", (10,) * 5)
    cfg = config_from_dict({**config("sgd").raw, "data": {"path": str(data),
                                                          "format": "parquet"}})
    for world in (1, 2, 3, 7):
        parts = [rank_files(cfg, r, world) for r in range(world)]
        assert sorted(f for p in parts for f in p) == sorted(data.iterdir())


def test_file_slicing_trains_every_row_once(tmp_path: Path) -> None:
    """2 ranks over 3 files (rank 0: files 0 and 2, rank 1: file 1, 6x fewer rows) train
    the model one process trains on the global batches they step through together."""
    sizes = (300, 120, 420)
    data = _files(tmp_path / "in", sizes)
    cfg = config("rowwise_adagrad")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(dict(cfg.raw), sort_keys=False))
    run = tmp_path / "run"
    done = train_cli(tmp_path / "cfg.yaml", data, run, "--nproc", "2",
                     "--set", "dist.slicing=files")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[-2])
    assert summary["count"] == sum(sizes)  # every row once, over both ranks
    assert summary["examples"] == sizes[0] + sizes[2]  # rank 0 read its two files only
    files = sorted(data.iterdir())
    single = Trainer(cfg)
    train_in_step(single, [
        list(rebatch([b for f in files[r::2] for b in open_reader("parquet", f)], 30))
        for r in range(2)])
    parts, dense, world = checkpoint_state(run)
    assert world == 2
    assert_same_model(parts, dense, single)
