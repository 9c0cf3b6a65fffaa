"""Tests of freshrec init's starter config, end to end: a CSV file trains with no code."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from freshrec.cli import main
from freshrec.config import load_config
from freshrec.data.template import starter_config
from freshrec.errors import ConfigError, InputError


def _ratings_csv(path, n: int = 6000, seed: int = 0) -> None:
    """Ratings whose level is set by the user and the movie; rows not in time order."""
    rng = np.random.default_rng(seed)
    user_bias, movie_bias = rng.normal(0, 1, 200), rng.normal(0, 1, 150)
    u, m = rng.integers(0, 200, n), rng.integers(0, 150, n)
    rating = np.clip(np.round(3 + user_bias[u] + movie_bias[m] + rng.normal(0, 0.5, n)), 1, 5)
    ts = rng.permutation(1_600_000_000 + np.arange(n) * 60)
    with open(path, "w") as fh:
        fh.write("userId,movieId,rating,timestamp,genres,price\n")
        for k in range(n):
            genres = "|".join(f"g{(m[k] + j) % 9}" for j in range(1 + m[k] % 3))
            fh.write(f"{u[k]},{m[k]},{rating[k]:.1f},{ts[k]},{genres},{m[k] % 17 * 1.5}\n")


def test_init_writes_a_config_that_trains_a_csv_with_a_rating(tmp_path, capsys):
    data = tmp_path / "ratings.csv"
    _ratings_csv(data)
    cfg_path = tmp_path / "ratings.yaml"
    assert main(["init", "--data", str(data), "--out", str(cfg_path)]) == 0
    text = cfg_path.read_text()
    assert 'label_column: "rating >= 4"  # guess' in text
    assert 'time_column: "timestamp"  # guess' in text
    assert "genres: {list: \"|\"}  # guess" in text
    doc = yaml.safe_load(text)
    assert doc["data"]["options"]["history"]["item"] == "movieId"
    assert "rating" not in doc["features"]["slots"] and "rating" not in doc["features"]["dense"]
    slots = doc["features"]["slots"]  # string values: BYTES in the serving metadata
    assert slots["genres"]["dtype"] == "string" and "dtype" not in slots["movieId"]
    load_config(cfg_path)  # a valid document
    capsys.readouterr()
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg_path), "--run-dir", str(run),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.splitlines()[0])
    assert summary["examples"] == 6000
    assert summary["auc"] > 0.75, summary  # the rating is learnable from user and movie
    assert summary["user_entries"] == 200 and summary["item_entries"] == 150
    assert (run / "checkpoints").is_dir()
    # a second run does not overwrite it without --force
    assert main(["init", "--data", str(data), "--out", str(cfg_path)]) == 2
    assert "pass --force" in capsys.readouterr().err


def test_init_takes_the_label_and_time_given(tmp_path, capsys):
    path = tmp_path / "clicks.parquet"
    pq.write_table(pa.table({"uid": ["a", "b"], "ad": [1, 2], "clicked": [0, 1],
                             "seen": [3.5, 4.25], "country": ["fr", "de"]}), path)
    assert main(["init", "--data", str(path), "--label", "clicked", "--time", "row_order"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    opts = doc["data"]["options"]
    assert doc["data"]["format"] == "parquet" and opts["label_column"] == "clicked"
    assert opts["time_column"] == "row_order"
    assert opts["columns"] == {"uid": "id", "ad": "id", "seen": "dense",
                               "country": "categorical"}
    slots = doc["features"]["slots"]
    assert slots["uid"]["dtype"] == slots["country"]["dtype"] == "string"
    assert "dtype" not in slots["ad"]
    # a 0/1 column named like a click is the label; a time is found by name
    text = starter_config(path, time="seen")
    assert 'label_column: "clicked"  # guess: a 0/1 column' in text
    assert 'time_column: "seen"' in text


def test_init_errors_name_what_to_pass(tmp_path, capsys):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,x\n")
    with pytest.raises(ConfigError, match="cannot guess the label column: pass --label"):
        starter_config(path)
    with pytest.raises(InputError, match="--label 'c >= 1': no column 'c'"):
        starter_config(path, label="c >= 1")
    assert main(["init", "--data", str(tmp_path / "none.csv")]) == 2
    assert "freshrec init: error:" in capsys.readouterr().err


def test_train_errors_are_one_line(tmp_path, capsys):
    # another MovieLens layout, a rating as the label, a reader option of another format
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,5,10\n")
    doc = {"features": {"tables": {"item": {"dim": 4}}, "slots": {"movieId": {"table": "item"}}},
           "model": {"kind": "deepfm", "mlp": [4]}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    base = ["train", "--config", str(cfg), "--no-progress", "--run-dir", str(tmp_path / "r")]
    assert main([*base, "--data", str(tmp_path), "--format", "movielens"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("freshrec train: error: MovieLensReader:") and "use format csv" in err
    assert len(err.splitlines()) == 1
    assert main([*base, "--data", str(tmp_path / "ratings.csv"), "--format", "csv",
                 "--set", "data.options.time_column=timestamp",
                 "--set", "data.options.label_column=rating"]) == 2
    err = capsys.readouterr().err
    assert "label column 'rating' holds 5" in err and "data.options.label_column" in err
    assert main([*base, "--data", str(tmp_path / "ratings.csv"), "--format", "movielens",
                 "--set", "data.options.label_column=rating"]) == 2
    assert "format 'movielens' has no option 'label_column'" in capsys.readouterr().err
