"""``freshrec registry ls|show|verify|repair|rollback|gc --dir DIR``: inspect and manage a
registry directory.

- ``ls``: one line per version (``*`` marks ``HEAD``) ending with its status: ``ok``,
  ``damaged: <why>`` or ``needs version N (damaged|missing)``. A quick check (manifests and
  file sizes); a version whose manifest is gone is listed from the files it left. ``--json``
  prints one JSON object per version instead.
- ``show [VERSION]``: the manifest of a version (default ``HEAD``) as JSON; ``--verify`` also
  checks every file's checksum.
- ``verify``: checks every file of every version, checksums included; prints the ``ls`` table
  and a summary. Exit status 1 when ``HEAD`` cannot be served (servers stay at the newest
  servable version), 0 when it can.
- ``repair --checkpoint PATH``: publishes a full snapshot of the trainer's checkpoint as a new
  version, so servers move past damaged versions at once.
- ``rollback VERSION``: publish a version whose state is ``VERSION``'s and move ``HEAD`` to it.
- ``gc --keep N``: keep the newest N full snapshots and the versions after the oldest kept one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from freshrec._cli.options import add_config_arguments, config
from freshrec.errors import InputError
from freshrec.sync import (
    PublisherConfig,
    Registry,
    RegistryHealth,
    VersionHealth,
    VersionKind,
    check_registry,
)

_REPAIR_HELP = (
    "publish a full snapshot of the trainer's checkpoint as a new version, so that servers "
    "stuck behind a damaged version (see verify) move to it at their next poll; refused when "
    "HEAD is servable (it would replace newer state) unless --force"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", required=True, help="the registry directory")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_, description=help_)

    ls = action("ls", "list versions with their status (a quick check: manifests and file "
                      "sizes; damaged versions are marked)")
    ls.add_argument("--json", action="store_true", help="one JSON object per version")
    show = action("show", "print a version's manifest")
    # dest must not be "version": the top-level parser's --version flag uses that name
    show.add_argument("target", metavar="VERSION", nargs="?", type=int,
                      help="version (default: HEAD)")
    show.add_argument("--verify", action="store_true", help="check every file's checksum")
    verify = action("verify", "check every file of every version (checksums included) and "
                              "print which versions are damaged and why; exit status 1 when "
                              "HEAD cannot be served")
    verify.add_argument("--json", action="store_true",
                        help="one JSON object: head, newest_servable, ok, versions")
    repair = action("repair", _REPAIR_HELP)
    repair.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="the trainer's --run-dir, its checkpoints/ directory, or one "
                             "checkpoint directory (holding state.json)")
    add_config_arguments(repair, [], config_help="the model's config document (default: the "
                                                 "one published with the registry; --set "
                                                 "changes either)")
    repair.add_argument("--force", action="store_true",
                        help="publish even when HEAD is servable")
    rb = action("rollback", "make VERSION's state the newest")
    rb.add_argument("target", metavar="VERSION", type=int)
    gc = action("gc", "remove old versions")
    gc.add_argument("--keep", type=int, default=3, help="full snapshots to keep (default 3)")


def _summary(h: VersionHealth) -> dict[str, Any]:
    """One version's ``ls`` fields; a version without a manifest has what its files show."""
    m = h.manifest
    if m is None:
        fields = {"base": None, "expired": None, "event_time": None, **h.salvaged}
    else:
        fields = {
            "kind": m.kind.value, "base": m.base, "rows": m.delta_rows,
            "expired": sum(int(d["expired"]) for d in m.deltas.values()), "dense": m.dense,
            "bytes": m.nbytes, "event_time": m.event_time, "created_unix_s": m.created_unix_s,
        }
    return {"version": h.version, **fields, "servable": h.servable, "status": h.status,
            "salvaged": m is None}


def _when(unix_s: float) -> str:
    return dt.datetime.fromtimestamp(unix_s, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _text(value: Any, salvaged: bool) -> str:
    return ("?" if salvaged else "-") if value is None else str(value)


def _table(health: RegistryHealth) -> None:
    print(f"{'':1} {'version':>8} {'kind':8} {'base':>6} {'rows':>10} {'expired':>8} "
          f"{'dense':5} {'bytes':>12} {'event_time':>11}  {'created (UTC)':19}  status")
    for h in health.versions:
        s = _summary(h)
        g = s["salvaged"]
        print(f"{'*' if h.version == health.head else ' ':1} {h.version:>8} {s['kind']:8} "
              f"{_text(s['base'], g):>6} {s['rows']:>10} {_text(s['expired'], g):>8} "
              f"{'yes' if s['dense'] else 'no':5} {s['bytes']:>12} "
              f"{_text(s['event_time'], g):>11}  {_when(s['created_unix_s'])}  {h.status}")


def _verdict(health: RegistryHealth, root: Path) -> str:
    if health.ok:
        return (f"HEAD {health.head} is servable; {len(health.versions)} versions checked"
                f"{' (with checksums)' if health.checksums else ''}")
    newest = health.newest_servable
    return (
        f"HEAD {health.head} cannot be served: newest servable version is "
        f"{'none' if newest is None else newest}; damaged: {health.damaged or 'none'}. "
        f"Servers stay at version {newest} until a full snapshot is published after the "
        f"damage: run `freshrec registry repair --dir {root} --checkpoint RUN_DIR` (the "
        f"trainer's --run-dir) or wait for the trainer's next full snapshot"
    )


def _ls(reg: Registry, as_json: bool) -> None:
    health = check_registry(reg, checksums=False)
    if as_json:
        for h in health.versions:
            print(json.dumps({**_summary(h), "head": h.version == health.head}, sort_keys=True))
        return
    if not health.versions:
        print(f"{reg.root}: empty registry")
        return
    _table(health)
    if not health.ok:
        print(_verdict(health, reg.root))


def _verify(reg: Registry, as_json: bool) -> int:
    health = check_registry(reg, checksums=True)
    if as_json:
        print(json.dumps({"head": health.head, "newest_servable": health.newest_servable,
                          "ok": health.ok, "damaged": health.damaged,
                          "versions": [_summary(h) for h in health.versions]}, sort_keys=True))
    elif not health.versions:
        print(f"{reg.root}: empty registry")
    else:
        _table(health)
        print(_verdict(health, reg.root))
    return 0 if health.ok else 1


def _repair(reg: Registry, args: argparse.Namespace) -> None:
    from freshrec.config import apply_overrides, config_from_dict
    from freshrec.sync import Publisher
    from freshrec.train.checkpoint import latest_checkpoint
    from freshrec.train.trainer import Trainer

    health = check_registry(reg, checksums=True)
    if health.head is not None and health.ok and not args.force:
        raise InputError(
            f"registry {reg.root}: HEAD {health.head} is servable, nothing to repair (a "
            f"snapshot of the checkpoint would replace newer state; --force publishes it anyway)"
        )
    if args.config is not None:
        cfg = config(args)
    else:
        raw = reg.published_meta("config")
        if raw is None:
            raise InputError(f"registry {reg.root}: no readable version carries the model "
                             f"config; pass --config")
        cfg = config_from_dict(apply_overrides(raw, args.overrides),
                               where=f"registry {reg.root} meta.config")
    path = Path(args.checkpoint)
    ckpt = latest_checkpoint(path / "checkpoints" if (path / "checkpoints").is_dir() else path)
    if ckpt is None:
        raise InputError(f"--checkpoint {args.checkpoint}: no checkpoint there (expected the "
                         f"trainer's --run-dir, its checkpoints/ directory, or one checkpoint "
                         f"directory holding state.json)")
    trainer = Trainer(cfg)
    trainer.resume(ckpt)
    meta = {"config": dict(cfg.raw), "repaired_from": str(ckpt), "step": trainer.step,
            "examples": trainer.examples, "offsets": trainer.resumed_state.get("offsets")}
    m = Publisher(reg, trainer.tables, trainer.model.state_dict,
                  PublisherConfig(auto_gc=False)).publish_full(meta=meta)
    print(f"published version {m.version}: a full snapshot of checkpoint {ckpt} (step "
          f"{trainer.step}); HEAD was {health.head}, newest servable "
          f"{health.newest_servable}. Servers load it at their next poll; a running trainer "
          f"publishes a full snapshot of its own state next.")


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
    elif args.action == "verify":
        return _verify(reg, args.json)
    elif args.action == "repair":
        _repair(reg, args)
    elif args.action == "rollback":
        m = reg.rollback(args.target)
        note = (f" (the state of version {m.base})" if m.kind is VersionKind.ROLLBACK
                else "")
        print(f"HEAD is version {m.version}{note}")
    else:
        removed = reg.gc(args.keep)
        print(f"removed {len(removed)} versions" + (f": {removed}" if removed else ""))
    return 0
