"""``serve`` with a real ingest source: ingest figures on /metrics, bad messages on /dead-letters."""

from __future__ import annotations

import base64
import json
import time

import httpx

from tests.http.test_service import metric


def test_file_ingest_figures_and_dead_letters(serve, tmp_path):
    lines = [
        json.dumps({"id": i, "vector": [i, 1.0, 0.5, 0.25], "payload": {"i": i}}) for i in range(5)
    ]
    lines.insert(2, json.dumps({"id": 99, "vector": [1.0, 2.0]}))  # wrong dimension
    lines.insert(4, "{not json")
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    server = serve(
        "--ingest",
        "file",
        "--ingest-file",
        str(source),
        "--collection",
        "ing",
        "--create-dim",
        "4",
        "--create-metric",
        "l2",
    )
    deadline = time.monotonic() + 120
    count = 0
    with httpx.Client(base_url=server.url, timeout=60) as http:
        while time.monotonic() < deadline:
            r = http.post("/collections/ing/points/count", json={})
            count = r.json()["result"]["count"] if r.status_code == 200 else 0
            letters = http.get("/dead-letters", params={"limit": 10}).json()["result"]
            if count == 5 and len(letters) == 2:
                break
            time.sleep(0.1)
        assert count == 5
        assert len(letters) == 2
        assert all(d["reason"] and d["source"] for d in letters)
        assert sorted(d["offset"] for d in letters) == [2, 4]
        values = {d["offset"]: base64.b64decode(d["value"]).decode() for d in letters}
        assert values == {2: lines[2], 4: lines[4]}
        text = http.get("/metrics").text
        assert metric(text, "vdb_ingest_records", handle="0") == 7
        assert metric(text, "vdb_ingest_dead_letters", handle="0") == 2
        assert metric(text, "vdb_collection_points", collection="ing") == 5
        assert "vdb_ingest_batch_latency_ms_" in text
        hits = http.post(
            "/collections/ing/points/query", json={"query": [3, 1, 0.5, 0.25], "limit": 1}
        ).json()["result"]["points"]
        assert hits[0]["id"] == 3 and hits[0]["score"] == 0.0
    # shutdown stops ingest first, then closes the database cleanly
    assert server.stop() == 0
    assert "database closed" in server.log()
