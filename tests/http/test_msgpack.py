"""vdb's msgpack fast path: the same flows as JSON, vectors as float32 bytes or lists."""

from __future__ import annotations

import httpx
import msgpack
import numpy as np
import pytest

MP = "application/msgpack"
DIM = 8


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.put("/collections/mp", json={"vectors": {"size": DIM, "distance": "Cosine"}})
        assert r.status_code == 200
        yield c


def post_mp(http, method, path, body, accept_mp=True):
    headers = {"content-type": MP}
    if accept_mp:
        headers["accept"] = MP
    return http.request(method, path, content=pack(body), headers=headers)


def test_upsert_forms_and_search_match_json(http):
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((30, DIM)).astype(np.float32)
    ids = list(range(30))
    # one float32 blob for a batch
    r = post_mp(
        http,
        "PUT",
        "/collections/mp/points?wait=true",
        {
            "batch": {
                "ids": ids[:10],
                "vectors": vectors[:10].tobytes(),
                "payloads": [{"i": i} for i in ids[:10]],
            }
        },
    )
    assert r.status_code == 200, r.content
    assert msgpack.unpackb(r.content)["result"]["status"] == "completed"
    # per-point bytes and per-point lists
    points = [{"id": i, "vector": vectors[i].tobytes(), "payload": {"i": i}} for i in ids[10:20]]
    points += [{"id": i, "vector": vectors[i].tolist(), "payload": {"i": i}} for i in ids[20:]]
    r = post_mp(http, "PUT", "/collections/mp/points", {"points": points}, accept_mp=False)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert http.post("/collections/mp/points/count", json={}).json()["result"]["count"] == 30

    q = rng.standard_normal(DIM).astype(np.float32)
    body = {"query": q.tobytes(), "limit": 5, "with_vector": True, "with_payload": True}
    r = post_mp(http, "POST", "/collections/mp/points/query", body)
    assert r.headers["content-type"].startswith(MP)
    got = msgpack.unpackb(r.content)["result"]["points"]
    ref = http.post(
        "/collections/mp/points/query", json={"query": q.tolist(), "limit": 5, "with_vector": True}
    ).json()
    ref_points = ref["result"]["points"]
    assert [p["id"] for p in got] == [p["id"] for p in ref_points]
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expect = np.argsort(-(normed @ (q / np.linalg.norm(q))))[:5]
    assert [p["id"] for p in got] == expect.tolist()
    for p, ref_p in zip(got, ref_points, strict=True):
        vec = np.frombuffer(p["vector"], dtype="<f4")
        np.testing.assert_allclose(vec, ref_p["vector"], rtol=1e-6)
        np.testing.assert_allclose(vec, normed[p["id"]], rtol=1e-5, atol=1e-6)
        assert p["payload"] == {"i": p["id"]}


def test_batch_search_in_one_request(http):
    rng = np.random.default_rng(9)
    queries = rng.standard_normal((4, DIM)).astype(np.float32)
    body = {"searches": [{"query": {"nearest": q.tobytes()}, "limit": 3} for q in queries]}
    r = post_mp(http, "POST", "/collections/mp/points/query/batch", body)
    assert r.status_code == 200
    answers = msgpack.unpackb(r.content)["result"]
    assert len(answers) == 4
    for q, answer in zip(queries, answers, strict=True):
        single = http.post("/collections/mp/points/query", json={"query": q.tolist(), "limit": 3})
        assert [p["id"] for p in answer["points"]] == [
            p["id"] for p in single.json()["result"]["points"]
        ]


def test_bad_msgpack_is_400_json(http):
    before = http.post("/collections/mp/points/count", json={}).json()["result"]["count"]
    bad = [
        b"\xc1\xc1\xc1",  # never-used msgpack byte
        pack([1, 2, 3]),  # not a map
        pack({"points": [{"id": 1, "vector": b"\x00\x00\x80"}]}),  # 3 bytes: not float32s
        pack({"points": [{"id": 1, "vector": np.full(DIM, np.nan, np.float32).tobytes()}]}),
        pack({"batch": {"ids": [1, 2], "vectors": np.zeros(DIM, np.float32).tobytes()}}),
        pack({"points": [{"id": 1, "vector": [1.0] * DIM, "payload": {"b": b"\x00"}}]}),
        pack({1: 2}),
    ]
    for raw in bad:
        r = http.put(
            "/collections/mp/points", content=raw, headers={"content-type": MP, "accept": MP}
        )
        assert r.status_code == 400, (raw, r.content)
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["status"]["error"]
    assert http.post("/collections/mp/points/count", json={}).json()["result"]["count"] == before


def test_real_embeddings_bulk_load_and_recall(http, minilm):
    """5,000 MiniLM vectors loaded over msgpack; HTTP search recall against exact top-10."""
    from tests.helpers import recall_at_k

    n, nq, k = 5000, 50, 10
    base = minilm.base[:n]
    r = http.put(
        "/collections/minilm", json={"vectors": {"size": base.shape[1], "distance": "Cosine"}}
    )
    assert r.status_code == 200
    for start in range(0, n, 1000):
        chunk = base[start : start + 1000]
        body = {
            "batch": {
                "ids": list(range(start, start + len(chunk))),
                "vectors": chunk.astype("<f4").tobytes(),
                "payloads": [{"name": minilm.names[i]} for i in range(start, start + len(chunk))],
            }
        }
        r = post_mp(http, "PUT", "/collections/minilm/points?wait=true", body)
        assert r.status_code == 200, r.content[:200]
    assert http.post("/collections/minilm/points/count", json={}).json()["result"]["count"] == n
    queries = minilm.queries[:nq]
    normed = base / np.linalg.norm(base, axis=1, keepdims=True)
    truth = np.argsort(-(queries @ normed.T), axis=1)[:, :k]
    body = {
        "searches": [
            {"query": q.astype("<f4").tobytes(), "limit": k, "params": {"hnsw_ef": 128}}
            for q in queries
        ]
    }
    r = post_mp(http, "POST", "/collections/minilm/points/query/batch", body)
    found = np.array([[p["id"] for p in a["points"]] for a in msgpack.unpackb(r.content)["result"]])
    assert found.shape == (nq, k)
    assert recall_at_k(found, truth, k) >= 0.9


def test_retrieve_scroll_count_delete_and_payload_over_msgpack(http):
    r = post_mp(http, "PUT", "/collections/mpflow", {"vectors": {"size": 3, "distance": "Euclid"}})
    assert r.status_code == 200 and msgpack.unpackb(r.content)["result"] is True
    ids = [1, 2, "6f1c5a40-8a6f-4f4e-9a53-3b9a0f2a7c11"]
    vectors = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype="<f4")
    body = {
        "batch": {
            "ids": ids,
            "vectors": vectors.tobytes(),
            "payloads": [{"k": i} for i in range(3)],
        }
    }
    assert post_mp(http, "PUT", "/collections/mpflow/points", body).status_code == 200

    r = post_mp(http, "POST", "/collections/mpflow/points", {"ids": ids[::-1], "with_vector": True})
    got = msgpack.unpackb(r.content)["result"]
    assert [p["id"] for p in got] == ids[::-1]
    for p in got:
        np.testing.assert_array_equal(
            np.frombuffer(p["vector"], "<f4"), vectors[ids.index(p["id"])]
        )

    r = post_mp(http, "POST", "/collections/mpflow/points/scroll", {"limit": 2})
    page = msgpack.unpackb(r.content)["result"]
    assert [p["id"] for p in page["points"]] == [1, 2] and page["next_page_offset"] == ids[2]

    flt = {"must": [{"key": "k", "range": {"gte": 1}}]}
    r = post_mp(http, "POST", "/collections/mpflow/points/count", {"filter": flt})
    assert msgpack.unpackb(r.content)["result"]["count"] == 2

    r = post_mp(
        http, "POST", "/collections/mpflow/points/payload", {"payload": {"x": 1}, "points": [1]}
    )
    assert r.status_code == 200
    r = post_mp(http, "POST", "/collections/mpflow/points/delete", {"filter": flt})
    assert r.status_code == 200
    r = post_mp(http, "POST", "/collections/mpflow/points/scroll", {"limit": 10})
    assert [(p["id"], p["payload"]) for p in msgpack.unpackb(r.content)["result"]["points"]] == [
        (1, {"k": 0, "x": 1})
    ]
