"""Scale-out on Kafka: node heartbeats, the partition map, and the router.

A topic's partitions are the shards; the members of one consumer group split
them; a second group over the same topic is a complete replica set. Nodes
(``python -m vdb serve --cluster NAME ...``) publish a heartbeat every second
to the compacted topic ``NAME.vdb-nodes``; the router (``python -m vdb
router``) reads it, fans queries out to one healthy replica per partition and
merges the answers. This package keeps no data of its own: the topic and the
nodes hold it.
"""

from __future__ import annotations

from vdb.cluster.membership import Membership, NodeView
from vdb.cluster.partitioner import partition_for, point_key

__all__ = ["Membership", "NodeView", "partition_for", "point_key"]
