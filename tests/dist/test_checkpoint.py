"""Distributed checkpoints: a rank killed with SIGKILL under torchrun's restarts resumes
every rank exactly; SIGTERM or SIGINT stops every rank at the same step with one checkpoint,
and ``--resume`` continues exactly (re-sharding across world sizes is in test_run.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from freshrec.dist.checkpoint import latest_manifest
from freshrec.train.trainer import Trainer
from tests.dist.ranks import (
    ROOT,
    assert_same_model,
    batches,
    checkpoint_state,
    config,
    write_inputs,
)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _rank_process(launcher: int, rank: int) -> int | None:
    for pid in _descendants(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


def run_signalled(args: list[str], run: Path, sig: signal.Signals, *, rank: int | None,
                  torchrun: bool = False) -> subprocess.CompletedProcess[str]:
    """``freshrec ARGS`` on 2 ranks (``--nproc 2``, or under ``torchrun``), sent ``sig``
    once the run's first checkpoint manifest exists: to rank ``rank``, or with None to the
    process started (the launcher). Returns it, finished."""
    from tests.conftest import free_ports

    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "OMP_NUM_THREADS": "1"}
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_ports(1)[0]}",
            "-m", "freshrec", *args] if torchrun else
           [sys.executable, "-m", "freshrec", *args, "--nproc", "2"])
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    sent = False
    deadline = time.monotonic() + 240
    while not sent and time.monotonic() < deadline and launcher.poll() is None:
        if (run / "checkpoints" / "LATEST").is_file():
            target = launcher.pid if rank is None else _rank_process(launcher.pid, rank)
            if target is not None:
                os.kill(target, sig)
                sent = True
        time.sleep(0.01)
    out, err = launcher.communicate(timeout=300)
    assert sent, f"the run ended before the signal: {err[-2000:]}"
    return subprocess.CompletedProcess(cmd, launcher.returncode, out, err)


def test_ctrl_c_stops_every_rank_at_one_checkpoint_and_resume_is_exact(
        tmp_path: Path) -> None:
    sig = signal.SIGINT  # SIGTERM to one rank: test_online.py
    cfg = config("rowwise_adagrad", checkpoint_every_steps=5)
    doc, data = write_inputs(tmp_path, cfg, 3000)
    run = tmp_path / "run"
    args = ["train", "--config", str(doc), "--data", str(data), "--format", "parquet",
            "--run-dir", str(run), "--no-progress"]
    # freshrec train --nproc 2 gets the signal (Ctrl-C or a service manager's stop)
    stopped = run_signalled(args, run, sig, rank=None)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    summary = json.loads(stopped.stdout.splitlines()[-2])
    assert summary["interrupted"] is True and 5 <= summary["steps"] < 50
    manifest = latest_manifest(run / "checkpoints")
    assert manifest is not None and manifest.step == summary["steps"]  # one, at the stop
    assert f"{sig.name}: the ranks stop" in stopped.stderr
    # restarted, it ends where an uninterrupted run ends, every example once
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "freshrec", *args, "--nproc", "2",
                           "--resume"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads(done.stdout.splitlines()[-2])
    assert final["steps"] == 50 and final["count"] == 3000 and "interrupted" not in final
    parts, dense, world = checkpoint_state(run)
    single = Trainer(cfg)
    single.fit(batches(3000))
    assert world == 2
    assert_same_model(parts, dense, single)


def train_killing_rank_1(run: Path, *args: str) -> dict[str, Any]:
    """``freshrec train ARGS --run-dir RUN --nproc 2 --set dist.max_restarts=1``, rank 1
    SIGKILLed as soon as the first manifest exists; the job must finish (torchrun restarts
    both ranks). Returns rank 0's summary."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "freshrec", "train", *args, "--run-dir", str(run),
         "--no-progress", "--nproc", "2", "--set", "dist.max_restarts=1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and launcher.poll() is None:
        if (run / "checkpoints" / "LATEST").is_file():
            killed = _rank_process(launcher.pid, 1)
            if killed is not None:
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    out, err = launcher.communicate(timeout=300)
    assert killed is not None, f"no rank 1 to kill mid-run: {err[-2000:]}"
    assert launcher.returncode == 0, err[-3000:]
    return dict(json.loads(out.splitlines()[-2]))


def test_sigkill_of_a_rank_resumes_exactly_under_torchrun(tmp_path: Path) -> None:
    cfg = config("rowwise_adagrad", checkpoint_every_steps=5)
    doc, data = write_inputs(tmp_path, cfg, 3000)
    run = tmp_path / "run"
    summary = train_killing_rank_1(run, "--config", str(doc), "--data", str(data),
                                   "--format", "parquet")
    assert summary["steps"] == 50 and summary["count"] == 3000  # every example once
    parts, dense, world = checkpoint_state(run)
    single = Trainer(cfg)
    single.fit(batches(3000))
    assert world == 2
    assert_same_model(parts, dense, single)
