"""Named dense and sparse vectors through the router: writes, queries, fusion, MMR.

A cluster of 2 nodes (one consumer group) over a 4-partition topic whose
collection has two named dense vectors (``text``: 384-d cosine, ``pos``: 8-d
Euclid), a sparse one (``kw``) and a sparse one with the idf modifier
(``kwi``). Half of the points are produced with kafka-python as JSON named
vector maps (the nodes' ingest path), half upserted through the router. The
router's answers are compared with what one node holding every point answers
(``vdb.http.hybrid.run`` on an embedded collection, the nodes' own code).
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import numpy as np
import pytest

import vdb
from tests.cluster.conftest import Cluster, minilm, post, wait_for
from vdb.http import hybrid
from vdb.http import query_api as qa
from vdb.ingest.formats import Decoder
from vdb.ingest.source import Message
from vdb.types import DeadLetter, Upsert

N = 2000
N_DIRECT = 1000
VOCAB = 300
EXACT = {"exact": True}
CREATE = {
    "vectors": {"text": {"dim": 384, "metric": "cosine"}, "pos": {"dim": 8, "metric": "l2"}},
    "sparse_vectors": {"kw": {}, "kwi": {"modifier": "idf"}},
}


def _sparse(rng: np.random.Generator) -> dict[str, list]:
    indices = rng.choice(VOCAB, size=int(rng.integers(3, 12)), replace=False)
    return {"indices": indices.tolist(), "values": rng.uniform(0.05, 1.0, indices.size).tolist()}


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    base, queries, _ = minilm(N, 20)
    rng = np.random.default_rng(7)
    pos = rng.standard_normal((N, 8)).astype(np.float32)
    points = []
    for i in range(N):
        vector: dict[str, Any] = {"text": base[i].tolist(), "kw": _sparse(rng)}
        if i % 7:
            vector["pos"] = pos[i].tolist()  # every 7th point has no `pos`
        if i % 3 == 0:
            vector["kwi"] = _sparse(rng)
        points.append({"id": i, "vector": vector, "payload": {"g": i % 4, "rank": i}})
    sparse_queries = [_sparse(rng) for _ in range(10)]
    pos_queries = rng.standard_normal((10, 8)).astype(np.float32)
    return {
        "points": points,
        "queries": queries,
        "sparse_queries": sparse_queries,
        "pos_queries": pos_queries,
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, data: dict[str, Any]) -> Any:
    """One embedded vdb holding every point, the same collection."""
    db = vdb.open(tmp_path_factory.mktemp("named-reference"), warm=False)
    col = db.create_collection("docs", **CREATE)
    points = data["points"]
    columns: dict[str, list] = {name: [None] * N for name in ("text", "pos", "kw", "kwi")}
    for i, point in enumerate(points):
        for name, vector in point["vector"].items():
            columns[name][i] = vector
    col.upsert([pt["id"] for pt in points], columns, [pt["payload"] for pt in points])
    yield col
    db.close()


@pytest.fixture(scope="module")
def cluster(make_cluster: Any, data: dict[str, Any]) -> Cluster:
    # the nodes' collection has graphs per partition for every dense name, as `serve
    # --cluster` gives the collections it creates
    cl = make_cluster(partitions=4, dim=384, create={**CREATE, "partition_segments": True})
    for node_id in ("n1", "n2"):
        cl.add_node(node_id, "g1", wait=False)
    for node in cl.nodes.values():
        node.wait_ready()
    cl.start_router()
    wait_for(lambda: cl.covered("g1"))

    from kafka import KafkaProducer

    points = data["points"]
    producer = KafkaProducer(bootstrap_servers=cl.broker.bootstrap, acks="all", linger_ms=5)
    try:
        for point in points[:N_DIRECT]:
            producer.send(cl.topic, key=str(point["id"]).encode(), value=json.dumps(point).encode())
        producer.flush()
    finally:
        producer.close()
    url = cl.router.url + "/collections/docs/points"
    rest = points[N_DIRECT:]
    half = len(rest) // 2
    r = httpx.put(url, params={"wait": "true"}, json={"points": rest[:half]}, timeout=120)
    assert r.status_code == 200, r.text
    r = httpx.put(url, params={"wait": "true"}, json={"points": rest[half:]}, timeout=120)
    assert r.status_code == 200, r.text

    def count() -> int | None:
        r = post(url + "/count", {"exact": True})
        return r.json()["result"]["count"] if r.status_code == 200 else None

    wait_for(lambda: count() == N, timeout=300)
    return cl


def query_sets(data: dict[str, Any]) -> tuple[Any, list[dict[str, list]], Any]:
    """The dense ``text`` queries, the sparse ones and the ``pos`` ones."""
    return data["queries"], data["sparse_queries"], data["pos_queries"]


def expected(reference: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    return hybrid.run(reference, qa.parse_query_request(body))


def routed(cluster: Cluster, body: dict[str, Any]) -> list[dict[str, Any]]:
    r = post(cluster.router.url + "/collections/docs/points/query", body)
    assert r.status_code == 200, r.text
    return r.json()["result"]["points"]


def same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """The same points in the same order, scores equal up to float rounding, same payloads."""
    assert [p["id"] for p in got] == [p["id"] for p in want]
    for g, w in zip(got, want, strict=True):
        assert math.isclose(g["score"], w["score"], rel_tol=1e-5, abs_tol=1e-6), (g, w)
        assert g.get("payload") == w.get("payload")
        assert ("vector" in g) == ("vector" in w)


def test_the_decoder_reads_named_and_sparse_vector_maps() -> None:
    """The ingest format of a named point (what the router produces), and its bad shapes."""
    decoder = Decoder("json", dim=1, metric="ip", source="kafka:g")

    def decode(obj: Any) -> Any:
        return decoder(Message("t", 0, 5, b"9", json.dumps(obj).encode()))

    op = decode({"id": 9, "vector": {"a": [1, 2.5], "s": {"indices": [4, 1], "values": [1, 0.5]}}})
    assert isinstance(op, Upsert) and op.id == 9
    assert op.vector["a"].dtype == np.float32 and op.vector["a"].tolist() == [1.0, 2.5]
    assert op.vector["s"]["indices"].tolist() == [4, 1]
    assert op.vector["s"]["values"].dtype == np.float32
    bad = [
        ({"id": 1, "vector": {"a": [1, "x"]}}, "list of numbers"),
        ({"id": 1, "vector": {"a": [1, float("nan")]}}, "NaN"),
        ({"id": 1, "vector": {"s": {"indices": [1, 1], "values": [1, 2]}}}, "distinct"),
        ({"id": 1, "vector": {"s": {"indices": [1], "values": [1, 2]}}}, "1 indices but 2"),
        ({"id": 1, "vector": {"s": {"indices": [-1], "values": [1]}}}, "[0, 2**32)"),
        ({"id": 1, "vector": {"s": {"indices": [1]}}}, "'indices'"),
    ]
    for obj, reason in bad:
        letter = decoder(Message("t", 0, 5, b"1", json.dumps(obj, allow_nan=True).encode()))
        assert isinstance(letter, DeadLetter) and reason in letter.reason, (obj, letter)


@pytest.mark.slow
def test_named_dense_and_sparse_queries_equal_one_node(
    cluster: Cluster, reference: Any, data: dict[str, Any]
) -> None:
    queries, sparse_queries, pos_queries = query_sets(data)
    g1 = {"must": [{"key": "g", "match": {"value": 1}}]}
    bodies = []
    for i in range(5):
        bodies += [
            {"query": queries[i].tolist(), "using": "text", "limit": 10, "params": EXACT,
             "with_payload": True},
            {"query": pos_queries[i].tolist(), "using": "pos", "limit": 7, "offset": 2,
             "params": EXACT, "filter": g1},
            {"query": sparse_queries[i], "using": "kw", "limit": 10},
            {"query": {"nearest": sparse_queries[i]}, "using": "kw", "limit": 5, "filter": g1,
             "with_payload": ["rank"]},
        ]  # fmt: skip
    bodies += [
        {"query": 43, "using": "pos", "limit": 5, "params": EXACT},  # by id: its `pos`
        {"query": {"nearest": 43}, "using": "kw", "limit": 5},
        {"query": 42, "using": "kw", "limit": 5},
        {"query": queries[0].tolist(), "using": "text", "limit": 3, "params": EXACT,
         "with_vector": ["pos", "kw"]},
        {"query": pos_queries[0].tolist(), "using": "pos", "limit": 20, "params": EXACT,
         "score_threshold": 3.0},
    ]  # fmt: skip
    for body in bodies:
        same(routed(cluster, body), expected(reference, body))
    # vectors come back as stored, named
    got = routed(cluster, bodies[-2])
    want = reference.get([p["id"] for p in got], with_vectors=["pos", "kw"])
    for point, record in zip(got, want, strict=True):
        assert set(point["vector"]) == set(record.vector)
        if "pos" in record.vector:
            assert np.allclose(point["vector"]["pos"], record.vector["pos"])
        assert point["vector"]["kw"]["indices"] == record.vector["kw"]["indices"].tolist()

    # the legacy search with a named dense or sparse vector
    url = cluster.router.url + "/collections/docs/points/search"
    for body in (
        {"vector": {"name": "pos", "vector": pos_queries[1].tolist()}, "limit": 6,
         "params": EXACT},
        {"vector": {"name": "kw", "vector": sparse_queries[1]}, "limit": 6, "with_payload": True},
    ):  # fmt: skip
        r = post(url, body)
        assert r.status_code == 200, r.text
        want = hybrid.run(reference, hybrid.from_search_request(body, "SearchRequest"))
        same(r.json()["result"], want)

    # batches of plain queries: one node batch per replica, merged per search by its metric
    searches = [bodies[1], bodies[2], bodies[-1]]
    r = post(cluster.router.url + "/collections/docs/points/query/batch", {"searches": searches})
    assert r.status_code == 200, r.text
    for got, body in zip(r.json()["result"], searches, strict=True):
        same(got["points"], expected(reference, body))
    legacy = [
        {"vector": {"name": "pos", "vector": pos_queries[2].tolist()}, "limit": 4,
         "params": EXACT},
        {"vector": {"name": "kw", "vector": sparse_queries[2]}, "limit": 4},
    ]  # fmt: skip
    r = post(url + "/batch", {"searches": legacy})
    assert r.status_code == 200, r.text
    for got, body in zip(r.json()["result"], legacy, strict=True):
        same(got, hybrid.run(reference, hybrid.from_search_request(body, "SearchRequest")))

    # retrieve and scroll with a list of vector names
    r = post(
        cluster.router.url + "/collections/docs/points",
        {"ids": [7, 8, 1500], "with_vector": ["kw"], "with_payload": False},
    )
    assert r.status_code == 200, r.text
    got = r.json()["result"]
    assert [p["id"] for p in got] == [7, 8, 1500]
    for point, record in zip(got, reference.get([7, 8, 1500], with_vectors=["kw"]), strict=True):
        assert list(point["vector"]) == ["kw"]
        assert point["vector"]["kw"]["indices"] == record.vector["kw"]["indices"].tolist()
        assert np.allclose(point["vector"]["kw"]["values"], record.vector["kw"]["values"])
    r = post(
        cluster.router.url + "/collections/docs/points/scroll",
        {"limit": 5, "offset": 1995, "with_vector": ["pos"]},
    )
    page = r.json()["result"]
    assert [p["id"] for p in page["points"]] == [1995, 1996, 1997, 1998, 1999]
    assert [set(p["vector"]) for p in page["points"]] == [
        {"pos"} if i % 7 else set() for i in range(1995, 2000)
    ]

    # the collection's vectors, as a node shows them, with the cluster's count
    r = httpx.get(cluster.router.url + "/collections/docs", timeout=10)
    info = r.json()["result"]
    params = info["config"]["params"]
    assert set(params["vectors"]) == {"text", "pos"}
    assert params["vectors"]["pos"]["distance"] == "Euclid"
    assert set(params["sparse_vectors"]) == {"kw", "kwi"}
    assert info["points_count"] == N


@pytest.mark.slow
def test_fusion_rescoring_and_mmr_equal_one_node(
    cluster: Cluster, reference: Any, data: dict[str, Any]
) -> None:
    queries, sparse_queries, pos_queries = query_sets(data)
    g2 = {"must": [{"key": "g", "match": {"any": [2, 3]}}]}
    bodies = []
    for i in range(4):
        dense = {"query": queries[i].tolist(), "using": "text", "limit": 25, "params": EXACT}
        sparse = {"query": sparse_queries[i], "using": "kw", "limit": 25}
        pos = {"query": pos_queries[i].tolist(), "using": "pos", "limit": 25, "params": EXACT}
        bodies += [
            {"prefetch": [dense, sparse], "query": {"fusion": "rrf"}, "limit": 10,
             "with_payload": True},
            {"prefetch": [dense, pos], "query": {"fusion": "dbsf"}, "limit": 8, "offset": 2,
             "filter": g2},
            {"prefetch": [dense, sparse, pos], "query": {"rrf": {"k": 5, "weights": [1, 2, 0.5]}},
             "limit": 10},
            # re-score the sparse and pos candidates with the dense vector
            {"prefetch": [sparse, pos], "query": queries[i].tolist(), "using": "text",
             "limit": 10},
            # nested: fuse inside, re-score outside
            {"prefetch": {"prefetch": [dense, sparse], "query": {"fusion": "rrf"}, "limit": 30},
             "query": pos_queries[i].tolist(), "using": "pos", "limit": 5},
            {"query": {"nearest": queries[i].tolist(), "mmr": {"diversity": 0.6,
             "candidates_limit": 30}}, "using": "text", "limit": 6, "params": EXACT},
            {"prefetch": [dense, sparse], "query": {"fusion": "rrf"}, "limit": 10,
             "score_threshold": 0.4},
        ]  # fmt: skip
    bodies.append(
        {"prefetch": [{"query": 44, "using": "pos", "limit": 10, "params": EXACT},
                      {"query": 44, "using": "kw", "limit": 10}],
         "query": {"fusion": "rrf"}, "limit": 5, "with_vector": ["pos"]}
    )  # fmt: skip
    for body in bodies:
        same(routed(cluster, body), expected(reference, body))
    assert len(routed(cluster, bodies[0])) == 10

    # a batch that mixes plain and fused queries
    batch = {"searches": [bodies[0], {"query": sparse_queries[5], "using": "kw", "limit": 4}]}
    r = post(cluster.router.url + "/collections/docs/points/query/batch", batch)
    assert r.status_code == 200, r.text
    got = r.json()["result"]
    same(got[0]["points"], expected(reference, batch["searches"][0]))
    same(got[1]["points"], expected(reference, batch["searches"][1]))


@pytest.mark.slow
def test_named_bad_input_keeps_the_single_node_shapes(
    cluster: Cluster, data: dict[str, Any]
) -> None:
    router = cluster.router.url + "/collections/docs"
    node = cluster.nodes["n1"].url + "/collections/docs"
    q = data["queries"][0].tolist()
    sparse = data["sparse_queries"][0]
    cases = [
        ("/points/query", {"query": q, "using": "nope"}),
        ("/points/query", {"query": sparse, "using": "text"}),
        ("/points/query", {"query": q[:10], "using": "text"}),
        ("/points/query", {"query": q, "using": "text", "with_vector": ["nope"]}),
        ("/points/query", {"prefetch": [{"query": q, "using": "nope"}],
                             "query": {"fusion": "rrf"}}),
        ("/points/query", {"prefetch": [{"query": q, "using": "text"}], "query": {"fusion": "x"}}),
        ("/points/query", {"query": {"fusion": "rrf"}}),
        ("/points/query", {"query": {"nearest": sparse, "mmr": {}}, "using": "kw"}),
        ("/points/query", {"query": {"nearest": q, "mmr": {"diversity": 3}}, "using": "text"}),
        ("/points/query/batch", {"searches": [{"prefetch": [{"query": q, "using": "text"}],
                                               "query": {"fusion": "rrf"}, "limit": -1}]}),
        ("/points/search", {"vector": {"name": "nope", "vector": q}, "limit": 3}),
    ]  # fmt: skip
    for path, body in cases:
        via_router = post(router + path, body)
        direct = post(node + path, body)
        assert via_router.status_code == direct.status_code == 400, (path, body, via_router.text)
        assert via_router.json()["status"] == direct.json()["status"], (path, body)
    for body in (
        {"points": [{"id": 1, "vector": {"text": q[:3]}}]},
        {"points": [{"id": 1, "vector": {"nope": q}}]},
        {"points": [{"id": 1, "vector": {"kw": q}}]},
        {"points": [{"id": 1, "vector": {"kw": {"indices": [1, 1], "values": [1, 2]}}}]},
        {"points": [{"id": 1, "vector": q}]},
    ):
        via_router = httpx.put(router + "/points", json=body, timeout=10)
        direct = httpx.put(node + "/points", json=body, timeout=10)
        assert via_router.status_code == direct.status_code == 400, (body, via_router.text)
        assert via_router.json()["status"] == direct.json()["status"], body
    zero = {"points": [{"id": 1, "vector": {"text": [0.0] * 384}}]}
    r = httpx.put(router + "/points", json=zero, timeout=10)
    assert r.status_code == 400 and "all zeros" in r.json()["status"]["error"]
    # IDF needs the whole collection's statistics: refused, naming why
    for body in (
        {"query": sparse, "using": "kwi"},
        {"prefetch": [{"query": sparse, "using": "kwi"}, {"query": q, "using": "text"}],
         "query": {"fusion": "rrf"}},
    ):  # fmt: skip
        r = post(router + "/points/query", body)
        assert r.status_code == 400, r.text
        assert "idf modifier" in r.json()["status"]["error"] and "`kwi`" in r.text
