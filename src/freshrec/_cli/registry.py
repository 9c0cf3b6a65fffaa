"""``freshrec registry ls|show|rollback|gc --dir DIR``: inspect and manage a registry directory.

- ``ls``: one line per version (``*`` marks ``HEAD``); ``--json`` prints one JSON object per
  version instead.
- ``show [VERSION]``: the manifest of a version (default ``HEAD``) as JSON; ``--verify`` also
  checks every file's checksum.
- ``rollback VERSION``: publish a version whose state is ``VERSION``'s and move ``HEAD`` to it.
- ``gc --keep N``: keep the newest N full snapshots and the versions after the oldest kept one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from freshrec.sync import Registry, VersionKind, VersionManifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", required=True, help="the registry directory")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("ls", parents=[common], help="list versions")
    ls.add_argument("--json", action="store_true", help="one JSON object per version")
    show = sub.add_parser("show", parents=[common], help="print a version's manifest")
    # dest must not be "version": the top-level parser's --version flag uses that name
    show.add_argument("target", metavar="VERSION", nargs="?", type=int,
                      help="version (default: HEAD)")
    show.add_argument("--verify", action="store_true", help="check every file's checksum")
    rb = sub.add_parser("rollback", parents=[common], help="make VERSION's state the newest")
    rb.add_argument("target", metavar="VERSION", type=int)
    gc = sub.add_parser("gc", parents=[common], help="remove old versions")
    gc.add_argument("--keep", type=int, default=3, help="full snapshots to keep (default 3)")


def _summary(m: VersionManifest) -> dict[str, Any]:
    return {
        "version": m.version, "kind": m.kind.value, "base": m.base, "rows": m.delta_rows,
        "expired": sum(int(d["expired"]) for d in m.deltas.values()), "dense": m.dense,
        "bytes": m.nbytes, "event_time": m.event_time, "created_unix_s": m.created_unix_s,
    }


def _when(unix_s: float) -> str:
    return dt.datetime.fromtimestamp(unix_s, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ls(reg: Registry, as_json: bool) -> None:
    head = reg.head()
    manifests = reg.manifests()
    if as_json:
        for m in manifests:
            print(json.dumps({**_summary(m), "head": m.version == head}, sort_keys=True))
        return
    if not manifests:
        print(f"{reg.root}: empty registry")
        return
    print(f"{'':1} {'version':>8} {'kind':8} {'base':>6} {'rows':>10} {'expired':>8} "
          f"{'dense':5} {'bytes':>12} {'event_time':>11}  created (UTC)")
    for m in manifests:
        s = _summary(m)
        print(f"{'*' if m.version == head else ' ':1} {m.version:>8} {s['kind']:8} "
              f"{'-' if m.base is None else m.base:>6} {s['rows']:>10} {s['expired']:>8} "
              f"{'yes' if m.dense else 'no':5} {s['bytes']:>12} "
              f"{'-' if m.event_time is None else m.event_time:>11}  "
              f"{_when(m.created_unix_s)}")


def run(args: argparse.Namespace) -> int:
    reg = Registry(args.dir)
    if args.action == "ls":
        _ls(reg, args.json)
    elif args.action == "show":
        m = reg.verify(args.target) if args.verify else reg.manifest(args.target)
        out = {**m.to_dict(), "head": m.version == reg.head()}
        if args.verify:
            out["verified"] = True
        print(json.dumps(out, indent=1, sort_keys=True))
    elif args.action == "rollback":
        m = reg.rollback(args.target)
        note = (f" (the state of version {m.base})" if m.kind is VersionKind.ROLLBACK
                else "")
        print(f"HEAD is version {m.version}{note}")
    else:
        removed = reg.gc(args.keep)
        print(f"removed {len(removed)} versions" + (f": {removed}" if removed else ""))
    return 0
