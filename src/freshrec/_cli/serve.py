"""``freshrec serve``: serve the newest registry model over HTTP.

Settings are the ``serve`` section of the config document
(:class:`~freshrec.serve.config.ServeJobConfig`); every flag is a shorthand for one of its
keys. The model is the registry's (the config published with it), or the document's
``features`` and ``model`` sections when it has them. Serves the registry's newest model (see
:mod:`freshrec.serve`), follows new versions as they are published, and writes an impression
event per request to the log.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from freshrec._cli.options import Shorthand, add_config_arguments, document, where
from freshrec._cli.process import configure_serving
from freshrec.config import config_from_dict, section_from_dict
from freshrec.errors import ConfigError
from freshrec.serve import ServeJobConfig, run_server
from freshrec.serve.engine import ENGINES

SHORTHANDS = [
    Shorthand("--registry", "serve.registry", "registry directory to serve from"),
    Shorthand("--host", "serve.host", "address to listen on"),
    Shorthand("--port", "serve.port", "port (0: any free port)", int),
    Shorthand("--log", "serve.log", "impression log: a directory (file log), file:DIR or "
              "redis://...; null: log/ beside the registry; 'none' writes no impressions"),
    Shorthand("--threads", "serve.threads", "intra-op threads of torch and ONNX Runtime", int),
    Shorthand("--items", "serve.items_path", "item catalogue (one candidate object per line) "
              "loaded into the feature index: requests may then send candidate_ids"),
    Shorthand("--engine", "serve.engine", "what runs the dense part (auto: ONNX Runtime when "
              "installed)", choices=ENGINES),
    Shorthand("--max-in-flight", "serve.max_in_flight", "requests admitted at once", int),
    Shorthand("--workers", "serve.workers", "worker processes on the one port, over embedding "
              "tables in shared memory", int),
    Shorthand("--queue-budget", "serve.queue_budget_s", "seconds a request may wait to be "
              "scored before it is shed with 503", float),
    Shorthand("--drain", "serve.drain_s", "seconds to keep serving with /readyz 503 after "
              "SIGTERM", float),
    Shorthand("--poll-interval", "serve.poll_interval_s",
              "seconds between looks at the registry", float),
    Shorthand("--update-mode", "serve.update_mode", "naive: reload on the request path (a "
              "benchmark baseline only)", choices=("background", "naive")),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, SHORTHANDS, config_help=(
        "the config document: its serve section, and the model to serve when it has "
        "features (default: the config published with the registry)"))


def run(args: argparse.Namespace) -> int:
    doc = document(args)
    if "features" in doc:
        model_config = config_from_dict(doc, where=where(args))
        job: ServeJobConfig = model_config.serve
    else:
        model_config, job = None, section_from_dict("serve", doc, where=where(args))
    if not job.registry:
        raise ConfigError("freshrec serve needs serve.registry: pass --registry or set it in "
                          "the config document")
    if not Path(job.registry).is_dir():
        raise ConfigError(f"serve.registry: {job.registry} is not a directory (no registry "
                          f"there; freshrec train publishes one, e.g. runs/train/registry)")
    log = False if job.log == "none" else job.log
    configure_serving(job)
    if job.workers > 1:
        from freshrec.serve.workers import run_workers

        run_workers(job.registry, config=job, model_config=model_config, log=log,
                    on_started=announce)
    else:
        run_server(job.registry, config=job, model_config=model_config, log=log,
                   on_started=announce)
    return 0


def announce(url: str, ready: bool) -> None:
    """Print where the server listens, once it accepts connections.

    >>> announce("http://127.0.0.1:8000", False)
    freshrec serve: listening on http://127.0.0.1:8000 (not ready: no servable model yet)
    """
    state = "ready" if ready else "not ready: no servable model yet"
    print(f"freshrec serve: listening on {url} ({state})", flush=True)
