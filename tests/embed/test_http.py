"""Server-side inference over HTTP: qdrant-client's documents with cloud_inference=True,
plain JSON and msgpack bodies, and the errors for bad documents."""

from __future__ import annotations

import httpx
import msgpack
import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from tests.embed.conftest import cosines
from vdb.http.qdrant import is_light, parse_query_request, parse_upsert

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MP = "application/msgpack"


@pytest.fixture(scope="module")
def client(server):
    c = QdrantClient(url=server.url, cloud_inference=True, timeout=120)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def _create(http, name, size=384):
    r = http.put(f"/collections/{name}", json={"vectors": {"size": size, "distance": "Cosine"}})
    assert r.status_code == 200, r.text


def test_qdrant_client_documents_upsert_and_query(client, texts):
    client.create_collection(
        "docs", vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE)
    )
    n = 120
    points = [
        models.PointStruct(
            id=i, vector=models.Document(text=texts.texts[i], model=MODEL), payload={"row": i}
        )
        for i in range(n // 2)
    ]
    client.upsert("docs", points=points)
    client.upsert(
        "docs",
        points=models.Batch(
            ids=list(range(n // 2, n)),
            vectors=[
                models.Document(text=texts.texts[i], model="minilm") for i in range(n // 2, n)
            ],
            payloads=[{"row": i} for i in range(n // 2, n)],
        ),
    )
    assert client.count("docs").count == n
    stored = client.retrieve("docs", ids=list(range(n)), with_vectors=True)
    got = np.array([p.vector for p in sorted(stored, key=lambda p: p.id)], dtype=np.float32)
    assert cosines(got, texts.base[:n]).min() >= 0.999  # the server embedded the same vectors
    assert stored[0].payload == {"row": stored[0].id}  # as in Qdrant, the text is not added

    res = client.query_points(
        "docs", query=models.Document(text=texts.texts[33], model=MODEL), limit=3
    )
    assert res.points[0].id == 33 and res.points[0].score > 0.999
    flt = models.Filter(must=[models.FieldCondition(key="row", range=models.Range(gte=100))])
    res = client.query_points(
        "docs", query=models.Document(text=texts.texts[5], model=MODEL), query_filter=flt, limit=4
    )
    assert len(res.points) == 4 and all(p.payload["row"] >= 100 for p in res.points)
    batch = client.query_batch_points(
        "docs",
        requests=[
            models.QueryRequest(query=models.Document(text=texts.texts[i], model=MODEL), limit=1)
            for i in (7, 8, 90)
        ]
        + [models.QueryRequest(query=texts.base[9].tolist(), limit=1)],  # vectors still work
    )
    assert [r.points[0].id for r in batch] == [7, 8, 90, 9]


def test_plain_json_and_msgpack_documents(http, texts):
    _create(http, "plain")
    body = {
        "points": [
            {"id": i, "vector": {"text": texts.texts[i], "model": "minilm"}, "payload": {"i": i}}
            for i in range(10)
        ]
        + [{"id": 10, "vector": texts.base[10].tolist()}]  # vectors and documents mix
    }
    r = http.put("/collections/plain/points?wait=true", json=body)
    assert r.status_code == 200, r.text
    r = http.post(
        "/collections/plain/points/query",
        json={"query": {"text": texts.texts[4], "model": MODEL}, "limit": 2},
    )  # a document as the query itself, without "nearest"
    assert r.status_code == 200 and r.json()["result"]["points"][0]["id"] == 4

    packed = msgpack.packb(
        {"batch": {"ids": [20, 21], "vectors": [
            {"text": texts.texts[20], "model": MODEL}, {"text": texts.texts[21], "model": MODEL}
        ]}},
        use_bin_type=True,
    )  # fmt: skip
    r = http.put("/collections/plain/points", content=packed, headers={"content-type": MP})
    assert r.status_code == 200, r.text
    query = {"query": {"nearest": {"text": texts.texts[21], "model": MODEL}}, "limit": 1}
    r = http.post(
        "/collections/plain/points/query",
        content=msgpack.packb(query, use_bin_type=True),
        headers={"content-type": MP, "accept": MP},
    )
    assert r.status_code == 200
    assert msgpack.unpackb(r.content)["result"]["points"][0]["id"] == 21
    r = http.post("/collections/plain/points/count", json={})
    assert r.json()["result"]["count"] == 13


def test_bad_documents_are_400_and_write_nothing(http):
    _create(http, "bad")
    _create(http, "small", size=8)
    ok = {"id": 1, "vector": {"text": "fine", "model": "minilm"}}

    def upsert(name, *points):
        return http.put(f"/collections/{name}/points", json={"points": [ok, *points]})

    cases = [
        (upsert("bad", {"id": 2, "vector": {"text": "x", "model": "gpt-9"}}), "gpt-9"),
        (upsert("bad", {"id": 2, "vector": {"text": "", "model": "minilm"}}), "empty"),
        (upsert("bad", {"id": 2, "vector": {"text": "  ", "model": "minilm"}}), "empty"),
        (upsert("bad", {"id": 2, "vector": {"text": 5, "model": "minilm"}}), "must be a string"),
        (upsert("bad", {"id": 2, "vector": {"text": None, "model": "minilm"}}), "must be a string"),
        (upsert("bad", {"id": 2, "vector": {"text": "x"}}), "needs a `model`"),
        (upsert("bad", {"id": 2, "vector": {"text": "x", "model": "minilm", "lang": "en"}}),
         "unknown field `lang`"),
        (upsert("bad", {"id": 2, "vector": {"text": "x", "model": "minilm",
                                             "options": {"lazy": True}}}), "not supported"),
        (upsert("small"), "384"),  # the model's dimension is not the collection's
    ]  # fmt: skip
    for r, needle in cases:
        assert r.status_code == 400, r.text
        assert needle in r.json()["status"]["error"], r.text
    unknown = cases[0][0].json()["status"]["error"]
    assert "minilm" in unknown and MODEL in unknown  # names the models available
    r = http.post(
        "/collections/bad/points/query", json={"query": {"nearest": {"text": "x", "model": "nope"}}}
    )
    assert r.status_code == 400 and "available" in r.json()["status"]["error"]
    r = http.post(
        "/collections/small/points/query", json={"query": {"text": "x", "model": "minilm"}}
    )
    assert r.status_code == 400 and "dimension" in r.json()["status"]["error"]
    for name in ("bad", "small"):  # nothing half-applied: the good point of each batch is absent
        assert (
            http.post(f"/collections/{name}/points/count", json={}).json()["result"]["count"] == 0
        )


def test_documents_never_take_the_event_loop_path():
    """Only plain vector queries run inline on the event loop; a document goes to a worker."""
    doc = parse_query_request(
        {"query": {"nearest": {"text": "q", "model": "minilm"}}, "limit": 3}, "QueryRequest", 100
    )
    assert doc.document is not None and doc.vector is None and not is_light(doc)
    vec = parse_query_request({"query": [0.1] * 384, "limit": 3}, "QueryRequest", 100)
    assert is_light(vec)
    ids, vectors, _ = parse_upsert(
        {"points": [{"id": 1, "vector": {"text": "t", "model": MODEL}}]}, 384
    )
    assert ids == [1] and vectors.shape == (1, 384)
