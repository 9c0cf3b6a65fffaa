"""``freshrec demo`` end to end: a short run of the whole loop on a tiny population."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from freshrec.stream.events import decode
from freshrec.stream.open import open_log
from freshrec.sync import Registry


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


UNTIL = 50


def test_demo_runs_the_loop_and_cleans_up(tmp_path):
    workdir = tmp_path / "demo"
    # stops on an event count (the loop closed), not a wall-clock time: --duration is only the
    # timeout, so the assertions below hold however fast the machine is
    cmd = [sys.executable, "-m", "freshrec.cli", "demo", "--until-examples", str(UNTIL),
           "--duration", "300", "--workdir", str(workdir), "--users", "200", "--items", "100", "--candidates", "10",
           "--window-s", "3", "--lateness-s", "1", "--no-live"]
    # the timeout only stops a hung run; nothing below depends on how long it took
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads((workdir / "metrics.json").read_text())
    s = out["summary"]
    assert out["until_examples_trained"] == UNTIL
    assert out["until_reached"] is True, s
    assert not out["interrupted"]

    # every child is gone: no process is left that was started for this work directory
    assert set(out["children"]) == {"serve", "join", "train"}
    assert _processes_mentioning(str(workdir)) == []
    for pid in out["children"].values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    # the server answered, and every answered request became an impression in the log
    assert s["requests"] > 0 and s["request_errors"] == 0
    assert s["latency_p50_ms"] > 0
    events = open_log(f"file:{workdir / 'logs' / 'events'}")
    impressions = [decode(r.value) for r in events.read(0, 0, 100_000)]
    clicks = [decode(r.value) for r in events.read(events.partitions - 1, 0, 100_000)]
    events.close()
    assert len(impressions) == s["requests"]
    assert all(e["type"] == "impression" and "model_version" in e for e in impressions)
    assert clicks and all(e["type"] == "action" for e in clicks)
    assert {c["request_id"] for c in clicks} <= {e["request_id"] for e in impressions}

    # the loop closed: clicks were joined to the server's impressions, examples were trained
    # and published, and the server followed the registry
    assert s["examples_joined"] > 0 and s["examples_trained"] >= UNTIL
    versions = Registry(workdir / "registry").versions()
    assert len(versions) > 1 and s["versions_published"] == len(versions)
    assert s["served_version"] is not None and s["served_version"] > 1
    assert math.isfinite(s["online_auc"]) and 0.0 <= s["online_auc"] <= 1.0
    assert (workdir / "proc" / "train.log").exists()
    if out["plot"] is not None:
        assert Path(out["plot"]).stat().st_size > 0
    assert "summary" in proc.stdout and str(workdir / "metrics.json") in proc.stdout
