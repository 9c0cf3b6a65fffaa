"""freshrec: real-time recommendation on PyTorch.

Collisionless, expirable embedding tables (``freshrec.table``) feed torch models
(``freshrec.nn``, ``freshrec.models``) that are trained from a live event stream
(``freshrec.stream``, ``freshrec.train``), synced to serving every few seconds
(``freshrec.sync``) and served at millisecond latency (``freshrec.serve``).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
