"""Features: the jagged sparse batch type, the feature schema and fid hashing.

A *slot* is a named feature (``user_id``, ``hist_items``); its raw values are hashed together
with the slot name into 64-bit feature ids (fids) that index an embedding table. Several slots
may share one table. :class:`JaggedBatch` carries the fids of many slots for a batch.
"""

from freshrec.features.config import (
    DenseConfig,
    DenseNorm,
    FeatureConfig,
    SlotConfig,
    SlotKind,
    feature_config_from_dict,
)
from freshrec.features.hashing import fid, hash_array, slot_key
from freshrec.features.jagged import JaggedBatch
from freshrec.features.schema import EncodedBatch, FeatureSchema

__all__ = [
    "DenseConfig",
    "DenseNorm",
    "EncodedBatch",
    "FeatureConfig",
    "FeatureSchema",
    "JaggedBatch",
    "SlotConfig",
    "SlotKind",
    "feature_config_from_dict",
    "fid",
    "hash_array",
    "slot_key",
]
