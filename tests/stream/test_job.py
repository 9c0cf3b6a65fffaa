"""The joiner process of a join job: the worker entry imports no torch, runs a join like a
joiner over its partitions, and refuses a bad document with the usage exit code."""

from __future__ import annotations

import json
import subprocess
import sys

from freshrec.stream import FileLog, FileLogConfig, Joiner
from freshrec.stream.job import worker_command
from tests.stream.test_workers import CFG, _log, _per_partition


def test_the_worker_entry_imports_no_torch():
    """A worker of ``freshrec join --workers`` starts without torch or the model packages
    (under load, importing them took a restarted worker about a minute)."""
    code = ("import sys, freshrec.stream.job as job; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')"
            " or m.startswith(('freshrec.models', 'freshrec.train', 'freshrec.sync')))); "
            "print(callable(job.main))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[:2] == ["[]", "True"]


def test_freshrec_join_runs_without_torch(tmp_path):
    """``freshrec join`` itself (the command, its config document and the joiner) never
    imports torch: the document's other sections are read through their packages' configs
    alone (the packages import their torch modules on first use)."""
    _log(tmp_path / "in", 2, 50).close()
    doc = tmp_path / "join.yaml"
    doc.write_text(json.dumps({"join": {
        "source": f"file:{tmp_path / 'in'}", "output": f"file:{tmp_path / 'out'}",
        "state": str(tmp_path / "state"), "window_s": CFG.window_s,
        "allowed_lateness_s": CFG.allowed_lateness_s, "idle_timeout_s": 0.2, "flush": True}}))
    code = ("import runpy, sys\n"
            f"sys.argv = ['freshrec', 'join', '--config', {str(doc)!r}]\n"
            "try:\n    runpy.run_module('freshrec', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('torch loaded:', 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "torch loaded: False"
    assert _per_partition(FileLog(tmp_path / "out", FileLogConfig(fsync="never")))


def test_the_worker_entry_runs_a_join_and_refuses_a_bad_document(tmp_path):
    """``python -m freshrec.stream.job CONFIG PARTITIONS STATE`` writes what a joiner over
    those partitions writes; a bad document is a usage error (exit 2, not restarted)."""
    src = _log(tmp_path / "in", 2, 300)
    expected = FileLog(tmp_path / "ref", FileLogConfig(partitions=2, fsync="never"))
    j = Joiner(src, expected, tmp_path / "s-ref", CFG, partitions=[1])
    j.run(idle_timeout_s=0.0, flush_at_end=True)
    j.close()
    FileLog(tmp_path / "out", FileLogConfig(partitions=2, fsync="never")).close()
    doc = tmp_path / "join.yaml"
    doc.write_text(json.dumps({"join": {
        "source": f"file:{tmp_path / 'in'}", "output": f"file:{tmp_path / 'out'}",
        "window_s": CFG.window_s, "allowed_lateness_s": CFG.allowed_lateness_s,
        "checkpoint_every_s": 0.0, "idle_timeout_s": 0.2, "flush": True}}))
    done = subprocess.run(worker_command(doc, (1,), tmp_path / "s1"), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    m = json.loads(done.stdout.strip().splitlines()[-1])
    ref = _per_partition(expected)[1]
    assert m["examples_out"] == len(ref) > 100
    assert _per_partition(FileLog(tmp_path / "out"))[1] == ref
    doc.write_text(json.dumps({"join": {"wndow_s": 3}}))
    bad = subprocess.run(worker_command(doc, (1,), tmp_path / "s2"), capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "unknown key 'wndow_s'" in bad.stderr
