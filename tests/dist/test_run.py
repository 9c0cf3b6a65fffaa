"""``freshrec train --nproc N`` and ``torchrun -m freshrec train``: real ranks, real files."""

from __future__ import annotations

import json
from pathlib import Path

from freshrec.train.trainer import Trainer
from tests.dist.ranks import (
    assert_same_model,
    batches,
    checkpoint_state,
    config,
    train_cli,
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
