"""Shared helpers for the benchmarks: datasets, ground truth, JSON lines, timers, sizes.

Every benchmark prints one JSON object per result on stdout and nothing else;
progress goes to stderr through :func:`log`. Nothing in ``vdb/`` imports this
package.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    """Progress for the human watching: stderr, never stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        value = float(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        return round(value, 4) if abs(value) < 1e6 else round(value, 1)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    return value


def emit(record: dict[str, Any]) -> None:
    """Print one result as one JSON line on stdout (floats rounded, NaN as null)."""
    print(json.dumps(_plain(record), separators=(",", ":")), flush=True)


def host_info() -> dict[str, Any]:
    """What the numbers were measured on (the box is shared: load average matters)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {
        "cpus": os.cpu_count(),
        "bench_vectors": VECTORS_KIND,
        "load1": round(load[0], 2) if load[0] is not None else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


@contextmanager
def timer() -> Iterator[list[float]]:
    """``with timer() as t: ...`` then ``t[0]`` is the elapsed wall time in seconds."""
    box = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start


def percentiles(
    values: Iterable[float], points: Iterable[float] = (50, 95, 99)
) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` of ``values`` (NaN when empty)."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        return {f"p{int(p)}": float("nan") for p in points}
    return {f"p{int(p)}": float(np.percentile(array, p)) for p in points}


def dir_size(path: str | os.PathLike[str]) -> int:
    """Bytes of all regular files under ``path`` (or of the file itself)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except FileNotFoundError:
                pass
    return total


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child process that imports vdb from this work tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


class Server:
    """A child process serving HTTP on a free port, stopped by its pid."""

    def __init__(
        self,
        argv: list[str],
        port: int,
        log_path: Path,
        ready_path: str,
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
        timeout: float = 300.0,
        port_timeout: float = 120.0,
    ):
        """``env`` defaults to ``subprocess_env()``; the port is awaited for ``port_timeout``
        seconds, then readiness for ``timeout``."""
        self.port = port
        self.log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv, stdout=self.log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=subprocess_env() if env is None else env, cwd=str(cwd),
        )  # fmt: skip
        self.log_path = log_path
        wait_for_port(port, timeout=port_timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=5) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not get ready: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log_file.close()


# ---------------------------------------------------------------- datasets


@dataclass
class Dataset:
    """Base vectors, queries and the exact top-k row numbers of each query."""

    name: str
    metric: str  # "l2" or "cosine" (vdb spelling; hnswlib's is derived)
    base: np.ndarray  # float32 [n, dim]
    queries: np.ndarray  # float32 [nq, dim]
    gt: np.ndarray  # int [nq, >=10] best first
    gt_source: str

    @property
    def n(self) -> int:
        return int(self.base.shape[0])

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.name,
            "n": self.n,
            "dim": self.dim,
            "n_queries": int(self.queries.shape[0]),
            "metric": self.metric,
            "ground_truth": self.gt_source,
        }


DATASET_SOURCES = {
    "debian-minilm": "make it with `python bench/make_minilm.py` (see its docstring)",
}
"""How to get each real set a benchmark reads (named in the error when it is missing)."""


def datasets_root(data: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the real sets: ``data`` (a ``--data`` option), else ``$VDB_DATASETS``,
    else ``../shared/data`` beside the repository."""
    if data is not None:
        return Path(data)
    return Path(os.environ.get("VDB_DATASETS", REPO.parent / "shared" / "data"))


def dataset_dir(name: str, data: str | os.PathLike[str] | None = None) -> Path:
    """``datasets_root(data) / name``; a missing set ends the benchmark with one line on
    stderr that names it, where it was looked for and how to get it (no traceback)."""
    path = datasets_root(data) / name
    if not (path / "base.npy").is_file():
        how = DATASET_SOURCES.get(name, "see bench/README.md")
        raise SystemExit(
            f"bench: dataset {name!r} not found at {path}; {how}, then pass --data DIR "
            f"or set VDB_DATASETS=DIR (DIR holds {name}/)"
        )
    return path


def brute_force_topk(
    base: np.ndarray, queries: np.ndarray, k: int, metric: str, chunk: int = 20_000
) -> np.ndarray:
    """Exact top-``k`` base rows per query, best first, computed in chunks of the base."""
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq = queries.shape[0]
    k = min(k, base.shape[0])
    best_scores = np.full((nq, 0), np.inf, dtype=np.float32)
    best_ids = np.zeros((nq, 0), dtype=np.int64)
    if metric == "cosine":
        base = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-30)
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-30)
    for start in range(0, base.shape[0], chunk):
        block = base[start : start + chunk]
        if metric == "l2":
            # smaller is better: |b|^2 - 2 q.b  (|q|^2 is constant per query)
            scores = (block * block).sum(axis=1)[None, :] - 2.0 * (queries @ block.T)
        else:  # ip / cosine: larger is better, negate to sort ascending
            scores = -(queries @ block.T)
        ids = np.broadcast_to(np.arange(start, start + block.shape[0]), scores.shape)
        scores = np.concatenate([best_scores, scores.astype(np.float32)], axis=1)
        ids = np.concatenate([best_ids, ids], axis=1)
        keep = np.argpartition(scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_ids = np.take_along_axis(ids, keep, axis=1)
    order = np.argsort(best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, axis=1)


def synthetic(
    n: int, dim: int = 128, centres: int = 1000, n_queries: int = 1000, seed: int = 42, k: int = 10
) -> Dataset:
    """Gaussian mixture: ``centres`` random centres, unit noise, queries from the same mixture.

    Metric ``l2``; ground truth by exact brute force (numpy, chunked).
    """
    rng = np.random.default_rng(seed)
    centre_vectors = rng.normal(0.0, 3.0, size=(centres, dim)).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        which = rng.integers(0, centres, size=count)
        return centre_vectors[which] + rng.normal(0.0, 1.0, size=(count, dim)).astype(np.float32)

    base = draw(n)
    queries = draw(n_queries)
    gt = brute_force_topk(base, queries, k, "l2")
    return Dataset(f"synthetic-gmm{centres}", "l2", base, queries, gt, "brute force (numpy)")


def debian_minilm(
    n: int | None = None,
    n_queries: int | None = None,
    k: int = 10,
    data: str | os.PathLike[str] | None = None,
) -> Dataset:
    """The real MiniLM embeddings (cosine) from ``dataset_dir("debian-minilm", data)``. The
    shipped exact top-100 is used when the whole base is loaded; a prefix of the base gets its
    own brute-force ground truth."""
    path = dataset_dir("debian-minilm", data)
    base = np.load(path / "base.npy").astype(np.float32)
    queries = np.load(path / "queries.npy").astype(np.float32)
    gt = np.load(path / "gt_ids.npy")
    if n_queries is not None and n_queries < queries.shape[0]:
        queries = queries[:n_queries]
        gt = gt[:n_queries]
    if n is not None and n < base.shape[0]:
        base = base[:n]
        gt = brute_force_topk(base, queries, k, "cosine")
        source = f"brute force on the first {n} rows"
    else:
        source = "gt_ids.npy (shipped exact top-100)"
    return Dataset("debian-minilm", "cosine", np.ascontiguousarray(base), queries, gt, source)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the true top-``k`` rows found in the first ``k`` of each row of ``found``."""
    found = np.asarray(found)[:, :k]
    truth = np.asarray(truth)[:, :k]
    hits = 0
    for f, t in zip(found, truth, strict=True):
        hits += len(set(f.tolist()) & set(t.tolist()))
    return hits / (k * truth.shape[0])


VECTORS_KIND = os.environ.get("VDB_BENCH_VECTORS", "clustered")
"""What ingest-type benchmarks send: ``clustered`` (default) or ``random``.

``clustered``: unit vectors around 1,000 random centres, the shape real
embeddings have (the MiniLM set is strongly clustered). ``random``: isotropic
unit vectors, the worst case for any HNSW (inserts search a graph with no
structure to exploit), about 5x slower to index at 200k x 128.
"""


def random_unit_vectors(n: int, dim: int = 128, seed: int = 0) -> np.ndarray:
    """``n`` float32 vectors of unit length (data for ingest-type benchmarks).

    Clustered or isotropic as ``VDB_BENCH_VECTORS`` says (see ``VECTORS_KIND``);
    the same ``seed`` always gives the same vectors.
    """
    rng = np.random.default_rng(seed)
    if VECTORS_KIND == "random":
        vectors = rng.normal(size=(n, dim)).astype(np.float32)
    elif VECTORS_KIND == "clustered":
        centres = np.random.default_rng(7).normal(0.0, 3.0, size=(1000, dim)).astype(np.float32)
        vectors = centres[rng.integers(0, len(centres), size=n)]
        vectors = vectors + rng.normal(size=(n, dim)).astype(np.float32)
    else:
        raise SystemExit(f"VDB_BENCH_VECTORS must be clustered or random, not {VECTORS_KIND!r}")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def arrays_nbytes(arrays: dict[str, np.ndarray]) -> int:
    """Sum of ``nbytes`` of a dict of arrays (vdb's ``HNSW.to_arrays()``)."""
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))
