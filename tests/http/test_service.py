"""Health, readiness, /metrics, /dead-letters and error bodies of the plain routes."""

from __future__ import annotations

import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def test_health_and_readiness(http):
    assert http.get("/healthz").status_code == 200
    assert http.get("/livez").status_code == 200
    assert http.get("/readyz").status_code == 200


def test_metrics_count_requests_points_and_wal(http):
    assert (
        http.put("/collections/met", json={"vectors": {"size": 2, "distance": "Dot"}}).status_code
        == 200
    )
    points = [{"id": i, "vector": [i, 1]} for i in range(7)]
    assert http.put("/collections/met/points", json={"points": points}).status_code == 200
    assert http.post("/collections/nope/points/count", json={}).status_code == 404
    text = http.get("/metrics").text
    assert metric(text, "vdb_collection_points", collection="met") == 7
    assert (
        metric(text, "vdb_http_requests_total", route="upsert_points", method="PUT", status="200")
        >= 1
    )
    assert (
        metric(text, "vdb_http_requests_total", route="count_points", method="POST", status="404")
        >= 1
    )
    assert (
        metric(
            text,
            "vdb_http_request_duration_seconds_count",
            route="upsert_points",
            method="PUT",
            status="200",
        )
        >= 1
    )
    assert metric(text, "vdb_wal_records_written") >= 1
    families = {f.name for f in text_string_to_metric_families(text)}  # valid exposition format
    assert {"vdb_http_requests", "vdb_collection_points", "vdb_checkpoints"} <= families


def test_dead_letters_route(http):
    r = http.get("/dead-letters", params={"limit": 5})
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["result"] == []
    for bad in ("0", "-1", "x", "100000000"):
        r = http.get("/dead-letters", params={"limit": bad})
        assert r.status_code == 400 and r.json()["status"]["error"]


def test_unknown_routes_and_methods_answer_json(http):
    r = http.get("/no/such/route")
    assert r.status_code == 404 and r.json()["status"]["error"]
    r = http.delete("/collections/met/points/scroll")
    assert r.status_code == 405 and r.json()["status"]["error"]
    r = http.put(
        "/collections/met/points",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "JSON" in r.json()["status"]["error"]


def test_serve_takes_the_fresh_limit_and_seal_size_from_flags_and_the_environment(serve):
    server = serve("--fresh-limit", "321", env={"VDB_GRAPH_SEAL_SIZE": "5000"})
    with httpx.Client(base_url=server.url, timeout=60) as c:
        body = {"vectors": {"size": 2, "distance": "Dot"}}
        assert c.put("/collections/lim", json=body).status_code == 200
        text = c.get("/metrics").text
    assert metric(text, "vdb_collection_fresh_limit", collection="lim") == 321
    assert metric(text, "vdb_collection_graph_seal_size", collection="lim") == 5000
