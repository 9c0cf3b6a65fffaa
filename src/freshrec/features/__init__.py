"""Features: the jagged sparse batch type, the feature schema and fid hashing.

A *slot* is a named feature (``user_id``, ``hist_items``); its raw values are hashed together
with the slot name into 64-bit feature ids (fids) that index an embedding table. Several slots
may share one table. :class:`JaggedBatch` carries the fids of many slots for a batch.
"""

from freshrec.features.jagged import JaggedBatch

__all__ = ["JaggedBatch"]
