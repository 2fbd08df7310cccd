"""Segments benchmark: acknowledged ingest at WAL speed, background indexing, search meanwhile.

    python -m bench.segments --data DIR            # debian-minilm 50k x 384, batches of 1,000
    python -m bench.segments --data DIR --n 20000 --only burst

Lines (anchors from the same run):

* ``burst``: durable + searchable upserts of the whole set in batches, against
  Qdrant Edge ``EdgeShard.update(upsert_points)`` of the same batches, LanceDB
  ``table.add`` and hnswlib ``add_items`` (2 threads); the time until vdb has
  indexed everything against hnswlib's build time (a first burst with no
  searches, as hnswlib's build ran; the second burst's, with the searches
  below, beside it); recall@10 and single-query
  QPS right after the last acknowledgement (with the fresh rows, how a search
  scans them and load1 at the acknowledgement and at the start and end of the
  QPS window) and after indexing (the anchor of the fresh path's QPS), against
  hnswlib's graph at the same ef; QPS by the wall clock and per second of the
  searching thread's CPU.
* ``single``: single-vector upserts from 16 threads against batched upserts, in the
  same run (best of two rounds).
* ``open`` (``--only open``): open time of 500k points with payloads and 3 indexed
  fields from a checkpoint holding the payload-index columns, against the same
  checkpoint without them (rebuilt from the payloads); the checkpoint's bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import debian_minilm, emit, host_info, log, recall_at_k

BATCH = 1000
EF = 64
PARAMS = {"M": 16, "ef_construction": 128}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _qps(search, queries: np.ndarray, seconds: float = 2.0) -> float:
    return _qps_both(search, queries, seconds)[0]


def _qps_both(search, queries: np.ndarray, seconds: float = 2.0) -> tuple[float, float]:
    """Single-query QPS by the wall clock and per second of the calling thread's CPU (the
    shared box's load swings the wall figure; the indexer thread competes for the cores)."""
    done = 0
    cpu0 = time.thread_time()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        search(queries[done % len(queries)])
        done += 1
    wall = done / (time.perf_counter() - started)
    return wall, done / max(time.thread_time() - cpu0, 1e-9)


def _upsert_batches(col, base: np.ndarray) -> float:
    """Upsert ``base`` (ids = row numbers) in batches of ``BATCH``; seconds taken."""
    started = time.perf_counter()
    for lo in range(0, len(base), BATCH):
        col.upsert(list(range(lo, min(len(base), lo + BATCH))), base[lo : lo + BATCH])
    return time.perf_counter() - started


def _fresh_state(col) -> dict[str, Any]:
    """The fresh segment as a search finds it now (rows, points, how they are scanned)."""
    segs = col.info()["segments"]
    return {
        "fresh_rows": segs["fresh_rows"],
        "fresh_points": segs["fresh_points"],
        "indexed_points": segs["indexed_points"],
        "fresh_scan": segs.get("fresh_scan", "exact"),  # before the codes: always exact
    }


def _vdb_found(col, queries: np.ndarray, row_of: dict) -> np.ndarray:
    hits = col.search(queries, k=10, ef=EF, with_payload=False)
    return np.array([[row_of[h.id] for h in hs] + [-1] * (10 - len(hs)) for hs in hits])


def bench_burst(ds, workdir: Path) -> None:
    base, queries, gt = ds.base, ds.queries, ds.gt
    n, dim = base.shape
    row_of = {i: i for i in range(n)}

    # hnswlib, 2 threads, the same batches, no durability
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=dim)
    index.init_index(max_elements=n, M=PARAMS["M"], ef_construction=PARAMS["ef_construction"])
    index.set_num_threads(2)
    started = time.perf_counter()
    for lo in range(0, n, BATCH):
        index.add_items(base[lo : lo + BATCH], np.arange(lo, min(n, lo + BATCH)))
    hnsw_build = time.perf_counter() - started
    index.set_ef(EF)
    labels, _ = index.knn_query(queries, k=10)
    hnsw_recall = recall_at_k(labels, gt, 10)
    index.set_num_threads(1)
    knn = index.knn_query
    hnsw_qps = _qps(lambda q: knn(q, k=10), queries)
    anchors: dict[str, Any] = {
        "hnswlib": {
            "add_items_2threads_vectors_per_s": round(n / hnsw_build, 1),
            "build_s": round(hnsw_build, 3),
            "recall_at_10": round(hnsw_recall, 4),
            "single_qps": round(hnsw_qps, 1),
        }
    }
    index = knn = None  # free the graph before the next system runs

    try:
        import qdrant_edge as qe

        path = workdir / "edge"
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(
                m=PARAMS["M"], ef_construct=PARAMS["ef_construction"], full_scan_threshold=10000
            ),
        )
        shard = qe.EdgeShard.create(str(path), config)
        started = time.perf_counter()
        for lo in range(0, n, BATCH):
            points = [qe.Point(i, base[i].tolist()) for i in range(lo, min(n, lo + BATCH))]
            shard.update(qe.UpdateOperation.upsert_points(points))
        edge_ack = time.perf_counter() - started
        started = time.perf_counter()
        shard.optimize()
        edge_opt = time.perf_counter() - started
        shard.close()
        anchors["qdrant_edge"] = {
            "upsert_vectors_per_s": round(n / edge_ack, 1),
            "optimize_s": round(edge_opt, 3),
        }
        shutil.rmtree(path, ignore_errors=True)
    except ImportError:
        log("qdrant-edge-py not installed: no Qdrant Edge anchor")

    try:
        import lancedb
        import pyarrow as pa

        ldb = lancedb.connect(str(workdir / "lance"))
        schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), dim))])
        table = ldb.create_table("t", schema=schema)
        started = time.perf_counter()
        for lo in range(0, n, BATCH):
            hi = min(n, lo + BATCH)
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(base[lo:hi].reshape(-1)), dim)
            table.add(pa.table({"id": pa.array(np.arange(lo, hi)), "vector": vectors}))
        lance_ack = time.perf_counter() - started
        anchors["lancedb"] = {"add_vectors_per_s": round(n / lance_ack, 1)}
    except ImportError:
        log("lancedb not installed: no LanceDB anchor")

    import vdb

    with vdb.open(workdir / "vdb") as db:
        warm = db.create_collection("warm", dim=dim, metric="cosine", **PARAMS)
        warm.upsert(list(range(2000)), base[:2000])
        warm.wait_indexed()
        warm.search(queries[:2], k=10)
        db.drop_collection("warm")
        # the time until indexed with nothing else running, as hnswlib's build ran
        quiet = db.create_collection("quiet", dim=dim, metric="cosine", ef=EF, **PARAMS)
        started = time.perf_counter()
        quiet_acked = _upsert_batches(quiet, base)
        quiet.wait_indexed()
        quiet_indexed = time.perf_counter() - started
        db.drop_collection("quiet")
        col = db.create_collection("burst", dim=dim, metric="cosine", ef=EF, **PARAMS)
        started = time.perf_counter()
        acked = _upsert_batches(col, base)
        at_ack = _fresh_state(col)
        recall_right_after = recall_at_k(_vdb_found(col, queries, row_of), gt, 10)
        at_qps = {**_fresh_state(col), "load1": _load()}
        qps, qps_cpu = _qps_both(lambda q: col.search(q, k=10, with_payload=False), queries)
        right_after = {
            **at_ack,
            "recall_at_10": round(recall_right_after, 4),
            "single_qps": round(qps, 1),
            "single_qps_cpu": round(qps_cpu, 1),
            "at_qps_start": at_qps,
            "at_qps_end": {**_fresh_state(col), "load1": _load()},
        }
        # the recall of the path the QPS window measured (right after the acknowledgement
        # the fresh rows may not have their codes and lists yet: that recall is the exact
        # scan's)
        right_after["at_qps_end"]["recall_at_10"] = round(
            recall_at_k(_vdb_found(col, queries, row_of), gt, 10), 4
        )
        col.wait_indexed()
        indexed = time.perf_counter() - started
        qps, qps_cpu = _qps_both(lambda q: col.search(q, k=10, with_payload=False), queries)
        after = {
            "recall_at_10": round(recall_at_k(_vdb_found(col, queries, row_of), gt, 10), 4),
            "single_qps": round(qps, 1),
            "single_qps_cpu": round(qps_cpu, 1),
            "load1": _load(),
        }
        # the same once the background work the burst left is done: a checkpoint of the
        # collection ran beside the window above in some runs (its rate then rose by a third
        # over the next seconds); db.checkpoint waits for a running one and writes the rest
        db.checkpoint()
        qps, qps_cpu = _qps_both(lambda q: col.search(q, k=10, with_payload=False), queries)
        settled = {
            "single_qps": round(qps, 1),
            "single_qps_cpu": round(qps_cpu, 1),
            "load1": _load(),
        }
    emit(
        {
            "bench": "segments",
            "measure": "burst",
            "dataset": ds.name,
            "n": n,
            "dim": dim,
            "batch": BATCH,
            "ef": EF,
            "system": "vdb",
            "acknowledged_vectors_per_s": round(n / acked, 1),
            "fully_indexed_s": round(quiet_indexed, 3),
            "without_searches": {"acknowledged_vectors_per_s": round(n / quiet_acked, 1)},
            "with_searches_fully_indexed_s": round(indexed, 3),
            "right_after_last_ack": right_after,
            "after_indexing": after,
            "after_checkpoint": settled,
            "anchors": anchors,
            "ratios": {
                "ack_over_qdrant_edge_upsert": round(
                    n / acked / anchors["qdrant_edge"]["upsert_vectors_per_s"], 3
                )
                if "qdrant_edge" in anchors
                else None,
                "ack_over_lancedb_add": round(
                    n / acked / anchors["lancedb"]["add_vectors_per_s"], 3
                )
                if "lancedb" in anchors
                else None,
                "indexed_time_over_hnswlib_build": round(quiet_indexed / hnsw_build, 3),
                "indexed_time_with_searches_over_hnswlib_build": round(indexed / hnsw_build, 3),
                "qps_right_after_over_indexed": round(
                    right_after["single_qps"] / after["single_qps"], 3
                ),
                "cpu_qps_right_after_over_indexed": round(
                    right_after["single_qps_cpu"] / after["single_qps_cpu"], 3
                ),
                "indexed_qps_over_hnswlib": round(after["single_qps"] / hnsw_qps, 3),
                "qps_right_after_over_checkpointed": round(
                    right_after["single_qps"] / settled["single_qps"], 3
                ),
                "checkpointed_qps_over_hnswlib": round(settled["single_qps"] / hnsw_qps, 3),
            },
            "host": {**host_info(), "load1": _load()},
        }
    )


def bench_single(ds, workdir: Path, threads: int, seconds: float) -> None:
    """Single upserts from ``threads`` threads (two rounds, the best kept) against batched
    upserts; all in one database, one after the other."""
    import vdb

    base = ds.base
    n, dim = base.shape
    with vdb.open(workdir / "single") as db:
        col = db.create_collection("batched", dim=dim, metric="cosine", **PARAMS)
        m = min(n, 20_000)
        started = time.perf_counter()
        for lo in range(0, m, BATCH):
            col.upsert(list(range(lo, min(m, lo + BATCH))), base[lo : lo + BATCH])
        batched = m / (time.perf_counter() - started)
        assert col.wait_indexed(timeout=600)
        runs = []
        for round_ in range(2):
            col = db.create_collection(f"single_{round_}", dim=dim, metric="cosine", **PARAMS)
            before = db.stats()
            counts = [0] * threads
            stop = threading.Event()

            def work(t: int, col: Any, stop: threading.Event, counts: list[int]) -> None:
                i = t
                while not stop.is_set():
                    col.upsert([i], base[i % n])
                    counts[t] += 1
                    i += threads

            workers = [
                threading.Thread(target=work, args=(t, col, stop, counts)) for t in range(threads)
            ]
            started = time.perf_counter()
            for w in workers:
                w.start()
            time.sleep(seconds)
            stop.set()
            for w in workers:
                w.join()
            rate = sum(counts) / (time.perf_counter() - started)
            after = db.stats()
            txns = after["wal_txns_committed"] - before["wal_txns_committed"]
            runs.append(
                (
                    rate,
                    (after["group_commit_requests_total"] - before["group_commit_requests_total"])
                    / max(1, txns),
                )
            )
            log(f"single round {round_}: {rate:.0f}/s")
            db.drop_collection(col.name)
    single, group = max(runs)
    emit(
        {
            "bench": "segments",
            "measure": "single",
            "dataset": ds.name,
            "dim": dim,
            "threads": threads,
            "single_upserts_per_s": round(single, 1),
            "group_commit_mean": round(group, 2),
            "anchor": {
                "system": "vdb batched upserts (1,000 per call)",
                "vectors_per_s": round(batched, 1),
            },
            "ratio_single_over_batched": round(single / batched, 3),
            "host": {**host_info(), "load1": _load()},
        }
    )


def strip_columns(path: Path) -> int:
    """Remove the payload-index columns from the stored checkpoints, as a checkpoint
    written before they were kept looks (the next open rebuilds them from the payloads).
    Returns how many blobs were removed."""
    from vdb.wal.store import Store, pack, unpack

    store = Store(path)
    try:

        def strip(txn) -> int:
            removed = 0
            for key, raw in list(txn.cursor(db=store.db("ckptman"))):
                manifest = unpack(raw)
                blobs = manifest.get("blobs") or {}
                kept = {k: v for k, v in blobs.items() if not k.startswith("x/pi/")}
                removed += len(blobs) - len(kept)
                manifest["blobs"] = kept
                txn.put(bytes(key), pack(manifest), db=store.db("ckptman"))
            return removed

        return store.write(strip)
    finally:
        store.close()


OPEN_FILTERS = (
    {"must": [{"key": "kind", "match": {"value": "k7"}}]},
    {"must": [{"key": "n", "range": {"gte": 100, "lt": 200}}]},
    {"must": [{"key": "at", "range": {"gte": "2024-03-01T00:00:00Z"}}]},
)


def bench_open(workdir: Path, n: int) -> None:
    """Open time of ``n`` points with payloads and 3 indexed fields (keyword, integer,
    datetime): from a checkpoint holding the payload-index columns, and from the same
    checkpoint without them (rebuilt from the payloads, as before); checkpoint bytes,
    whole and after 1,000 single updates."""
    import vdb

    dim = 8
    rng = np.random.default_rng(0)
    path = workdir / "open"
    options = {"checkpoint_interval_s": None, "checkpoint_wal_bytes": None}

    def payload(i: int, v: int = 0) -> dict:
        return {
            "kind": f"k{(i + v) % 50}",
            "n": (i * 31 + v) % 1000,
            "at": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
        }

    with vdb.open(path, indexing=False, fresh_limit=2 * n + 2000, **options) as db:
        col = db.create_collection("c", dim=dim, metric="l2")
        for field, schema in (("kind", "keyword"), ("n", "integer"), ("at", "datetime")):
            col.create_payload_index(field, schema)
        for lo in range(0, n, 20_000):
            ids = list(range(lo, min(n, lo + 20_000)))
            col.upsert(
                ids,
                rng.standard_normal((len(ids), dim)).astype(np.float32),
                [payload(i) for i in ids],
            )
        log(f"open: {n} points written")
        db.checkpoint()
        full_pause = db.stats()["last_checkpoint_pause_s"]
        blobs = db._state.manifests[col.uid]["blobs"]
        whole = sum(int(m["size"]) for m in blobs.values())
        columns = sum(int(m["size"]) for k, m in blobs.items() if k.startswith("x/pi/"))
        payloads = sum(int(m["size"]) for k, m in blobs.items() if k.startswith("payloads/"))
        after = {}
        for label, ids in (
            ("after_1000_appended", list(range(n, n + 1000))),
            ("after_1000_random_updates", rng.choice(n, 1000, replace=False).tolist()),
        ):
            for i in ids:
                col.upsert([i], rng.standard_normal(dim).astype(np.float32), payload(i, 1))
            db.checkpoint()
            blobs = db._state.manifests[col.uid]["blobs"]
            after[label] = {
                "writer_pause_s": round(db.stats()["last_checkpoint_pause_s"], 4),
                "checkpoint_bytes_written": sum(int(m["written_bytes"]) for m in blobs.values()),
                "column_bytes_written": sum(
                    int(m["written_bytes"]) for k, m in blobs.items() if k.startswith("x/pi/")
                ),
                "payload_bytes_written": sum(
                    int(m["written_bytes"]) for k, m in blobs.items() if k.startswith("payloads/")
                ),
            }
        expected = [col.count(filter=f) for f in OPEN_FILTERS]
    old = workdir / "open-without-columns"
    shutil.copytree(path, old)
    strip_columns(old)

    def open_once(where: Path) -> tuple[float, float]:
        started = time.perf_counter()
        db = vdb.open(where, indexing=False, fresh_limit=2 * n + 2000, **options)
        opened = time.perf_counter() - started
        col = db.collection("c")
        counts = [col.count(filter=f) for f in OPEN_FILTERS]
        first = time.perf_counter() - started
        db.close(checkpoint=False)
        assert counts == expected, (counts, expected)
        return opened, first

    runs: dict[str, list[tuple[float, float]]] = {"columns": [], "rebuilt": []}
    for _ in range(2):
        runs["columns"].append(open_once(path))
        runs["rebuilt"].append(open_once(old))
    best = {k: min(v) for k, v in runs.items()}
    emit(
        {
            "bench": "segments",
            "measure": "open_payload_columns",
            "points": n,
            "indexed_fields": 3,
            "open_s": round(best["columns"][0], 3),
            "open_to_first_filtered_count_s": round(best["columns"][1], 3),
            "anchor": {
                "system": "vdb, the same checkpoint without columns (rebuilt from payloads)",
                "open_s": round(best["rebuilt"][0], 3),
                "open_to_first_filtered_count_s": round(best["rebuilt"][1], 3),
            },
            "ratio_open_rebuilt_over_columns": round(best["rebuilt"][0] / best["columns"][0], 2),
            "checkpoint_bytes": whole,
            "checkpoint_column_bytes": columns,
            "checkpoint_payload_bytes": payloads,
            "first_checkpoint_writer_pause_s": round(full_pause, 4),
            **after,
            "host": {**host_info(), "load1": _load()},
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default=None, help="folder holding debian-minilm/ (default: $VDB_DATASETS)"
    )
    parser.add_argument("--only", default="burst,single")
    parser.add_argument("--n", type=int, default=None, help="base vectors (default: all)")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--open-n", type=int, default=500_000, help="points of the open measure")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    ds = debian_minilm(n=args.n, data=args.data) if only & {"burst", "single"} else None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="vdb-bench-segments-"))
    try:
        if "burst" in only:
            bench_burst(ds, workdir)
        if "single" in only:
            bench_single(ds, workdir, args.threads, args.seconds)
        if "open" in only:
            bench_open(workdir, args.open_n)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
