"""Features: the jagged sparse batch type, the feature schema and fid hashing.

A *slot* is a named feature (``user_id``, ``hist_items``); its raw values are hashed together
with the slot's id space into 64-bit feature ids (fids) that index an embedding table, by one
rule for every type and code path (:mod:`freshrec.features.hashing`: the int 7 and the string
``"7"`` are one id). Several slots may share one table. :class:`JaggedBatch` carries the fids
of many slots for a batch. Raw values are encoded by a batch path for training
(:class:`FeatureSchema`, Arrow columns) and a per-request path for serving
(:mod:`freshrec.features.values`, decoded JSON), over the same hashing kernels and the same
:class:`DenseNormalizer`.
"""

from freshrec.features.config import (
    DenseConfig,
    DenseNorm,
    FeatureConfig,
    SlotConfig,
    SlotDtype,
    SlotKind,
    feature_config_from_dict,
)
from freshrec.features.dense import DenseNormalizer
from freshrec.features.hashing import fid, hash_array, hash_keyed, slot_key
from freshrec.features.jagged import JaggedBatch
from freshrec.features.schema import EncodedBatch, FeatureSchema
from freshrec.features.values import RecordEncoder, dense_values, hash_lists, hash_values

__all__ = [
    "DenseConfig",
    "DenseNorm",
    "DenseNormalizer",
    "EncodedBatch",
    "FeatureConfig",
    "FeatureSchema",
    "JaggedBatch",
    "RecordEncoder",
    "SlotConfig",
    "SlotDtype",
    "SlotKind",
    "dense_values",
    "feature_config_from_dict",
    "fid",
    "hash_array",
    "hash_keyed",
    "hash_lists",
    "hash_values",
    "slot_key",
]
