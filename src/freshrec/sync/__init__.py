"""Parameter synchronisation: a versioned registry of full snapshots and sparse/dense deltas.

Monolith keeps serving fresh by copying only what training changed: every minute the
embedding rows touched since the last sync (and the ids that expired) go to the serving
parameter servers, the dense network once a day, and a full snapshot is kept for recovery.
This package does the same through a directory: a :class:`Publisher` in the trainer writes
versions to a :class:`Registry` (full snapshots, sparse deltas, dense parameters; each with
a checksummed manifest, renamed into place, then ``HEAD`` moved), and a :class:`Subscriber`
in the serving process plans the shortest way from its version to ``HEAD`` (deltas, or the
newest full snapshot plus deltas) and applies it in place. Every version has a number that
only grows; :meth:`Registry.rollback` publishes a version whose state is an older one's, and
:meth:`Registry.gc` keeps the last few full snapshots and the deltas after them.

Damage on disk (a corrupted, truncated or deleted file, a missing manifest) is found by the
checksums and skipped, never served: a subscriber follows the newest version whose chain
verifies, a publisher writes a full snapshot instead of a delta on a damaged base, and
:func:`check_registry` (``freshrec registry verify``) reports which versions are damaged.

Examples
--------
>>> import tempfile, numpy as np, torch
>>> from freshrec.sync import Publisher, Registry, Subscriber
>>> from freshrec.table import EmbeddingTable, TableConfig
>>> reg = Registry(tempfile.mkdtemp())
>>> table = EmbeddingTable(TableConfig(name="item", dim=2))
>>> dense = {"bias": torch.zeros(1)}
>>> pub = Publisher(reg, [table], lambda: dense)
>>> [pub.maybe_publish(t) is not None for t in (0.0, 1.0)]   # full at once, then nothing new
[True, False]
>>> _ = table.lookup(np.array([5], np.uint64), now=1, train=True)
>>> pub.maybe_publish(3.0).kind.value                          # sparse interval (2 s) passed
'delta'
>>> state = Subscriber(reg).materialize()
>>> state.version, len(state.tables["item"]), state.dense["bias"].tolist()
(2, 1, [0.0])
"""

from typing import TYPE_CHECKING, Any

from freshrec._lazy import lazy_attribute
from freshrec.sync.config import (
    PublisherConfig,
    SubscriberConfig,
    publisher_config_from_dict,
    subscriber_config_from_dict,
)

if TYPE_CHECKING:
    from freshrec.sync.health import RegistryHealth, VersionHealth, check_registry
    from freshrec.sync.publisher import Publisher, model_fingerprint
    from freshrec.sync.registry import Registry, VersionKind, VersionManifest
    from freshrec.sync.subscriber import ModelState, PlanStep, StepAction, Subscriber, SyncPlan

#: Public name -> the module that defines it, imported on first use: reading a config
#: (``freshrec.config`` takes this package's section from here) does not load torch.
_LAZY = {"RegistryHealth": "health", "VersionHealth": "health", "check_registry": "health",
         "Publisher": "publisher", "model_fingerprint": "publisher", "Registry": "registry",
         "VersionKind": "registry", "VersionManifest": "registry", "ModelState": "subscriber",
         "PlanStep": "subscriber", "StepAction": "subscriber", "Subscriber": "subscriber",
         "SyncPlan": "subscriber"}

__all__ = [
    "ModelState",
    "PlanStep",
    "Publisher",
    "PublisherConfig",
    "Registry",
    "RegistryHealth",
    "StepAction",
    "Subscriber",
    "SubscriberConfig",
    "SyncPlan",
    "VersionHealth",
    "VersionKind",
    "VersionManifest",
    "check_registry",
    "model_fingerprint",
    "publisher_config_from_dict",
    "subscriber_config_from_dict",
]


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)
