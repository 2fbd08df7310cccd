"""Scale benchmark: loading millions of vectors, the checkpoints meanwhile, and reopening.

    python -m bench.scale --n 2000000                 # 2M x 128 clustered, batches of 20k
    python -m bench.scale --n 200000 --quick          # a short run
    python -m bench.scale --n 2000000 --only open --workdir W --repeat 5
                                                      # reopen W/vdb (left by --keep) 5 times
    python -m bench.scale --n 300000 --only graphs --seal 100000   # one graph vs sealed graphs

Lines (anchors from the same run):

* ``load``: durable + searchable upserts of ``n`` clustered 128-d vectors in
  batches of 20,000 through ``vdb.open`` (default checkpoint settings), the
  acknowledged rate over every 0.5M (``--step``), the time until everything is
  indexed, every checkpoint's writer pause and duration and the longest gap
  between two answers of a searching thread during it, against hnswlib
  ``add_items`` (2 threads) of the same vectors and batches.
* ``open_after_close``: a fresh process opens the data directory left by a
  clean close and answers one query: open -> first correct answer (the last vector
  written finds itself at ef 256; at the default ef, 3% of these clustered points miss
  themselves at 2M, which is recall, not a lost point).
* ``graphs``: the same ``n`` points in one graph (seal size above ``n``) and in sealed
  graphs of ``--seal`` points: the bytes written and the time of a checkpoint after
  ``--churn`` more upserts and a tenth as many deletes (the first checkpoint wrote
  everything), and single-query QPS and recall@10 at ef 64 (exact top-10 by numpy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO, emit, log, subprocess_env

DIM = 128
BATCH = 20_000
PARAMS = {"M": 16, "ef_construction": 128}
COLLECTION = "scale"


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def clustered(n: int, dim: int = DIM, centres: int = 1000, seed: int = 7) -> np.ndarray:
    """Gaussian mixture (centres N(0, 3), unit noise), float32, generated in slices."""
    rng = np.random.default_rng(seed)
    centre_vectors = rng.normal(0.0, 3.0, size=(centres, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        which = rng.integers(0, centres, size=hi - lo)
        out[lo:hi] = centre_vectors[which] + rng.standard_normal((hi - lo, dim), np.float32)
    return out


def _hnswlib_build(vectors: np.ndarray, batch: int) -> float:
    import hnswlib

    n, dim = vectors.shape
    index = hnswlib.Index(space="l2", dim=dim)
    index.init_index(max_elements=n, random_seed=1, **PARAMS)
    index.set_num_threads(2)
    started = time.perf_counter()
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        index.add_items(vectors[lo:hi], np.arange(lo, hi))
    return time.perf_counter() - started


class _Watch:
    """A searching thread (one query, then 5 ms of sleep) and a poller of the checkpoint figures."""

    def __init__(self, db: Any, col: Any, queries: np.ndarray) -> None:
        self.db, self.col, self.queries = db, col, queries
        self.stop = threading.Event()
        self.answers: list[float] = []  # monotonic time of each answer
        self.checkpoints: list[dict[str, Any]] = []
        self._threads = [
            threading.Thread(target=self._search, daemon=True),
            threading.Thread(target=self._poll, daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _search(self) -> None:
        i = 0
        while not self.stop.is_set():
            self.col.search(self.queries[i % len(self.queries)], k=10, with_payload=False)
            self.answers.append(time.monotonic())
            i += 1
            time.sleep(0.005)

    def _poll(self) -> None:
        seen = 0
        while not self.stop.is_set():
            s = self.db.stats()
            if s["checkpoints"] > seen:
                seen = s["checkpoints"]
                end = time.monotonic() - (time.time() - s["last_checkpoint_at"])
                self.checkpoints.append(
                    {
                        "points": s["collections"][COLLECTION]["points"],
                        "duration_s": s["last_checkpoint_duration_s"],
                        "pause_s": s["last_checkpoint_pause_s"],
                        "bytes": s["last_checkpoint_bytes"],
                        "bytes_written": s["last_checkpoint_bytes_written"],
                        "end": end,
                    }
                )
            time.sleep(0.05)

    def finish(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Each checkpoint with the longest search gap overlapping it, and the gaps outside
        every checkpoint (the anchor: the same search loop while no checkpoint runs)."""
        self.stop.set()
        for t in self._threads:
            t.join()
        answers = np.asarray(self.answers)
        gaps = np.diff(answers) - 0.005  # the 5 ms sleep subtracted
        during = np.zeros(len(gaps), bool)
        out = []
        for c in self.checkpoints:
            hi = c.pop("end")
            lo = hi - (c["duration_s"] or 0.0)
            overlap = (answers[1:] > lo) & (answers[:-1] < hi)
            during |= overlap
            c["search_gap_ms"] = float(gaps[overlap].max()) * 1e3 if overlap.any() else None
            out.append(c)
        outside = gaps[~during]
        anchor = {
            "searches": len(answers),
            "max_gap_outside_checkpoints_ms": float(outside.max()) * 1e3 if outside.size else None,
            "p99_gap_outside_checkpoints_ms": float(np.percentile(outside, 99)) * 1e3
            if outside.size
            else None,
            "p99_gap_during_checkpoints_ms": float(np.percentile(gaps[during], 99)) * 1e3
            if during.any()
            else None,
        }
        return out, anchor


def bench_load(n: int, step: int, batch: int, workdir: Path, keep: bool) -> None:
    log(f"load: generating {n} x {DIM} clustered vectors")
    vectors = clustered(n)
    queries = vectors[:: max(1, n // 1000)][:1000].copy()
    log("load: hnswlib add_items, 2 threads (anchor)")
    hnsw_s = _hnswlib_build(vectors, batch)
    log(f"load: hnswlib {n / hnsw_s:.0f} vectors/s")

    import vdb

    path = workdir / "vdb"
    shutil.rmtree(path, ignore_errors=True)
    db = vdb.open(path)
    warm = db.create_collection("warm", dim=DIM, metric="l2", **PARAMS)
    warm.upsert(list(range(2000)), vectors[:2000])
    warm.wait_indexed()
    db.drop_collection("warm")
    col = db.create_collection(COLLECTION, dim=DIM, metric="l2", **PARAMS)
    watch = _Watch(db, col, queries)
    watch.start()
    rates = []
    started = time.perf_counter()
    mark, mark_t = 0, started
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        col.upsert(list(range(lo, hi)), vectors[lo:hi])
        if hi - mark >= step or hi == n:
            now = time.perf_counter()
            rates.append(
                {"upto": hi, "vectors_per_s": (hi - mark) / (now - mark_t), "load1": _load()}
            )
            log(f"load: {hi} acknowledged, {(hi - mark) / (now - mark_t):.0f}/s")
            mark, mark_t = hi, now
    acked_s = time.perf_counter() - started
    col.wait_indexed()
    indexed_s = time.perf_counter() - started
    checkpoints, gap_anchor = watch.finish()
    found = col.search(vectors[n - 1], k=1, ef=256, with_payload=False)
    top1_ok = bool(found) and found[0].id == n - 1
    count = col.count()
    t = time.perf_counter()
    db.close()
    close_s = time.perf_counter() - t
    pauses = [c["pause_s"] for c in checkpoints if c["pause_s"] is not None]
    gaps = [c["search_gap_ms"] for c in checkpoints if c["search_gap_ms"] is not None]
    late = [c for c in checkpoints if c["points"] >= 0.75 * n] or checkpoints[-3:]
    emit(
        {
            "bench": "scale",
            "measure": "load",
            "system": "vdb",
            "n": n,
            "dim": DIM,
            "batch": batch,
            "metric": "l2",
            **PARAMS,
            "acknowledged_s": acked_s,
            "indexed_s": indexed_s,
            "acknowledged_vectors_per_s": n / acked_s,
            "rates": rates,
            "last_over_first_rate": rates[-1]["vectors_per_s"] / rates[0]["vectors_per_s"],
            "count": count,
            "last_vector_top1_is_itself": top1_ok,
            "close_s": close_s,
            "checkpoints": len(checkpoints),
            "max_checkpoint_pause_ms": max(pauses) * 1e3 if pauses else None,
            "max_search_gap_during_checkpoint_ms": max(gaps) if gaps else None,
            "search_gaps": gap_anchor,
            "late_checkpoints": [
                {
                    k: v
                    for k, v in c.items()
                    if k in ("points", "duration_s", "pause_s", "bytes_written", "search_gap_ms")
                }
                for c in late
            ],  # fmt: skip
            "all_checkpoints": checkpoints,
            "anchor": {"system": "hnswlib add_items, 2 threads, same batches", "build_s": hnsw_s},
            "indexed_over_hnswlib": indexed_s / hnsw_s,
            "target": "indexed <= 1.2x hnswlib; last/first rate >= 0.6; pause, gap <= 50 ms",
            "load1": _load(),
        }
    )
    open_after_close(path, n, vectors[n - 1])
    if not keep:
        shutil.rmtree(path, ignore_errors=True)


_OPEN_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import vdb
t1 = time.perf_counter()
db = vdb.open(sys.argv[1])
t2 = time.perf_counter()
col = db.collection(sys.argv[2])
probe = np.asarray(json.loads(sys.argv[3]), np.float32)
hits = col.search(probe, k=1, ef=256, with_payload=False)
t3 = time.perf_counter()
stats = db.stats()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "open_to_first_answer_s": t3 - t1,
                  "top1": hits[0].id if hits else None, "count": col.count(),
                  "recovery_s": stats["recovery_s"],
                  "recovered_records": stats["recovered_records"]}))
db.close(checkpoint=False)
"""


def evict(path: Path) -> int:
    """Drop the data directory's files from the page cache (``posix_fadvise`` DONTNEED on
    each: only these files, not the whole cache of a shared machine); returns their bytes."""
    total = 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total


def open_after_close(path: Path, n: int, probe: np.ndarray, cold: bool = False) -> None:
    log("open: a fresh process opens the closed data directory")
    if cold:
        evict(path)
    proc = subprocess.run(
        [sys.executable, "-c", _OPEN_CHILD, str(path), COLLECTION, json.dumps(probe.tolist())],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=str(REPO),
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"open child failed: {proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    emit(
        {
            "bench": "scale",
            "measure": "open_after_close",
            "system": "vdb",
            "n": n,
            "dim": DIM,
            **result,
            "page_cache": "evicted" if cold else "warm",
            "first_answer_correct": result["top1"] == n - 1 and result["count"] == n,
            "target": "open -> first answer <= 2 s at 2M x 128",
            "load1": _load(),
        }
    )


def bench_graphs(n: int, seal: int, churn: int, batch: int, workdir: Path) -> None:
    import vdb

    x = clustered(n + churn)
    rng = np.random.default_rng(3)
    queries = x[rng.choice(n, 300, replace=False)] + rng.standard_normal((300, DIM)).astype(
        np.float32
    )
    truth = []
    for q in queries:  # exact top-10 by squared distance
        d = ((x[:n] - q) ** 2).sum(1)
        truth.append(set(np.argpartition(d, 10)[:10].tolist()))
    for label, seal_size in (("one_graph", 1 << 30), ("sealed", seal)):
        path = workdir / f"graphs-{label}"
        shutil.rmtree(path, ignore_errors=True)
        with vdb.open(path, checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
            col = db.create_collection(
                COLLECTION, dim=DIM, metric="l2", graph_seal_size=seal_size, **PARAMS
            )
            started = time.perf_counter()
            for lo in range(0, n, batch):
                col.upsert(list(range(lo, min(n, lo + batch))), x[lo : min(n, lo + batch)])
            col.wait_indexed()
            build_s = time.perf_counter() - started
            db.checkpoint()
            first = db.stats()
            for lo in range(n, n + churn, batch):
                hi = min(n + churn, lo + batch)
                col.upsert(list(range(lo, hi)), x[lo:hi])
            col.delete(rng.choice(n, churn // 10, replace=False).tolist())
            col.wait_indexed()
            started = time.perf_counter()
            db.checkpoint()
            checkpoint_s = time.perf_counter() - started
            second = db.stats()
            graphs = col.info()["segments"]["graphs"]
            col.search(queries[0], k=10)
            started = time.perf_counter()
            hits = [col.search(q, k=10, ef=64, with_payload=False) for q in queries]
            qps = len(queries) / (time.perf_counter() - started)
            found = [len({h.id for h in hs} & t) / 10 for hs, t in zip(hits, truth, strict=True)]
            recall = float(np.mean(found))
            emit(
                {
                    "bench": "graphs",
                    "config": label,
                    "n": n,
                    "seal": seal_size if seal_size < n else None,
                    "graphs": len(graphs),
                    "sealed": sum(1 for g in graphs if g["sealed"]),
                    "build_s": round(build_s, 2),
                    "first_checkpoint_bytes_written": first["last_checkpoint_bytes_written"],
                    "first_checkpoint_s": round(first["last_checkpoint_duration_s"], 3),
                    "churn": churn,
                    "checkpoint_bytes_written": second["last_checkpoint_bytes_written"],
                    "checkpoint_bytes": second["last_checkpoint_bytes"],
                    "checkpoint_s": round(checkpoint_s, 3),
                    "single_qps_ef64": round(qps, 1),
                    "recall_at_10": round(recall, 4),
                    "load1": _load(),
                }
            )
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--step", type=int, default=500_000, help="rate reported per step")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--only", default="load", help="load | open (needs --workdir) | graphs")
    parser.add_argument("--seal", type=int, default=100_000, help="graphs: points per graph")
    parser.add_argument(
        "--churn", type=int, default=20_000, help="graphs: upserts between checkpoints"
    )
    parser.add_argument("--repeat", type=int, default=1, help="open: fresh processes, one each")
    parser.add_argument(
        "--cold", action="store_true", help="open: evict the data files from the page cache first"
    )
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--quick", action="store_true", help="200k vectors, steps of 50k")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.step = min(args.n, 200_000), min(args.step, 50_000)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="vdb-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.only == "open":
        probe = clustered(args.n)[args.n - 1]
        for _ in range(args.repeat):
            open_after_close(workdir / "vdb", args.n, probe, cold=args.cold)
    elif args.only == "graphs":
        bench_graphs(args.n, args.seal, args.churn, args.batch, workdir)
    else:
        bench_load(args.n, args.step, args.batch, workdir, args.keep)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
