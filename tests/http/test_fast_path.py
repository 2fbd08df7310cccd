"""The search fast path and the JSON codec answer exactly as the general path does.

A small plain search runs on the event loop; a big body or a heavy query
(a filter, a big limit) goes to the thread pool. Both must give the same
hits and the same errors. JSON goes through orjson except where orjson would
read or write differently from ``json`` (integers beyond 64 bits, lone
surrogates, non-finite numbers), which ``json`` then handles.
"""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vdb.http import codec
from vdb.http.qdrant import INLINE_BODY_MAX, INLINE_MAX_K

DIM = 16
N = 60


@pytest.fixture(scope="module")
def http(server):
    rng = np.random.default_rng(21)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.put("/collections/fast", json={"vectors": {"size": DIM, "distance": "Cosine"}})
        assert r.status_code == 200, r.text
        points = [
            {"id": i, "vector": vectors[i].tolist(), "payload": {"even": i % 2 == 0}}
            for i in range(N)
        ]
        r = c.put("/collections/fast/points?wait=true", json={"points": points})
        assert r.status_code == 200, r.text
        # searched, the points are at once; compared across calls, they must stay put: wait
        # until the background indexer reports the collection green (all in the graph)
        deadline = time.monotonic() + 60
        while c.get("/collections/fast").json()["result"]["status"] != "green":
            assert time.monotonic() < deadline, "collection never turned green"
            time.sleep(0.05)
        yield c


def post(http: httpx.Client, path: str, body: dict, pad: int = 0) -> httpx.Response:
    raw = json.dumps(body).encode() + b" " * pad  # JSON allows trailing whitespace
    return http.post(path, content=raw, headers={"content-type": "application/json"})


def ids_scores(response: httpx.Response, key: str | None = "points") -> list[tuple]:
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    points = result[key] if key else result
    return [(p["id"], p["score"]) for p in points]


def test_inline_and_thread_pool_searches_agree(http):
    q = np.random.default_rng(22).standard_normal(DIM).tolist()
    body = {"query": q, "limit": 10}
    inline = ids_scores(post(http, "/collections/fast/points/query", body))
    assert len(inline) == 10
    big_body = ids_scores(
        post(http, "/collections/fast/points/query", body, pad=INLINE_BODY_MAX + 1)
    )
    big_limit = ids_scores(
        post(http, "/collections/fast/points/query", {"query": q, "limit": INLINE_MAX_K + 1})
    )
    assert big_body == inline
    assert len(big_limit) == N and big_limit[:10] == inline
    filtered = ids_scores(
        post(
            http,
            "/collections/fast/points/query",
            {
                "query": q,
                "limit": 10,
                "filter": {"must": [{"key": "even", "match": {"value": True}}]},
            },
        )
    )
    assert filtered == [hit for hit in big_limit if hit[0] % 2 == 0][:10]
    search = ids_scores(
        post(http, "/collections/fast/points/search", {"vector": q, "limit": 10}), None
    )
    assert search == inline


def test_inline_and_thread_pool_errors_agree(http):
    wrong_dim = {"query": [0.5] * (DIM + 1), "limit": 3}
    small = post(http, "/collections/fast/points/query", wrong_dim)
    big = post(http, "/collections/fast/points/query", wrong_dim, pad=INLINE_BODY_MAX + 1)
    assert small.status_code == big.status_code == 400
    assert small.json()["status"] == big.json()["status"]
    assert "dimension" in small.json()["status"]["error"]
    missing = post(http, "/collections/nope/points/query", {"query": [0.5] * DIM})
    assert missing.status_code == 404
    assert "doesn't exist" in missing.json()["status"]["error"]
    legacy = post(http, "/collections/fast/points/search", {"limit": 3})
    assert legacy.status_code == 400 and "vector" in legacy.json()["status"]["error"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_decode_reads_what_json_reads(value):
    raw = json.dumps({"v": value}).encode()
    assert codec.decode(raw, "application/json") == json.loads(raw)
    # and types survive: a wide integer stays an exact int
    assert json.dumps(codec.decode(raw, None)) == raw.decode()


@given(json_values)
def test_encode_writes_what_json_reads_back(value):
    body, media_type = codec.encode({"v": value}, msgpack_out=False)
    assert media_type == codec.JSON
    assert json.loads(body) == {"v": value}


def test_codec_edge_cases_keep_their_old_answers():
    assert codec.decode(b'{"a": 1e400}', None) == {"a": float("inf")}
    assert codec.decode(b'{"a": "\\ud800"}', None) == {"a": "\ud800"}
    assert codec.decode(b'{"a": -9223372036854775809}', None) == {"a": -(2**63) - 1}
    for bad, words in ((b'{"a": NaN}', "NaN"), (b"\xff", "not UTF-8"), (b"{", "Format error")):
        with pytest.raises(codec.BodyError, match=words):
            codec.decode(bad, None)
    body, _ = codec.encode(
        {"nan": float("nan"), "vec": np.arange(3, dtype=np.float32), 7: b"x", "s": "\ud800"},
        msgpack_out=False,
    )
    assert json.loads(body) == {"nan": None, "vec": [0.0, 1.0, 2.0], "7": "x", "s": "\ud800"}


def test_concurrent_searches_get_their_own_hits(http, server):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(23)
    queries = [rng.standard_normal(DIM).tolist() for _ in range(48)]
    bodies = [
        {"query": q, "limit": 3 + i % 3, "with_payload": i % 2 == 0} for i, q in enumerate(queries)
    ]
    alone = [post(http, "/collections/fast/points/query", b).json()["result"] for b in bodies]
    bodies.append({"query": [0.5] * (DIM + 1)})  # a bad one among them errs alone

    def one(i: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return post(c, "/collections/fast/points/query", bodies[i])

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, range(len(bodies))))
    assert [r.json()["result"] for r in together[:-1]] == alone
    assert together[-1].status_code == 400
    assert all(len(r["points"]) == 3 + i % 3 for i, r in enumerate(alone))
    assert all(("payload" in p) == (i % 2 == 0) for i, r in enumerate(alone) for p in r["points"])
