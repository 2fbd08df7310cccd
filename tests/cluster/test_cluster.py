"""A real cluster: 2 replica groups x 2 nodes over a 4-partition topic, a router in front.

The tests of this module share one cluster and run in order: the router
equals one vdb holding every point; then a node is killed with SIGKILL under
a stream of queries and writes, and restarted; last, every node goes and the
router names the partitions it cannot serve.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import httpx
import numpy as np
import pytest

import vdb
from tests.cluster.conftest import Cluster, minilm, post, wait_for

# 20,000 points: the fixture's 10,000 embeddings and 10,000 more, each the normalised sum of
# two of them (on the same manifold, no near-duplicates); 12,000 produced with kafka-python,
# 6,000 upserted through the router, 2,000 with string ids (produced directly)
N_DIRECT = 12000
N_ROUTER = 6000
N_STRING = 2000
N_QUERIES = 200
N_EXACT = 30
GROUPS = {"a": "g1", "b": "g1", "c": "g2", "d": "g2"}


def point_id(i: int) -> int | str:
    return i if i < N_DIRECT + N_ROUTER else str(uuid.UUID(int=i * 7919))


def payload(i: int, texts: list[str]) -> dict[str, Any]:
    return {"g": i % 5, "text": texts[i][:40], "rank": i}


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    n = N_DIRECT + N_ROUTER + N_STRING
    real, queries, texts = minilm(n // 2, N_QUERIES)
    pair = np.random.default_rng(20).permutation(len(real))
    mixed = real + real[pair]
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    base = np.concatenate([real, mixed.astype(np.float32)])
    return {"n": n, "base": base, "queries": queries, "texts": list(texts) * 2}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, data: dict[str, Any]) -> Any:
    """One embedded vdb holding every point: what the router must equal."""
    db = vdb.open(tmp_path_factory.mktemp("reference"), warm=False)
    col = db.create_collection("docs", dim=384, metric="cosine")
    n = data["n"]
    col.upsert(
        [point_id(i) for i in range(n)],
        data["base"],
        [payload(i, data["texts"]) for i in range(n)],
    )
    yield col
    db.close()


@pytest.fixture(scope="module")
def cluster(make_cluster: Any, data: dict[str, Any]) -> Cluster:
    cl = make_cluster(partitions=4, dim=384)
    for node_id, group in GROUPS.items():
        cl.add_node(node_id, group, wait=False)
    for node in cl.nodes.values():
        node.wait_ready()
    cl.start_router()
    wait_for(lambda: cl.covered("g1") and cl.covered("g2"))

    from kafka import KafkaProducer

    base, texts = data["base"], data["texts"]
    producer = KafkaProducer(bootstrap_servers=cl.broker.bootstrap, acks="all", linger_ms=5)
    try:
        for i in list(range(N_DIRECT)) + list(range(N_DIRECT + N_ROUTER, data["n"])):
            value = {"id": point_id(i), "vector": base[i].tolist(), "payload": payload(i, texts)}
            producer.send(cl.topic, key=str(point_id(i)).encode(), value=json.dumps(value).encode())
        producer.flush()
    finally:
        producer.close()
    # the router's writes wait for their offsets, behind what was produced first
    wait_for(lambda: count(cl) == N_DIRECT + N_STRING, timeout=600)
    for start in range(N_DIRECT, N_DIRECT + N_ROUTER, 500):
        points = [
            {"id": point_id(i), "vector": base[i].tolist(), "payload": payload(i, texts)}
            for i in range(start, min(start + 500, N_DIRECT + N_ROUTER))
        ]
        r = httpx.put(
            cl.router.url + "/collections/docs/points",
            params={"wait": "true"},
            json={"points": points},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    wait_for(lambda: count(cl) == data["n"], timeout=300)
    return cl


def count(cl: Cluster, body: dict | None = None) -> int | None:
    r = post(cl.router.url + "/collections/docs/points/count", body or {})
    return r.json()["result"]["count"] if r.status_code == 200 else None


def query(cl: Cluster, body: dict[str, Any]) -> list[dict[str, Any]]:
    r = post(cl.router.url + "/collections/docs/points/query", body)
    assert r.status_code == 200, r.text
    return r.json()["result"]["points"]


def ids_of(points: list[dict[str, Any]]) -> list[Any]:
    return [p["id"] for p in points]


G2 = {"must": [{"key": "g", "match": {"value": 2}}]}
SELECTIVE = {
    "must": [{"key": "g", "match": {"any": [1, 3]}}, {"key": "rank", "range": {"lt": 900}}]
}


@pytest.mark.slow
def test_router_equals_one_node(cluster: Cluster, reference: Any, data: dict[str, Any]) -> None:
    url = cluster.router.url + "/collections/docs"
    n, queries = data["n"], data["queries"]

    # Every point, produced directly or through the router, is retrievable with its payload.
    all_ids = [point_id(i) for i in range(n)]
    row_of = {(type(pid), pid): i for i, pid in enumerate(all_ids)}
    for start in range(0, n, 1000):
        chunk = all_ids[start : start + 1000]
        r = post(url + "/points", {"ids": chunk, "with_payload": True})
        assert r.status_code == 200, r.text
        got = r.json()["result"]
        assert ids_of(got) == chunk
        texts = data["texts"]
        assert all(p["payload"] == payload(row_of[(type(p["id"]), p["id"])], texts) for p in got)
    r = httpx.get(url + f"/points/{point_id(2999)}", timeout=10)
    assert r.status_code == 200 and r.json()["result"]["payload"]["rank"] == 2999

    # Counts, with and without a filter.
    assert count(cluster) == reference.count() == n
    assert count(cluster, {"filter": G2, "exact": True}) == reference.count(filter=G2)

    # Exact search: identical ids, plain, filtered, paged, thresholded.
    for q in queries[:N_EXACT]:
        want = [h.id for h in reference.search(q, k=10, exact=True)]
        assert ids_of(query(cluster, {"query": q.tolist(), "params": {"exact": True}})) == want
        want = [h.id for h in reference.search(q, k=10, exact=True, filter=SELECTIVE)]
        got = query(cluster, {"query": q.tolist(), "filter": SELECTIVE, "params": {"exact": True}})
        assert ids_of(got) == want
    q = queries[0]
    ref_hits = reference.search(q, k=20, exact=True)
    got = query(cluster, {"query": q.tolist(), "limit": 7, "offset": 3, "params": {"exact": True}})
    assert ids_of(got) == [h.id for h in ref_hits[3:10]]
    threshold = float(ref_hits[5].score) - 1e-6
    got = query(
        cluster,
        {"query": q.tolist(), "limit": 20, "score_threshold": threshold, "params": {"exact": True}},
    )
    assert ids_of(got) == [h.id for h in ref_hits if h.score >= threshold]
    got = query(cluster, {"query": q.tolist(), "limit": 3, "with_payload": ["rank"]})
    assert all(set(p["payload"]) == {"rank"} for p in got)

    # A query by point id searches with that point's vector and leaves it out.
    vector = reference.get([42], with_vectors=True)[0].vector
    want = [h.id for h in reference.search(vector, k=6, exact=True) if h.id != 42][:5]
    assert ids_of(query(cluster, {"query": 42, "limit": 5, "params": {"exact": True}})) == want

    # Batch queries.
    body = {
        "searches": [
            {"query": queries[1].tolist(), "limit": 4, "params": {"exact": True}},
            {"query": queries[2].tolist(), "limit": 6, "filter": G2, "params": {"exact": True}},
        ]
    }
    r = post(url + "/points/query/batch", body)
    assert r.status_code == 200, r.text
    batch = r.json()["result"]
    assert ids_of(batch[0]["points"]) == [
        h.id for h in reference.search(queries[1], k=4, exact=True)
    ]
    assert ids_of(batch[1]["points"]) == [
        h.id for h in reference.search(queries[2], k=6, exact=True, filter=G2)
    ]

    # ANN: recall@10 against the exact answer within 0.005 of one node's.
    def recall(found: list[list[Any]], truth: list[list[Any]]) -> float:
        return float(
            np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
        )

    truth = [[h.id for h in reference.search(q, k=10, exact=True)] for q in queries]
    single = [[h.id for h in reference.search(q, k=10)] for q in queries]
    routed = [ids_of(query(cluster, {"query": q.tolist(), "limit": 10})) for q in queries]
    assert recall(routed, truth) >= recall(single, truth) - 0.005

    # Scroll: the same pages and next offsets as one node, filtered or not.
    for flt in (None, G2):
        offset, pages, want_pages = None, [], []
        ref_offset = None
        while True:
            body = {"limit": 1000, "with_payload": False}
            if flt:
                body["filter"] = flt
            if offset is not None:
                body["offset"] = offset
            r = post(url + "/points/scroll", body)
            assert r.status_code == 200, r.text
            page = r.json()["result"]
            records, ref_offset = reference.scroll(filter=flt, limit=1000, offset=ref_offset)
            pages.append((ids_of(page["points"]), page["next_page_offset"]))
            want_pages.append(([rec.id for rec in records], ref_offset))
            offset = page["next_page_offset"]
            if offset is None or ref_offset is None:
                break
        assert pages == want_pages
    # A query without a vector lists points in id order, paged like one node.
    got = query(cluster, {"limit": 5, "offset": 8998, "with_payload": False})
    want, _ = reference.scroll(limit=9003)
    assert ids_of(got) == [rec.id for rec in want[8998:9003]]


@pytest.mark.slow
def test_a_node_keeps_each_partition_in_its_own_graphs(cluster: Cluster) -> None:
    # serve --cluster creates its collection with partition_segments: once everything is
    # indexed, a node holds one graph per partition it serves (a revoked partition's graphs
    # were dropped with its points) and nothing fresh
    for node_id, node in cluster.nodes.items():
        group = cluster.groups[node_id]
        held = {p for p, nodes in cluster.serving(group).items() if node_id in nodes}
        assert held, f"node {node_id} serves no partition"

        def indexed(url: str = node.url) -> dict[str, Any] | None:
            r = httpx.get(url + "/collections/docs", timeout=10)
            info = r.json()["result"]
            return info if info["status"] == "green" else None

        info = wait_for(indexed, timeout=120)
        assert info["segments_count"] == len(held), (node_id, held, info)
        assert info["indexed_vectors_count"] == info["points_count"]


@pytest.mark.slow
def test_bad_input_keeps_the_single_node_shapes(cluster: Cluster) -> None:
    router = cluster.router.url + "/collections/docs"
    node = cluster.nodes["a"].url + "/collections/docs"
    cases = [
        ("/points/query", {"query": [1.0, 2.0], "limit": 3}),
        ("/points/query", {"query": [0.0] * 384, "filter": {"must": [{"nope": 1}]}}),
        ("/points/query", {"query": [0.0] * 384, "limit": "ten"}),
        ("/points/query", {"query": [0.0] * 384, "bogus": True}),
        ("/points/scroll", {"limit": -1}),
        ("/points/count", {"filter": 7}),
        ("/points", {"ids": [{"x": 1}]}),
    ]
    for path, body in cases:
        via_router = post(router + path, body)
        direct = post(node + path, body)
        assert via_router.status_code == direct.status_code == 400, (path, via_router.text)
        assert via_router.json()["status"] == direct.json()["status"], path
    bad_dim = {"points": [{"id": 1, "vector": [1.0, 2.0]}]}
    via_router = httpx.put(router + "/points", json=bad_dim, timeout=10)
    direct = httpx.put(node + "/points", json=bad_dim, timeout=10)
    assert via_router.status_code == direct.status_code == 400
    assert via_router.json()["status"] == direct.json()["status"]
    r = httpx.put(router + "/points", json={"points": [{"id": 1, "vector": [0.0] * 384}]})
    assert r.status_code == 400 and "all zeros" in r.json()["status"]["error"]
    r = post(cluster.router.url + "/collections/nope/points/query", {"query": [0.0] * 384})
    assert r.status_code == 404 and "nope" in r.json()["status"]["error"]
    r = httpx.put(cluster.router.url + "/collections/other/index", json={}, timeout=10)
    assert r.status_code == 400 and "not supported through the vdb router" in r.text


@pytest.mark.slow
def test_collections_and_payload_updates_through_the_router(cluster: Cluster) -> None:
    """Create and drop are the nodes' business; payload updates are refused, naming why."""
    root = cluster.router.url + "/collections"
    vectors = {"vectors": {"size": 384, "distance": "Cosine"}}
    r = httpx.put(root + "/docs", json=vectors, timeout=10)
    direct = httpx.put(cluster.nodes["b"].url + "/collections/docs", json=vectors, timeout=10)
    assert r.status_code == direct.status_code == 409, r.text
    assert "already exists" in r.json()["status"]["error"]
    r = httpx.put(root + "/other", json=vectors, timeout=10)
    assert r.status_code == 400
    error = r.json()["status"]["error"]
    assert "cannot be created through the vdb router" in error and "--collection other" in error
    assert httpx.get(root + "/other/exists", timeout=10).json()["result"] == {"exists": False}
    r = httpx.delete(root + "/docs", timeout=10)
    assert r.status_code == 400 and "cannot be dropped" in r.json()["status"]["error"]
    assert httpx.get(root + "/docs/exists", timeout=10).json()["result"] == {"exists": True}
    r = httpx.delete(root + "/nope", timeout=10)
    assert r.status_code == 404 and "nope" in r.json()["status"]["error"]

    before = post(root + "/docs/points", {"ids": [11], "with_payload": True}).json()["result"]
    updates = [
        ("POST", "/points/payload", {"payload": {"x": 1}, "points": [11]}),
        ("PUT", "/points/payload", {"payload": {"x": 1}, "points": [11]}),
        ("POST", "/points/payload/delete", {"keys": ["g"], "points": [11]}),
        ("POST", "/points/payload/clear", {"points": [11]}),
    ]
    for method, path, body in updates:
        r = httpx.request(method, root + "/docs" + path, json=body, timeout=10)
        assert r.status_code == 400, (method, path, r.text)
        error = r.json()["status"]["error"]
        assert "payload updates are not supported through the vdb router" in error
        assert "Upsert the whole point" in error
    after = post(root + "/docs/points", {"ids": [11], "with_payload": True}).json()["result"]
    assert after == before and after[0]["payload"]["rank"] == 11


@pytest.mark.slow
def test_deletes_are_tombstones(cluster: Cluster, reference: Any) -> None:
    url = cluster.router.url + "/collections/docs"
    before = count(cluster)
    doomed = [5, 6, 7, point_id(2801)]
    r = post(url + "/points/delete", {"points": doomed}, wait="true")
    assert r.status_code == 200, r.text
    r = post(url + "/points", {"ids": doomed})
    assert r.json()["result"] == []
    flt = {"must": [{"key": "rank", "range": {"gte": 100, "lt": 110}}]}
    r = post(url + "/points/delete", {"filter": flt}, wait="true")
    assert r.status_code == 200, r.text
    assert count(cluster, {"filter": flt}) == 0
    assert count(cluster) == before - len(doomed) - 10
    reference.delete(doomed)
    reference.delete(filter=flt)
    assert count(cluster) == reference.count()


@pytest.mark.slow
def test_an_unmodified_qdrant_client_talks_to_the_router(
    cluster: Cluster, reference: Any, data: dict[str, Any]
) -> None:
    from qdrant_client import QdrantClient, models

    client = QdrantClient(url=cluster.router.url, timeout=30)
    assert client.collection_exists("docs") and not client.collection_exists("nope")
    assert [c.name for c in client.get_collections().collections] == ["docs"]
    assert client.get_collection("docs").points_count == reference.count()
    q = data["queries"][3]
    hits = client.query_points(
        "docs", query=q.tolist(), limit=5, search_params=models.SearchParams(exact=True)
    ).points
    assert [h.id for h in hits] == [h.id for h in reference.search(q, k=5, exact=True)]
    client.upsert(
        "docs",
        points=[models.PointStruct(id=777_777, vector=data["base"][0].tolist(), payload={"x": 1})],
        wait=True,
    )
    assert client.retrieve("docs", ids=[777_777])[0].payload == {"x": 1}
    flt = models.Filter(must=[models.FieldCondition(key="x", match=models.MatchValue(value=1))])
    assert client.count("docs", count_filter=flt).count == 1
    client.delete("docs", points_selector=models.PointIdsList(points=[777_777]), wait=True)
    assert client.retrieve("docs", ids=[777_777]) == []


@pytest.mark.slow
def test_a_hung_replica_is_retried_on_another(cluster: Cluster, data: dict[str, Any]) -> None:
    import os
    import signal

    url = cluster.router.url + "/collections/docs/points/query"
    hung = cluster.nodes["c"]
    os.kill(hung.pid, signal.SIGSTOP)
    try:
        outcomes = []
        for q in data["queries"][:6]:  # the router takes g1 and g2 in turn: g2 asks c
            r = post(url, {"query": q.tolist(), "limit": 5})
            outcomes.append((r.status_code, len(r.json()["result"]["points"])))
        assert outcomes == [(200, 5)] * 6, outcomes
    finally:
        os.kill(hung.pid, signal.SIGCONT)
    metrics = httpx.get(cluster.router.url + "/metrics", timeout=10).text
    retried = [line for line in metrics.splitlines() if line.startswith("vdb_router_retries_total")]
    assert retried and float(retried[0].split()[-1]) >= 1
    wait_for(lambda: cluster.covered("g2"), timeout=120)


class Stream:
    """Queries and writes through the router in two threads, every outcome recorded."""

    def __init__(self, url: str, data: dict[str, Any]) -> None:
        self.url = url
        self.data = data
        self.stop = threading.Event()
        self.queries: list[tuple[float, int | str]] = []  # (start time, status or error)
        self.acked: list[int] = []
        self.write_errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._query, daemon=True),
            threading.Thread(target=self._write, daemon=True),
        ]

    def __enter__(self) -> Stream:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _query(self) -> None:
        queries = self.data["queries"]
        with httpx.Client(timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                started = time.monotonic()
                body = {"query": queries[i % len(queries)].tolist(), "limit": 5}
                try:
                    r = client.post(self.url + "/points/query", json=body)
                    outcome: int | str = r.status_code
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                self.queries.append((started, outcome))
                i += 1
                time.sleep(0.02)

    def _write(self) -> None:
        base = self.data["base"]
        with httpx.Client(timeout=60) as client:
            i = 0
            while not self.stop.is_set():
                point = 100_000 + i
                body = {"points": [{"id": point, "vector": base[i % 500].tolist(), "payload": {}}]}
                try:
                    r = client.put(self.url + "/points", params={"wait": "true"}, json=body)
                    if r.status_code == 200:
                        self.acked.append(point)
                    else:
                        self.write_errors.append(r.text[:200])
                except httpx.HTTPError as exc:
                    self.write_errors.append(type(exc).__name__)
                i += 1
                time.sleep(0.05)


@pytest.mark.slow
def test_kill_a_node_under_load_then_restart_it(cluster: Cluster, data: dict[str, Any]) -> None:
    url = cluster.router.url + "/collections/docs"
    victim = "a"
    with Stream(url, data) as stream:
        wait_for(lambda: len(stream.acked) >= 5 and len(stream.queries) >= 20)
        cluster.nodes[victim].kill9()
        killed = time.monotonic()

        def noticed() -> bool:
            nodes = {n["node_id"]: n for n in cluster.map()["nodes"]}
            return victim not in nodes or not nodes[victim]["healthy"]

        wait_for(noticed, timeout=30)
        noticed_at = time.monotonic()
        # Its partitions are served again in its own group once Kafka rebalanced.
        wait_for(lambda: cluster.serving("g1") and cluster.covered("g1"), timeout=120)
        assert all(nodes == {"b"} for nodes in cluster.serving("g1").values())
        recovered = len(stream.acked)
        wait_for(lambda: len(stream.acked) >= recovered + 5, timeout=60)

        # Restarted with its data directory, it rejoins its group and serves again.
        cluster.add_node(victim, GROUPS[victim])
        wait_for(lambda: victim in {n for s in cluster.serving("g1").values() for n in s}, 120)
        wait_for(lambda: cluster.covered("g1"), timeout=60)
        wait_for(lambda: len(stream.acked) >= recovered + 10, timeout=60)
    after = [outcome for started, outcome in stream.queries if started >= noticed_at]
    assert after and all(outcome == 200 for outcome in after), after
    during = [outcome for started, outcome in stream.queries if killed <= started < noticed_at]
    assert all(outcome == 200 for outcome in during), during
    # Every write that got a 200 is there.
    r = post(url + "/points", {"ids": stream.acked, "with_payload": False})
    assert r.status_code == 200, r.text
    assert sorted(ids_of(r.json()["result"])) == sorted(stream.acked)


@pytest.mark.slow
def test_partitions_without_a_live_replica_are_named(
    cluster: Cluster, data: dict[str, Any]
) -> None:
    url = cluster.router.url + "/collections/docs"
    body = {"query": data["queries"][0].tolist(), "limit": 5}
    for node_id in ("c", "d"):
        cluster.nodes[node_id].kill9()
    assert post(url + "/points/query", body).status_code == 200  # group g1 still holds all
    for node_id in ("a", "b"):
        cluster.nodes[node_id].kill9()
    wait_for(lambda: not any(n["healthy"] for n in cluster.map()["nodes"]), timeout=30)
    r = post(url + "/points/query", body)
    assert r.status_code == 503
    error = r.json()["status"]["error"]
    assert "partition(s) 0, 1, 2, 3 of collection `docs` have no live replica" in error
    r = post(url + "/points/count", {})
    assert r.status_code == 503 and "0, 1, 2, 3" in r.json()["status"]["error"]
    r = post(url + "/points/query", body, partial="true")
    assert r.status_code == 200 and r.json()["result"]["points"] == []
    assert r.headers["x-vdb-missing-partitions"] == "0,1,2,3"
