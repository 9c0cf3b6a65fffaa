from __future__ import annotations

import dataclasses
import importlib
import io
import json
import typing
from pathlib import Path

import pytest

from freshrec._cli import bench, process
from freshrec._cli import serve as serve_cli
from freshrec._cli.options import DATA_SHORTHANDS, Shorthand, section
from freshrec.cli import COMMANDS, _parser, main
from freshrec.config import SECTIONS
from freshrec.serve import ServeConfig
from freshrec.stream.events import decode
from freshrec.stream.open import open_log


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("freshrec ")


def test_unknown_bench_is_a_clear_error(capsys):
    assert main(["bench", "no-such-bench"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'no-such-bench'" in err and "table" in err


def test_bench_runs_the_named_script_and_prints_its_result_last(tmp_path, monkeypatch, capsys):
    script = tmp_path / "bench_echo.py"
    script.write_text("def main(argv, verbose=True):\n"
                      "    if verbose:\n"
                      "        print('progress')\n"
                      "    return {'argv': argv, 'verbose': verbose}\n")
    monkeypatch.setattr(bench, "available", lambda: {"echo": script})
    assert main(["bench", "echo", "--json", "--size", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        json.dumps({"argv": ["--size", "3"], "verbose": False}, sort_keys=True)]
    assert main(["bench", "echo", "--size", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "progress"
    assert json.loads(lines[-1]) == {"argv": ["--size", "3"], "verbose": True}


@pytest.mark.slow
def test_bench_table_reports_its_keys_and_the_memory_the_table_docs_give(capsys):
    assert main(["bench", "table", "--json", "--entries", "20000", "--batch", "4096",
                 "--batches", "3"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"lookup_fids_per_s_zipf", "lookup_fids_per_s_uniform",
            "dict_lookup_fids_per_s_zipf", "index_select_rows_per_s", "insert_fids_per_s",
            "update_rows_per_s", "git_sha", "torch_version"} <= result.keys()
    assert (result["entries"], result["dim"], result["threads"]) == (20000, 16, 1)
    # dim 16, row-wise Adagrad: 84 bytes of row data per entry plus the index, 8 bytes a
    # slot at a load factor of 0.35-0.7 (docs/table.md), preallocated rows
    assert 0.35 <= result["load_factor"] <= 0.7
    assert result["bytes_per_entry"] == pytest.approx(84 + 8 / result["load_factor"])
    assert result["lookup_vs_dict_ratio"] == pytest.approx(
        result["lookup_fids_per_s_zipf"] / result["dict_lookup_fids_per_s_zipf"])


def test_serve_sets_the_process_settings_before_serving(tmp_path, monkeypatch):
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(process.torch, "set_num_threads", lambda n: calls.append(("threads", n)))
    monkeypatch.setattr(process.sys, "setswitchinterval", lambda s: calls.append(("switch", s)))
    monkeypatch.setattr(serve_cli, "run_server", lambda reg, **kw: calls.append(("serve", reg)))
    assert main(["serve", "--registry", str(tmp_path), "--threads", "3"]) == 0
    switch = ServeConfig().switch_interval_s
    assert calls == [("threads", 3), ("switch", switch), ("serve", str(tmp_path))]


def test_serve_refuses_a_registry_that_does_not_exist(tmp_path, monkeypatch, capsys):
    """An error naming the path, not a registry directory created on the spot."""
    monkeypatch.setattr(serve_cli, "run_server", lambda reg, **kw: pytest.fail("served"))
    assert main(["serve", "--registry", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert f"serve.registry: {tmp_path / 'nowhere'} is not a directory" in err
    assert not (tmp_path / "nowhere").exists()


def test_serve_prints_its_url_when_it_accepts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(serve_cli, "run_server",
                        lambda reg, on_started, **kw: on_started("http://127.0.0.1:8123", True))
    assert main(["serve", "--registry", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "freshrec serve: listening on http://127.0.0.1:8123 (ready)\n"


# ---------------------------------------------------------------- the config document
DEMO_YAML = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
#: command -> a section it reads, and what else it needs to get as far as reading it
DOCUMENT_COMMANDS = {"simulate": ("simulate", []), "join": ("join", []),
                     "serve": ("serve", []), "demo": ("demo", []),
                     "evaluate": ("data", ["--checkpoint", "nowhere"]), "train": ("train", [])}


def _shorthands(command: str) -> list[Shorthand]:
    module = importlib.import_module(COMMANDS[command][0])
    return [*getattr(module, "SHORTHANDS", []),
            *(DATA_SHORTHANDS if command in ("train", "evaluate") else [])]


@pytest.mark.parametrize("command", DOCUMENT_COMMANDS)
def test_every_flag_sets_a_key_of_the_document(command):
    parser = _parser(command)
    for s in _shorthands(command):
        name, *path = s.key.split(".")
        cls = SECTIONS[name]
        for part in path:  # every step of the key is a field of the section's dataclass
            assert part in {f.name for f in dataclasses.fields(cls)}, s.key
            hint = typing.get_type_hints(cls)[part]
            cls = next((t for t in typing.get_args(hint) or (hint,)
                        if dataclasses.is_dataclass(t)), None)
        argv = [command, s.flag] if s.is_switch else [command, s.flag, str(
            s.choices[0] if s.choices else "click" if s.flag == "--actions" else "7")]
        args = parser.parse_args(argv + DOCUMENT_COMMANDS[command][1])
        assert [k for k, _ in args.overrides] == [s.key], s.flag


#: ``freshrec train``'s run flags: flag, its argument, the key it sets and the value it sets
TRAIN_RUN_FLAGS = [("--run-dir", "somewhere", "train.run_dir", "somewhere"),
                   ("--source", "file:log", "online.source", "file:log"),
                   ("--partitions", "3", "online.partitions", 3),
                   ("--registry", "reg", "online.registry", "reg"),
                   ("--idle-timeout", "2.5", "online.idle_timeout_s", 2.5),
                   ("--nproc", "2", "dist.nproc", 2)]


def test_train_run_flags_are_shorthands_of_their_keys():
    from freshrec._cli.train import SHORTHANDS, run_dir_of

    assert {s.flag: s.key for s in SHORTHANDS} == {f: k for f, _, k, _ in TRAIN_RUN_FLAGS}
    parse = _parser("train").parse_args
    for flag, arg, key, value in TRAIN_RUN_FLAGS:
        args = parse(["train", flag, arg])
        assert args.overrides == [(key, value)], flag
        name, field = key.split(".")
        assert getattr(section(args, name), field) == value, flag
        # --set sets the same key, and the flag's default is the field's
        assert getattr(section(parse(["train", "--set", f"{key}={arg}"]), name), field) == value
        assert getattr(section(parse(["train"]), name), field) == \
            next(f.default for f in dataclasses.fields(SECTIONS[name]) if f.name == field)
    # the run directory: batch and online runs apart unless train.run_dir is set
    assert (run_dir_of(config_for([]), False), run_dir_of(config_for([]), True)) == \
        ("runs/train", "runs/online")
    assert run_dir_of(config_for(["--run-dir", "x"]), True) == "x"
    # the action flags stay plain
    args = parse(["train", "--online", "--resume"])
    assert (args.online, args.resume, args.overrides) == (True, True, [])


def config_for(argv: list[str]):
    from freshrec._cli.options import config

    return config(_parser("train").parse_args(["train", "--config", str(DEMO_YAML), *argv]))


@pytest.mark.parametrize("command", [*DOCUMENT_COMMANDS, "registry repair"])
def test_every_command_reads_the_document_and_names_an_unknown_key(command, tmp_path,
                                                                   capsys):
    doc = tmp_path / "doc.yaml"
    doc.write_text(DEMO_YAML.read_text())
    section, extra = DOCUMENT_COMMANDS.get(command, ("model", [
        "--dir", str(tmp_path / "registry"), "--checkpoint", "nowhere"]))
    assert main([*command.split(), "--config", str(doc), "--set", f"{section}.nope=1",
                 *extra]) == 2
    assert f"{doc}: {section}: unknown key 'nope'" in capsys.readouterr().err


def test_flags_and_set_apply_after_the_file_in_order(tmp_path):
    doc = tmp_path / "doc.yaml"
    doc.write_text("join:\n  window_s: 3\n  allowed_lateness_s: 4\n")
    parse = _parser("join").parse_args
    args = parse(["join", "--config", str(doc), "--window-s", "9", "--set", "join.window_s=11"])
    assert (section(args, "join").window_s, section(args, "join").allowed_lateness_s) == (11, 4)
    args = parse(["join", "--set", "join.window_s=11", "--window-s", "9", "--no-progress",
                  "--actions", "click,like", "--min-join-rate", "0.1"])
    job = section(args, "join")
    assert (job.window_s, job.progress, job.actions) == (9, False, ("click", "like"))
    assert job.validation is not None and job.validation.min_join_rate == 0.1
    # the parser's default list is not shared between parses
    assert parse(["join"]).overrides == []


def test_a_missing_location_names_its_flag_and_key(capsys):
    assert main(["join", "--output", "file:x", "--state", "s"]) == 2
    assert "freshrec join needs join.source: pass --source" in capsys.readouterr().err
    assert main(["simulate", "--requests", "1"]) == 2
    assert "pass --log or set simulate.log" in capsys.readouterr().err


@pytest.mark.parametrize("line", ['{"type":"action","event_id":"a"}', "", "\x00\x9f"])
def test_join_source_from_stdin_must_be_a_log_spec(line, capsys, monkeypatch, tmp_path):
    """``--source -`` reads the log's spec from stdin; an event (or garbage) there is an
    error saying so, not a file log named after it."""
    monkeypatch.setattr("sys.stdin", io.StringIO(line + "\n"))
    monkeypatch.chdir(tmp_path)
    assert main(["join", "--source", "-", "--output", "file:o", "--state", "s"]) == 2
    assert "--source -: the first line of stdin must name the input log" in (
        capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_help_shows_the_key_and_its_one_default(capsys):
    with pytest.raises(SystemExit):
        main(["join", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(join.window_s, default 600)" in text
    assert "(join.idle_timeout_s, default 2.0)" in text
    assert "(sets join.progress=false)" in text
    with pytest.raises(SystemExit):
        main(["demo", "--help"])  # the demo's defaults are configs/demo.yaml's
    assert "(simulate.n_users, demo.yaml: 2000)" in " ".join(capsys.readouterr().out.split())


def test_simulate_reads_its_section_from_the_document(tmp_path, capsys):
    doc = tmp_path / "doc.yaml"
    doc.write_text("simulate:\n  n_users: 30\n  n_items: 10\n  candidates: 3\n"
                   "  progress: false\n")
    log = f"file:{tmp_path / 'events'}"
    assert main(["simulate", "--config", str(doc), "--log", log, "--requests", "5"]) == 0
    events = open_log(log)
    imps = [e for e in (decode(r.value) for r in events.read(0, 0, 1000))
            if e.get("type") == "impression"]
    events.close()
    assert len(imps) == 5 and {len(e["candidates"]) for e in imps} == {3}


def test_batch_and_online_training_keep_apart_by_default(tmp_path, monkeypatch, capsys):
    # an online run that resumed the batch run's checkpoint refused it ("features or model
    # changed") when both defaulted to runs/train
    config = Path(__file__).resolve().parents[1] / "configs" / "simulator.yaml"
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--online", "--config", str(config), "--source",
                 f"file:{tmp_path / 'examples'}", "--idle-timeout", "0.01"]) == 0
    assert (tmp_path / "runs" / "online" / "checkpoints").is_dir()
    assert not (tmp_path / "runs" / "train").exists()
    assert main(["train", "--config", str(config)]) == 2
    assert "no data: pass --data and --format" in capsys.readouterr().err
