"""Text ingest until killed: ``python kafka_text_consumer.py DATA BOOTSTRAP TOPIC GROUP STATUS``.

Creates the collection ``docs`` with the ``minilm`` embedder if it is
missing, tails TOPIC in the ``text`` format at a bounded rate (so a kill
lands mid-stream) and rewrites STATUS (JSON: the pipeline's stats) every
50 ms. Checkpoints are off: a reopened database replays the WAL.
"""

from __future__ import annotations

import json
import os
import sys
import time

import vdb
from vdb.ingest import KafkaSource

FAST_GROUP = {
    "session_timeout_ms": 4000,
    "heartbeat_interval_ms": 400,
    "max_poll_interval_ms": 10000,
}


def main(data: str, bootstrap: str, topic: str, group: str, status: str) -> None:
    db = vdb.open(data, checkpoint_interval_s=None, checkpoint_wal_bytes=None, warm=False)
    if not db.has_collection("docs"):
        db.create_collection("docs", embedder="minilm")
    source = KafkaSource(bootstrap, topic, group_id=group, consumer_options=FAST_GROUP)
    handle = db.ingest(source, "docs", format="text", max_rate=150, batch_max=16)
    while True:
        tmp = status + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(handle.stats(), f)
        os.replace(tmp, status)
        time.sleep(0.05)


if __name__ == "__main__":
    main(*sys.argv[1:6])
