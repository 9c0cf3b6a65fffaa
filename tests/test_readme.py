"""The README works as written: its Python runs, and its commands parse and come in an order
where each reads only what an earlier one wrote."""

from __future__ import annotations

import contextlib
import doctest
import io
import json
import re
import shlex
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from freshrec._cli.options import document
from freshrec._cli.train import RUN_DIRS
from freshrec.cli import COMMANDS, _parser
from freshrec.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
QUICK_START_URL = "http://localhost:8000"
#: Inputs no earlier command writes, on purpose: the data sets beside the checkout, and the
#: examples log the batch-model recipe leaves empty (the online trainer creates it and
#: publishes the batch checkpoint before any example arrives).
NOT_WRITTEN_BY_A_COMMAND = ("../shared/data/", "file:runs/ml-examples")


def _blocks(lang: str) -> list[str]:
    """The README's fenced code blocks in ``lang`` (also those indented in list items)."""
    found = re.findall(rf"^( *)```{lang}\n(.*?)^\1```$", README, flags=re.M | re.S)
    return [textwrap.dedent(body) for _, body in found]


def _commands(block: str) -> list[list[str]]:
    """The simple commands of a shell block, each as its words (comments dropped)."""
    lines, logical = [], ""
    for line in block.splitlines():
        logical = f"{logical}\n{line}" if logical else line
        try:
            shlex.split(logical, comments=True)
        except ValueError:  # a quote continues on the next line
            continue
        if not logical.endswith("\\"):
            lines.append(logical.replace("\\\n", " "))
            logical = ""
    out = []
    for line in lines:
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        cmd: list[str] = []
        for token in lex:
            if token in (";", "&", "&&", "|", "||"):
                out.append(cmd)
                cmd = []
            else:
                cmd.append(token)
        out.append(cmd)
    return [c for c in out if c]


def _freshrec_commands() -> list[tuple[str, Any]]:
    """Every ``freshrec`` command of the README in order, parsed by the CLI's parser."""
    parsed = []
    for block in _blocks("bash"):
        for words in _commands(block):
            if Path(words[0]).name != "freshrec":
                continue
            command = words[1]
            assert command in COMMANDS, f"README: unknown command in {shlex.join(words)}"
            try:
                args = _parser(command).parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"README: {shlex.join(words)} does not parse")
            parsed.append((command, args))
    return parsed


def test_the_readme_starts_with_make_demo_and_make_test():
    first = README.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [c[:2] for c in _commands(first)] == [["make", "demo"], ["make", "test"]]


def test_the_python_api_example_runs():
    (example,) = [b for b in _blocks("python") if ">>>" in b]
    test = doctest.DocTestParser().get_doctest(example, {}, "README", "README.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    out = io.StringIO()
    runner.run(test, out=out.write)
    assert runner.failures == 0, out.getvalue()
    assert runner.tries >= 10


def test_every_command_parses_and_reads_only_what_an_earlier_one_wrote():
    written: list[str] = ["runs/demo-"]  # make demo, which comes first
    run_dirs: dict[bool, set[str]] = {False: set(), True: set()}  # batch, online

    def check(what: str, path: str | None) -> None:
        if path is None or "$" in path or path.startswith(NOT_WRITTEN_BY_A_COMMAND):
            return
        assert any(path == w or path.startswith(w) for w in written), \
            f"README: {what} {path!r} is read before any command writes it ({written})"

    commands = _freshrec_commands()
    assert {c for c, _ in commands} >= {"simulate", "join", "train", "evaluate", "serve"}
    for command, args in commands:
        doc = document(args) if hasattr(args, "overrides") else {}
        section = doc.get(command) or {}
        if command == "simulate":
            written.append(section["log"])
        elif command == "join":
            check("join --source", section["source"])
            written.append(section["output"])
        elif command == "train":
            online = doc.get("online") or {}
            check("online.init_from", online.get("init_from"))
            run_dir = (doc.get("train") or {}).get("run_dir") or RUN_DIRS[args.online]
            if args.online:
                check("train --online --source", online.get("source"))
                written.append(online.get("registry"))
            # an online run that resumed a batch run's checkpoint would refuse it
            assert run_dir not in run_dirs[not args.online], \
                f"README: batch and online training share the run directory {run_dir}"
            run_dirs[args.online].add(run_dir)
            written.append(run_dir)
        elif command == "evaluate":
            check("evaluate --checkpoint", args.checkpoint)
        elif command == "serve":
            check("serve --registry", section["registry"])
        elif command == "registry":
            check("registry --dir", args.dir)


def test_the_quick_start_scores_against_a_real_server(tmp_path):
    from freshrec.serve import ServeConfig, Server
    from freshrec.sync import Publisher, Registry
    from freshrec.train.trainer import Trainer

    # what make demo leaves behind: the demo's model published to a registry
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    trainer = Trainer(cfg)
    reg = Registry(tmp_path / "registry")
    Publisher(reg, trainer.tables, trainer.model.state_dict).publish_full(
        meta={"config": dict(cfg.raw)})
    (curl,) = [c for b in _blocks("bash") for c in _commands(b)
               if c[0] == "curl" and "-d" in c]
    body = json.loads(curl[curl.index("-d") + 1])
    (shown,) = [json.loads(b) for b in _blocks("json")]
    (client,) = [b for b in _blocks("python") if QUICK_START_URL in b]
    with Server(reg, ServeConfig(port=0), log=False).start() as server:
        request = urllib.request.Request(f"{server.url}/score", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as response:
            reply = json.load(response)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(client.replace(QUICK_START_URL, server.url), {})
    assert set(reply) == set(shown) and reply["request_id"] == shown["request_id"]
    assert len(reply["scores"]) == len(shown["scores"]) == len(body["candidates"])
    assert all(0.0 < s < 1.0 for s in reply["scores"])
    version, scores = printed.getvalue().split(" ", 1)
    assert int(version) == reply["model_version"] == 1
    assert len(json.loads(scores)) == len(body["candidates"])
