"""Text in, text out: the built-in embedder and the text paths, each against its anchor.

    python -m bench.embed --quick
    python -m bench.embed --data DIR --n 10000 --seconds 10

``--data`` is a directory with ``base.txt`` (``name<TAB>text`` per line) and
``base.npy`` (the texts' MiniLM vectors), the debian-minilm set by default
(``$VDB_DATASETS/debian-minilm``). One JSON line per measure, anchors from
the same run, the host's load in each:

* ``embed_throughput``: texts/s of ``vdb.embed`` (tokenise, batch by length,
  run, pool, normalise) against a bare onnxruntime session loop over the same
  model, the same pre-tokenised batches and the same thread count (the
  model's own cost; target ≥ 0.9x).
* ``kafka_text_produce_to_searchable``: the ``text`` format at a fixed rate
  (200 msg/s), produce → searchable in the embedded API, against the broker
  floor (a bare consumer, same producer) and the pipeline's p99 inference of
  one batch (target p99 ≤ floor p99 + inference p99 + 10 ms).
* ``http_text_query``: ``query_points`` with a document, one client over
  HTTP, against one-text inference in this process (target p50 ≤ inference
  p50 + 2 ms).
* ``document_upsert``: ``col.upsert(ids, documents=texts)`` of N texts against
  embedding them alone plus a vector upsert of the result (target ≤ 1.1x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    Server,
    dataset_dir,
    emit,
    free_port,
    host_info,
    log,
    percentiles,
    subprocess_env,
)

COLLECTION = "texts"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def load_texts(data: Path, n: int | None = None) -> tuple[list[str], np.ndarray]:
    """The first ``n`` texts of ``data/base.txt`` and their vectors from ``base.npy``."""
    texts = []
    with open(data / "base.txt", encoding="utf-8") as f:
        for line in f:
            texts.append(line.rstrip("\n").partition("\t")[2])
            if n is not None and len(texts) >= n:
                break
    vectors = np.load(data / "base.npy", mmap_mode="r")[: len(texts)].astype(np.float32)
    return texts, vectors


def _common(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "bench": "embed",
        "model": "minilm (all-MiniLM-L6-v2 int8 ONNX)",
        "threads": args.threads,
    }


# --------------------------------------------------------------- throughput


def measure_throughput(args: argparse.Namespace, texts: list[str]) -> None:
    from vdb.embed.minilm import MiniLM

    model = MiniLM(threads=args.threads)
    batches = model.batches(model.tokenize(texts))
    model.embed(texts[:64])  # warm both paths once

    def bare() -> float:
        started = time.perf_counter()
        for _, ids, mask in batches:
            model.session.run(
                None,
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
            )
        return time.perf_counter() - started

    def ours() -> float:
        started = time.perf_counter()
        model.embed(texts)
        return time.perf_counter() - started

    runs: dict[str, list[float]] = {"bare": [], "vdb": []}
    for _ in range(args.repeats):  # interleaved, so a change of load hits both
        runs["bare"].append(bare())
        runs["vdb"].append(ours())
    bare_s, vdb_s = min(runs["bare"]), min(runs["vdb"])
    emit({
        **_common(args), "measure": "embed_throughput", "texts": len(texts),
        "batch_size": model.batch_size, "batches": len(batches),
        "texts_per_s": len(texts) / vdb_s, "runs_s": runs["vdb"],
        "anchor": {"system": "bare onnxruntime session.run loop, same model, batches, threads",
                   "texts_per_s": len(texts) / bare_s, "runs_s": runs["bare"]},
        "ratio_to_anchor": bare_s / vdb_s, "target": ">= 0.9", "host": host_info(),
    })  # fmt: skip


# --------------------------------------------------------------- kafka text

_TEXT_PRODUCER = r"""
import json, sys, time
import numpy as np
from kafka import KafkaProducer
bootstrap, topic, rate, texts_file, out = sys.argv[1:6]
rate = float(rate)
texts = json.load(open(texts_file))
values = [json.dumps({"id": i, "text": t}).encode() for i, t in enumerate(texts)]
producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
producer.partitions_for(topic)
sent = np.zeros(len(values), dtype=np.int64)
print(json.dumps({"ready": True}), flush=True)
sys.stdin.readline()
start = time.monotonic()
for i, value in enumerate(values):
    due = start + i / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    sent[i] = time.monotonic_ns()
    producer.send(topic, value=value, key=str(i).encode(), partition=0)
producer.flush()
np.save(out, sent)
print(json.dumps({"done": True, "elapsed": time.monotonic() - start}), flush=True)
"""


class TextProducer:
    """A producer process sending ``{"id": i, "text": texts[i]}`` at ``rate`` msg/s on ``go``."""

    def __init__(self, bootstrap: str, topic: str, rate: float, texts: list[str], workdir: Path):
        texts_file = workdir / f"texts-{topic}.json"
        texts_file.write_text(json.dumps(texts))
        self.out = workdir / f"sent-{topic}.npy"
        self.process = subprocess.Popen(
            [sys.executable, "-c", _TEXT_PRODUCER, bootstrap, topic, str(rate), str(texts_file),
             str(self.out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=subprocess_env(),
        )  # fmt: skip
        if not self.process.stdout.readline():
            raise RuntimeError("text producer died before it was ready")

    def go(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def wait(self) -> tuple[np.ndarray, float]:
        done = json.loads(self.process.stdout.readline())
        self.process.wait(60)
        return np.load(self.out), float(done["elapsed"])


def kafka_floor(broker: Any, rate: float, texts: list[str], workdir: Path) -> dict[str, Any]:
    from kafka import KafkaConsumer, TopicPartition

    topic = "floor-text"
    broker.create_topic(topic, 1)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=5,
                             enable_auto_commit=False, max_poll_records=10_000)  # fmt: skip
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    consumer.poll(timeout_ms=100)
    producer = TextProducer(broker.bootstrap, topic, rate, texts, workdir)
    received = np.zeros(len(texts), dtype=np.int64)
    seen = 0
    producer.go()
    deadline = time.monotonic() + len(texts) / rate + 60
    while seen < len(texts) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=50, max_records=10_000).values():
            now = time.monotonic_ns()
            for record in records:
                i = int(record.key)
                if received[i] == 0:
                    received[i] = now
                    seen += 1
    sent, _ = producer.wait()
    consumer.close()
    ok = received > 0
    return {"system": "kafka-python consumer (assign), fetch_max_wait_ms=5",
            "delivered": int(ok.sum()), "latency_ms": percentiles((received[ok] - sent[ok]) / 1e6)}  # fmt: skip


def kafka_vdb(
    broker: Any, rate: float, texts: list[str], vectors: np.ndarray, workdir: Path
) -> dict[str, Any]:
    import vdb
    from bench.freshness import EmbeddedTarget, VisibilityWatcher
    from vdb.ingest import KafkaSource

    topic = "vdb-text"
    broker.create_topic(topic, 1)
    with vdb.open(str(workdir / "kafka-data")) as db:
        col = db.create_collection(COLLECTION, embedder="minilm")
        source = KafkaSource(broker.bootstrap, topic, group_id="bench-text",
                             consumer_options={"session_timeout_ms": 4000,
                                               "heartbeat_interval_ms": 400,
                                               "max_poll_interval_ms": 10000})  # fmt: skip
        handle = db.ingest(source, COLLECTION, format="text")
        try:
            warm = TextProducer(broker.bootstrap, topic, 1000, ["warm up the group"], workdir)
            warm.go()
            warm.wait()
            started = time.monotonic()
            while col.count() < 1:
                if time.monotonic() - started > 120:
                    raise TimeoutError("the text pipeline did not apply the warm-up message")
                time.sleep(0.01)
            col.delete([0])  # the warm-up used id 0; the watcher counts from an empty collection
            base = handle.stats()["texts_embedded"]
            watcher = VisibilityWatcher(EmbeddedTarget(col), vectors, base_count=0)
            producer = TextProducer(broker.bootstrap, topic, rate, texts, workdir)
            watcher.start()
            producer.go()
            sent, elapsed = producer.wait()
            deadline = time.monotonic() + 120
            while watcher.seen < len(texts) and time.monotonic() < deadline:
                time.sleep(0.01)
            watcher.stop()
            stats = handle.stats()
        finally:
            handle.stop()
    ok = watcher.visible > 0
    return {
        "system": "vdb embedded: db.ingest(KafkaSource, format='text') → col.search",
        "delivered_searchable": int(ok.sum()),
        "latency_ms": percentiles((watcher.visible[ok] - sent[ok]) / 1e6),
        "producer_rate_achieved": len(texts) / elapsed,
        "inference_ms_per_batch": {k: stats["inference_ms"][k] for k in ("p50", "p90", "p99")},
        "batch_apply_ms": {k: stats["batch_latency_ms"][k] for k in ("p50", "p90", "p99")},
        "texts_embedded": stats["texts_embedded"] - base,
        "batches": stats["batches"],
        "search_check_misses": watcher.search_misses,
    }


def measure_kafka(
    args: argparse.Namespace, texts: list[str], vectors: np.ndarray, workdir: Path
) -> None:
    from bench.freshness import Broker

    count = int(args.rate * args.seconds)
    texts, vectors = texts[:count], vectors[:count]
    broker = Broker(workdir / "tansu.log")
    broker.start()
    log(f"tansu broker pid {broker.process.pid} on {broker.bootstrap}")
    try:
        floor = kafka_floor(broker, args.rate, texts, workdir)
        ours = kafka_vdb(broker, args.rate, texts, vectors, workdir)
    finally:
        broker.stop()
    bound = floor["latency_ms"]["p99"] + (ours["inference_ms_per_batch"]["p99"] or 0) + 10
    emit({
        **_common(args), "measure": "kafka_text_produce_to_searchable", "rate": args.rate,
        "count": count, **ours,
        "anchor": {"system": "broker floor, same run, same producer", **floor},
        "target_p99_ms": bound, "meets_target": ours["latency_ms"]["p99"] <= bound,
        "host": host_info(),
    })  # fmt: skip


# --------------------------------------------------------------- http query


def measure_http(
    args: argparse.Namespace, texts: list[str], vectors: np.ndarray, workdir: Path
) -> None:
    import http.client

    from vdb.embed import get_embedder

    model = get_embedder(
        "minilm"
    )  # loaded first: an idle keep-alive connection is closed after 5 s
    port = free_port()
    server = Server(  # the child inherits VDB_EMBED_THREADS (set in main)
        [sys.executable, "-m", "vdb", "serve", "--data", str(workdir / "http-data"), "--port", str(port)],
        port, workdir / "server.log", "/readyz",
    )  # fmt: skip
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

        def call(method: str, path: str, body: Any) -> Any:
            payload = json.dumps(body)
            try:
                conn.request(method, path, payload, {"Content-Type": "application/json"})
                response = conn.getresponse()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                conn.close()  # the server closed an idle keep-alive connection: reconnect
                conn.request(method, path, payload, {"Content-Type": "application/json"})
                response = conn.getresponse()
            raw = response.read()
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: {response.status} {raw[:300]!r}")
            return json.loads(raw)

        call("PUT", f"/collections/{COLLECTION}", {"vectors": {"size": 384, "distance": "Cosine"}})
        for start in range(0, len(vectors), 1000):
            chunk = vectors[start : start + 1000]
            call("PUT", f"/collections/{COLLECTION}/points?wait=true",
                 {"batch": {"ids": list(range(start, start + len(chunk))), "vectors": chunk.tolist()}})  # fmt: skip
        queries = texts[-args.queries :]
        path = f"/collections/{COLLECTION}/points/query"
        model.embed(queries[:5])
        for text in queries[:5]:  # load the model in the server, warm the connection
            call("POST", path, {"query": {"text": text, "model": MODEL}, "limit": 10})
        http_ms, infer_ms = [], []
        for text in queries:  # interleaved: one HTTP text query, one local inference
            t0 = time.perf_counter()
            call("POST", path, {"query": {"text": text, "model": MODEL}, "limit": 10})
            t1 = time.perf_counter()
            model.embed([text])
            t2 = time.perf_counter()
            http_ms.append((t1 - t0) * 1000)
            infer_ms.append((t2 - t1) * 1000)
    finally:
        server.stop()
    http_p, infer_p = percentiles(np.array(http_ms)), percentiles(np.array(infer_ms))
    emit({
        **_common(args), "measure": "http_text_query", "points": len(vectors),
        "queries": len(queries), "limit": 10, "clients": 1, "latency_ms": http_p,
        "anchor": {"system": "one-text inference in the bench process (model.embed([text]))",
                   "latency_ms": infer_p},
        "overhead_p50_ms": http_p["p50"] - infer_p["p50"], "target": "p50 <= anchor p50 + 2 ms",
        "host": host_info(),
    })  # fmt: skip


# --------------------------------------------------------------- upsert


def measure_upsert(args: argparse.Namespace, texts: list[str], workdir: Path) -> None:
    import vdb
    from vdb.embed import get_embedder

    model = get_embedder("minilm")
    model.embed(texts[:64])
    ids = list(range(len(texts)))
    runs: dict[str, list[float]] = {"documents": [], "embed": [], "vectors": []}
    with vdb.open(str(workdir / "upsert-data")) as db:
        for r in range(args.repeats):
            col = db.create_collection(f"docs{r}", embedder="minilm")
            t0 = time.perf_counter()
            col.upsert(ids, documents=texts)
            runs["documents"].append(time.perf_counter() - t0)
            plain = db.create_collection(f"vectors{r}", dim=384)
            t0 = time.perf_counter()
            vectors = model.embed(texts)
            t1 = time.perf_counter()
            plain.upsert(ids, vectors, payloads=[{"document": t} for t in texts])
            t2 = time.perf_counter()
            runs["embed"].append(t1 - t0)
            runs["vectors"].append(t2 - t1)
    anchors = [e + v for e, v in zip(runs["embed"], runs["vectors"], strict=True)]
    best = min(runs["documents"])
    emit({
        **_common(args), "measure": "document_upsert", "texts": len(texts),
        "seconds": best, "texts_per_s": len(texts) / best, "runs_s": runs["documents"],
        "anchor": {"system": "model.embed(texts) + col.upsert(ids, vectors, same payloads)",
                   "seconds": min(anchors), "embed_s": runs["embed"], "vector_upsert_s": runs["vectors"]},
        "ratio_to_anchor": best / min(anchors), "target": "<= 1.1", "host": host_info(),
    })  # fmt: skip


# --------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=None, help="dir with base.txt + base.npy")
    parser.add_argument("--n", type=int, default=10_000, help="texts for throughput and upsert")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--rate", type=float, default=200.0, help="Kafka text messages per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="Kafka producer run")
    parser.add_argument("--queries", type=int, default=200, help="HTTP text queries")
    parser.add_argument("--http-points", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default="throughput,kafka,http,upsert")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 1000)
        args.seconds = min(args.seconds, 3.0)
        args.queries = min(args.queries, 60)
        args.http_points = min(args.http_points, 2000)
    args.only = [s for s in args.only.split(",") if s]
    if args.data is None:
        args.data = dataset_dir("debian-minilm")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("VDB_EMBED_THREADS", str(args.threads))
    texts, vectors = load_texts(
        args.data, max(args.n, args.http_points, int(args.rate * args.seconds))
    )
    with tempfile.TemporaryDirectory(prefix="vdb-bench-embed-") as tmp:
        workdir = Path(tmp)
        if "throughput" in args.only:
            log(f"throughput: {args.n} texts, {args.threads} threads")
            measure_throughput(args, texts[: args.n])
        if "upsert" in args.only:
            log(f"upsert: {args.n} documents")
            measure_upsert(args, texts[: args.n], workdir)
        if "http" in args.only:
            log(f"http: {args.queries} text queries over {args.http_points} points")
            measure_http(args, texts[: args.http_points], vectors[: args.http_points], workdir)
        if "kafka" in args.only:
            log(f"kafka: text at {args.rate:.0f} msg/s for {args.seconds:.0f} s")
            measure_kafka(args, texts, vectors, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
