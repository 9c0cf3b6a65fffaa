"""``freshrec demo``: the whole loop on the embedded defaults, in one command.

What runs (one work directory, default ``runs/demo-<timestamp>``)::

    traffic driver (this process)  --POST /score-->  freshrec serve  (child)
      simulated users, candidates;                      |  impressions
      clicks drawn from the simulator's                 v
      true click probability        --actions-->  logs/events  (file log, 2 partitions)
                                                        |
                                                  freshrec join   (child)  label window
                                                        v
                                                  logs/examples
                                                        |
                                                  freshrec train --online  (child)
                                                        v
                                                  registry/  (full snapshot, sparse deltas
                                                        |     every ~2 s, dense every 10 s)
                                                        +----> picked up by freshrec serve

One config document drives every stage (``configs/demo.yaml``): the demo writes a copy with
the run's paths filled in to ``config.yaml`` in the work directory and starts each child with
``--config`` on it. The online trainer publishes its (untrained) initial model as a full
snapshot at its first step; serving starts once the registry has that version, so everything
the model knows afterwards it learned during the demo.

The package, one module per concern:

- :mod:`~freshrec.demo.config`: the ``demo`` section of the document (duration, work
  directory, Redis, live display).
- :mod:`~freshrec.demo.processes`: the child processes, started off the current directory's
  ``sys.path`` in their own process groups, checked, and always stopped.
- :mod:`~freshrec.demo.traffic`: the traffic driver, which sends the simulator's requests to
  the server and writes the clicks they get to the event log.
- :mod:`~freshrec.demo.prometheus`: reads the server's ``/metrics`` text into numbers.
- :mod:`~freshrec.demo.monitor`: samples every stage once a tick and sums up the run.
- :mod:`~freshrec.demo.display`: the live table, the progress line, the summary table and
  where the run wrote everything.
- :mod:`~freshrec.demo.plot`: the PNG of AUC, latency and freshness over the run.
- :mod:`~freshrec.demo.run`: :func:`run_demo`, which wires them together.
"""

from typing import TYPE_CHECKING, Any

from freshrec._lazy import lazy_attribute
from freshrec.demo.config import DemoConfig
from freshrec.demo.processes import DemoError

if TYPE_CHECKING:
    from freshrec.demo.display import summary_table
    from freshrec.demo.run import run_demo
    from freshrec.demo.traffic import TrafficDriver

#: Public name -> the module that defines it, imported on first use: reading a config
#: (``freshrec.config`` takes this package's section from here) does not load torch.
_LAZY = {"summary_table": "display", "run_demo": "run", "TrafficDriver": "traffic"}

__all__ = ["DemoConfig", "DemoError", "TrafficDriver", "run_demo", "summary_table"]


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)
