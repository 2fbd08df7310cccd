"""ANN benchmark: vdb's HNSW index against hnswlib and other anchors, same data, same M /
ef_construction, same run.

    python -m bench.ann --quick
    python -m bench.ann --dataset all --efs 16,32,64,128,256,512
    python -m bench.ann --quantization int8 --systems all --data DIR

Systems: ``vdb`` (float32), ``vdb-int8`` (int8 walk + float rescoring, float vectors memory-mapped
so the RAM figure is codes + graph; added by ``--quantization int8``), ``hnswlib``, ``faiss``
(IndexHNSWFlat), ``usearch-f32``, ``usearch-i8``, ``qdrant-edge`` and ``qdrant-edge-int8`` (Qdrant's
engine embedded, HNSW after ``optimize()``, without / with its int8 scalar quantization and
rescoring); ``--systems all`` runs every one. Prints one JSON line per (system, dataset, ef),
one summary line per dataset (ratios over hnswlib, and vdb-int8 over qdrant-edge-int8, at the
lowest ef that reaches the recall target for each system; the recall lost by int8 at every
ef; vdb's index RAM over hnswlib's process RSS growth as well as over its file), then one line for vdb's cold Numba compile time and one for the time from ``import vdb``
to the first answered query in a new process (warm cache).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    Dataset,
    arrays_nbytes,
    dataset_dir,
    debian_minilm,
    emit,
    host_info,
    log,
    recall_at_k,
    subprocess_env,
    synthetic,
)

K = 10
HNSWLIB_SPACE = {"l2": "l2", "cosine": "cosine", "ip": "ip"}


def timed_repeat(fn, count_per_call: int, min_seconds: float) -> tuple[float, int]:
    """Call ``fn`` until ``min_seconds`` have passed (at least once); return (seconds, items)."""
    done = 0
    start = time.perf_counter()
    while True:
        fn()
        done += count_per_call
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed, done


class VdbSystem:
    """vdb.index.HNSW driven the way a server drives it."""

    name = "vdb"
    quantization: str | None = None

    def __init__(
        self, dim: int, metric: str, M: int, ef_construction: int, capacity: int, seed: int
    ):
        from vdb.index import HNSW

        self.HNSW = HNSW
        self._tmp = None
        self.dim, self.metric, self.M, self.ef_construction = dim, metric, M, ef_construction
        self.capacity, self.seed = capacity, seed
        self.index = None
        self.row_of_slot: np.ndarray | None = None
        self.build_method = (
            "HNSW.add(all vectors) in one call (one writer; threads as the index uses them)"
        )

    def warm(self) -> float:
        start = time.perf_counter()
        scratch = self.HNSW(
            self.dim,
            metric=self.metric,
            M=self.M,
            ef_construction=self.ef_construction,
            capacity=64,
            seed=1,
            quantization=self.quantization,
        )
        if hasattr(scratch, "warm"):
            scratch.warm()
        rng = np.random.default_rng(0)
        scratch.add(rng.normal(size=(32, self.dim)).astype(np.float32))
        scratch.search(rng.normal(size=(2, self.dim)).astype(np.float32), 5, ef=16)
        return time.perf_counter() - start

    def build(self, base: np.ndarray) -> float:
        extra: dict[str, Any] = {}
        if self.quantization is not None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vdb-bench-")
            extra = {"quantization": self.quantization, "on_disk": self._tmp.name}
        self.index = self.HNSW(
            self.dim,
            metric=self.metric,
            M=self.M,
            ef_construction=self.ef_construction,
            capacity=self.capacity,
            seed=self.seed,
            **extra,
        )
        start = time.perf_counter()
        slots = np.asarray(self.index.add(base))
        elapsed = time.perf_counter() - start
        self.row_of_slot = np.full(max(int(slots.max()) + 1, 1), -1, dtype=np.int64)
        self.row_of_slot[slots] = np.arange(base.shape[0])
        return elapsed

    def _rows(self, slots: np.ndarray) -> np.ndarray:
        slots = np.asarray(slots, dtype=np.int64)
        return np.where(slots >= 0, self.row_of_slot[np.clip(slots, 0, None)], -1)

    def search_batch(self, queries: np.ndarray, ef: int) -> np.ndarray:
        slots, _scores = self.index.search(queries, K, ef=ef)
        return self._rows(slots)

    def single_query(self, query_row: np.ndarray, ef: int) -> None:
        self.index.search(query_row, K, ef=ef)

    def batch_two_threads(
        self, pool: ThreadPoolExecutor, halves: list[np.ndarray], ef: int
    ) -> None:
        list(pool.map(lambda part: self.index.search(part, K, ef=ef), halves))

    def memory(self) -> tuple[int, str]:
        if self.quantization is None:
            return arrays_nbytes(self.index.to_arrays()), "sum of nbytes of HNSW.to_arrays()"
        mem = self.index.memory_bytes()
        return mem["ram"], (
            f"HNSW.memory_bytes()['ram']: graph + int8 codes; the float vectors "
            f"({mem['mapped']} bytes) are memory-mapped from a file"
        )

    def close(self) -> None:
        self.index = None
        if self._tmp is not None:
            self._tmp.cleanup()


class VdbInt8System(VdbSystem):
    """vdb with int8 codes for the walk, rescored with float vectors kept in a mapped file."""

    name = "vdb-int8"
    quantization = "int8"


class VdbInt8Pool1System(VdbInt8System):
    """vdb-int8 with the walk's pool floor at k (the rule before the 2k floor): a walk of
    ``max(ef, k)`` on the codes, every candidate rescored. For a before/after in one run."""

    name = "vdb-int8-pool1"

    def build(self, base: np.ndarray) -> float:
        elapsed = super().build(base)
        self.index._pool_floor = 1.0
        return elapsed


class FaissSystem:
    """faiss IndexHNSWFlat (float32), same M and efConstruction; 2 OpenMP threads."""

    name = "faiss"

    def __init__(self, dim, metric, M, ef_construction, capacity, seed):
        import faiss

        self.faiss = faiss
        self.dim, self.metric, self.M, self.efc = dim, metric, M, ef_construction
        self.index = None
        self.build_method = "IndexHNSWFlat.add(all vectors), 2 OpenMP threads"
        faiss.omp_set_num_threads(2)

    def warm(self) -> float:
        return 0.0

    def _prep(self, x: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return np.ascontiguousarray(x, dtype=np.float32)

    def build(self, base: np.ndarray) -> float:
        faiss = self.faiss
        kind = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self.index = faiss.IndexHNSWFlat(self.dim, self.M, kind)
        self.index.hnsw.efConstruction = self.efc
        x = self._prep(base)
        start = time.perf_counter()
        self.index.add(x)
        return time.perf_counter() - start

    def search_batch(self, queries: np.ndarray, ef: int) -> np.ndarray:
        self.index.hnsw.efSearch = max(ef, K)
        _d, labels = self.index.search(self._prep(queries), K)
        return labels.astype(np.int64)

    def single_query(self, query_row: np.ndarray, ef: int) -> None:
        self.faiss.omp_set_num_threads(1)
        try:
            self.index.search(self._prep(query_row), K)
        finally:
            self.faiss.omp_set_num_threads(2)

    def batch_two_threads(self, pool, halves, ef) -> None:
        self.index.search(self._prep(np.concatenate(halves)), K)

    def memory(self) -> tuple[int, str]:
        return int(self.faiss.serialize_index(self.index).nbytes), "faiss.serialize_index size"

    def close(self) -> None:
        self.index = None


class UsearchSystem:
    """usearch (f32 or i8 storage), connectivity M, expansion_add ef_construction."""

    name = "usearch-f32"
    dtype = "f32"

    def __init__(self, dim, metric, M, ef_construction, capacity, seed):
        from usearch.index import Index

        kind = {"l2": "l2sq", "ip": "ip", "cosine": "cos"}[metric]
        self.index = Index(
            ndim=dim, metric=kind, dtype=self.dtype, connectivity=M, expansion_add=ef_construction
        )
        self.keys = None
        self.build_method = "Index.add(keys, all vectors, threads=2)"

    def warm(self) -> float:
        return 0.0

    def build(self, base: np.ndarray) -> float:
        self.keys = np.arange(base.shape[0], dtype=np.uint64)
        start = time.perf_counter()
        self.index.add(self.keys, base, threads=2)
        return time.perf_counter() - start

    def search_batch(self, queries: np.ndarray, ef: int) -> np.ndarray:
        self.index.expansion_search = max(ef, K)
        found = self.index.search(queries, K, threads=2)
        return np.asarray(found.keys, dtype=np.int64)

    def single_query(self, query_row: np.ndarray, ef: int) -> None:
        self.index.search(query_row[0], K, threads=1)

    def batch_two_threads(self, pool, halves, ef) -> None:
        self.index.search(np.concatenate(halves), K, threads=2)

    def memory(self) -> tuple[int, str]:
        return int(self.index.memory_usage), "Index.memory_usage"

    def close(self) -> None:
        self.index = None


class UsearchI8System(UsearchSystem):
    name = "usearch-i8"
    dtype = "i8"


class QdrantEdgeSystem:
    """Qdrant Edge (``qdrant-edge-py``): one shard, upserts, then ``optimize()`` builds HNSW."""

    name = "qdrant-edge"
    int8 = False

    def __init__(self, dim, metric, M, ef_construction, capacity, seed):
        import qdrant_edge as qe

        self.qe = qe
        self.dim, self.metric, self.M, self.efc = dim, metric, M, ef_construction
        self._tmp = tempfile.TemporaryDirectory(prefix="qdrant-edge-bench-")
        self.shard = None
        self.rss_delta = 0
        self.build_method = "update(upsert_points, batches of 1000) + optimize(), 2 threads"

    def warm(self) -> float:
        return 0.0

    def build(self, base: np.ndarray) -> float:
        qe = self.qe
        distance = {"l2": qe.Distance.Euclid, "ip": qe.Distance.Dot, "cosine": qe.Distance.Cosine}
        quant = None
        if self.int8:
            quant = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, always_ram=True)
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=self.dim, distance=distance[self.metric]),
            hnsw_config=qe.HnswIndexConfig(
                m=self.M, ef_construct=self.efc, full_scan_threshold=10, max_indexing_threads=2
            ),
            quantization_config=quant,
            # one segment, always HNSW-indexed (indexing_threshold in KB)
            optimizers=qe.EdgeOptimizersConfig(default_segment_number=1, indexing_threshold=1),
            max_search_threads=1,
        )
        rss0 = _rss()
        start = time.perf_counter()
        self.shard = qe.EdgeShard.create(str(Path(self._tmp.name) / "shard"), config)
        for lo in range(0, base.shape[0], 1000):
            points = [
                qe.Point(int(i), base[i].tolist()) for i in range(lo, min(lo + 1000, len(base)))
            ]
            self.shard.update(qe.UpdateOperation.upsert_points(points))
        self.shard.optimize()
        elapsed = time.perf_counter() - start
        self.rss_delta = _rss() - rss0
        return elapsed

    def _request(self, vector: np.ndarray, ef: int):
        qe = self.qe
        quant = qe.QuantizationSearchParams(rescore=True) if self.int8 else None
        return qe.QueryRequest(
            limit=K,
            query=qe.Query.Nearest(vector.tolist()),
            params=qe.SearchParams(hnsw_ef=max(ef, K), quantization=quant),
        )

    def search_batch(self, queries: np.ndarray, ef: int) -> np.ndarray:
        out = np.full((queries.shape[0], K), -1, np.int64)
        for i, q in enumerate(queries):
            hits = self.shard.query(self._request(q, ef))
            out[i, : len(hits)] = [h.id for h in hits]
        return out

    def single_query(self, query_row: np.ndarray, ef: int) -> None:
        self.shard.query(self._request(query_row[0], ef))

    def batch_two_threads(self, pool, halves, ef) -> None:
        def run(part: np.ndarray) -> None:
            for q in part:
                self.shard.query(self._request(q, ef))

        list(pool.map(run, halves))

    def memory(self) -> tuple[int, str]:
        return int(self.rss_delta), "process RSS growth over create + upserts + optimize()"

    def close(self) -> None:
        if self.shard is not None:
            self.shard.close()
            self.shard = None
        self._tmp.cleanup()


class QdrantEdgeInt8System(QdrantEdgeSystem):
    name = "qdrant-edge-int8"
    int8 = True


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class HnswlibSystem:
    """The anchor: hnswlib with the same M and ef_construction."""

    name = "hnswlib"

    def __init__(
        self,
        dim: int,
        metric: str,
        M: int,
        ef_construction: int,
        capacity: int,
        seed: int,
        build_threads: int = 2,
    ):
        import hnswlib

        self.hnswlib = hnswlib
        self.dim, self.metric, self.M, self.ef_construction = dim, metric, M, ef_construction
        self.capacity, self.seed, self.build_threads = capacity, seed, build_threads
        self.index = None
        self.build_method = f"add_items(all vectors, num_threads={build_threads})"

    def warm(self) -> float:
        return 0.0

    def _new(self):
        index = self.hnswlib.Index(space=HNSWLIB_SPACE[self.metric], dim=self.dim)
        index.init_index(
            max_elements=self.capacity,
            ef_construction=self.ef_construction,
            M=self.M,
            random_seed=self.seed,
        )
        return index

    def build(self, base: np.ndarray) -> float:
        rss0 = _rss()
        self.index = self._new()
        start = time.perf_counter()
        self.index.add_items(base, np.arange(base.shape[0]), num_threads=self.build_threads)
        elapsed = time.perf_counter() - start
        # its RAM, beside the file size: the file holds the level-0 block (links, vector,
        # label) and the upper lists; in RAM come a mutex per element, the label map, ...
        self.rss_delta = _rss() - rss0
        return elapsed

    def build_single_thread(self, base: np.ndarray) -> float:
        index = self._new()
        start = time.perf_counter()
        index.add_items(base, np.arange(base.shape[0]), num_threads=1)
        return time.perf_counter() - start

    def search_batch(self, queries: np.ndarray, ef: int) -> np.ndarray:
        self.index.set_ef(max(ef, K))
        labels, _distances = self.index.knn_query(queries, k=K, num_threads=2)
        return labels.astype(np.int64)

    def single_query(self, query_row: np.ndarray, ef: int) -> None:
        self.index.knn_query(query_row, k=K, num_threads=1)

    def batch_two_threads(
        self, pool: ThreadPoolExecutor, halves: list[np.ndarray], ef: int
    ) -> None:
        self.index.knn_query(np.concatenate(halves), k=K, num_threads=2)

    def memory(self) -> tuple[int, str]:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "index.bin"
            self.index.save_index(str(path))
            return path.stat().st_size, "size of the save_index file"

    def close(self) -> None:
        self.index = None


SYSTEMS = {
    "vdb": VdbSystem,
    "vdb-int8": VdbInt8System,
    "vdb-int8-pool1": VdbInt8Pool1System,
    "hnswlib": HnswlibSystem,
    "faiss": FaissSystem,
    "usearch-f32": UsearchSystem,
    "usearch-i8": UsearchI8System,
    "qdrant-edge": QdrantEdgeSystem,
    "qdrant-edge-int8": QdrantEdgeInt8System,
}


def measure_ef(
    system,
    data: Dataset,
    ef: int,
    pool: ThreadPoolExecutor,
    single_seconds: float,
    batch_seconds: float,
) -> dict[str, Any]:
    """recall@10, single-query QPS and 2-thread batch QPS at one ef on the built index."""
    queries = data.queries
    halves = [queries[: len(queries) // 2], queries[len(queries) // 2 :]]
    single_rows = [queries[i : i + 1] for i in range(queries.shape[0])]
    if system.name == "hnswlib":
        system.index.set_ef(max(ef, K))
    found = system.search_batch(queries, ef)
    recall = recall_at_k(found, data.gt, K)

    # single queries, one per call, one thread: as a server serves them
    # (at least one pass over the queries or single_seconds, whichever is shorter,
    # then more passes until min(0.5 s, single_seconds) has passed)
    done = 0
    cpu0 = time.thread_time()
    start = time.perf_counter()
    floor = min(0.5, single_seconds)
    while True:
        system.single_query(single_rows[done % len(single_rows)], ef)
        done += 1
        elapsed = time.perf_counter() - start
        if done >= 50 and (
            elapsed >= single_seconds or (done >= len(single_rows) and elapsed >= floor)
        ):
            break
    single_qps = done / elapsed
    # per second of this thread's CPU: every system answers a single query in the calling
    # thread (qdrant-edge may not: read its figure with care), so on a shared box this is not
    # diluted by time the thread spent waiting for a core
    single_qps_cpu = done / max(time.thread_time() - cpu0, 1e-9)

    elapsed, items = timed_repeat(
        lambda: system.batch_two_threads(pool, halves, ef), len(queries), batch_seconds
    )
    row = {
        "ef": ef,
        "recall_at_10": recall,
        "single_qps": single_qps,
        "single_qps_cpu": single_qps_cpu,
        "batch_qps": items / elapsed,
    }
    if system.name.startswith("vdb"):
        elapsed1, items1 = timed_repeat(
            lambda: system.index.search(queries, K, ef=ef), len(queries), batch_seconds
        )
        row["batch_qps_one_call"] = items1 / elapsed1
    log(
        f"  {system.name} ef={ef} recall@10={recall:.4f} single={single_qps:.0f}/s batch={row['batch_qps']:.0f}/s"
    )
    return row


BATCH_METHOD = {
    "vdb": "two Python threads, each one HNSW.search call on half the queries (repeated); batch_qps_one_call = one call on all queries, one thread",
    "hnswlib": "knn_query(all queries, num_threads=2) (repeated)",
    "faiss": "index.search(all queries), 2 OpenMP threads (repeated)",
    "usearch-f32": "Index.search(all queries, threads=2) (repeated)",
    "qdrant-edge": "two Python threads, each one query() per query on half the queries",
}
BATCH_METHOD["vdb-int8"] = BATCH_METHOD["vdb-int8-pool1"] = BATCH_METHOD["vdb"]
BATCH_METHOD["usearch-i8"] = BATCH_METHOD["usearch-f32"]
BATCH_METHOD["qdrant-edge-int8"] = BATCH_METHOD["qdrant-edge"]


def run_dataset(data: Dataset, args: argparse.Namespace, systems: list[str]) -> None:
    log(
        f"dataset {data.name}: n={data.n} dim={data.dim} queries={data.queries.shape[0]} metric={data.metric}"
    )
    params = {"M": args.M, "ef_construction": args.ef_construction, "k": K, "seed": args.seed}
    per_system: dict[str, dict[str, Any]] = {}
    built = []
    for name in systems:
        system = SYSTEMS[name](
            data.dim, data.metric, args.M, args.ef_construction, data.n, args.seed
        )
        warm_s = system.warm()
        log(f" {name}: building ({system.build_method})")
        build_s = system.build(data.base)
        memory, memory_method = system.memory()
        build = {
            "build_s": build_s,
            "build_vps": data.n / build_s,
            "build_method": system.build_method,
            "memory_bytes": memory,
            "memory_bytes_per_vector": memory / data.n,
            "memory_method": memory_method,
        }
        if name.startswith("vdb"):
            build["warm_s"] = warm_s
        if name == "hnswlib":
            build["rss_growth_bytes"] = system.rss_delta
            build["rss_growth_method"] = "process RSS growth over init_index + add_items"
        if name == "hnswlib" and not args.no_single_thread_build:
            one = system.build_single_thread(data.base)
            build["build_vps_1thread"] = data.n / one
        log(
            f" {name}: built in {build_s:.1f}s ({data.n / build_s:.0f} vectors/s), memory {memory / 1e6:.1f} MB"
        )
        per_system[name] = {"build": build, "efs": []}
        built.append(system)
    # the systems take turns at each ef, so that a change of load on the shared box
    # hits both sides of a ratio alike
    with ThreadPoolExecutor(max_workers=2) as pool:
        for ef in args.efs:
            for system in built:
                row = measure_ef(system, data, ef, pool, args.single_seconds, args.batch_seconds)
                per_system[system.name]["efs"].append(row)
    for system in built:
        system.close()

    anchor = per_system.get("hnswlib")
    for name, result in per_system.items():
        for row in result["efs"]:
            line = {
                "bench": "ann",
                "system": name,
                **data.describe(),
                **params,
                **row,
                **result["build"],
                "batch_method": BATCH_METHOD[name],
            }
            if name != "hnswlib" and anchor is not None:
                anchor_row = next(r for r in anchor["efs"] if r["ef"] == row["ef"])
                line["anchor"] = {
                    "system": "hnswlib",
                    "recall_at_10": anchor_row["recall_at_10"],
                    "single_qps": anchor_row["single_qps"],
                    "batch_qps": anchor_row["batch_qps"],
                    "build_vps": anchor["build"]["build_vps"],
                    "build_vps_1thread": anchor["build"].get("build_vps_1thread"),
                    "memory_bytes": anchor["build"]["memory_bytes"],
                    "rss_growth_bytes": anchor["build"].get("rss_growth_bytes"),
                }
            line["host"] = host_info()
            emit(line)

    summary: dict[str, Any] = {
        "bench": "ann",
        "summary": True,
        **data.describe(),
        **params,
        "recall_target": args.target_recall,
    }
    chosen: dict[str, dict[str, Any] | None] = {}
    for name, result in per_system.items():
        passing = [r for r in result["efs"] if r["recall_at_10"] >= args.target_recall]
        row = min(passing, key=lambda r: r["ef"]) if passing else None
        chosen[name] = row
        summary[name] = (
            None
            if row is None
            else {
                **row,
                "build_vps": result["build"]["build_vps"],
                "memory_bytes": result["build"]["memory_bytes"],
            }
        )

    def ratio(a: str, b: str) -> dict[str, float] | None:
        if not (chosen.get(a) and chosen.get(b)):
            return None
        x, y = summary[a], summary[b]
        return {
            key: x[key] / y[key]
            for key in ("single_qps", "single_qps_cpu", "batch_qps", "build_vps", "memory_bytes")
            if y.get(key)
        }

    if chosen.get("vdb") and chosen.get("hnswlib"):
        summary["ratio_vdb_over_hnswlib"] = ratio("vdb", "hnswlib")
        if "build_vps_1thread" in per_system["hnswlib"]["build"]:
            summary["ratio_vdb_over_hnswlib"]["build_vps_vs_hnswlib_1thread"] = (
                summary["vdb"]["build_vps"] / per_system["hnswlib"]["build"]["build_vps_1thread"]
            )
    elif "vdb" in per_system:
        summary["ratio_vdb_over_hnswlib"] = None
        summary["note"] = (
            "a system did not reach the recall target at any ef measured (or was not run)"
        )
    anchor_rss = per_system.get("hnswlib", {}).get("build", {}).get("rss_growth_bytes")
    if anchor_rss:
        summary["memory_over_hnswlib_rss"] = {
            n: r["build"]["memory_bytes"] / anchor_rss
            for n, r in per_system.items()
            if n.startswith("vdb")
        }
    others = [n for n in per_system if n not in ("vdb", "hnswlib")]
    if others and "hnswlib" in per_system:
        summary["ratio_over_hnswlib"] = {n: ratio(n, "hnswlib") for n in others}
    if "vdb-int8" in per_system and "qdrant-edge-int8" in per_system:
        summary["ratio_vdb_int8_over_qdrant_edge_int8"] = ratio("vdb-int8", "qdrant-edge-int8")
    for name in ("vdb-int8", "vdb-int8-pool1"):
        if name in per_system and "vdb" in per_system:
            f32 = {r["ef"]: r["recall_at_10"] for r in per_system["vdb"]["efs"]}
            key = "int8_recall_loss_vs_float32_by_ef" + name[len("vdb-int8") :].replace("-", "_")
            summary[key] = {
                str(r["ef"]): round(f32[r["ef"]] - r["recall_at_10"], 4)
                for r in per_system[name]["efs"]
            }
    summary["host"] = host_info()
    emit(summary)


# ------------------------------------------------------------ start-up costs

_COLD_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from vdb.index import HNSW
t_import = time.perf_counter()
metric = sys.argv[1]
quantization = None if sys.argv[2] == "none" else sys.argv[2]
h = HNSW(128, metric=metric, M=16, ef_construction=64, capacity=256, seed=1, quantization=quantization)
import resource
def cpu(who=resource.RUSAGE_SELF):
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime
cpu_import = cpu()
if hasattr(h, "warm"):
    h.warm()
t_warm = time.perf_counter()
cpu_warm = cpu() - cpu_import
rng = np.random.default_rng(0)
h.add(rng.normal(size=(200, 128)).astype(np.float32))
h.search(rng.normal(size=(1, 128)).astype(np.float32), 10)
t_end = time.perf_counter()
print(json.dumps({"import_s": t_import - t0, "import_cpu_s": cpu_import, "warm_s": t_warm - t_import, "warm_cpu_s": cpu_warm, "add_search_after_warm_s": t_end - t_warm, "total_s": t_end - t0, "cpu_s": cpu(), "cpu_children_s": cpu(resource.RUSAGE_CHILDREN)}))
"""

# vdb.open of an empty data directory, a collection created (its search and build kernels are
# loaded then), 200 points upserted and linked into the graph, one search
_COLD_OPEN_SCRIPT = r"""
import json, sys, tempfile, time, resource
t0 = time.perf_counter()
import numpy as np
import vdb
t_import = time.perf_counter()
def cpu(who=resource.RUSAGE_SELF):
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime
metric, quant = sys.argv[1], sys.argv[2]
with tempfile.TemporaryDirectory() as tmp:
    db = vdb.open(tmp, checkpoint_interval_s=None, map_size=1 << 26)
    extra = {} if quant == "none" else {"quantization": quant}
    col = db.create_collection("c", dim=128, metric=metric, **extra)
    t_created = time.perf_counter()
    cpu_created = cpu()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 128)).astype(np.float32)
    col.upsert(list(range(200)), x)
    assert col.wait_indexed(600)
    t_linked = time.perf_counter()
    hits = col.search(x[0], k=10)
    t_end = time.perf_counter()
    assert len(hits) == 10
    db.close()
print(json.dumps({"import_s": t_import - t0, "create_collection_s": t_created - t_import, "create_collection_cpu_s": cpu_created, "upsert_linked_s": t_linked - t_created, "total_s": t_end - t0, "cpu_s": cpu(), "cpu_children_s": cpu(resource.RUSAGE_CHILDREN)}))
"""


_FIRST_QUERY_CORE = r"""
import time
t0 = time.perf_counter()
import json, sys
import numpy as np
import vdb
db = vdb.open(sys.argv[1])
col = db.collection("bench")
query = np.load(sys.argv[2])
hits = col.search(query, k=10)
t1 = time.perf_counter()
assert len(hits) == 10, hits
print(json.dumps({"first_query_s": t1 - t0}))
db.close()
"""

_FIRST_QUERY_INDEX = r"""
import time
t0 = time.perf_counter()
import json, sys
import numpy as np
import vdb
from vdb.index import HNSW
arrays = dict(np.load(sys.argv[1]))
h = HNSW.from_arrays(arrays)
query = np.load(sys.argv[2])
slots, scores = h.search(query[None, :], 10)
t1 = time.perf_counter()
assert (slots >= 0).all()
print(json.dumps({"first_query_s": t1 - t0}))
"""


def _run_child(script: str, argv: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv], env=env, capture_output=True, text=True, timeout=1800
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def cold_compile(
    metrics: list[str], quantizations: list[str], modes: list[str], child: list[bool]
) -> None:
    """vdb's Numba compile cost in a fresh process with an empty cache, then again with the cache
    it filled (one line per mode, metric, quantization and ``child``: with the cold-cache child
    compile on or off, ``VDB_COMPILE_CHILD=0``; both alternate in one run)."""
    for metric in metrics:
        for quant in quantizations:
            for mode in modes:
                for on in child:
                    _cold_compile(metric, quant, mode, on)


_COLD_METHOD = {
    "index": "python -c: import vdb.index, HNSW(...).warm(), add 200, one search; warm() "
    "loads the build group in a daemon thread, which the add waits for",
    "open": "python -c: import vdb, vdb.open(empty dir), create_collection (loads its search "
    "and build kernels), upsert 200 and wait_indexed (linked into the graph), one search",
    "serve": "python -m vdb serve on an empty data dir: wall and CPU until GET /readyz answers "
    "200, then PUT a collection, upsert 200 points (wait=true) and poll until "
    "indexed_vectors_count reaches 200 (linked)",
}


def _cold_compile(metric: str, quant: str, mode: str, child: bool = True) -> None:
    with tempfile.TemporaryDirectory(prefix="vdb-numba-cache-") as cache:
        log(
            f"cold compile ({mode}, {metric}, {quant}, child {'on' if child else 'off'}) in a "
            "fresh process, empty NUMBA_CACHE_DIR"
        )
        env = subprocess_env(NUMBA_CACHE_DIR=cache, VDB_COMPILE_CHILD="1" if child else "0")
        runs = []
        for _ in range(2):  # cold, then warm from the cache the first run filled
            load1 = os.getloadavg()[0]
            if mode == "serve":
                got, wall = _serve_startup(metric, quant, env)
            else:
                script = _COLD_SCRIPT if mode == "index" else _COLD_OPEN_SCRIPT
                got, wall = _run_child(script, [metric, quant], env)
            runs.append({**got, "process_wall_s": wall, "load1_before": round(load1, 2)})
        emit(
            {
                "bench": "ann",
                "system": "vdb" if quant == "none" else f"vdb-{quant}",
                "measure": "numba_compile",
                "mode": mode,
                "compile_child": child,
                "metric": metric,
                "cold_cache": runs[0],
                "warm_cache": runs[1],
                "method": _COLD_METHOD[mode] + "; first with an empty NUMBA_CACHE_DIR, then "
                "again with the cache it filled; cpu_s: the process's user + system time, "
                "cpu_children_s: its child processes' (a cold start compiles the build group "
                "in one); load1_before: the host's load when the process started",
                "host": host_info(),
            }
        )


def _proc_cpu(pid: int) -> tuple[float, float]:
    """(own, waited-for children's) user + system CPU seconds of a running process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def _serve_startup(metric: str, quant: str, env: dict[str, str]) -> tuple[dict[str, Any], float]:
    """Start ``python -m vdb serve`` on an empty data directory; time /readyz, then the first
    write linked into the graph of a new collection."""
    import signal
    import urllib.request

    from bench.common import free_port

    def call(method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read() or b"null")

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vdb-serve-startup-") as tmp:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "vdb", "serve", "--data", f"{tmp}/data", "--port", str(port)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(f"{tmp}/log", "wb"),  # noqa: SIM115 - closed with the process
        )  # fmt: skip
        try:
            out: dict[str, Any] = {}
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited: {Path(tmp, 'log').read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                        if r.status == 200:
                            break
                except Exception:
                    pass
                time.sleep(0.02)
            out["readyz_s"] = time.perf_counter() - start
            out["readyz_cpu_s"], out["readyz_cpu_children_s"] = _proc_cpu(proc.pid)
            distance = {"cosine": "Cosine", "l2": "Euclid", "ip": "Dot"}[metric]
            body: dict[str, Any] = {"vectors": {"size": 128, "distance": distance}}
            if quant != "none":
                body["quantization_config"] = {"scalar": {"type": quant}}
            t = time.perf_counter()
            call("PUT", "/collections/c", body)
            out["create_collection_s"] = time.perf_counter() - t
            rng = np.random.default_rng(0)
            x = rng.normal(size=(200, 128)).astype(np.float32)
            points = [{"id": i, "vector": x[i].tolist()} for i in range(200)]
            call("PUT", "/collections/c/points?wait=true", {"points": points})
            while True:
                info = call("GET", "/collections/c")["result"]
                if info["indexed_vectors_count"] >= 200:
                    break
                time.sleep(0.02)
            out["first_write_linked_s"] = time.perf_counter() - start
            out["linked_cpu_s"], out["linked_cpu_children_s"] = _proc_cpu(proc.pid)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
        return out, time.perf_counter() - start


def asm_report() -> None:
    """What LLVM emits for the distance loops: vector instruction counts of uncached copies of
    the float distance (both metrics in one function; the metric branch sits outside the loop)
    and of the int8 x int8 (build) and int8 x int16 (query) dot products. The loops run over the
    runtime length, so the code is the same at 384 and 128 dimensions: the float loop takes 32
    floats per iteration (4 ymm FMA accumulators), the integer loops 64 codes (4 vpmaddwd)."""
    from collections import Counter

    from numba import njit

    from vdb.index import kernels, qkernels

    def counts(py_func, *args) -> dict[str, int]:
        fn = njit(fastmath=True)(py_func)  # a fresh, uncached copy (cached code has no asm)
        fn(*args)
        asm = fn.inspect_asm(fn.signatures[0])
        ops = Counter(
            line.split()[0]
            for line in asm.splitlines()
            if line.startswith("\t") and not line.strip().startswith(".")
        )
        return {k: v for k, v in ops.most_common() if k.startswith("v")}

    f = np.ones(384, np.float32)
    c8 = np.ones(384, np.int8)
    out = {
        "float_distance": counts(kernels.distance.py_func, 1, f, f),
        "idot_int8_int8": counts(qkernels.idot_codes.py_func, c8, c8),
        "idot_int8_int16": counts(qkernels.idot.py_func, c8, np.ones(384, np.int16)),
    }
    emit({"bench": "ann", "measure": "kernel_asm", "vector_instructions": out, "host": host_info()})


def _core_available() -> bool:
    try:
        import vdb

        with tempfile.TemporaryDirectory() as tmp:
            db = vdb.open(tmp)
            db.close()
        return True
    except Exception as exc:  # the core is being written in parallel
        log(f"core not usable yet ({type(exc).__name__}: {exc}); first query measured on the index")
        return False


def first_query(metric: str = "cosine", n: int = 10_000) -> None:
    """Wall time from ``import vdb`` to the first answered query in a new process, warm cache."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(n, 128)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="vdb-first-query-") as tmp:
        query_path = Path(tmp) / "query.npy"
        np.save(query_path, vectors[0])
        env = subprocess_env()
        if _core_available():
            import vdb

            data_dir = Path(tmp) / "data"
            with vdb.open(str(data_dir)) as db:
                col = db.create_collection("bench", dim=128, metric=metric)
                for start in range(0, n, 1000):
                    col.upsert(list(range(start, start + 1000)), vectors[start : start + 1000])
            mode = "core: vdb.open(dir) + collection('bench').search(query, k=10)"
            script, argv = _FIRST_QUERY_CORE, [str(data_dir), str(query_path)]
        else:
            from vdb.index import HNSW

            h = HNSW(128, metric=metric, capacity=n, seed=1)
            h.add(vectors)
            arrays_path = Path(tmp) / "arrays.npz"
            np.savez(arrays_path, **h.to_arrays())
            mode = "index only: HNSW.from_arrays(np.load(npz)) + search (core not available)"
            script, argv = _FIRST_QUERY_INDEX, [str(arrays_path), str(query_path)]
        log(f"first query in a new process ({mode})")
        first, first_wall = _run_child(script, argv, env)  # fills any cache entry still missing
        second, second_wall = _run_child(script, argv, env)
        emit(
            {
                "bench": "ann",
                "system": "vdb",
                "measure": "first_query_new_process",
                "metric": metric,
                "n": n,
                "dim": 128,
                "mode": mode,
                "import_to_first_answer_s": second["first_query_s"],
                "process_wall_s": second_wall,
                "first_run_import_to_first_answer_s": first["first_query_s"],
                "first_run_process_wall_s": first_wall,
                "cache": "default Numba cache, already filled by this process and one earlier child",
                "host": host_info(),
            }
        )


# ------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=["synthetic", "debian-minilm", "all"], default="all")
    parser.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="folder holding the real sets (default $VDB_DATASETS, else ../shared/data)",
    )
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="base vectors (synthetic default 100000; minilm default all 50000)",
    )
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128, help="synthetic dimension")
    parser.add_argument("--centres", type=int, default=1000, help="synthetic mixture centres")
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=128)
    parser.add_argument("--efs", default="16,32,64,128,256,512")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument(
        "--systems",
        default="vdb,hnswlib",
        help=f"comma list of {','.join(SYSTEMS)}, or 'all'",
    )
    parser.add_argument(
        "--quantization",
        choices=["int8"],
        default=None,
        help="also sweep vdb with int8 codes + rescoring (system vdb-int8)",
    )
    parser.add_argument(
        "--single-seconds", type=float, default=3.0, help="time budget per ef for single queries"
    )
    parser.add_argument(
        "--batch-seconds", type=float, default=1.0, help="minimum time per ef for batch QPS"
    )
    parser.add_argument(
        "--no-single-thread-build", action="store_true", help="skip hnswlib's 1-thread build"
    )
    parser.add_argument(
        "--compile-metrics", default="cosine", help="metrics for the cold compile line ('' to skip)"
    )
    parser.add_argument(
        "--compile-modes",
        default="index,open,serve",
        help="cold compile lines: index (HNSW alone), open (vdb.open + a collection), "
        "serve (python -m vdb serve until /readyz and the first linked write)",
    )
    parser.add_argument(
        "--compile-child",
        default="off",
        help="cold compile lines with the cold-cache child compile (VDB_COMPILE_CHILD=1) on, "
        "off (the default), or on,off (alternating in one run)",
    )
    parser.add_argument(
        "--skip-startup", action="store_true", help="skip the compile and first-query lines"
    )
    parser.add_argument(
        "--startup-only", action="store_true", help="only the compile and first-query lines"
    )
    parser.add_argument("--quick", action="store_true", help="small run, about a minute")
    args = parser.parse_args(argv)
    if args.quick:
        args.queries = min(args.queries, 200)
        args.efs = "16,32,64,128" if args.efs == parser.get_default("efs") else args.efs
        args.single_seconds = min(args.single_seconds, 0.5)
        args.batch_seconds = min(args.batch_seconds, 0.3)
        args.ef_construction = min(args.ef_construction, 128)
        if args.centres == parser.get_default("centres"):
            args.centres = 100
    args.efs = [int(x) for x in str(args.efs).split(",") if x]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data:
        os.environ["VDB_DATASETS"] = args.data
    systems = list(SYSTEMS) if args.systems == "all" else [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    if args.quantization and "vdb-int8" not in systems:
        systems.insert(1, "vdb-int8")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    names = ["synthetic", "debian-minilm"] if args.dataset == "all" else [args.dataset]
    for name in [] if args.startup_only else names:  # a missing real set stops the run now
        if name != "synthetic":
            dataset_dir(name, args.data)
    for name in [] if args.startup_only else names:
        if name == "synthetic":
            n = args.n or (10_000 if args.quick else 100_000)
            log(
                f"making synthetic data {n} x {args.dim} around {args.centres} centres + exact ground truth"
            )
            data = synthetic(n, args.dim, args.centres, args.queries, args.seed, K)
        else:
            n = args.n or (10_000 if args.quick else None)
            data = debian_minilm(n, args.queries, K, args.data)
        run_dataset(data, args, systems)
    if any(s.startswith("vdb") for s in systems) and not args.skip_startup:
        metrics = [m for m in args.compile_metrics.split(",") if m]
        modes = [m for m in args.compile_modes.split(",") if m]
        child = [{"on": True, "off": False}[c] for c in args.compile_child.split(",") if c]
        cold_compile(
            metrics, ["none"] + ([args.quantization] if args.quantization else []), modes, child
        )
        asm_report()
        first_query("cosine", 2_000 if args.quick else 10_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
