"""``freshrec serve --registry DIR [--host H] [--port P] [--log SPEC] [--config YAML]``.

Serves the registry's newest model over HTTP (see :mod:`freshrec.serve`), following new
versions as they are published, and writes an impression event per request to the log.
"""

from __future__ import annotations

import argparse

from freshrec.config import load_config
from freshrec.serve import ServeConfig, run_server


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", required=True, help="registry directory to serve from")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    p.add_argument("--log", default=None,
                   help="impression log: a directory (file log), file:DIR or redis://...; "
                        "default: log/ beside the registry; 'none' writes no impressions")
    p.add_argument("--config", default=None,
                   help="model config YAML (default: the one published with the registry)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config value (with --config)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads of torch and ONNX Runtime")
    p.add_argument("--items", default=None, metavar="JSONL",
                   help="item catalogue (one candidate object per line) loaded into the "
                        "feature index: requests may then send candidate_ids")
    p.add_argument("--engine", choices=["auto", "torch", "onnxruntime"], default="auto",
                   help="what runs the dense part (auto: ONNX Runtime when installed)")
    p.add_argument("--max-in-flight", type=int, default=64, help="requests admitted at once")
    p.add_argument("--poll-interval", type=float, default=1.0,
                   help="seconds between looks at the registry")
    p.add_argument("--update-mode", choices=["background", "naive"], default="background",
                   help="naive: reload on the request path (a benchmark baseline only)")


def run(args: argparse.Namespace) -> int:
    model_config = load_config(args.config, args.set) if args.config else None
    config = ServeConfig(host=args.host, port=args.port, threads=args.threads, engine=args.engine,
                         items_path=args.items,
                         max_in_flight=args.max_in_flight, poll_interval_s=args.poll_interval,
                         update_mode=args.update_mode)
    log = False if args.log == "none" else args.log
    run_server(args.registry, config=config, model_config=model_config, log=log)
    return 0
