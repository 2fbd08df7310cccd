"""Crash-test writer: random upserts/deletes from several threads until it is killed.

Usage: ``python crash_writer.py DATA_DIR LOG_PATH SEED``

Each thread owns its own ids (ints ``t, t+T, ...`` and strings ``"s<t>-<k>"``)
so that the operations on one id are totally ordered. Before each call the
thread appends an ``attempt`` line to LOG_PATH and fsyncs it; after the call
returns it appends an ``ack`` line and fsyncs it. An upsert of operation
``op`` gives each id the payload ``{"op": op, "id": id}`` and the vector
:func:`vector_for` ``(op, id)``, so the checker can tell which operation a
stored point came from. Some batches go through ``Collection.apply`` with
the source offset ``(SOURCE, "t", thread) -> op``, as Kafka ingest does.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import numpy as np

from vdb.types import Delete, Upsert

THREADS = 3
INTS_PER_THREAD = 40
STRINGS_PER_THREAD = 15
DIM = 16
SOURCE = "crash"


def owned_ids(thread: int) -> list:
    return [thread + THREADS * k for k in range(INTS_PER_THREAD)] + [
        f"s{thread}-{k}" for k in range(STRINGS_PER_THREAD)
    ]


def vector_for(op: int, point_id) -> np.ndarray:
    """The vector an upsert of operation ``op`` writes for ``point_id``."""
    key = point_id if isinstance(point_id, int) else 10_000 + sum(map(ord, point_id))
    rng = np.random.default_rng([op, key])
    return rng.standard_normal(DIM).astype(np.float32)


class Log:
    def __init__(self, path: str) -> None:
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives until the kill
        self.lock = threading.Lock()

    def write(self, entry: dict) -> None:
        line = json.dumps(entry) + "\n"
        with self.lock:
            self.f.write(line)
            self.f.flush()
            os.fsync(self.f.fileno())


def worker(
    col, log: Log, thread: int, seed: int, counter: list, counter_lock: threading.Lock
) -> None:
    rng = np.random.default_rng([seed, thread])
    ids = owned_ids(thread)
    while True:
        with counter_lock:
            counter[0] += 1
            op = seed * 1_000_000 + counter[0]
        r = rng.random()
        offset = False
        if r < 0.5:
            n = int(rng.integers(1, 9))
            chosen = [ids[i] for i in rng.choice(len(ids), n, replace=False)]
            kind = "up"
            offset = bool(rng.random() < 0.5)
        elif r < 0.75:
            chosen = [ids[int(rng.integers(len(ids)))]]
            kind = "up"
        else:
            n = int(rng.integers(1, 5))
            chosen = [ids[i] for i in rng.choice(len(ids), n, replace=False)]
            kind = "del"
            offset = bool(rng.random() < 0.5)
        log.write({"a": op, "kind": kind, "ids": chosen, "offset": offset})
        if offset:  # the ingest path: records and the source offset in one transaction
            if kind == "up":
                ops = [Upsert(i, vector_for(op, i), {"op": op, "id": i}) for i in chosen]
            else:
                ops = [Delete(i) for i in chosen]
            col.apply(ops, source_offsets={(SOURCE, "t", thread): op})
        elif kind == "up":
            vectors = np.stack([vector_for(op, i) for i in chosen])
            col.upsert(chosen, vectors, [{"op": op, "id": i} for i in chosen])
        else:
            col.delete(chosen)
        log.write({"k": op})


def main() -> None:
    import vdb

    data_dir, log_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    db = vdb.open(data_dir, checkpoint_interval_s=0.5, checkpoint_wal_bytes=30_000, warm=False)
    if db.has_collection("c"):
        col = db.collection("c")
    else:
        col = db.create_collection("c", dim=DIM, metric="l2", M=8, ef_construction=32)
    log = Log(log_path)
    counter = [0]
    lock = threading.Lock()
    threads = [
        threading.Thread(target=worker, args=(col, log, t, seed, counter, lock), daemon=True)
        for t in range(THREADS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
