"""Cluster benchmark: queries through the router vs one node directly, and ingest vs node count.

    python -m bench.cluster --quick                 # 1 and 2 nodes per group, 1 and 16 clients
    python -m bench.cluster --nodes 1,2,4 --n 50000 --seconds 10

Starts a Tansu broker, produces ``--n`` clustered unit vectors (128-d) to a
4-partition topic keyed by id, and runs:

* **query** lines, per ``nodes_per_group`` and ``clients``: QPS and p50/p99
  of ``query_points`` (limit 10) through the router over one replica group
  of that many ``serve --cluster`` nodes, and the anchor: the same queries
  sent straight to one plain node holding all the points (a ``serve`` in its
  own consumer group, same data), measured in the same run.
  ``p99_ratio`` = router p99 / direct p99. ``cpu_ms_per_query`` gives, per
  target, the CPU each process spent per query (``/proc`` times over the
  run, less the process' own idle use measured just before, so a node's
  background threads are not counted): ``router``, ``nodes`` (each node of
  the group) and ``direct`` -- the ``c_r`` and ``c_n`` of the scaling model;
  ``cpu_ms_per_query_raw`` without the idle correction and
  ``idle_cpu_cores`` the idle use itself (on a loaded box the background
  threads get less CPU under load, so the corrected figure can undershoot).
  With ``--compare-plain`` a second router over the same nodes, served as
  before the lean path (``--no-lean-path``: uvicorn's
  server, every route through Starlette), is measured in the same run too
  (``router_plain``, ``p99_ratio_plain``): the before/after of the lean ASGI path.
* **ingest** lines, per ``nodes_per_group``: ``--ingest-n`` records are
  produced to a fresh topic first, then a fresh group of that many nodes
  reads it; ``records_per_s`` = records applied after every node holds a
  share of the partitions / time until all are applied (from the nodes'
  ``/cluster/v1/node`` offsets), with the producer's own send rate and the
  1-node rate of the run as anchors.

Every process shares this box's cores (the client processes too), so the
figures show per-process costs, not what separate machines would give; the
scaling model in ``bench/README.md`` turns them into machine counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Server, emit, free_port, host_info, log
from bench.freshness import Broker
from bench.http import load_clients

DIM = 128
PARTITIONS = 4
FAST_GROUP = ("session_timeout_ms=4000", "heartbeat_interval_ms=400", "max_poll_interval_ms=10000")


def clustered(n: int, seed: int, centres: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, DIM)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of process ``pid`` so far (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def measured_load(
    port: int, bodies: list[bytes], args: argparse.Namespace, workdir: Path,
    clients: int, pids: dict[str, int], idle_s: float = 2.0,
) -> dict[str, Any]:  # fmt: skip
    """``load_clients`` against ``port``, plus each process' CPU per query (idle use removed)."""
    first = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(idle_s)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    result = load_clients(
        port, "/collections/docs/points/query", bodies, clients, args.client_procs,
        args.seconds, args.warmup, workdir,
    )  # fmt: skip
    wall = time.perf_counter() - started
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    # requests over the whole run, warm-up included (its rate is the measured one)
    sent = max(result["qps"] * (args.seconds + args.warmup), 1.0)
    cost: dict[str, float] = {}
    raw: dict[str, float] = {}
    idle: dict[str, float] = {}
    for name in pids:
        if None in (first[name], before[name], after[name]):
            continue
        idle[name] = (before[name] - first[name]) / idle_s
        used = after[name] - before[name]
        raw[name] = round(1000.0 * used / sent, 3)
        cost[name] = round(1000.0 * (used - idle[name] * wall) / sent, 3)

    def per_role(values: dict[str, float]) -> dict[str, Any]:
        return {
            "router": values.get("router"),
            **({"router_plain": values["router_plain"]} if "router_plain" in values else {}),
            "nodes": [values[n] for n in sorted(values) if n.startswith("node:")],
            "direct": values.get("direct"),
        }

    # A loaded box starves the nodes' background threads during the run, so the idle
    # correction can overshoot (even below zero): the raw figures are an upper bound.
    result["cpu_ms_per_query"] = per_role(cost)
    result["cpu_ms_per_query_raw"] = per_role(raw)
    result["idle_cpu_cores"] = per_role({k: round(v, 3) for k, v in idle.items()})
    return result


def http_json(url: str, body: Any = None, method: str = "POST") -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as response:
        return json.loads(response.read())


def count(port: int) -> int | None:
    try:
        return http_json(f"http://127.0.0.1:{port}/collections/docs/points/count", {})["result"][
            "count"
        ]
    except Exception:
        return None


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(0.2)


def produce(bootstrap: str, topic: str, vectors: np.ndarray, first_id: int) -> float:
    """Send every vector keyed by its id; seconds until the broker acknowledged all."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    started = time.perf_counter()
    for i, v in enumerate(vectors):
        point = first_id + i
        value = json.dumps({"id": point, "vector": v.tolist()}).encode()
        producer.send(topic, key=str(point).encode(), value=value)
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


NODE_OPTIONS: list[str] = []
"""Extra ``--kafka-option`` of every node (``--node-kafka-option``)."""


def node(
    workdir: Path, name: str, bootstrap: str, topic: str, group: str, cluster: str | None
) -> Server:
    port = free_port()
    argv = [
        sys.executable, "-m", "vdb", "serve", "--data", str(workdir / name), "--port", str(port),
        "--ingest", "kafka", "--kafka-bootstrap", bootstrap, "--kafka-topic", topic,
        "--kafka-group", group, "--collection", "docs", "--create-dim", str(DIM),
        "--log-level", "warning",
    ]  # fmt: skip
    for option in (*FAST_GROUP, *NODE_OPTIONS):
        argv += ["--kafka-option", option]
    if cluster:
        argv += ["--cluster", cluster, "--node-id", name]
        argv += ["--advertise-url", f"http://127.0.0.1:{port}"]
    return Server(argv, port, workdir / f"{name}.log", "/readyz")


def group_serving(router_port: int, names: list[str]) -> bool:
    """Every partition served (state serving) by the healthy nodes ``names``, each with a share."""
    try:
        doc = http_json(f"http://127.0.0.1:{router_port}/cluster", method="GET")["result"]
    except Exception:
        return False
    served: dict[str, set[int]] = {name: set() for name in names}
    for n in doc["nodes"]:
        if n["healthy"] and n["node_id"] in names:
            for key, part in (n["collections"].get("docs", {}).get("partitions") or {}).items():
                if part["state"] == "serving":
                    served[n["node_id"]].add(int(key))
    # every node holds a share (the group's rebalances are over) and every partition is served
    return all(served.values()) and set().union(*served.values()) == set(range(PARTITIONS))


def applied_records(group: list[Server], topic: str) -> tuple[int, list[int]]:
    """Records applied by the group (sum of offset + 1 of assigned partitions), shares per node."""
    total, shares = 0, []
    for server in group:
        try:
            doc = http_json(f"http://127.0.0.1:{server.port}/cluster/v1/node", method="GET")
        except Exception:
            shares.append(0)
            continue
        parts = doc["result"]["collections"].get("docs", {}).get("partitions") or {}
        shares.append(len(parts))
        total += sum(p["offset"] + 1 for p in parts.values() if p["offset"] is not None)
    return total, shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--ingest-n", type=int, default=20_000)
    parser.add_argument(
        "--nodes", default=None, help="nodes per group, comma separated (1,2,4; --quick: 1,2)"
    )
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--only", default="query,ingest", help="query, ingest or both")
    parser.add_argument(
        "--node-kafka-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a consumer option for every node, e.g. fetch_max_wait_ms=100 (an idle node "
        "fetches every 5 ms by default, 0.2-0.3 of a core on this box)",
    )
    parser.add_argument(
        "--compare-plain",
        action="store_true",
        help="also measure a router served as before the lean paths (--no-lean-path)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="n=5,000, ingest 10,000, nodes 1,2, 4 s per point"
    )
    args = parser.parse_args()
    if args.quick:
        args.n, args.ingest_n, args.seconds, args.warmup = 5000, 10000, 4.0, 1.0
        args.nodes = args.nodes or "1,2"
    args.nodes = args.nodes or "1,2,4"
    node_counts = [int(x) for x in args.nodes.split(",") if x]
    client_counts = [int(x) for x in args.clients.split(",") if x]
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    NODE_OPTIONS.extend(args.node_kafka_option)
    workdir = Path(tempfile.mkdtemp(prefix="vdb-bench-cluster-"))
    broker = Broker(workdir / "tansu.log")
    broker.start()
    servers: list[Server] = []
    try:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic("vectors", PARTITIONS, 1)])
        admin.close()
        base = clustered(args.n, seed=1)
        queries = clustered(args.queries, seed=2)
        log(f"producing {args.n} points")
        produce(broker.bootstrap, "vectors", base, 0)
        bodies = [json.dumps({"query": q.tolist(), "limit": 10}).encode() for q in queries]

        direct = node(workdir, "direct", broker.bootstrap, "vectors", "direct", None)
        servers.append(direct)
        node_counts_query = node_counts if "query" in only else []
        if node_counts_query:
            wait(lambda: count(direct.port) == args.n, 600, "direct node caught up")
        router_port = free_port()
        router = Server(
            [sys.executable, "-m", "vdb", "router", "--kafka-bootstrap", broker.bootstrap,
             "--cluster", "bench", "--port", str(router_port), "--log-level", "warning"],
            router_port, workdir / "router.log", "/readyz",
        )  # fmt: skip
        servers.append(router)
        routers = [("router", router_port)]
        if args.compare_plain:
            plain_port = free_port()
            plain = Server(
                [sys.executable, "-m", "vdb", "router", "--kafka-bootstrap", broker.bootstrap,
                 "--cluster", "bench", "--port", str(plain_port), "--log-level", "warning",
                 "--no-lean-path"],
                plain_port, workdir / "router-plain.log", "/readyz",
            )  # fmt: skip
            servers.append(plain)
            routers.append(("router_plain", plain_port))

        # -- queries: router over k nodes vs one node directly
        for k in node_counts_query:
            names = [f"q{k}-{i}" for i in range(k)]
            group = [
                node(workdir, nm, broker.bootstrap, "vectors", f"q{k}", "bench") for nm in names
            ]
            servers.extend(group)
            wait(lambda names=names: group_serving(router_port, names), 300, "group serving")
            wait(lambda: count(router_port) == args.n, 300, "router counts every point")
            pids = {"router": router.process.pid, "direct": direct.process.pid}
            if args.compare_plain:
                pids["router_plain"] = plain.process.pid
            pids.update({f"node:{nm}": s.process.pid for nm, s in zip(names, group, strict=True)})
            for turn, clients in enumerate(client_counts):
                results = {}
                # the routers in turn first and second, so neither always follows the direct run
                order = routers if turn % 2 == 0 else routers[::-1]
                for target, port in (("direct", direct.port), *order):
                    log(f"query: {k} node(s)/group, {clients} clients -> {target}")
                    results[target] = measured_load(port, bodies, args, workdir, clients, pids)
                emit(
                    {
                        "bench": "cluster",
                        "kind": "query",
                        "n": args.n,
                        "dim": DIM,
                        "partitions": PARTITIONS,
                        "nodes_per_group": k,
                        "clients": clients,
                        "router": results["router"],
                        "direct": results["direct"],
                        "qps_ratio": results["router"]["qps"] / max(results["direct"]["qps"], 1e-9),
                        "p99_ratio": results["router"]["latency_ms"]["p99"]
                        / max(results["direct"]["latency_ms"]["p99"], 1e-9),
                        **(
                            {
                                "router_plain": results["router_plain"],
                                "p99_ratio_plain": results["router_plain"]["latency_ms"]["p99"]
                                / max(results["direct"]["latency_ms"]["p99"], 1e-9),
                            }
                            if "router_plain" in results
                            else {}
                        ),
                        "node_kafka_options": list(NODE_OPTIONS),
                        "host": host_info(),
                    }
                )
            for s in group:
                s.stop()
                servers.remove(s)
        direct.stop()
        servers.remove(direct)

        # -- ingest: ingest_n records already in a fresh topic; a fresh group of k nodes
        # catches up; rate = records applied after the group is stable / time to the end
        one_node_rate = None
        for k in node_counts if "ingest" in only else []:
            topic = f"ingest-{k}"
            admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
            admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
            admin.close()
            extra = clustered(args.ingest_n, seed=10 + k)
            send_s = produce(broker.bootstrap, topic, extra, 0)
            names = [f"i{k}-{i}" for i in range(k)]
            group = [node(workdir, nm, broker.bootstrap, topic, f"i{k}", f"ing{k}") for nm in names]
            servers.extend(group)
            first = None
            while True:
                applied, shares = applied_records(group, topic)
                now = time.perf_counter()
                if first is None and all(shares):
                    first = (now, applied)
                if applied >= args.ingest_n:
                    break
                time.sleep(0.25)
            rate = (applied - first[1]) / max(now - first[0], 1e-9)
            one_node_rate = rate if k == 1 else one_node_rate
            emit(
                {
                    "bench": "cluster",
                    "kind": "ingest",
                    "records": args.ingest_n,
                    "records_before_stable_group": first[1],
                    "dim": DIM,
                    "partitions": PARTITIONS,
                    "nodes_per_group": k,
                    "records_per_s": rate,
                    "producer_records_per_s": args.ingest_n / send_s,
                    "one_node_records_per_s": one_node_rate,
                    "speedup_vs_one_node": rate / one_node_rate if one_node_rate else None,
                    "node_kafka_options": list(NODE_OPTIONS),
                    "host": host_info(),
                }
            )
            for s in group:
                s.stop()
                servers.remove(s)
    finally:
        for s in reversed(servers):
            s.stop()
        broker.stop()


if __name__ == "__main__":
    main()
