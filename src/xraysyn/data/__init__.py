"""Data: CT input/output and preprocessing, bone masks, example data and preprocessed-CT shards.

CT side (this package's ``ct_io``, ``preprocess``, ``bone_mask``, ``example``, ``shards`` modules);
the shard format is documented in :mod:`xraysyn.data.shards`.
"""

from xraysyn.data.shards import CTShard, read_shard, write_shard

__all__ = ["CTShard", "read_shard", "write_shard"]
