"""Hybrid query cost: dense + sparse prefetch of 100 each fused by RRF, against the two alone.

One collection with the default dense vector (the debian-minilm MiniLM embeddings,
cosine) and a sparse vector ``text`` (hashed-token vectors of the same texts, as in
``bench/sparse.py``), indexed before timing. Every query runs through the Query API
executor the HTTP layer uses (``vdb.http.hybrid.run`` on a parsed ``QueryRequest``; JSON
parsing and the network are left out), single query, in the same run, query by query
with the cases in turn (rotated), wall time and the thread's CPU time of each:

* ``dense``: ``{"query": v, "limit": 100}``; ``sparse``: ``{"query": {"indices",
  "values"}, "using": "text", "limit": 100}`` (the work of each prefetch);
* ``hybrid``: ``{"prefetch": [dense 100, sparse 100], "query": {"fusion": "rrf"},
  "limit": 10}``;
* ``dense10`` / ``sparse10``: the same single queries with ``limit`` 10.

``ratio`` = hybrid p50 / (dense p50 + sparse p50), the target being at most 1.3;
``ratio_cpu`` the same with CPU time (steadier on a shared, loaded box);
``ratio_vs_top10`` divides by the two top-10 queries instead. One JSON line per run,
with the host load.

    PYTHONPATH=. python -m bench.hybrid [--data DIR] [--n 50000] [--queries 100] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import vdb
from bench.common import dataset_dir, emit, host_info, log, percentiles
from bench.sparse import documents, vectorize
from vdb.http import hybrid
from vdb.http import query_api as qa


def run(args: argparse.Namespace) -> None:
    data = Path(args.data) if args.data else dataset_dir("debian-minilm")
    base = np.load(data / "base.npy", mmap_mode="r")
    n = min(args.n, base.shape[0])
    dense = np.ascontiguousarray(base[:n], np.float32)
    texts = documents((data / "base.txt").read_text().splitlines(), n)
    qvec = np.load(data / "queries.npy").astype(np.float32)[: args.queries]
    qtexts = (data / "queries.txt").read_text().splitlines()[: args.queries]
    log(f"vectorising {n} texts")
    sparse = [vectorize(t) for t in texts]
    with tempfile.TemporaryDirectory() as tmp, vdb.open(Path(tmp) / "db") as db:
        col = db.create_collection(
            "h",
            vectors={"": {"dim": dense.shape[1], "metric": "cosine"}},
            sparse_vectors={"text": {}},
        )
        t0 = time.perf_counter()
        for lo in range(0, n, 5000):
            hi = min(n, lo + 5000)
            col.upsert(
                list(range(lo, hi)),
                vectors={
                    "": dense[lo:hi],
                    "text": [{"indices": i, "values": v} for i, v in sparse[lo:hi]],
                },
            )
        col.wait_indexed()
        load_s = time.perf_counter() - t0
        log(f"loaded and indexed in {load_s:.1f} s")

        def body(i: int, kind: str, limit: int) -> qa.QueryRequest:
            idx, val = vectorize(qtexts[i])
            dq = qvec[i].tolist()
            sq = {"indices": idx.tolist(), "values": val.tolist()}
            if kind == "dense":
                raw = {"query": dq, "limit": limit}
            elif kind == "sparse":
                raw = {"query": sq, "using": "text", "limit": limit}
            else:
                raw = {
                    "prefetch": [
                        {"query": dq, "limit": 100},
                        {"query": sq, "using": "text", "limit": 100},
                    ],
                    "query": {"fusion": "rrf"},
                    "limit": 10,
                }
            return qa.parse_query_request(raw)

        cases = {
            "dense": ("dense", 100),
            "sparse": ("sparse", 100),
            "hybrid": ("hybrid", 10),
            "dense10": ("dense", 10),
            "sparse10": ("sparse", 10),
        }
        requests = {
            name: [body(i, kind, limit) for i in range(len(qtexts))]
            for name, (kind, limit) in cases.items()
        }
        for reqs in requests.values():  # warm every path
            for r in reqs[:5]:
                hybrid.run(col, r)
        wall: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        names = list(cases)
        for rep in range(args.reps):  # query by query, the cases in turn (rotated): load
            order = names[rep % len(names) :] + names[: rep % len(names)]  # hits all alike
            for name in order:
                req = requests[name][rep % len(qtexts)]
                c0, t0 = time.thread_time(), time.perf_counter()
                hybrid.run(col, req)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.thread_time() - c0)
        p50 = {name: percentiles(t, (50,))["p50"] for name, t in wall.items()}
        p99 = {name: percentiles(t, (99,))["p99"] for name, t in wall.items()}
        c50 = {name: percentiles(t, (50,))["p50"] for name, t in cpu.items()}
        emit(
            {
                "bench": "hybrid",
                "n": n,
                "queries": len(qtexts),
                "nnz_mean": float(np.mean([s[0].shape[0] for s in sparse])),
                "load_s": load_s,
                **{f"{name}_ms_p50": v * 1e3 for name, v in p50.items()},
                **{f"{name}_ms_p99": v * 1e3 for name, v in p99.items()},
                **{f"{name}_cpu_ms_p50": v * 1e3 for name, v in c50.items()},
                "ratio": p50["hybrid"] / (p50["dense"] + p50["sparse"]),
                "ratio_cpu": c50["hybrid"] / (c50["dense"] + c50["sparse"]),
                "ratio_vs_top10": p50["hybrid"] / (p50["dense10"] + p50["sparse10"]),
                "host": host_info(),
            }
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="the debian-minilm folder")
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--reps", type=int, default=400, help="timed queries per case")
    parser.add_argument("--quick", action="store_true", help="20k documents, 200 timed queries")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 20_000)
        args.reps = min(args.reps, 200)
    return args


if __name__ == "__main__":
    run(parse_args())
