"""An unmodified qdrant-client (REST) against a real ``python -m vdb serve``."""

from __future__ import annotations

import hashlib
import uuid
import warnings

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as m
from qdrant_client.http.exceptions import UnexpectedResponse

WAIT = 60.0  # seconds; generous, the test machine is shared and noisy

RNG_SEED = 7


@pytest.fixture(scope="module")
def client(server) -> QdrantClient:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the version check must not warn
        c = QdrantClient(url=server.url, timeout=60)
        c.get_collections()
    return c


def make_points(n: int, dim: int, seed: int = RNG_SEED):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    ids = [
        i if i % 2 == 0 else str(uuid.UUID(int=int(rng.integers(1 << 62)) + i)) for i in range(n)
    ]
    payloads = [
        {"n": i, "parity": "even" if i % 2 == 0 else "odd", "tags": [i % 3, 7]} for i in range(n)
    ]
    return ids, vectors, payloads


def test_root_reports_a_compatible_version(server, client):
    from importlib.metadata import version

    from qdrant_client.common.version_check import is_compatible

    body = httpx.get(timeout=WAIT, url=server.url + "/").json()
    assert body["title"] == "qdrant - vector search engine"
    assert is_compatible(version("qdrant-client"), body["version"])


def test_collection_lifecycle(client):
    name = "lifecycle"
    assert not client.collection_exists(name)
    assert client.create_collection(
        name,
        vectors_config=m.VectorParams(size=8, distance=m.Distance.DOT),
        hnsw_config=m.HnswConfigDiff(m=12, ef_construct=80),
    )
    assert client.collection_exists(name)
    assert name in [c.name for c in client.get_collections().collections]
    info = client.get_collection(name)
    assert info.config.params.vectors.size == 8
    assert info.config.params.vectors.distance == m.Distance.DOT
    assert info.config.hnsw_config.m == 12
    assert info.config.hnsw_config.ef_construct == 80
    assert info.points_count == 0
    with pytest.raises(UnexpectedResponse) as err:
        client.create_collection(name, vectors_config=m.VectorParams(size=8, distance="Dot"))
    assert err.value.status_code == 409
    assert client.delete_collection(name) is True
    assert client.delete_collection(name) is False
    assert not client.collection_exists(name)
    with pytest.raises(UnexpectedResponse) as err:
        client.get_collection(name)
    assert err.value.status_code == 404
    assert "doesn't exist" in err.value.content.decode()


def test_upsert_retrieve_query_with_filters_and_uuid_ids(client):
    name = "points"
    dim = 16
    client.create_collection(
        name, vectors_config=m.VectorParams(size=dim, distance=m.Distance.COSINE)
    )
    hnsw = client.get_collection(name).config.hnsw_config
    assert (hnsw.m, hnsw.ef_construct) == (16, 100)  # Qdrant's defaults
    ids, vectors, payloads = make_points(60, dim)
    half = 30
    res = client.upsert(
        name,
        points=[
            m.PointStruct(id=ids[i], vector=vectors[i].tolist(), payload=payloads[i])
            for i in range(half)
        ],
        wait=True,
    )
    assert res.status == m.UpdateStatus.COMPLETED
    client.upsert(
        name,
        points=m.Batch(ids=ids[half:], vectors=vectors[half:].tolist(), payloads=payloads[half:]),
    )
    assert client.count(name).count == 60
    assert (
        client.count(
            name,
            count_filter=m.Filter(
                must=[m.FieldCondition(key="parity", match=m.MatchValue(value="odd"))]
            ),
        ).count
        == 30
    )

    got = client.retrieve(name, [ids[1], ids[2], 10**12], with_vectors=True)
    assert sorted(map(str, (r.id for r in got))) == sorted([str(ids[1]), str(ids[2])])
    by_id = {r.id: r for r in got}
    assert by_id[ids[1]].payload == payloads[1]
    assert isinstance(ids[1], str) and by_id[ids[1]].id == ids[1].lower()
    unit = vectors[2] / np.linalg.norm(vectors[2])
    np.testing.assert_allclose(by_id[ids[2]].vector, unit, rtol=1e-5, atol=1e-6)

    # exact cosine ground truth, filtered to even n >= 10
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = vectors[5]
    scores = normed @ (q / np.linalg.norm(q))
    allowed = [i for i in range(60) if i % 2 == 0 and i >= 10]
    expect = sorted(allowed, key=lambda i: -scores[i])[:5]
    flt = m.Filter(
        must=[
            m.FieldCondition(key="parity", match=m.MatchValue(value="even")),
            m.FieldCondition(key="n", range=m.Range(gte=10)),
        ]
    )
    res = client.query_points(
        name,
        query=q.tolist(),
        limit=5,
        query_filter=flt,
        search_params=m.SearchParams(hnsw_ef=128),
        with_payload=True,
    )
    assert [p.id for p in res.points] == [ids[i] for i in expect]
    np.testing.assert_allclose([p.score for p in res.points], scores[expect], rtol=1e-4, atol=1e-5)
    assert all(p.payload["parity"] == "even" for p in res.points)

    # score_threshold keeps only the hits at or above it
    cut = float(scores[expect[2]]) - 1e-6
    res = client.query_points(
        name, query=q.tolist(), limit=5, query_filter=flt, score_threshold=cut
    )
    assert [p.id for p in res.points] == [ids[i] for i in expect[:3]]

    # with_vectors / with_payload selectors
    res = client.query_points(
        name, query=q.tolist(), limit=2, with_payload=["n"], with_vectors=True
    )
    assert set(res.points[0].payload) == {"n"}
    assert len(res.points[0].vector) == dim

    # batch: each answer equals its single query
    reqs = [m.QueryRequest(query=vectors[i].tolist(), limit=3, filter=flt) for i in (1, 2, 3)]
    batch = client.query_batch_points(name, reqs)
    for req, answer in zip(reqs, batch, strict=True):
        single = client.query_points(name, query=req.query, limit=3, query_filter=flt)
        assert [p.id for p in answer.points] == [p.id for p in single.points]


def test_scroll_pages_through_everything_in_id_order(client):
    name = "scroll"
    client.create_collection(
        name, vectors_config=m.VectorParams(size=4, distance=m.Distance.EUCLID)
    )
    ids, vectors, payloads = make_points(25, 4, seed=3)
    client.upsert(name, m.Batch(ids=ids, vectors=vectors.tolist(), payloads=payloads))
    seen, offset = [], None
    while True:
        page, offset = client.scroll(name, limit=7, offset=offset, with_payload=False)
        seen.extend(p.id for p in page)
        assert all(p.payload is None for p in page)
        if offset is None:
            break
    ints = sorted(i for i in ids if isinstance(i, int))
    strs = sorted(i for i in ids if isinstance(i, str))
    assert seen == ints + strs
    odd, _ = client.scroll(
        name,
        scroll_filter=m.Filter(
            must=[m.FieldCondition(key="parity", match=m.MatchValue(value="odd"))]
        ),
        limit=100,
    )
    assert sorted(p.id for p in odd) == strs


def test_euclid_scores_are_distances(client):
    name = "euclid"
    client.create_collection(
        name, vectors_config=m.VectorParams(size=6, distance=m.Distance.EUCLID)
    )
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((20, 6)).astype(np.float32)
    client.upsert(name, m.Batch(ids=list(range(20)), vectors=vectors.tolist()))
    q = rng.standard_normal(6).astype(np.float32)
    dist = np.linalg.norm(vectors - q, axis=1)
    res = client.query_points(name, query=q.tolist(), limit=4)
    assert [p.id for p in res.points] == list(np.argsort(dist)[:4])
    np.testing.assert_allclose([p.score for p in res.points], np.sort(dist)[:4], rtol=1e-4)
    # the threshold is an upper bound on the distance
    res = client.query_points(
        name, query=q.tolist(), limit=10, score_threshold=float(np.sort(dist)[1]) + 1e-4
    )
    assert [p.id for p in res.points] == list(np.argsort(dist)[:2])


@pytest.mark.parametrize("distance", [m.Distance.EUCLID, m.Distance.DOT])
def test_overflowing_vectors_are_400_and_scores_are_never_null(server, client, distance):
    from vdb.collection import MAX_SQUARED_NORM

    name = f"overflow-{distance.value.lower()}"
    client.create_collection(name, vectors_config=m.VectorParams(size=4, distance=distance))
    edge = float(np.sqrt(MAX_SQUARED_NORM)) * 0.999
    client.upsert(
        name,
        m.Batch(ids=[1, 2, 3], vectors=[[edge, 0, 0, 0], [-edge, 0, 0, 0], [1, 2, 3, 4]]),
    )
    url = f"{server.url}/collections/{name}"
    big = [3e19, 0.0, 0.0, 0.0]  # finite in float32; its squared norm is not
    r = httpx.put(
        timeout=WAIT, url=url + "/points?wait=true", json={"points": [{"id": 9, "vector": big}]}
    )
    assert r.status_code == 400, r.text
    assert "too large" in r.json()["status"]["error"]
    with pytest.raises(UnexpectedResponse) as err:
        client.upsert(name, [m.PointStruct(id=10, vector=[1.6e19] * 4)])
    assert err.value.status_code == 400 and b"squared norm" in err.value.content
    r = httpx.post(timeout=WAIT, url=url + "/points/query", json={"query": big, "limit": 3})
    assert r.status_code == 400 and "too large" in r.json()["status"]["error"]
    assert client.count(name).count == 3
    # the most extreme vectors accepted: every score is a finite JSON number
    for q in ([edge, 0, 0, 0], [-edge, 0, 0, 0]):
        for exact in (False, True):
            body = {"query": q, "limit": 3, "params": {"exact": exact}}
            r = httpx.post(timeout=WAIT, url=url + "/points/query", json=body)
            assert r.status_code == 200, r.text
            scores = [p["score"] for p in r.json()["result"]["points"]]
            assert len(scores) == 3
            assert all(isinstance(x, float) and np.isfinite(x) for x in scores), scores
        got = client.query_points(name, query=q, limit=3).points
        assert [p.id for p in got][0] == (1 if q[0] > 0 else 2)
        assert all(np.isfinite(p.score) for p in got)


def test_payload_updates_and_deletes(client):
    name = "payloads"
    client.create_collection(
        name, vectors_config=m.VectorParams(size=4, distance=m.Distance.COSINE)
    )
    client.upsert(
        name,
        m.Batch(
            ids=[1, 2, 3, 4],
            vectors=np.eye(4).tolist(),
            payloads=[{"k": 1}, {"k": 2}, {"k": 3}, {"k": 4}],
        ),
    )
    client.set_payload(name, {"extra": "x"}, points=[1, 2])
    got = {r.id: r.payload for r in client.retrieve(name, [1, 2, 3])}
    assert got == {1: {"k": 1, "extra": "x"}, 2: {"k": 2, "extra": "x"}, 3: {"k": 3}}
    client.set_payload(
        name,
        {"flag": True},
        points=m.Filter(must=[m.FieldCondition(key="k", range=m.Range(gte=3))]),
    )
    assert (
        client.count(
            name,
            count_filter=m.Filter(
                must=[m.FieldCondition(key="flag", match=m.MatchValue(value=True))]
            ),
        ).count
        == 2
    )
    client.delete(name, points_selector=m.PointIdsList(points=[1]))
    client.delete(
        name,
        points_selector=m.FilterSelector(
            filter=m.Filter(must=[m.FieldCondition(key="k", match=m.MatchValue(value=4))])
        ),
    )
    assert sorted(r.id for r in client.scroll(name, limit=10)[0]) == [2, 3]
    res = client.query_points(name, query=[0, 0, 0, 1], limit=10)
    assert 4 not in [p.id for p in res.points] and 1 not in [p.id for p in res.points]


def test_invalid_ids_and_wrong_dimension_are_400(server, client):
    name = "invalid"
    client.create_collection(
        name, vectors_config=m.VectorParams(size=3, distance=m.Distance.COSINE)
    )
    url = f"{server.url}/collections/{name}/points?wait=true"
    for point in (
        {"id": "123", "vector": [1, 2, 3]},
        {"id": -1, "vector": [1, 2, 3]},
        {"id": 1, "vector": [1, 2]},
        {"id": 1, "vector": [1, "x", 3]},
    ):
        r = httpx.put(timeout=WAIT, url=url, json={"points": [point]})
        assert r.status_code == 400, (point, r.text)
        assert r.json()["status"]["error"]
    assert client.count(name).count == 0
    with pytest.raises(UnexpectedResponse) as err:
        client.query_points(name, query=[1.0, 2.0], limit=1)
    assert err.value.status_code == 400
    with pytest.raises(UnexpectedResponse) as err:
        client.query_points("nope", query=[1.0, 2.0, 3.0], limit=1)
    assert err.value.status_code == 404


def test_unsupported_fields_are_named(server, client):
    name = "unsupported"
    client.create_collection(
        name, vectors_config=m.VectorParams(size=3, distance=m.Distance.COSINE)
    )
    r = httpx.post(
        timeout=WAIT,
        url=f"{server.url}/collections/{name}/points/query",
        json={"query": [1, 2, 3], "lookup_from": {"collection": "other"}},
    )
    assert r.status_code == 400 and "lookup_from" in r.json()["status"]["error"]
    r = httpx.post(  # prefetch is served (vdb.http.hybrid)
        timeout=WAIT,
        url=f"{server.url}/collections/{name}/points/query",
        json={"query": [1, 2, 3], "prefetch": {"query": [1, 2, 3]}},
    )
    assert r.status_code == 200 and r.json()["result"]["points"] == []
    r = httpx.post(
        timeout=WAIT,
        url=f"{server.url}/collections/{name}/points/query",
        json={"query": {"recommend": {"positive": [1]}}},
    )
    assert r.status_code == 400 and "recommend" in r.json()["status"]["error"]
    r = httpx.put(
        timeout=WAIT,
        url=f"{server.url}/collections/other",
        json={"vectors": {"size": 3, "distance": "Manhattan"}},
    )
    assert r.status_code == 400 and "Manhattan" in r.json()["status"]["error"]


def test_snapshots_create_list_download(server, client, tmp_path):
    name = "snap"
    client.create_collection(
        name, vectors_config=m.VectorParams(size=4, distance=m.Distance.COSINE)
    )
    client.upsert(name, m.Batch(ids=[1, 2], vectors=np.eye(4)[:2].tolist()))
    snap = client.create_snapshot(name)
    assert snap.name.startswith(f"{name}-") and snap.name.endswith(".snapshot")
    assert snap.size > 0
    listed = client.list_snapshots(name)
    assert [s.name for s in listed] == [snap.name]
    r = httpx.get(timeout=WAIT, url=f"{server.url}/collections/{name}/snapshots/{snap.name}")
    assert r.status_code == 200
    assert len(r.content) == snap.size
    assert hashlib.sha256(r.content).hexdigest() == snap.checksum
    # the downloaded file restores into a database that answers the same
    import vdb

    path = tmp_path / snap.name
    path.write_bytes(r.content)
    vdb.restore(str(path), str(tmp_path / "restored"))
    query = [0.9, 0.1, 0.0, 0.0]
    remote = [(p.id, p.score) for p in client.query_points(name, query=query, limit=2).points]
    with vdb.open(str(tmp_path / "restored")) as db:
        col = db.collection(name)
        assert col.count() == 2
        local = [(h.id, h.score) for h in col.search(np.array(query, np.float32), k=2)]
    assert [i for i, _ in local] == [i for i, _ in remote]
    np.testing.assert_allclose([s for _, s in local], [s for _, s in remote], rtol=1e-6)
    r = httpx.get(timeout=WAIT, url=f"{server.url}/collections/{name}/snapshots/nothing.snapshot")
    assert r.status_code == 404
    assert client.delete_snapshot(name, snap.name)
    assert client.list_snapshots(name) == []


def test_query_by_point_id_legacy_search_and_field_index(server, client):
    name = "byid"
    client.create_collection(
        name,
        vectors_config=m.VectorParams(size=5, distance=m.Distance.DOT),
        metadata={"owner": "tests"},
    )
    assert client.get_collection(name).config.metadata == {"owner": "tests"}
    rng = np.random.default_rng(21)
    vectors = rng.standard_normal((30, 5)).astype(np.float32)
    client.upsert(name, m.Batch(ids=list(range(30)), vectors=vectors.tolist()))
    res = client.create_payload_index(name, "tag", field_schema=m.PayloadSchemaType.KEYWORD)
    assert res.status == m.UpdateStatus.COMPLETED
    # query by an existing point's id: its neighbours, without the point itself
    scores = vectors @ vectors[4]
    order = [int(i) for i in np.argsort(-scores) if i != 4][:3]
    got = client.query_points(name, query=4, limit=3)
    assert [p.id for p in got.points] == order
    with pytest.raises(UnexpectedResponse) as err:
        client.query_points(name, query=12345, limit=3)
    assert err.value.status_code == 404
    # the legacy search route still answers old clients, offset skips the best hits
    r = httpx.post(
        timeout=WAIT,
        url=f"{server.url}/collections/{name}/points/search",
        json={"vector": vectors[4].tolist(), "limit": 3, "offset": 1},
    )
    assert r.status_code == 200
    assert [p["id"] for p in r.json()["result"]] == [int(i) for i in np.argsort(-scores)[1:4]]
    # the generated single-point route
    r = httpx.get(timeout=WAIT, url=f"{server.url}/collections/{name}/points/7")
    assert r.status_code == 200 and r.json()["result"]["id"] == 7
    np.testing.assert_allclose(r.json()["result"]["vector"], vectors[7], rtol=1e-6)
    assert (
        httpx.get(timeout=WAIT, url=f"{server.url}/collections/{name}/points/777").status_code
        == 404
    )


def test_bulk_upload_helpers(client):
    """upload_points / upload_collection send wait=false batches; every point must land."""
    name = "bulk"
    client.create_collection(
        name, vectors_config=m.VectorParams(size=4, distance=m.Distance.COSINE)
    )
    rng = np.random.default_rng(2)
    client.upload_points(
        name,
        [
            m.PointStruct(id=i, vector=rng.random(4).tolist(), payload={"g": i % 3})
            for i in range(100)
        ],
        batch_size=16,
    )
    client.upload_collection(
        name, vectors=rng.random((50, 4)), ids=list(range(100, 150)), payload=[{"g": 9}] * 50
    )
    assert client.count(name).count == 150
    nine = m.Filter(must=[m.FieldCondition(key="g", match=m.MatchValue(value=9))])
    assert client.count(name, count_filter=nine).count == 50
    with pytest.raises(UnexpectedResponse) as err:
        client.scroll(name, order_by="g")
    assert err.value.status_code == 400 and b"order_by" in err.value.content


@pytest.mark.parametrize("distance", [m.Distance.EUCLID, m.Distance.DOT, m.Distance.COSINE])
def test_exact_search_param_matches_brute_force(client, distance):
    name = f"exact-{distance.value.lower()}"
    client.create_collection(
        name,
        vectors_config=m.VectorParams(size=12, distance=distance),
        hnsw_config=m.HnswConfigDiff(m=2, ef_construct=4),  # a deliberately poor graph
    )
    rng = np.random.default_rng(4)
    n = 600
    vectors = rng.standard_normal((n, 12)).astype(np.float32)
    client.upsert(
        name,
        m.Batch(
            ids=list(range(n)), vectors=vectors.tolist(), payloads=[{"g": i % 3} for i in range(n)]
        ),
    )
    x = vectors.astype(np.float64)
    if distance == m.Distance.COSINE:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    odd_g = m.Filter(must=[m.FieldCondition(key="g", match=m.MatchValue(value=1))])
    for flt in (None, odd_g):
        allowed = np.array([flt is None or i % 3 == 1 for i in range(n)])
        for q in rng.standard_normal((3, 12)).astype(np.float32):
            q64 = q.astype(np.float64)
            if distance == m.Distance.EUCLID:
                truth = np.linalg.norm(x - q64, axis=1)
            elif distance == m.Distance.DOT:
                truth = -(x @ q64)
            else:
                truth = -(x @ (q64 / np.linalg.norm(q64)))
            truth[~allowed] = np.inf
            want = np.argsort(truth, kind="stable")[:10]
            got = client.query_points(
                name,
                query=q.tolist(),
                query_filter=flt,
                limit=10,
                search_params=m.SearchParams(exact=True),
            ).points
            assert [p.id for p in got] == want.tolist()
            sign = 1 if distance == m.Distance.EUCLID else -1
            np.testing.assert_allclose(
                [p.score for p in got], sign * truth[want], rtol=1e-4, atol=1e-5
            )
            batch = client.query_batch_points(
                name,
                [
                    m.QueryRequest(
                        query=q.tolist(),
                        filter=flt,
                        limit=10,
                        params=m.SearchParams(exact=True),
                    )
                ]
                * 2,
            )
            assert [[p.id for p in r.points] for r in batch] == [want.tolist()] * 2


def test_payload_indexes_are_created_reported_and_deleted(server, client):
    name = "fieldindex"
    client.create_collection(name, vectors_config=m.VectorParams(size=4, distance=m.Distance.DOT))
    rng = np.random.default_rng(31)
    n = 40
    client.upsert(
        name,
        m.Batch(
            ids=list(range(n)),
            vectors=rng.standard_normal((n, 4)).tolist(),
            payloads=[
                {"tag": f"t{i % 4}", "n": i, "body": "Quick brown fox" if i % 5 == 0 else "dog"}
                for i in range(n)
            ],
        ),
    )
    assert client.get_collection(name).payload_schema == {}
    res = client.create_payload_index(name, "tag", field_schema=m.PayloadSchemaType.KEYWORD)
    assert res.status == m.UpdateStatus.COMPLETED
    client.create_payload_index(
        name,
        "body",
        field_schema=m.TextIndexParams(type=m.TextIndexType.TEXT, tokenizer=m.TokenizerType.WORD),
    )
    r = httpx.put(  # no field_schema: the type of the stored values
        timeout=WAIT, url=f"{server.url}/collections/{name}/index", json={"field_name": "n"}
    )
    assert r.status_code == 200, r.text
    schema = client.get_collection(name).payload_schema
    assert set(schema) == {"tag", "body", "n"}
    assert schema["tag"].data_type == m.PayloadSchemaType.KEYWORD and schema["tag"].points == n
    assert schema["body"].data_type == m.PayloadSchemaType.TEXT
    assert schema["n"].data_type == m.PayloadSchemaType.INTEGER
    # the text index answers full-text matches
    fox = m.Filter(must=[m.FieldCondition(key="body", match=m.MatchText(text="fox"))])
    assert client.count(name, count_filter=fox).count == n // 5
    res = client.delete_payload_index(name, "tag")
    assert res.status == m.UpdateStatus.COMPLETED
    assert set(client.get_collection(name).payload_schema) == {"body", "n"}
    # the filter on the field still works without its explicit index
    t1 = m.Filter(must=[m.FieldCondition(key="tag", match=m.MatchValue(value="t1"))])
    assert client.count(name, count_filter=t1).count == n // 4
    for body, word in (
        ({"field_name": "tag", "field_schema": "vector"}, "vector"),
        ({"field_name": "loc", "field_schema": "geo"}, "geo"),
        ({"field_name": "missing"}, "field_schema"),
        ({"field_name": "tag", "field_schema": "keyword", "extra": 1}, "extra"),
    ):
        r = httpx.put(timeout=WAIT, url=f"{server.url}/collections/{name}/index", json=body)
        assert r.status_code == 400 and word in r.json()["status"]["error"], r.text
    with pytest.raises(UnexpectedResponse) as err:
        client.create_payload_index("nope", "tag", field_schema=m.PayloadSchemaType.KEYWORD)
    assert err.value.status_code == 404


def test_update_collection_metadata_and_unsupported_fields(server, client):
    name = "patched"
    client.create_collection(
        name,
        vectors_config=m.VectorParams(size=4, distance=m.Distance.COSINE),
        hnsw_config=m.HnswConfigDiff(m=12, ef_construct=64),
        metadata={"owner": "a", "keep": 1},
    )
    assert client.update_collection(name, metadata={"owner": "b", "team": "x"})
    assert client.get_collection(name).config.metadata == {"owner": "b", "keep": 1, "team": "x"}
    url = f"{server.url}/collections/{name}"
    r = httpx.patch(timeout=WAIT, url=url, json={"metadata": {"team": None}})
    assert r.status_code == 200 and r.json()["result"] is True
    assert client.get_collection(name).config.metadata == {"owner": "b", "keep": 1}
    # unchanged graph parameters and replication 1 are accepted (clients resend them)
    assert client.update_collection(
        name,
        hnsw_config=m.HnswConfigDiff(m=12, ef_construct=64),
        collection_params=m.CollectionParamsDiff(replication_factor=1),
    )
    info = client.get_collection(name)
    assert (info.config.hnsw_config.m, info.config.hnsw_config.ef_construct) == (12, 64)
    for kwargs, word in (
        ({"hnsw_config": m.HnswConfigDiff(ef_construct=200)}, "ef_construct"),
        ({"hnsw_config": m.HnswConfigDiff(m=32)}, "hnsw_config.m"),
        ({"hnsw_config": m.HnswConfigDiff(on_disk=True)}, "on_disk"),
        ({"optimizers_config": m.OptimizersConfigDiff(indexing_threshold=0)}, "optimizers_config"),
        ({"collection_params": m.CollectionParamsDiff(replication_factor=2)}, "replication_factor"),
    ):
        with pytest.raises(UnexpectedResponse) as err:
            client.update_collection(name, **kwargs)
        assert err.value.status_code == 400, kwargs
        assert word.encode() in err.value.content, err.value.content
    assert client.get_collection(name).config.metadata == {"owner": "b", "keep": 1}
    r = httpx.patch(timeout=WAIT, url=url, json={"metadata": "no"})
    assert r.status_code == 400
    with pytest.raises(UnexpectedResponse) as err:
        client.update_collection("nope", metadata={"a": 1})
    assert err.value.status_code == 404
