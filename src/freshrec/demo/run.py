""":func:`run_demo`: writes the run's config document, starts the stages, drives traffic for a
while, and always stops what it started.

Examples
--------
>>> from freshrec.demo.config import DemoConfig
>>> p = run_paths(DemoConfig(), Path("runs/demo-x"))
>>> p["events"], str(p["config"])
('file:runs/demo-x/logs/events', 'runs/demo-x/config.yaml')
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from freshrec.demo.config import DemoConfig
from freshrec.demo.display import live_table, progress_line
from freshrec.demo.monitor import Monitor, trainer_final
from freshrec.demo.plot import plot
from freshrec.demo.processes import ChildProcess, DemoError, free_port, stop_all, wait_for
from freshrec.demo.traffic import TrafficDriver
from freshrec.errors import ConfigError

if TYPE_CHECKING:
    from freshrec.config import FreshrecConfig
    from freshrec.ops.server import DashboardServer

__all__ = ["run_demo", "run_paths"]


def run_paths(demo: DemoConfig, workdir: Path) -> dict[str, Any]:
    """Where a run in ``workdir`` reads and writes (log specs as strings, the rest paths)."""
    if demo.redis:
        tag = f"freshrec-demo-{workdir.name}-{os.getpid()}"
        events, examples = f"{demo.redis}#{tag}-events", f"{demo.redis}#{tag}-examples"
    else:
        events = f"file:{workdir / 'logs' / 'events'}"
        examples = f"file:{workdir / 'logs' / 'examples'}"
    return {"workdir": workdir, "events": events, "examples": examples,
            "registry": workdir / "registry", "train": workdir / "train",
            "join": workdir / "join", "proc": workdir / "proc",
            "config": workdir / "config.yaml", "metrics": workdir / "metrics.json",
            "plot": workdir / "demo.png"}


def _document(config: FreshrecConfig, paths: dict[str, Any], port: int) -> dict[str, Any]:
    """The config document of this run: ``config``'s, with the run's locations filled in."""
    from freshrec.config import apply_overrides

    return apply_overrides(copy.deepcopy(dict(config.raw)), [
        ("demo.workdir", str(paths["workdir"])),
        ("join.source", paths["events"]), ("join.output", paths["examples"]),
        ("join.state", str(paths["join"])),
        ("serve.registry", str(paths["registry"])), ("serve.log", paths["events"]),
        ("serve.port", port),
    ])


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _server_ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _start_dashboard(document: dict[str, Any], paths: dict[str, Any], url: str
                     ) -> DashboardServer | None:
    """The operations dashboard of this run (:mod:`freshrec.ops`) on a free loopback port:
    the trainer's metrics.jsonl, the registry, the joiner's logs and the server's /metrics.
    ``None`` (and a warning) when the ``ops`` extra is not installed."""
    from freshrec.config import config_from_dict

    try:
        from freshrec.ops.collect import Collector
        from freshrec.ops.server import DashboardServer

        cfg = config_from_dict(document)
        collector = Collector(cfg, run_dirs=[paths["train"]], registry=paths["registry"],
                              metrics_urls=[f"{url}/metrics"])
        srv = DashboardServer(cfg, collector, interval_s=2.0,
                              title=f"freshrec demo {paths['workdir']}")
    except (ModuleNotFoundError, FileNotFoundError) as e:  # plotly (its script) missing
        logging.getLogger(__name__).warning("no dashboard: %s (pip install 'freshrec[ops]')", e)
        return None
    srv.start()
    return srv


def _until_reached(sample: dict[str, Any], examples: int) -> bool:
    """Whether ``sample`` shows the closed loop ``demo.until_examples_trained`` waits for."""
    trained = sample.get("examples_trained")
    served = sample.get("served_version")
    auc = sample.get("online_auc")
    return (trained is not None and int(trained) >= examples
            and served is not None and served > 1
            and auc is not None and math.isfinite(float(auc)))


def run_demo(config: FreshrecConfig, *,
             on_tick: Callable[[dict[str, Any], float], None] | None = None) -> dict[str, Any]:
    """Run the loop (:mod:`freshrec.demo`) for ``config.demo.duration_s`` seconds of traffic,
    or, with ``config.demo.until_examples_trained``, until that many examples were trained and
    the server serves a version > 1 (``duration_s`` then bounds the wait).

    Parameters
    ----------
    config : FreshrecConfig
        The whole document (``configs/demo.yaml``): the model, the traffic (``simulate``),
        the joiner, the server and the ``demo`` section.
    on_tick : callable, optional
        Called with each sample (about once a second) and the seconds of traffic so far.

    Returns
    -------
    dict
        ``summary`` (see ``metrics.json``), ``paths``, ``children`` (their pids),
        ``interrupted``, ``until_examples_trained``, ``until_reached`` (whether that stop
        condition was met), ``samples``, ``plot`` (its path, or None without matplotlib).

    Raises
    ------
    ConfigError
        The document cannot drive the demo (the simulator writes no true probabilities).
    DemoError
        A child died or a stage did not come up within ``demo.startup_timeout_s``.
    """
    from rich.console import Console
    from rich.live import Live

    from freshrec.config import apply_overrides
    from freshrec.store.demo import start_store, stop_store, store_overrides
    from freshrec.stream.open import open_log
    from freshrec.sync.registry import Registry

    demo = config.demo
    if not config.simulate.true_probabilities:
        raise ConfigError("freshrec demo needs simulate.true_probabilities: true (the driver "
                          "draws each click from the candidate's true probability)")
    console = Console()
    live = console.is_terminal if demo.live is None else demo.live
    workdir = Path(demo.workdir or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S"))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = run_paths(demo, workdir)
    paths["proc"].mkdir(exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store_url, store_proc = (start_store(demo.redis, workdir) if demo.user_store == "redis"
                             else (None, None))
    document = _document(config, paths, port)
    if store_url is not None:  # --user-store redis: the user table lives in Redis
        document = apply_overrides(document, store_overrides(store_url, f"demo-{workdir.name}"))
    paths["config"].write_text(yaml.safe_dump(document, sort_keys=False))
    doc = str(paths["config"])
    # the event log: impressions (server) in partition 0, actions (driver) in the last one
    events = open_log(paths["events"], partitions=1 if demo.redis else 2)
    open_log(paths["examples"]).close()
    trainer = ChildProcess("train", ["train", "--online", "--config", doc, "--source",
                                     paths["examples"], "--registry", str(paths["registry"]),
                                     "--run-dir", str(paths["train"])],
                           paths["proc"] / "train.log")
    joiner = ChildProcess("join", ["join", "--config", doc], paths["proc"] / "join.log")
    server = ChildProcess("serve", ["serve", "--config", doc], paths["proc"] / "serve.log")
    children = [server, joiner, trainer]
    registry = Registry(paths["registry"])
    driver = TrafficDriver(url, events, config.simulate, config.join.window_s)
    mon: Monitor | None = None
    dashboard: DashboardServer | None = None
    interrupted = False
    until_reached = False
    t_traffic = time.monotonic()
    duration = 0.0
    old_term = None
    if threading.current_thread() is threading.main_thread():
        def _term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        old_term = signal.signal(signal.SIGTERM, _term)
    try:
        # 1. bootstrap: the trainer publishes its initial model as version 1
        trainer.start()
        joiner.start()
        console.print(f"[bold]freshrec demo[/] in {workdir}: starting the joiner and the "
                      "online trainer ...", highlight=False)
        wait_for("the online trainer's first published version",
                 lambda: registry.head() is not None, children, demo.startup_timeout_s)
        # 2. serving, once there is a version to serve
        server.start()
        console.print(f"registry has version {registry.head()}; starting the server on {url}",
                      markup=False)
        wait_for(f"the server being ready on {url}", lambda: _server_ready(port), children,
                 demo.startup_timeout_s)
        dashboard = _start_dashboard(document, paths, url)
        if dashboard is not None:
            console.print(f"dashboard: {dashboard.url}", markup=False, highlight=False)
        # 3. traffic, 4. live display
        sim = config.simulate
        console.print(f"the loop is up; sending {sim.requests_per_s:g} requests/s with "
                      f"{sim.candidates} candidates for {demo.duration_s:g} s", markup=False)
        mon = Monitor(paths["registry"], paths["events"], paths["examples"], url, driver)
        driver.start()
        t_traffic = time.monotonic()
        next_tick = t_traffic + 1.0
        last_print = t_traffic
        with Live(console=console, refresh_per_second=2, transient=False) if live \
                else contextlib.nullcontext() as display:
            while True:
                time.sleep(max(0.0, next_tick - time.monotonic()))
                next_tick += 1.0
                elapsed = time.monotonic() - t_traffic
                sample = mon.tick()
                if display is not None:
                    display.update(live_table(sample, demo.duration_s, elapsed))
                elif time.monotonic() - last_print >= 5.0:
                    last_print = time.monotonic()
                    console.print(progress_line(sample, elapsed), markup=False,
                                  highlight=False, soft_wrap=True)
                if on_tick is not None:
                    on_tick(sample, elapsed)
                if driver.error is not None:
                    raise DemoError(f"the traffic driver failed: {driver.error!r}") \
                        from driver.error
                for c in children:
                    c.check()
                if demo.until_examples_trained is not None and \
                        _until_reached(sample, demo.until_examples_trained):
                    until_reached = True
                    break
                if elapsed >= demo.duration_s:
                    break
        duration = time.monotonic() - t_traffic
    except KeyboardInterrupt:
        interrupted = True
        duration = time.monotonic() - t_traffic
        console.print("interrupted: stopping the loop ...")
    finally:
        driver.stop()
        if mon is not None:
            with contextlib.suppress(Exception):
                mon.tick()
        stop_all(children)
        stop_store(store_proc)
        if dashboard is not None:
            dashboard.close()
        events.close()
        if mon is not None:
            mon.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    summary = mon.summary(trainer_final(trainer.out), registry.versions(), duration) \
        if mon is not None else {}
    out = {"summary": summary, "config": document,
           "paths": {k: str(v) for k, v in paths.items()},
           "children": {c.name: c.pid for c in children}, "interrupted": interrupted,
           "until_examples_trained": demo.until_examples_trained,
           "until_reached": until_reached,
           "dashboard_url": dashboard.url if dashboard is not None else None,
           "samples": mon.samples if mon is not None else [],
           "last_driver_error": mon.last_error if mon is not None else ""}
    out["plot"] = str(paths["plot"]) if mon is not None and mon.samples and \
        plot(mon.samples, paths["plot"]) else None
    paths["metrics"].write_text(json.dumps(_jsonable(out), indent=1))
    return out
