"""Which engine runs the served model's dense part fastest: torch eager, torch.compile
(Inductor, C++ codegen) or ONNX Runtime.

``python benchmarks/serve/bench_engines.py [--candidates 100] [--iters 4000] [--threads 1]``

The dense part of the Meituan write-up's Wide & Deep as the predictor runs it (see
:mod:`freshrec.serve.engine`): the model's serving split, a first layer split into a user
block (264 inputs) and a candidate block (328 inputs) over 257 outputs (256 hidden + the wide
unit), then 256-256-1 with ReLU; 100 candidates. The engines take turns in rounds of 200 calls on the same inputs
(same machine conditions); percentiles of each call's wall time; outputs are checked equal.
Prints one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from freshrec.benchinfo import machine_info, percentiles_ms
from freshrec.models import ModelConfig, build_model
from freshrec.serve.engine import OnnxDense, TorchDense


class _Shape:
    """Stands in for an embedder: 18 slots of dim 32 (the dense part never embeds)."""

    slot_names = [f"s{i}" for i in range(18)]
    dim = 32


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="bench_engines")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--iters", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    n_u, n_c = 264, 328
    model = build_model(ModelConfig(kind="wide_deep", mlp=[256, 256, 256]), _Shape(), 16)
    split = model.eval().serving_split(range(n_u), range(n_u, n_u + n_c))
    rng = np.random.default_rng(0)
    xu = rng.normal(size=(1, n_u)).astype(np.float32)
    xc = rng.normal(size=(a.candidates, n_c)).astype(np.float32)
    eager = TorchDense(split)
    t0 = time.perf_counter()
    compiled_fn = torch.compile(eager.__call__, dynamic=False)
    compiled_fn(xu, xc)
    compile_s = time.perf_counter() - t0
    engines = {"torch_eager": eager, "torch_compile": compiled_fn,
               "onnxruntime": OnnxDense(split, a.threads)}
    ref = eager(xu, xc)
    for name, fn in engines.items():
        np.testing.assert_allclose(fn(xu, xc), ref, rtol=1e-4, atol=1e-4, err_msg=name)
        for _ in range(50):
            fn(xu, xc)
    lat: dict[str, list[float]] = {k: [] for k in engines}
    for start in range(0, a.iters, 200):
        for name, fn in engines.items():
            for _ in range(min(200, a.iters - start)):
                t = time.perf_counter()
                fn(xu, xc)
                lat[name].append(time.perf_counter() - t)
    res: dict = {"candidates": a.candidates, "threads": a.threads, "iters": a.iters,
                 "torch_compile_s": compile_s, "loadavg": os.getloadavg()[0]}
    for name, v in lat.items():
        p = percentiles_ms(v)
        res.update({f"{name}_p50_ms": p["p50"], f"{name}_p99_ms": p["p99"],
                    f"{name}_p99_9_ms": p["p99_9"]})
    res["onnxruntime_vs_eager_p50_ratio"] = res["torch_eager_p50_ms"] / res["onnxruntime_p50_ms"]
    res["machine"] = machine_info()
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
