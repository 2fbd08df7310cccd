"""Storage benchmark: durable upserts, group commit, recovery, snapshots, checkpoint pauses.

    python -m bench.ingest --quick
    python -m bench.ingest --only upsert,concurrent --rate-n 100000
    python -m bench.ingest --only recovery --n 1000000

Every line carries its anchor from the same run: hnswlib ``add_items`` with no
durability, batched upserts, a bare LMDB commit loop, ``shutil.copytree``, or
the same search loop without a checkpoint.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    REPO,
    dir_size,
    emit,
    host_info,
    log,
    percentiles,
    random_unit_vectors,
    subprocess_env,
)

DIM = 128
BATCH = 1000
COLLECTION = "bench"
INDEX_PARAMS = {"M": 16, "ef_construction": 128}


def _open(path: str | Path, **options: Any):
    import vdb

    return vdb.open(str(path), **options)


def _create(db, name: str = COLLECTION, dim: int = DIM):
    return db.create_collection(name, dim=dim, metric="cosine", **INDEX_PARAMS)


def _warm(db) -> None:
    """Compile the kernels (Numba) before anything is timed."""
    col = _create(db, "warm")
    vectors = random_unit_vectors(2 * BATCH, DIM, seed=99)
    col.upsert(list(range(BATCH)), vectors[:BATCH])
    col.upsert([0], vectors[:1])
    col.search(vectors[0], k=10)
    col.search(vectors[:4], k=10)
    db.drop_collection("warm")


def _upsert_batches(col, vectors: np.ndarray, id_offset: int = 0, batch: int = BATCH) -> float:
    start = time.perf_counter()
    for lo in range(0, vectors.shape[0], batch):
        hi = min(lo + batch, vectors.shape[0])
        col.upsert(list(range(id_offset + lo, id_offset + hi)), vectors[lo:hi])
    return time.perf_counter() - start


def _top_id(hits) -> Any:
    return hits[0].id if hits else None


def _hnswlib_add(vectors: np.ndarray, threads: int, batch: int = BATCH) -> float:
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
    index.init_index(max_elements=vectors.shape[0], random_seed=1, **INDEX_PARAMS)
    start = time.perf_counter()
    for lo in range(0, vectors.shape[0], batch):
        hi = min(lo + batch, vectors.shape[0])
        index.add_items(vectors[lo:hi], np.arange(lo, hi), num_threads=threads)
    return time.perf_counter() - start


# ------------------------------------------------------------------ upsert


def bench_upsert(n: int, workdir: Path) -> float:
    """Durable embedded upsert rate in batches of 1,000 vs hnswlib add_items (no durability)."""
    vectors = random_unit_vectors(n, DIM, seed=1)
    with _open(workdir / "upsert") as db:
        _warm(db)
        col = _create(db)
        log(f"upsert: {n} x {DIM} in batches of {BATCH}, durable")
        elapsed = _upsert_batches(col, vectors)
        searchable = _top_id(col.search(vectors[-1], k=1)) == n - 1
        count = col.count()
    rate = n / elapsed
    log(f"upsert: {rate:.0f} vectors/s; hnswlib anchor")
    anchor2 = n / _hnswlib_add(vectors, threads=2)
    anchor1 = n / _hnswlib_add(vectors, threads=1)
    emit(
        {
            "bench": "ingest",
            "measure": "durable_upsert_rate",
            "system": "vdb",
            "n": n,
            "dim": DIM,
            "batch": BATCH,
            "metric": "cosine",
            **INDEX_PARAMS,
            "vectors_per_s": rate,
            "seconds": elapsed,
            "count_after": count,
            "last_vector_top1_is_itself": searchable,
            "anchor": {
                "system": "hnswlib add_items, same batches, no durability",
                "vectors_per_s_2threads": anchor2,
                "vectors_per_s_1thread": anchor1,
            },
            "ratio_vs_hnswlib_2threads": rate / anchor2,
            "ratio_vs_hnswlib_1thread": rate / anchor1,
            "target": ">= 0.8x hnswlib",
            "host": host_info(),
        }
    )
    return rate


# -------------------------------------------------------- group commit


def lmdb_single_commit_rate(workdir: Path, seconds: float) -> dict[str, Any]:
    """A bare LMDB env, one 512-byte put per write transaction, default (durable) sync."""
    import lmdb

    path = workdir / "lmdb-floor"
    path.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=1 << 30)
    value = os.urandom(DIM * 4)
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        with env.begin(write=True) as txn:
            txn.put(done.to_bytes(8, "big"), value)
        done += 1
    elapsed = time.perf_counter() - start
    env.close()
    return {"commits_per_s": done / elapsed, "commits": done, "value_bytes": len(value)}


def bench_concurrent(n: int, threads: int, workdir: Path, floor_seconds: float) -> None:
    """Single-vector upserts from many threads (group commit) vs batched upserts, same vectors."""
    vectors = random_unit_vectors(n, DIM, seed=2)
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    with _open(workdir / "concurrent") as db:
        _warm(db)
        single = _create(db, "single")
        batched = _create(db, "batched")

        def worker(offset: int) -> None:
            mine = []
            try:
                for i in range(offset, n, threads):
                    t0 = time.perf_counter()
                    single.upsert([i], vectors[i : i + 1])
                    mine.append(time.perf_counter() - t0)
            except BaseException as exc:  # reported below
                errors.append(exc)
            with lock:
                latencies.extend(mine)

        log(f"concurrent: {n} single-vector upserts from {threads} threads")
        workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        single_s = time.perf_counter() - start
        if errors:
            raise errors[0]
        stats = db.stats()
        grouping = {
            k: stats.get(k)
            for k in ("group_commit_mean", "group_commit_max", "wal_txns_committed")
            if k in stats
        }
        log("concurrent: the same vectors in batches of 1,000")
        batched_s = _upsert_batches(batched, vectors)
        counts = (single.count(), batched.count())
    log("concurrent: bare LMDB single-record commit rate")
    floor = lmdb_single_commit_rate(workdir, floor_seconds)
    single_rate, batched_rate = n / single_s, n / batched_s
    emit(
        {
            "bench": "ingest",
            "measure": "group_commit",
            "system": "vdb",
            "n": n,
            "dim": DIM,
            "threads": threads,
            "single_upserts_per_s": single_rate,
            "single_latency_ms": {k: v * 1e3 for k, v in percentiles(latencies).items()},
            "counts_after": counts,
            "core_group_commit_figures": grouping,
            "anchor": {
                "system": "vdb batched upserts (1,000 per call), same vectors, same run",
                "vectors_per_s": batched_rate,
            },
            "ratio_single_over_batched": single_rate / batched_rate,
            "target": ">= 0.8x batched",
            "floor": {"system": "bare LMDB, one put per write txn, default sync", **floor},
            "ratio_single_over_lmdb_floor": single_rate / floor["commits_per_s"],
            "host": host_info(),
        }
    )


# ----------------------------------------------------------------- recovery

_INGEST_CHILD = r"""
import json, sys, time
import numpy as np
import vdb
path, total, seed, options = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
db = vdb.open(path, **options)
col = db.create_collection("bench", dim=128, metric="cosine", M=16, ef_construction=128)
print(json.dumps({"ready": True}), flush=True)
start = time.perf_counter()
for lo in range(0, total, 1000):
    rng = np.random.default_rng(seed + lo)
    vectors = rng.normal(size=(1000, 128)).astype(np.float32)
    col.upsert(list(range(lo, lo + 1000)), vectors)
    print(json.dumps({"acked": lo + 1000, "t": time.perf_counter() - start}), flush=True)
print(json.dumps({"done": True}), flush=True)
time.sleep(3600)
"""

_RECOVER_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import vdb
t_import = time.perf_counter()
path, acked, seed, options = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
db = vdb.open(path, **options)
t_open = time.perf_counter()
col = db.collection("bench")
last_lo = acked - 1000
rng = np.random.default_rng(seed + last_lo)
vectors = rng.normal(size=(1000, 128)).astype(np.float32)
hits = col.search(vectors[-1], k=1)
t_first = time.perf_counter()
count = col.count()
stats = {}
try:
    stats = db.stats()
except Exception as exc:
    stats = {"error": repr(exc)}
print(json.dumps({
    "import_s": t_import - t0,
    "open_s": t_open - t_import,
    "open_to_first_answer_s": t_first - t_import,
    "count": count,
    "last_acked_found": bool(hits) and hits[0].id == acked - 1,
    "stats": stats,
}, default=str), flush=True)
db.close()
"""


def _checkpoint_options() -> dict[str, Any]:
    """The checkpoint settings ``vdb.open`` accepts (read from its signature), with defaults."""
    try:
        from vdb.db import Database

        params = inspect.signature(Database.__init__).parameters
    except Exception:
        return {}
    return {
        name: (p.default if p.default is not inspect.Parameter.empty else None)
        for name, p in params.items()
        if "checkpoint" in name
    }


def _recovery_figures(stats: dict[str, Any]) -> dict[str, Any]:
    """The recovery figures the core reports in ``db.stats()``."""
    keys = ("recovery_s", "recovered_records", "wal_records_pending", "disk_bytes", "checkpoints")
    return {k: stats.get(k) for k in keys if k in stats}


def _recovery_once(n: int, workdir: Path, options: dict[str, Any], label: str) -> dict[str, Any]:
    data = workdir / f"recovery-{label}"
    shutil.rmtree(data, ignore_errors=True)
    seed = 1000
    env = subprocess_env()
    log(f"recovery[{label}]: child ingests {n} x {DIM} (options {options}); SIGKILL at {n} acked")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _INGEST_CHILD,
            str(data),
            str(n + 50 * BATCH),
            str(seed),
            json.dumps(options),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO),
    )
    acked, ingest_t = 0, 0.0
    try:
        assert child.stdout is not None
        for line in child.stdout:
            msg = json.loads(line)
            if "acked" in msg:
                acked, ingest_t = msg["acked"], msg["t"]
                if acked % 100_000 == 0:
                    log(f"recovery[{label}]: {acked} acked ({acked / ingest_t:.0f}/s)")
                if acked >= n:
                    break
            if msg.get("done"):
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    killed_size = dir_size(data)
    log(f"recovery[{label}]: killed at {acked} acked; recovering in a new process")
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _RECOVER_CHILD,
            str(data),
            str(acked),
            str(seed),
            json.dumps(options),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        timeout=3600,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"recovery child failed: {proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    figures = _recovery_figures(result.get("stats", {}))
    replayed = figures.get("recovered_records")
    recovery_s = figures.get("recovery_s")
    shutil.rmtree(data, ignore_errors=True)
    return {
        "options": options,
        "acked_at_kill": acked,
        "ingest_vectors_per_s_before_kill": acked / ingest_t if ingest_t else None,
        "data_dir_bytes_at_kill": killed_size,
        "recovered_count": result["count"],
        "no_acked_write_lost": result["count"] >= acked and result["last_acked_found"],
        "open_s": result["open_s"],
        "open_to_first_answer_s": result["open_to_first_answer_s"],
        "import_s": result["import_s"],
        "process_wall_s": wall,
        "wal_records_replayed": replayed,
        "recovery_s_reported_by_core": recovery_s,
        "replay_vectors_per_s": (replayed * BATCH / recovery_s)
        if replayed and recovery_s
        else None,
        "replay_rate_note": "one WAL record = one upsert batch of 1,000 here; recovery_s includes loading the checkpoint",
        "stats_after_open": figures,
    }


def bench_recovery(
    n: int, workdir: Path, tradeoff: list[str], tradeoff_n: int | None = None
) -> None:
    """SIGKILL during sustained ingest, then time open → first answer (default settings)."""
    available = _checkpoint_options()
    result = _recovery_once(n, workdir, {}, "default")
    emit(
        {
            "bench": "ingest",
            "measure": "recovery_after_sigkill",
            "system": "vdb",
            "n": n,
            "dim": DIM,
            "batch": BATCH,
            "checkpoint_settings": "defaults " + json.dumps(available, default=str),
            **result,
            "host": host_info(),
        }
    )
    for spec in tradeoff:
        options = json.loads(spec)
        unknown = [k for k in options if k not in available]
        if unknown:
            log(f"recovery: vdb.open does not take {unknown}; trade-off point {spec} skipped")
            continue
        result = _recovery_once(tradeoff_n or n, workdir, options, "tradeoff")
        n_used = tradeoff_n or n
        emit(
            {
                "bench": "ingest",
                "measure": "recovery_checkpoint_tradeoff",
                "system": "vdb",
                "n": n_used,
                "dim": DIM,
                **result,
                "host": host_info(),
            }
        )


# ----------------------------------------------------------------- snapshot


def _answers(col, queries: np.ndarray) -> list[list[Any]]:
    return [[hit.id for hit in hits] for hits in col.search(queries, k=10)]


def bench_snapshot(n: int, workdir: Path) -> None:
    """db.snapshot and vdb.restore of n x 128 vs shutil.copytree of the data directory."""
    import vdb

    vectors = random_unit_vectors(n, DIM, seed=3)
    queries = random_unit_vectors(100, DIM, seed=4)
    data = workdir / "snap-data"
    snap = workdir / "snap.vdbsnap"
    restored = workdir / "snap-restored"
    copy = workdir / "snap-copy"
    with _open(data) as db:
        col = _create(db)
        log(f"snapshot: loading {n} x {DIM}")
        _upsert_batches(col, vectors)
        before = _answers(col, queries)
        log("snapshot: db.snapshot")
        t0 = time.perf_counter()
        manifest = db.snapshot(str(snap))
        snapshot_s = time.perf_counter() - t0
        log("snapshot: shutil.copytree of the data directory (database open, idle)")
        t0 = time.perf_counter()
        shutil.copytree(data, copy)
        copy_s = time.perf_counter() - t0
    snapshot_bytes = dir_size(snap)
    copy_bytes = dir_size(copy)
    data_bytes = dir_size(data)
    log("snapshot: vdb.restore")
    t0 = time.perf_counter()
    vdb.restore(str(snap), str(restored))
    restore_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with _open(restored) as db:
        open_s = time.perf_counter() - t0
        col = db.collection(COLLECTION)
        after = _answers(col, queries)
        restored_count = col.count()
    emit(
        {
            "bench": "ingest",
            "measure": "snapshot_restore",
            "system": "vdb",
            "n": n,
            "dim": DIM,
            "snapshot_s": snapshot_s,
            "snapshot_bytes": snapshot_bytes,
            "restore_s": restore_s,
            "open_restored_s": open_s,
            "restored_count": restored_count,
            "restored_answers_identical": before == after,
            "data_dir_bytes": data_bytes,
            "manifest_keys": sorted(manifest) if isinstance(manifest, dict) else None,
            "anchor": {
                "system": "shutil.copytree of the data directory",
                "seconds": copy_s,
                "bytes": copy_bytes,
            },
            "ratio_snapshot_time_over_copy": snapshot_s / copy_s if copy_s else None,
            "ratio_snapshot_size_over_copy": snapshot_bytes / copy_bytes if copy_bytes else None,
            "host": host_info(),
        }
    )
    for path in (snap, restored, copy, data):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


# ------------------------------------------------------- checkpoint pause


def _checkpoint_call(db):
    for name in ("checkpoint", "checkpoint_now", "force_checkpoint"):
        fn = getattr(db, name, None)
        if callable(fn):
            return name, fn
    return None, None


def bench_pause(n: int, workdir: Path, seconds: float) -> None:
    """Max gap between successive search completions while a checkpoint runs vs without."""
    vectors = random_unit_vectors(n, DIM, seed=5)
    queries = random_unit_vectors(256, DIM, seed=6)
    with _open(workdir / "pause", checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        _warm(db)
        col = _create(db)
        log(f"pause: loading {n} x {DIM}")
        _upsert_batches(col, vectors)
        name, checkpoint = _checkpoint_call(db)
        if checkpoint is None:
            log("pause: the database has no checkpoint() call; measured with close() instead")
        stop = threading.Event()
        stamps: list[float] = []

        def searcher() -> None:
            i = 0
            while not stop.is_set():
                col.search(queries[i % len(queries)], k=10)
                stamps.append(time.perf_counter())
                i += 1

        thread = threading.Thread(target=searcher)
        thread.start()
        time.sleep(0.2)
        base_start = time.perf_counter()
        time.sleep(seconds)
        base_end = time.perf_counter()
        checkpoints = []
        reported: list[Any] = []
        extra = random_unit_vectors(3 * BATCH, DIM, seed=8)
        for round_ in range(3):
            if round_:  # give the next checkpoint something to write
                col.upsert(list(range(n + (round_ - 1) * BATCH, n + round_ * BATCH)), extra[:BATCH])
                time.sleep(0.2)
            t0 = time.perf_counter()
            figures = checkpoint() if checkpoint is not None else None
            t1 = time.perf_counter()
            reported.append(figures)
            checkpoints.append((t0, t1))
            time.sleep(0.3)
        stop.set()
        thread.join()
        stats = db.stats()

    def gaps(lo: float, hi: float) -> np.ndarray:
        ts = np.asarray([t for t in stamps if lo <= t <= hi])
        return np.diff(ts) if ts.size > 1 else np.asarray([0.0])

    # where the longest gap sits inside its checkpoint (ms after the checkpoint started)
    worst = (0.0, None)
    for t0, t1 in checkpoints:
        ts = np.asarray([t for t in stamps if t0 <= t <= t1 + 0.05])
        if ts.size > 1:
            i = int(np.argmax(np.diff(ts)))
            if ts[i + 1] - ts[i] > worst[0]:
                worst = (float(ts[i + 1] - ts[i]), (float(ts[i] - t0) * 1e3, float(t1 - t0) * 1e3))
    baseline = gaps(base_start, base_end)
    during = np.concatenate([gaps(t0, t1 + 0.05) for t0, t1 in checkpoints])
    emit(
        {
            "bench": "ingest",
            "measure": "checkpoint_search_pause",
            "system": "vdb",
            "n": n,
            "dim": DIM,
            "checkpoint_call": f"db.{name}()" if name else None,
            "checkpoint_s": [t1 - t0 for t0, t1 in checkpoints],
            "max_gap_during_checkpoint_ms": float(during.max()) * 1e3,
            "p99_gap_during_checkpoint_ms": float(np.percentile(during, 99)) * 1e3,
            "searches_during_checkpoints": int(during.size),
            "writer_pause_s_reported_by_core": stats.get("max_checkpoint_pause_s"),
            "checkpoint_figures": reported,
            "longest_gap_starts_ms_into_checkpoint": worst[1][0] if worst[1] else None,
            "that_checkpoint_ms": worst[1][1] if worst[1] else None,
            "anchor": {
                "system": "the same search loop with no checkpoint running",
                "max_gap_ms": float(baseline.max()) * 1e3,
                "p99_gap_ms": float(np.percentile(baseline, 99)) * 1e3,
                "searches": int(baseline.size),
            },
            "host": host_info(),
        }
    )


# --------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="upsert,concurrent,recovery,snapshot,pause")
    parser.add_argument(
        "--n", type=int, default=1_000_000, help="vectors ingested before the SIGKILL"
    )
    parser.add_argument("--rate-n", type=int, default=100_000, help="vectors for the upsert rate")
    parser.add_argument("--single-n", type=int, default=20_000, help="single-vector upserts")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--snapshot-n", type=int, default=100_000)
    parser.add_argument("--pause-n", type=int, default=100_000)
    parser.add_argument("--pause-seconds", type=float, default=3.0)
    parser.add_argument("--floor-seconds", type=float, default=3.0)
    parser.add_argument(
        "--tradeoff",
        action="append",
        default=None,
        help="extra recovery runs with vdb.open options as JSON, e.g. '{\"checkpoint_interval_s\": 5}'",
    )
    parser.add_argument(
        "--tradeoff-n", type=int, default=None, help="vectors for the trade-off runs (default --n)"
    )
    parser.add_argument("--workdir", default=None, help="where data goes (default: a temp dir)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 20_000)
        args.rate_n = min(args.rate_n, 10_000)
        args.single_n = min(args.single_n, 2_000)
        args.snapshot_n = min(args.snapshot_n, 10_000)
        args.pause_n = min(args.pause_n, 10_000)
        args.pause_seconds = min(args.pause_seconds, 1.0)
        args.floor_seconds = min(args.floor_seconds, 1.0)
    args.only = [s for s in args.only.split(",") if s]
    args.tradeoff = args.tradeoff or []
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vdb-bench-ingest-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        if "upsert" in args.only:
            bench_upsert(args.rate_n, workdir)
        if "concurrent" in args.only:
            bench_concurrent(args.single_n, args.threads, workdir, args.floor_seconds)
        if "recovery" in args.only:
            bench_recovery(args.n, workdir, args.tradeoff, args.tradeoff_n)
        if "snapshot" in args.only:
            bench_snapshot(args.snapshot_n, workdir)
        if "pause" in args.only:
            bench_pause(args.pause_n, workdir, args.pause_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
