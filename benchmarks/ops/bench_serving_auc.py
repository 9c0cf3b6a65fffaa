"""What measuring the serving AUC costs the running system (issue 18).

    freshrec bench serving_auc [--candidates 20 100] [--events 4000] [--rounds 7]

The server's impression events carry the scores it answered (``"scores": [...]``); the
joiner decodes every impression, and ``freshrec watch`` / ``freshrec dashboard`` read the
impressions and the joined examples again to join scores with labels
(:class:`~freshrec.ops.serving.ServedScores`). Measured, per candidate count, in one run:

* ``encode_us`` / ``encode_scores_us``: one impression record built as the server's writer
  thread builds it (:func:`~freshrec.serve.impressions.impression_record`, spliced from the
  predictor's pre-encoded candidate pieces), without and with the scores; ``bytes`` /
  ``bytes_scores`` its size;
* ``decode_us`` / ``decode_scores_us``: the joiner's decode of one impression
  (:func:`~freshrec.stream.events.decode_events` on batches of ``--events`` records), without
  and with the scores (the joiner's cost per impression);
* ``served_examples_per_s``: examples a :class:`ServedScores` joins per second (impressions
  and one Arrow record of joined examples in file logs, read and matched).

Each timing is the fastest of ``--rounds`` rounds (7), the variants interleaved within each
round: on a shared machine the fastest round is the one least disturbed by other work. One JSON object on
the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

import numpy as np
import orjson

from freshrec.benchinfo import machine_info
from freshrec.ops.serving import ServedScores
from freshrec.serve.impressions import impression_record
from freshrec.serve.request import ScoreRequest
from freshrec.stream.events import decode_events, encode_examples, examples_to_record_batch
from freshrec.stream.open import open_log


def _request(rng: np.random.Generator, k: int, n: int) -> ScoreRequest:
    cands = [{"item_id": int(rng.integers(0, 10**6)), "i_category": int(rng.integers(0, 50)),
              "i_brand": int(rng.integers(0, 500)), "i_price": round(float(rng.random()), 4)}
             for _ in range(n)]
    req = ScoreRequest(request_id=f"r{k}", user={"gender": 1, "age": 3, "region": 7,
                                                 "recent_clicks": [5, 9, 11]},
                       candidates=cands, user_id=int(rng.integers(0, 10**5)))
    # the pieces the predictor's feature index keeps (impression_record splices them)
    req.fragments = [(b'{"item_id":%d,"position":' % c["item_id"],
                      b',"features":' + orjson.dumps({x: v for x, v in c.items()
                                                       if x != "item_id"}) + b"}")
                     for c in cands]
    return req


def _us(fn: Any, count: int) -> float:
    """Microseconds per item of one call of ``fn`` over ``count`` items."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / count * 1e6


def _per_candidates(n: int, events: int, rounds: int) -> dict[str, Any]:
    rng = np.random.default_rng(n)
    reqs = [_request(rng, k, n) for k in range(events)]
    scores = [rng.random(n).astype(np.float32) for _ in range(events)]
    now = time.time()

    def enc(with_scores: bool) -> list[bytes]:
        return [impression_record(r, 7, now, s if with_scores else None)
                for r, s in zip(reqs, scores, strict=True)]

    plain, scored = enc(False), enc(True)
    out: dict[str, Any] = {"candidates": n,
                           "bytes": round(float(np.mean([len(x) for x in plain])), 1),
                           "bytes_scores": round(float(np.mean([len(x) for x in scored])), 1)}
    a, b, c, d = [], [], [], []
    for _ in range(rounds):  # interleaved rounds
        a.append(_us(lambda: enc(False), events))
        b.append(_us(lambda: enc(True), events))
        c.append(_us(lambda: decode_events(plain), events))
        d.append(_us(lambda: decode_events(scored), events))
    out.update(encode_us=round(min(a), 2), encode_scores_us=round(min(b), 2),
               decode_us=round(min(c), 2), decode_scores_us=round(min(d), 2))
    out["decode_scores_ratio"] = round(out["decode_scores_us"] / out["decode_us"], 3)
    # ServedScores over file logs: the impressions, then their examples (every candidate)
    with tempfile.TemporaryDirectory() as tmp:
        ev, ex = open_log(f"file:{tmp}/ev"), open_log(f"file:{tmp}/ex")
        ev.append(scored)
        rows = [{"request_id": r.request_id, "position": j, "event_time": int(now),
                 "click": float(rng.random() < 0.1)} for r in reqs for j in range(n)]
        for i in range(0, len(rows), 20_000):
            ex.append([encode_examples(examples_to_record_batch(rows[i:i + 20_000]))])
        ev.close()
        ex.close()
        t0 = time.perf_counter()
        got = ServedScores(f"file:{tmp}/ev", f"file:{tmp}/ex", "click").poll()
        dt = time.perf_counter() - t0
        assert len(got) == len(rows)
        out["served_examples_per_s"] = round(len(rows) / dt)
    return out


def main(argv: list[str] | None = None, *, verbose: bool = True) -> dict[str, Any]:
    """Run the measurements; ``verbose`` prints each candidate count's figures as they come."""
    p = argparse.ArgumentParser(prog="freshrec bench serving_auc")
    p.add_argument("--candidates", type=int, nargs="+", default=[20, 100])
    p.add_argument("--events", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args(argv)
    load = os.getloadavg()[0]
    runs = []
    for n in a.candidates:
        runs.append(_per_candidates(n, a.events, a.rounds))
        if verbose:
            print(json.dumps(runs[-1]))
    return {"bench": "serving_auc", "runs": runs, "loadavg_1m_start": load,
            "loadavg_1m_end": os.getloadavg()[0], **machine_info()}


if __name__ == "__main__":
    print(json.dumps(main()))
