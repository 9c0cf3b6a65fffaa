"""Ground truth for feature importance: the simulator's known feature effects, joined.

:class:`~freshrec.data.simulate.SimulatorConfig` ``context_effects`` adds per-request
context features ``ctx<k>`` whose effect on the click logit is known (its standard
deviation over the feature's values is ``context_effects[k]``; 0 is an irrelevant feature).
:func:`joined_examples` runs such a stream through the real joiner (``freshrec simulate |
freshrec join``, in process, over file logs) and returns the joined examples, where the
features are the columns ``u_ctx<k>``; :func:`true_effects` names them with their effects,
and :func:`context_document` adds them as slots to a config document.

Examples
--------
>>> from freshrec.data.simulate import SimulatorConfig
>>> true_effects(SimulatorConfig(context_effects=(0.0, 1.5)))
{'u_ctx0': 0.0, 'u_ctx1': 1.5}
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from freshrec.data.simulate import ClickStreamSimulator, SimulatorConfig, write_to_log
from freshrec.errors import InputError

__all__ = ["context_document", "joined_examples", "true_effects"]


def true_effects(config: SimulatorConfig) -> dict[str, float]:
    """``{column: effect}`` of the simulator's context features (their logit's std)."""
    return {f"u_ctx{k}": float(e) for k, e in enumerate(config.context_effects)}


def joined_examples(config: SimulatorConfig, n_requests: int,
                    workdir: str | Path | None = None) -> pa.Table:
    """``n_requests`` requests of the simulator through the joiner: the joined examples in
    the order the joiner wrote them (a temporary directory holds the logs unless
    ``workdir`` is given).

    Raises
    ------
    InputError
        The joiner emitted no example.
    """
    from freshrec.stream.events import decode_examples
    from freshrec.stream.filelog import FileLog
    from freshrec.stream.join import Joiner

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        events, out = FileLog(f"{tmp}/events"), FileLog(f"{tmp}/examples")
        write_to_log(ClickStreamSimulator(config).records(n_requests=n_requests), events)
        joiner = Joiner(events, out, f"{tmp}/state")
        joiner.run(idle_timeout_s=0.0, flush_at_end=True)
        joiner.close()
        values: list[bytes] = []
        for p in range(out.partitions):
            offset = 0
            while True:
                recs = out.read(p, offset, 4096, 0.0)
                if not recs:
                    break
                values += [r.value for r in recs]
                offset = recs[-1].offset + 1
        events.close()
        out.close()
    rb, _ = decode_examples(values)
    if rb is None or not rb.num_rows:
        raise InputError(f"joined_examples: the joiner emitted no example from {n_requests} "
                         "requests")
    return pa.Table.from_batches([rb])


def context_document(doc: Mapping[str, Any], config: SimulatorConfig, *,
                     table: str = "attr") -> dict[str, Any]:
    """A copy of config document ``doc`` with a slot ``u_ctx<k>`` on ``table`` for each
    context feature of ``config``."""
    out = copy.deepcopy(dict(doc))
    slots = out["features"].setdefault("slots", {})
    for name in true_effects(config):
        slots[name] = {"table": table}
    return out
