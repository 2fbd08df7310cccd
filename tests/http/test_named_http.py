"""Named, sparse and hybrid queries over HTTP, driven by the real qdrant-client against a real
``vdb serve`` (real LMDB): collection shapes, upserts with names missing, each name queried
against brute force, ``with_vector`` lists, update/delete vectors, prefetch + RRF / DBSF
against a reference computed here from the same prefetch results, re-scoring, the legacy
``/points/search`` with a named vector, malformed sparse vectors, and kill -9 recovery."""

from __future__ import annotations

import math

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as m

N = 200


@pytest.fixture(scope="module")
def client(server):
    return QdrantClient(url=server.url, prefer_grpc=False, timeout=60)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((N, 8)).astype(np.float32)
    b = rng.standard_normal((N, 4)).astype(np.float32)
    sparse = []
    for _ in range(N):
        idx = rng.choice(40, size=int(rng.integers(1, 6)), replace=False)
        sparse.append((idx.tolist(), rng.random(len(idx)).round(3).tolist()))
    return a, b, sparse


def _points(a, b, sparse):
    out = []
    for i in range(N):
        vec = {"a": a[i].tolist()}
        if i % 3:
            vec["b"] = b[i].tolist()
        if i % 5:
            vec["s"] = m.SparseVector(indices=sparse[i][0], values=sparse[i][1])
        out.append(m.PointStruct(id=i, vector=vec, payload={"i": i, "odd": i % 2 == 1}))
    return out


def _create(client, name):
    if client.collection_exists(name):
        client.delete_collection(name)
    client.create_collection(
        name,
        vectors_config={
            "a": m.VectorParams(size=8, distance=m.Distance.COSINE),
            "b": m.VectorParams(
                size=4, distance=m.Distance.EUCLID, hnsw_config=m.HnswConfigDiff(m=8)
            ),
        },
        sparse_vectors_config={"s": m.SparseVectorParams()},
    )


def _cos_top(a, q, ids, k):
    x = a[ids] / np.linalg.norm(a[ids], axis=1, keepdims=True)
    s = x @ (q / np.linalg.norm(q))
    order = np.argsort(-s, kind="stable")[:k]
    return [int(ids[j]) for j in order], [float(s[j]) for j in order]


def _sparse_scores(sparse, q, ids):
    qd = dict(zip(*q, strict=True))
    out = {}
    for i in ids:
        idx, val = sparse[i]
        if any(j in qd for j in idx):
            out[int(i)] = sum(qd.get(j, 0.0) * v for j, v in zip(idx, val, strict=True))
    return out


def test_collection_shapes_and_each_name(client):
    a, b, sparse = _data()
    _create(client, "named")
    client.upsert("named", _points(a, b, sparse))
    info = client.get_collection("named")
    vectors = info.config.params.vectors
    assert vectors["a"].size == 8 and vectors["a"].distance == m.Distance.COSINE
    assert vectors["b"].distance == m.Distance.EUCLID and vectors["b"].hnsw_config.m == 8
    assert set(info.config.params.sparse_vectors) == {"s"}
    assert info.points_count == N

    q = a[3] + 0.1
    got = client.query_points(
        "named", query=q.tolist(), using="a", limit=10, search_params=m.SearchParams(exact=True)
    )
    want_ids, want_scores = _cos_top(a, q, np.arange(N), 10)
    assert [p.id for p in got.points] == want_ids
    assert [p.score for p in got.points] == pytest.approx(want_scores, rel=1e-5, abs=1e-6)

    got = client.query_points("named", query=b[4].tolist(), using="b", limit=20)
    assert got.points[0].id == 4 and got.points[0].score == pytest.approx(0.0, abs=1e-3)
    assert all(p.id % 3 for p in got.points)  # only points that have "b"
    d = np.sqrt(((b[got.points[1].id] - b[4]) ** 2).sum())
    assert got.points[1].score == pytest.approx(float(d), rel=1e-4)

    qs = ([1, 2, 3], [1.0, 0.5, 0.25])
    got = client.query_points(
        "named", query=m.SparseVector(indices=qs[0], values=qs[1]), using="s", limit=N,
        query_filter=m.Filter(must=[m.FieldCondition(key="odd", match=m.MatchValue(value=True))]),
    )  # fmt: skip
    want = _sparse_scores(sparse, qs, [i for i in range(N) if i % 5 and i % 2])
    assert {p.id: p.score for p in got.points} == pytest.approx(want, rel=1e-5)
    scores = [p.score for p in got.points]
    assert scores == sorted(scores, reverse=True)

    # with_vector: lists of names, names a point lacks are left out
    (r0,) = client.retrieve("named", [0], with_vectors=True)
    assert set(r0.vector) == {"a"}
    (r1,) = client.retrieve("named", [1], with_vectors=["b", "s"])
    assert set(r1.vector) == {"b", "s"}
    assert r1.vector["s"].indices == sorted(sparse[1][0])
    page, _ = client.scroll("named", limit=4, with_vectors=["b"])
    assert [set(p.vector) for p in page] == [set(), {"b"}, {"b"}, set()]
    hits = client.query_points("named", query=a[7].tolist(), using="a", limit=1, with_vectors=["a"])
    assert np.allclose(hits.points[0].vector["a"], a[7] / np.linalg.norm(a[7]), atol=1e-5)


def test_update_delete_vectors_and_legacy_search(client, server):
    a, b, sparse = _data(1)
    _create(client, "upd")
    client.upsert("upd", _points(a, b, sparse))
    client.update_vectors("upd", [m.PointVectors(id=0, vector={"b": b[0].tolist()})])
    (r,) = client.retrieve("upd", [0], with_vectors=True, with_payload=True)
    assert set(r.vector) == {"a", "b"} and r.payload == {"i": 0, "odd": False}
    assert client.query_points("upd", query=b[0].tolist(), using="b", limit=1).points[0].id == 0
    client.delete_vectors("upd", ["a"], points=[5, 6])
    ids = {p.id for p in client.query_points("upd", query=a[5].tolist(), using="a", limit=N).points}
    assert 5 not in ids and 6 not in ids and len(ids) == N - 2
    client.delete_vectors(
        "upd",
        ["s"],
        points=m.FilterSelector(filter=m.Filter(must=[m.HasIdCondition(has_id=[1, 2])])),
    )
    (r,) = client.retrieve("upd", [1], with_vectors=True)
    assert set(r.vector) == {"a", "b"}
    # legacy search with {"name", "vector"}
    body = {"vector": {"name": "b", "vector": b[8].tolist()}, "limit": 3, "with_payload": True}
    res = httpx.post(f"{server.url}/collections/upd/points/search", json=body).json()["result"]
    assert res[0]["id"] == 8 and res[0]["payload"]["i"] == 8
    body = {"vector": {"name": "s", "vector": {"indices": [3], "values": [1.0]}}, "limit": 3}
    res = httpx.post(f"{server.url}/collections/upd/points/search", json=body).json()["result"]
    assert all(3 in sparse[p["id"]][0] for p in res)
    # unknown names and wrong kinds are 400s naming them
    r = httpx.post(
        f"{server.url}/collections/upd/points/query", json={"query": [1, 2], "using": "zz"}
    )
    assert r.status_code == 400 and "zz" in r.text
    r = httpx.put(
        f"{server.url}/collections/upd/points",
        json={"points": [{"id": 1, "vector": {"s": [1.0, 2.0]}}]},
    )
    assert r.status_code == 400 and "sparse" in r.text


def test_malformed_sparse_vectors_are_400(client, server):
    _create(client, "bad")
    url = f"{server.url}/collections/bad/points"
    cases = [
        ({"indices": [1, 1], "values": [1.0, 2.0]}, "repeated"),
        ({"indices": [1, 2], "values": [1.0]}, "values"),
        ({"indices": [-1], "values": [1.0]}, "indices"),
    ]
    for vector, word in cases:
        r = httpx.put(url, json={"points": [{"id": 1, "vector": {"s": vector}}]})
        assert r.status_code == 400, r.text
        assert "points[0].vector.s" in r.text and word in r.text, r.text
    r = httpx.put(
        url,
        content=b'{"points": [{"id": 1, "vector": {"s": {"indices": [1], "values": [NaN]}}}]}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert client.count("bad").count == 0
    # unsorted indices are accepted and sorted on write
    client.upsert(
        "bad",
        [m.PointStruct(id=2, vector={"s": m.SparseVector(indices=[9, 1], values=[0.5, 1.0])})],
    )
    (r,) = client.retrieve("bad", [2], with_vectors=True)
    assert r.vector["s"].indices == [1, 9] and r.vector["s"].values == [1.0, 0.5]


def _rrf_reference(lists, k=2):
    scores: dict = {}
    for hits in lists:
        for rank, (pid, _) in enumerate(hits):
            scores[pid] = scores.get(pid, 0.0) + 1.0 / (rank + k)
    return scores


def _dbsf_reference(lists):
    scores: dict = {}
    for hits in lists:
        vals = [s for _, s in hits]
        if len(vals) > 1:
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        else:
            mean, std = (vals[0] if vals else 0.0), 0.0
        for pid, s in hits:
            norm = 0.5 if std == 0 else (s - (mean - 3 * std)) / (6 * std)
            scores[pid] = scores.get(pid, 0.0) + norm
    return scores


def test_fusion_rankings_match_a_reference(client):
    a, b, sparse = _data(2)
    _create(client, "fuse")
    client.upsert("fuse", _points(a, b, sparse))
    flt = m.Filter(must_not=[m.FieldCondition(key="i", range=m.Range(lt=10))])
    dense_q = a[20].tolist()
    sparse_q = m.SparseVector(indices=sparse[21][0], values=sparse[21][1])
    euclid_q = b[22].tolist()
    prefetch = [
        m.Prefetch(query=dense_q, using="a", limit=30, filter=flt),
        m.Prefetch(query=sparse_q, using="s", limit=30, filter=flt),
        m.Prefetch(query=euclid_q, using="b", limit=30, filter=flt),
    ]
    lists = []
    for pf in prefetch:
        res = client.query_points(
            "fuse", query=pf.query, using=pf.using, limit=30, query_filter=flt
        )
        hits = [(p.id, p.score) for p in res.points]
        if pf.using == "b":  # Euclid: smaller is better, fused as negated distances
            hits = [(i, -s) for i, s in hits]
        lists.append(hits)
    for fusion, ref in ((m.Fusion.RRF, _rrf_reference), (m.Fusion.DBSF, _dbsf_reference)):
        got = client.query_points(
            "fuse", prefetch=prefetch, query=m.FusionQuery(fusion=fusion), limit=15
        )
        want = ref(lists)
        got_scores = [p.score for p in got.points]
        assert got_scores == sorted(got_scores, reverse=True)
        assert {p.id: p.score for p in got.points} == pytest.approx(
            {p.id: want[p.id] for p in got.points}, rel=1e-5
        )
        best = sorted(want.values(), reverse=True)[:15]
        assert got_scores == pytest.approx(best, rel=1e-5)
        assert all(p.id >= 10 for p in got.points)
    # rescoring: the sparse prefetch's points, ranked by the dense vector "a"
    got = client.query_points(
        "fuse",
        prefetch=m.Prefetch(query=sparse_q, using="s", limit=25),
        query=dense_q,
        using="a",
        limit=10,
    )
    candidates = [
        p.id for p in client.query_points("fuse", query=sparse_q, using="s", limit=25).points
    ]
    want_ids, want_scores = _cos_top(a, np.asarray(dense_q), np.asarray(candidates), 10)
    assert [p.id for p in got.points] == want_ids
    assert [p.score for p in got.points] == pytest.approx(want_scores, rel=1e-5, abs=1e-6)
    # nested prefetch + the batch route
    nested = m.Prefetch(prefetch=prefetch[:2], query=m.FusionQuery(fusion=m.Fusion.RRF), limit=20)
    batch = client.query_batch_points(
        "fuse",
        [
            m.QueryRequest(prefetch=[nested], query=dense_q, using="a", limit=5),
            m.QueryRequest(prefetch=prefetch, query=m.FusionQuery(fusion=m.Fusion.RRF), limit=15),
        ],
    )
    fused20 = sorted(_rrf_reference(lists[:2]).items(), key=lambda kv: -kv[1])[:20]
    ids20 = np.asarray([i for i, _ in fused20])
    assert [p.id for p in batch[0].points] == _cos_top(a, np.asarray(dense_q), ids20, 5)[0]
    want = _rrf_reference(lists)
    assert [p.score for p in batch[1].points] == pytest.approx(
        sorted(want.values(), reverse=True)[:15], rel=1e-5
    )


def test_kill9_recovery_keeps_named_and_sparse_vectors(serve, tmp_path):
    a, b, sparse = _data(3)
    srv = serve(data_dir=tmp_path / "k9")
    c = QdrantClient(url=srv.url, prefer_grpc=False, timeout=60)
    _create(c, "k9")
    c.upsert("k9", _points(a, b, sparse))
    c.delete_vectors("k9", ["b"], points=[1])
    c.delete("k9", points_selector=[2])
    sq = m.SparseVector(indices=[1, 2, 3], values=[1.0, 1.0, 1.0])

    def ranked(client, query, using, exact=False):
        params = m.SearchParams(exact=True) if exact else None
        points = client.query_points(
            "k9", query=query, using=using, limit=10, search_params=params
        ).points
        return [(p.id, p.score) for p in points]

    before = [
        ranked(c, a[9].tolist(), "a"),
        ranked(c, sq, "s"),
        ranked(c, b[4].tolist(), "b", exact=True),
    ]
    srv.kill9()
    srv2 = serve(data_dir=tmp_path / "k9")
    c2 = QdrantClient(url=srv2.url, prefer_grpc=False, timeout=60)
    assert c2.count("k9").count == N - 1
    after = [
        ranked(c2, a[9].tolist(), "a", exact=True),
        ranked(c2, sq, "s"),
        ranked(c2, b[4].tolist(), "b", exact=True),
    ]
    assert [i for i, _ in after[0]] == _cos_top(
        a, a[9], np.asarray([i for i in range(N) if i != 2]), 10
    )[0]
    assert [i for i, _ in before[0]][:3] == [i for i, _ in after[0]][:3]
    for got, want in ((after[1], before[1]), (after[2], before[2])):
        _same_ranking(got, want)
    (r,) = c2.retrieve("k9", [1], with_vectors=True)
    assert "b" not in r.vector and "a" in r.vector


def _same_ranking(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    """The same scores in order, and the same points up to ties (equal scores may come back
    in either order, and a tie at the cut may swap which one is in)."""
    assert [s for _, s in got] == pytest.approx([s for _, s in want])
    cut = want[-1][1]
    assert {i for i, s in got if s > cut + 1e-6} == {i for i, s in want if s > cut + 1e-6}
    scores = dict(want)
    assert all(s == pytest.approx(scores[i]) for i, s in got if i in scores)


def test_empty_name_equals_bare_params(client):
    a, _, _ = _data(4)
    for name in ("bare", "empty"):
        if client.collection_exists(name):
            client.delete_collection(name)
    params = m.VectorParams(size=8, distance=m.Distance.DOT)
    client.create_collection("bare", vectors_config=params)
    client.create_collection("empty", vectors_config={"": params}, sparse_vectors_config={})
    client.upsert("bare", [m.PointStruct(id=i, vector=a[i].tolist()) for i in range(N)])
    client.upsert("empty", [m.PointStruct(id=i, vector={"": a[i].tolist()}) for i in range(N)])
    bare, empty = client.get_collection("bare"), client.get_collection("empty")
    assert bare.config.params == empty.config.params
    assert bare.config.hnsw_config == empty.config.hnsw_config
    for q in a[:3]:
        want = client.query_points("bare", query=q.tolist(), limit=5).points
        got = client.query_points("empty", query=q.tolist(), using="", limit=5).points
        # a point may still be fresh in one collection and in the graph in the other: the
        # two kernels sum in different orders, so scores agree to float precision only
        assert [p.id for p in got] == [p.id for p in want]
        assert [p.score for p in got] == pytest.approx([p.score for p in want], rel=1e-5)
    assert client.retrieve("empty", [3], with_vectors=True)[0].vector == pytest.approx(
        a[3].tolist()
    )


def test_query_by_point_id_uses_the_named_vector(client, server):
    a, b, sparse = _data(5)
    _create(client, "byid")
    client.upsert("byid", _points(a, b, sparse))
    got = client.query_points(
        "byid", query=7, using="b", limit=5, search_params=m.SearchParams(exact=True)
    )
    want = client.query_points(
        "byid", query=b[7].tolist(), using="b", limit=6, search_params=m.SearchParams(exact=True)
    )
    assert [p.id for p in got.points] == [p.id for p in want.points if p.id != 7][:5]
    r = httpx.post(f"{server.url}/collections/byid/points/query", json={"query": 3, "using": "b"})
    assert r.status_code == 404  # point 3 has no "b" vector


def test_snapshot_restore_serves_the_same_named_answers(client, server, serve, tmp_path):
    import vdb

    a, b, sparse = _data(6)
    _create(client, "snapn")
    client.upsert("snapn", _points(a, b, sparse))
    client.delete_vectors("snapn", ["a"], points=[3])
    sq = m.SparseVector(indices=[1, 2, 3, 4], values=[1.0, 0.5, 0.5, 0.25])
    queries = [
        {"query": a[3].tolist(), "using": "a", "limit": 10},
        {"query": b[5].tolist(), "using": "b", "limit": 10},
        {"query": sq, "using": "s", "limit": 10},
        {
            "prefetch": [
                m.Prefetch(query=a[3].tolist(), using="a", limit=20),
                m.Prefetch(query=sq, using="s", limit=20),
            ],
            "query": m.FusionQuery(fusion=m.Fusion.DBSF),
            "limit": 10,
        },
    ]

    def answers(c):
        return [[(p.id, p.score) for p in c.query_points("snapn", **q).points] for q in queries]

    before = answers(client)
    snap = client.create_snapshot("snapn")
    r = httpx.get(f"{server.url}/collections/snapn/snapshots/{snap.name}", timeout=60)
    path = tmp_path / snap.name
    path.write_bytes(r.content)
    vdb.restore(str(path), str(tmp_path / "restored"))
    srv = serve(data_dir=tmp_path / "restored")
    c2 = QdrantClient(url=srv.url, prefer_grpc=False, timeout=60)
    assert c2.get_collection("snapn").config.params == client.get_collection("snapn").config.params
    after = answers(c2)  # fresh rows and the graph may differ in a score's last bit
    assert [[i for i, _ in row] for row in after] == [[i for i, _ in row] for row in before]
    for row_after, row_before in zip(after, before, strict=True):
        assert [s for _, s in row_after] == pytest.approx([s for _, s in row_before], rel=1e-5)
    assert 3 not in {i for i, _ in before[0]}


def test_bad_named_requests_are_400s_and_write_nothing(client, server):
    a, b, sparse = _data(7)
    _create(client, "badn")
    client.upsert("badn", _points(a, b, sparse)[:10])
    base = f"{server.url}/collections/badn"
    cases = [
        (
            "PUT",
            f"{server.url}/collections/badc",
            {"vectors": {"a": {"size": 0, "distance": "Cosine"}}},
            "size",
        ),
        (
            "PUT",
            f"{server.url}/collections/badc",
            {"vectors": {"a": {"size": 4, "distance": "Nope"}}},
            "distance",
        ),
        (
            "PUT",
            f"{server.url}/collections/badc",
            {"vectors": {"x": {"size": 4, "distance": "Dot"}}, "sparse_vectors": {"x": {}}},
            "x",
        ),
        (
            "PUT",
            f"{server.url}/collections/badc",
            {"sparse_vectors": {"s": {"modifier": "bm25"}}},
            "modifier",
        ),
        (
            "PUT",
            base + "/points",
            {"points": [{"id": 1, "vector": {"a": [1.0, 2.0]}}]},
            "dimension",
        ),
        ("PUT", base + "/points", {"points": [{"id": 1, "vector": {"zz": [1.0]}}]}, "zz"),
        (
            "POST",
            base + "/points/query",
            {"query": {"indices": [1], "values": [1.0]}, "using": "a"},
            "dense",
        ),
        ("POST", base + "/points/query", {"query": [1.0] * 8, "using": "s"}, "sparse"),
        ("POST", base + "/points", {"ids": [1], "with_vector": ["nope"]}, "nope"),
        ("POST", base + "/points/query", {"query": {"fusion": "rrf"}}, "prefetch"),
        (
            "PUT",
            base + "/points/vectors",
            {"points": [{"id": 1, "vector": {"b": [1.0]}}]},
            "dimension",
        ),
        ("POST", base + "/points/vectors/delete", {"points": [1], "vector": ["zz"]}, "zz"),
    ]
    for method, url, body, word in cases:
        r = httpx.request(method, url, json=body, timeout=60)
        assert r.status_code == 400, (body, r.text)
        assert word in r.json()["status"]["error"], (body, r.text)
    assert not client.collection_exists("badc")
    assert client.count("badn").count == 10
    (r1,) = client.retrieve("badn", [1], with_vectors=True)
    assert set(r1.vector) == {"a", "b", "s"}
