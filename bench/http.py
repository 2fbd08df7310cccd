"""HTTP benchmark: vdb's Qdrant-compatible server against the HTTP ceiling of the same box.

    python -m bench.http --quick
    python -m bench.http --n 100000 --clients 1,4,16 --seconds 10

Starts ``python -m vdb serve`` on a free port and, in the same run, a trivial
Starlette app (one POST route that reads the body and returns a fixed small
JSON) served by uvicorn with the same settings: the ceiling. Clients are
separate processes (``--client-procs``, default 2) whose threads each hold
one keep-alive ``http.client`` connection; the concurrency is the total
number of threads. Prints one line per (target, concurrency) with QPS and
p50/p99 latency, then one line per (encoding, batch) for HTTP upserts with
the embedded durable upsert rate measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from bench.common import (
    Server,
    emit,
    free_port,
    host_info,
    log,
    percentiles,
    random_unit_vectors,
    subprocess_env,
)

DIM = 128
COLLECTION = "bench"

_CEILING_APP = r"""
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

RESULT = {"result": {"points": [{"id": 1, "version": 0, "score": 0.5}]}, "status": "ok", "time": 0.0}

async def query(request):
    await request.body()
    return JSONResponse(RESULT)

async def health(request):
    return JSONResponse({"ok": True})

app = Starlette(routes=[Route("/collections/{name}/points/query", query, methods=["POST"]),
                        Route("/healthz", health, methods=["GET"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), workers=1, log_level="warning",
            access_log=False, server_header=False, limit_concurrency=None)
"""

_CLIENT = r"""
import http.client, json, sys, threading, time
import numpy as np
port, path, body_file, content_type, threads, seconds, warmup, out = sys.argv[1:9]
threads, seconds, warmup = int(threads), float(seconds), float(warmup)
bodies = [bytes.fromhex(line.strip()) for line in open(body_file) if line.strip()]
latencies = [[] for _ in range(threads)]
errors = [0] * threads
start_flag = threading.Event()
t_start = [0.0]

def run(t):
    conn = http.client.HTTPConnection("127.0.0.1", int(port))
    headers = {"Content-Type": content_type}
    i = t
    start_flag.wait()
    measure_from = t_start[0] + warmup
    stop_at = measure_from + seconds
    while True:
        t0 = time.perf_counter()
        if t0 >= stop_at:
            break
        conn.request("POST", path, bodies[i % len(bodies)], headers)
        response = conn.getresponse()
        response.read()
        t1 = time.perf_counter()
        if response.status != 200:
            errors[t] += 1
        if t0 >= measure_from:
            latencies[t].append(t1 - t0)
        i += threads
    conn.close()

workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
t_start[0] = time.perf_counter()
start_flag.set()
for w in workers:
    w.join()
np.save(out, np.asarray([x for lat in latencies for x in lat], dtype=np.float64))
print(json.dumps({"errors": sum(errors)}), flush=True)
"""


def request(
    port: int, method: str, path: str, body: bytes | None, content_type: str = "application/json"
) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        method=method,
        headers={"Content-Type": content_type},
    )
    with urllib.request.urlopen(req, timeout=600) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def points_body(ids: range, vectors: np.ndarray, encoding: str) -> bytes:
    if encoding == "msgpack":
        points = [
            {"id": i, "vector": v.astype("<f4").tobytes()}
            for i, v in zip(ids, vectors, strict=True)
        ]
        return msgpack.packb({"points": points})
    points = [{"id": i, "vector": v.tolist()} for i, v in zip(ids, vectors, strict=True)]
    return json.dumps({"points": points}).encode()


def upload(port: int, collection: str, vectors: np.ndarray, batch: int, encoding: str) -> float:
    """PUT points?wait=true in batches, one connection; returns seconds (encoding included)."""
    import http.client

    content_type = "application/msgpack" if encoding == "msgpack" else "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    for lo in range(0, vectors.shape[0], batch):
        hi = min(lo + batch, vectors.shape[0])
        body = points_body(range(lo, hi), vectors[lo:hi], encoding)
        conn.request(
            "PUT",
            f"/collections/{collection}/points?wait=true",
            body,
            {"Content-Type": content_type},
        )
        response = conn.getresponse()
        text = response.read()
        if response.status != 200:
            raise RuntimeError(f"upsert failed {response.status}: {text[:500]!r}")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def create_collection(port: int, name: str) -> None:
    body = json.dumps(
        {
            "vectors": {"size": DIM, "distance": "Cosine"},
            "hnsw_config": {"m": 16, "ef_construct": 128},
        }
    )
    request(port, "PUT", f"/collections/{name}", body.encode())


def load_clients(port: int, path: str, bodies: list[bytes], clients: int, procs: int, seconds: float,
                 warmup: float, workdir: Path) -> dict[str, Any]:  # fmt: skip
    """Run ``clients`` keep-alive connections spread over ``procs`` processes; QPS and latency."""
    body_file = workdir / "bodies.hex"
    body_file.write_text("\n".join(b.hex() for b in bodies))
    procs = max(1, min(procs, clients))
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    children = []
    for i, threads in enumerate(shares):
        out = workdir / f"lat-{i}.npy"
        child = subprocess.Popen(
            [sys.executable, "-c", _CLIENT, str(port), path, str(body_file), "application/json",
             str(threads), str(seconds), str(warmup), str(out)],
            stdout=subprocess.PIPE, text=True, env=subprocess_env(),
        )  # fmt: skip
        children.append((child, out))
    latencies, errors = [], 0
    for child, out in children:
        stdout, _ = child.communicate(timeout=seconds + warmup + 120)
        errors += json.loads(stdout.strip().splitlines()[-1])["errors"]
        latencies.append(np.load(out))
    all_lat = np.concatenate(latencies)
    return {
        "qps": all_lat.size / seconds,
        "latency_ms": {k: v * 1e3 for k, v in percentiles(all_lat, (50, 99)).items()},
        "requests": int(all_lat.size),
        "errors": errors,
        "client_processes": procs,
    }


def embedded_rate(vectors: np.ndarray, workdir: Path) -> float:
    """Durable embedded upsert rate, batches of 1,000, same vectors, same run."""
    import vdb

    with vdb.open(str(workdir / "embedded")) as db:
        warm = db.create_collection("warm", dim=DIM, metric="cosine")
        warm.upsert(list(range(1000)), random_unit_vectors(1000, DIM, seed=77))
        col = db.create_collection(COLLECTION, dim=DIM, metric="cosine", M=16, ef_construction=128)
        start = time.perf_counter()
        for lo in range(0, vectors.shape[0], 1000):
            hi = min(lo + 1000, vectors.shape[0])
            col.upsert(list(range(lo, hi)), vectors[lo:hi])
        return vectors.shape[0] / (time.perf_counter() - start)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="points in the searched collection")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--ef", type=int, default=64, help="params.hnsw_ef of every search")
    parser.add_argument(
        "--client-procs", type=int, default=2, help="client processes (threads spread over them)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per point")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--upsert-n", type=int, default=20_000, help="vectors per upsert-throughput point"
    )
    parser.add_argument("--batches", default="100,1000")
    parser.add_argument("--only", default="search,upsert")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 10_000)
        args.seconds = min(args.seconds, 2.0)
        args.warmup = min(args.warmup, 0.5)
        args.upsert_n = min(args.upsert_n, 2_000)
    args.clients = [int(c) for c in args.clients.split(",") if c]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.only = [s for s in args.only.split(",") if s]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    vectors = random_unit_vectors(args.n, DIM, seed=11)
    queries = random_unit_vectors(256, DIM, seed=12)
    query_bodies = [
        json.dumps({"query": q.tolist(), "limit": 10, "params": {"hnsw_ef": args.ef}}).encode()
        for q in queries
    ]
    upsert_vectors = random_unit_vectors(args.upsert_n, DIM, seed=13)
    with tempfile.TemporaryDirectory(prefix="vdb-bench-http-") as tmp:
        workdir = Path(tmp)
        embedded = None
        if "upsert" in args.only:
            log(f"embedded durable upsert rate ({args.upsert_n} x {DIM}, batches of 1,000)")
            embedded = embedded_rate(upsert_vectors, workdir)
        port = free_port()
        log(f"starting python -m vdb serve on port {port}")
        server = Server(
            [sys.executable, "-m", "vdb", "serve", "--data", str(workdir / "data"), "--port", str(port)],
            port, workdir / "vdb.log", "/readyz",
        )  # fmt: skip
        ceiling = None
        try:
            if "upsert" in args.only:
                for encoding in ("json", "msgpack"):
                    for batch in args.batches:
                        name = f"up-{encoding}-{batch}"
                        create_collection(port, name)
                        seconds = upload(port, name, upsert_vectors, batch, encoding)
                        rate = args.upsert_n / seconds
                        log(f"HTTP upsert {encoding} batch {batch}: {rate:.0f} vectors/s")
                        emit(
                            {
                                "bench": "http",
                                "measure": "upsert_throughput",
                                "system": "vdb serve",
                                "encoding": encoding,
                                "batch": batch,
                                "n": args.upsert_n,
                                "dim": DIM,
                                "vectors_per_s": rate,
                                "client": "one keep-alive http.client connection, PUT ?wait=true, body encoding timed",
                                "anchor": {
                                    "system": "embedded durable upsert, batches of 1,000",
                                    "vectors_per_s": embedded,
                                },
                                "ratio_vs_embedded": rate / embedded,
                                "host": host_info(),
                            }
                        )
                        request(port, "DELETE", f"/collections/{name}", None)
            if "search" in args.only:
                create_collection(port, COLLECTION)
                log(f"loading {args.n} x {DIM} over HTTP (msgpack, batches of 1,000)")
                upload(port, COLLECTION, vectors, 1000, "msgpack")
                ceiling_port = free_port()
                ceiling = Server(
                    [sys.executable, "-c", _CEILING_APP, str(ceiling_port)], ceiling_port, workdir / "ceiling.log", "/healthz"
                )  # fmt: skip
                path = f"/collections/{COLLECTION}/points/query"
                for clients in args.clients:
                    results = {}
                    for target, target_port in (("ceiling", ceiling_port), ("vdb", port)):
                        log(f"search: {clients} clients → {target}")
                        results[target] = load_clients(
                            target_port, path, query_bodies, clients, args.client_procs, args.seconds, args.warmup, workdir
                        )  # fmt: skip
                    emit(
                        {
                            "bench": "http",
                            "measure": "search",
                            "system": "vdb serve",
                            "n": args.n,
                            "dim": DIM,
                            "k": 10,
                            "ef": args.ef,
                            "clients": clients,
                            **results["vdb"],
                            "client": "separate processes, one thread per client, keep-alive http.client, JSON bodies",
                            "anchor": {
                                "system": "trivial Starlette endpoint, same uvicorn, fixed small JSON",
                                **results["ceiling"],
                            },
                            "ratio_qps_vs_ceiling": results["vdb"]["qps"]
                            / results["ceiling"]["qps"],
                            "host": host_info(),
                        }
                    )
        finally:
            server.stop()
            if ceiling is not None:
                ceiling.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
