"""Fuzz: thousands of malformed requests against a live server.

Every answer must be a 4xx with a JSON body in Qdrant's error shape; the
server must stay alive; the data must not change (the count and a fixed
search answer the same before and after). Each generated request is invalid
by construction (a seeded generator picks one known defect and plants it in
an otherwise well-formed request), so none of them may write.
"""

from __future__ import annotations

import json
import random
import time

import httpx
import msgpack
import pytest

DIM = 6
COLLECTION = "fz"
N_REQUESTS = 1500
SEED = 20240611


def valid_vector(rng: random.Random) -> list[float]:
    return [round(rng.uniform(-1, 1), 4) for _ in range(DIM)]


def bad_vector(rng: random.Random) -> object:
    choice = rng.randrange(9)
    if choice == 0:
        return valid_vector(rng)[: rng.randrange(DIM)]  # too short (maybe empty)
    if choice == 1:
        return valid_vector(rng) + [0.5] * rng.randrange(1, 4)  # too long
    if choice == 2:
        v = valid_vector(rng)
        v[rng.randrange(DIM)] = rng.choice(["1.0", None, True, [1.0], {"x": 1}])
        return v
    if choice == 3:
        return "not a vector"
    if choice == 4:
        return {"indices": [1], "values": [0.5]}
    if choice == 5:
        return [1e39] * DIM  # overflows float32
    if choice == 6:
        return rng.choice([None, 7, True])
    if choice == 7:
        return [valid_vector(rng), valid_vector(rng)]  # multivector
    return {"other": valid_vector(rng)}  # named vector


def bad_id(rng: random.Random) -> object:
    return rng.choice(
        ["123", "", "not-a-uuid", -1, -(2**63), 2**64, 1.5, True, None, [1], {"id": 1}, "0x10"]
    )


def bad_filter(rng: random.Random) -> object:
    return rng.choice(
        [
            "parity",
            [1, 2],
            {"must": [{"key": "n", "match": {"value": [1, 2]}}]},
            {"must": [{"key": "n", "range": {"gt": "ten"}}]},
            {"must": [{"key": "n"}]},
            {"must": [{"key": 5, "match": {"value": 1}}]},
            {"must": [{"nonsense": {}}]},
            {"whatever": []},
            {"must": [{"key": "n", "match": {"value": 1}, "range": {"gt": 1}}]},
            {"must": 5},
            {"should": [{"has_id": ["nope"]}]},
            {"must": [{"key": "", "match": {"value": 1}}]},
        ]
    )


def upsert_request(rng: random.Random) -> tuple[str, str, object]:
    kind = rng.randrange(9)
    point = {"id": rng.randrange(10_000, 20_000), "vector": valid_vector(rng), "payload": {"a": 1}}
    good = [dict(point, id=rng.randrange(10_000, 20_000)) for _ in range(rng.randrange(3))]
    if kind == 0:
        point["vector"] = bad_vector(rng)
    elif kind == 1:
        point["id"] = bad_id(rng)
    elif kind == 2:
        point["payload"] = rng.choice([[1], "x", 5, True])
    elif kind == 3:
        point[rng.choice(["vectors", "idd", "score", "shard"])] = 1
    elif kind == 4:
        point.pop(rng.choice(["id", "vector"]))
    elif kind == 5:
        body = {"batch": {"ids": [1, 2], "vectors": [valid_vector(rng)], "payloads": None}}
        return "PUT", f"/collections/{COLLECTION}/points", body
    elif kind == 6:
        body = {"batch": {"ids": [1, 2], "vectors": [valid_vector(rng)] * 2, "payloads": [{}]}}
        return "PUT", f"/collections/{COLLECTION}/points", body
    elif kind == 7:
        return "PUT", f"/collections/{COLLECTION}/points", {"points": point}
    else:
        body = {"points": [*good, point], "shard_key": "s"}
        return "PUT", f"/collections/{COLLECTION}/points", body
    return "PUT", f"/collections/{COLLECTION}/points", {"points": [*good, point]}


def query_request(rng: random.Random) -> tuple[str, str, object]:
    body: dict = {"query": valid_vector(rng), "limit": 5}
    kind = rng.randrange(10)
    if kind == 0:
        body["query"] = bad_vector(rng)
        if isinstance(body["query"], list) and len(body["query"]) == DIM:
            body["query"] = body["query"][:-1]
    elif kind == 1:
        body["limit"] = rng.choice([0, -1, -100, 10**9, "5", 2.5, True, [5]])
    elif kind == 2:
        body["filter"] = bad_filter(rng)
    elif kind == 3:
        body["params"] = rng.choice(
            [{"hnsw_ef": -1}, {"hnsw_ef": "x"}, {"quantization": {"oversampling": 0.5}}, 5]
        )
    elif kind == 4:
        body["score_threshold"] = rng.choice(["high", [1], {}])
    elif kind == 5:
        body["with_payload"] = rng.choice([5, "yes", {"include": 5}, {"both": []}])
    elif kind == 6:
        body["offset"] = rng.choice([-1, "1", 10**12])
    elif kind == 7:
        body["query"] = rng.choice([{"recommend": {}}, {"nearest": [1, 2], "extra": 1}, {}])
    elif kind == 8:
        body["using"] = rng.choice(["dense", "x"])
    else:
        body["unknown_field"] = 1
    if rng.random() < 0.2:
        return "POST", f"/collections/{COLLECTION}/points/query/batch", {"searches": [body]}
    return "POST", f"/collections/{COLLECTION}/points/query", body


def other_request(rng: random.Random) -> tuple[str, str, object]:
    c = f"/collections/{COLLECTION}"
    return rng.choice(
        [
            ("POST", c + "/points/delete", {"points": [bad_id(rng)]}),
            ("POST", c + "/points/delete", {"filter": bad_filter(rng)}),
            ("POST", c + "/points/delete", {}),
            ("POST", c + "/points/delete", {"points": [1], "filter": {"must": []}}),
            ("POST", c + "/points/payload", {"payload": [1], "points": [1]}),
            ("POST", c + "/points/payload", {"payload": {"x": 1}}),
            ("POST", c + "/points/payload", {"payload": {"x": 1}, "points": [bad_id(rng)]}),
            ("PUT", c + "/points/payload", {"payload": {"x": 1}, "filter": bad_filter(rng)}),
            ("POST", c + "/points/payload/delete", {"keys": "a", "points": [1]}),
            ("POST", c + "/points/payload/clear", {"points": "all"}),
            ("POST", c + "/points/scroll", {"limit": rng.choice([0, -5, "3", 10**8])}),
            ("POST", c + "/points/scroll", {"offset": bad_id(rng) or "x"}),
            ("POST", c + "/points/scroll", {"filter": bad_filter(rng)}),
            ("POST", c + "/points/count", {"filter": bad_filter(rng)}),
            ("POST", c + "/points/count", {"exact": "yes"}),
            ("POST", c + "/points", {"ids": rng.choice([[bad_id(rng)], "1", None])}),
            ("POST", c + "/points", {"ids": [1], "with_vector": "yes"}),
            ("PUT", c, {"vectors": {"size": 4, "distance": "Cosine"}}),  # exists: 409
            (
                "PUT",
                "/collections/fz-new",
                {"vectors": {"size": rng.choice([0, -1, "4"]), "distance": "Cosine"}},
            ),
            ("PUT", "/collections/fz-new", {"vectors": {"size": 4, "distance": "Hamming"}}),
            (
                "PUT",
                "/collections/fz-new",
                {"vectors": {"size": 4, "distance": "Dot"}, "shard_number": 3},
            ),
            ("PUT", "/collections/fz-new", {}),
            ("PATCH", c, {"optimizers_config": {}}),
            ("POST", "/collections/missing/points/query", {"query": valid_vector(rng)}),
            (
                "PUT",
                "/collections/missing/points",
                {"points": [{"id": 1, "vector": valid_vector(rng)}]},
            ),
            ("GET", c + "/points/" + rng.choice(["123x", "-1", "abc"]), None),
            ("GET", c + "/snapshots/../../etc.snapshot", None),
            ("GET", c + "/snapshots/none.snapshot", None),
        ]
    )


def encode(rng: random.Random, method: str, path: str, body: object) -> dict:
    """Serialise, sometimes breaking the bytes themselves."""
    if body is None:
        return {}
    mode = rng.randrange(12)
    if mode == 0:
        raw = json.dumps(body).encode()
        return {
            "content": raw[: rng.randrange(1, max(2, len(raw) - 1))],
            "headers": {"content-type": "application/json"},
        }  # truncated JSON
    if mode == 1:
        return {
            "content": bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))),
            "headers": {"content-type": rng.choice(["application/json", "application/msgpack"])},
        }
    if mode == 2:
        return {
            "content": b'{"points": [{"id": 1, "vector": [NaN, 1, 2, 3, 4, 5]}]}',
            "headers": {"content-type": "application/json"},
        }
    if mode == 3:
        return {
            "content": b"[" * 5000 + b"]" * 5000,
            "headers": {"content-type": "application/json"},
        }
    if mode == 4:
        return {
            "content": msgpack.packb(body, use_bin_type=True),
            "headers": {"content-type": "application/msgpack"},
        }
    if mode == 5:
        return {
            "content": json.dumps(body).encode("utf-16"),
            "headers": {"content-type": "application/json"},
        }
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


def generate(n: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n):
        maker = rng.choice([upsert_request, upsert_request, query_request, other_request])
        method, path, body = maker(rng)
        yield method, path, body, encode(rng, method, path, body)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert (
            c.put(
                f"/collections/{COLLECTION}", json={"vectors": {"size": DIM, "distance": "Cosine"}}
            ).status_code
            == 200
        )
        rng = random.Random(1)
        points = [
            {"id": i, "vector": valid_vector(rng), "payload": {"n": i, "parity": i % 2}}
            for i in range(200)
        ]
        assert (
            c.put(f"/collections/{COLLECTION}/points", json={"points": points}).status_code == 200
        )
        yield c


def fingerprint(http: httpx.Client) -> tuple:
    count = http.post(f"/collections/{COLLECTION}/points/count", json={}).json()["result"]["count"]
    q = {
        "query": [0.1, -0.2, 0.3, 0.4, -0.5, 0.6],
        "limit": 10,
        "with_payload": True,
        "with_vector": True,
    }
    hits = http.post(f"/collections/{COLLECTION}/points/query", json=q).json()["result"]["points"]
    scroll = http.post(f"/collections/{COLLECTION}/points/scroll", json={"limit": 500}).json()
    names = [c["name"] for c in http.get("/collections").json()["result"]["collections"]]
    return (
        count,
        json.dumps(hits, sort_keys=True),
        json.dumps(scroll["result"], sort_keys=True),
        names,
    )


def wait_green(http: httpx.Client) -> None:
    """Until every point is in the graph: then a search answers the same twice."""
    deadline = time.monotonic() + 60
    while http.get(f"/collections/{COLLECTION}").json()["result"]["status"] != "green":
        assert time.monotonic() < deadline, "collection never turned green"
        time.sleep(0.05)


def test_malformed_requests_get_4xx_json_and_change_nothing(server, http):
    wait_green(http)
    before = fingerprint(http)
    seen_status: dict[int, int] = {}
    for i, (method, path, body, kwargs) in enumerate(generate(N_REQUESTS, SEED)):
        r = http.request(method, path, **kwargs)
        seen_status[r.status_code] = seen_status.get(r.status_code, 0) + 1
        assert 400 <= r.status_code < 500, (i, method, path, body, r.status_code, r.text[:300])
        error = r.json()["status"]["error"]
        assert isinstance(error, str) and error
        if i % 250 == 0:
            assert server.alive()
    assert server.alive()
    assert http.get("/healthz").status_code == 200
    wait_green(http)
    assert fingerprint(http) == before
    assert sum(seen_status.values()) >= 1000
    assert {400, 404}.issubset(seen_status)
