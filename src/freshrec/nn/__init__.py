"""torch modules over embedding tables.

:class:`PooledEmbedding` looks up jagged multi-valued slots, pools them and fuses each
table's optimizer step into backward, so no dense gradient of the embeddings is ever built.
"""

from freshrec.nn.pooled import PooledEmbedding, SlotSpec

__all__ = ["PooledEmbedding", "SlotSpec"]
