"""Distributed training on ``torch.distributed``: sharded tables, data-parallel dense.

Launched with ``torchrun`` (or ``freshrec train --nproc N``), every rank holds a row-wise
shard of every collisionless table (:func:`owner_ranks`: a fid's owner is a stable hash of
it) and a replica of the dense parameters. A step routes each rank's distinct fids to their
owners with an all-to-all, owners resolve and admit them and send the rows back, ranks pool
and run the dense part, and the backward sends row gradients to the owners
(:class:`ShardedPooledEmbedding`) while dense gradients are all-reduced
(:class:`DenseGradientSync`). :class:`DistTrainer` is the :class:`~freshrec.train.Trainer`
of one rank; its checkpoints are per-rank shards under one manifest, restorable on any
number of ranks. :class:`DistOnlineTrainer` trains online, each rank on its own partitions
of the examples log. See ``docs/distributed.md``.
"""

from typing import TYPE_CHECKING, Any

from freshrec._lazy import lazy_attribute
from freshrec.dist.config import DistConfig

if TYPE_CHECKING:
    from freshrec.dist.checkpoint import DistManifest, latest_manifest, reshard_table
    from freshrec.dist.dense import DenseGradientSync
    from freshrec.dist.embedding import ShardedPooledEmbedding
    from freshrec.dist.exchange import SparseExchange
    from freshrec.dist.online import DistOnlineTrainer, owned_partitions
    from freshrec.dist.publish import ShardedPublisher
    from freshrec.dist.sharding import SHARD_SALT, owner_ranks
    from freshrec.dist.trainer import DistTrainer, GlobalMetricSet

#: Public name -> the module that defines it, imported on first use: reading a config
#: (``freshrec.config`` takes this package's section from here) does not load torch.
_LAZY = {"DistManifest": "checkpoint", "latest_manifest": "checkpoint",
         "reshard_table": "checkpoint", "DenseGradientSync": "dense",
         "ShardedPooledEmbedding": "embedding", "SparseExchange": "exchange",
         "DistOnlineTrainer": "online", "owned_partitions": "online",
         "ShardedPublisher": "publish", "SHARD_SALT": "sharding", "owner_ranks": "sharding",
         "DistTrainer": "trainer", "GlobalMetricSet": "trainer"}

__all__ = [
    "DenseGradientSync",
    "DistConfig",
    "DistManifest",
    "DistOnlineTrainer",
    "DistTrainer",
    "GlobalMetricSet",
    "SHARD_SALT",
    "ShardedPooledEmbedding",
    "ShardedPublisher",
    "SparseExchange",
    "latest_manifest",
    "owned_partitions",
    "owner_ranks",
    "reshard_table",
]


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)
