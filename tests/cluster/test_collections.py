"""Several collections in one cluster: one topic each, one router in front of all of them.

Two nodes of one consumer group each run two Kafka ingest specs (``docs``
from a 4-partition topic, ``small`` from a 2-partition one); their
heartbeats name both collections, and the router routes every request by
the collection's name: its writes go to that collection's topic, its reads
to the replicas of that collection's partitions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import httpx
import numpy as np
import pytest

from tests.cluster.conftest import FAST_GROUP, Cluster, create_topic, post, unique, wait_for


def small_spec(cl: Cluster, topic: str, group: str) -> tuple[str, ...]:
    args = [
        "--ingest", "kafka", "--kafka-bootstrap", cl.broker.bootstrap, "--kafka-topic", topic,
        "--kafka-group", group, "--collection", "small", "--create-dim", "4",
        "--create-metric", "l2",
    ]  # fmt: skip
    for key, value in FAST_GROUP.items():
        args += ["--kafka-option", f"{key}={value}"]
    return tuple(args)


def serving(cl: Cluster, collection: str) -> set[int]:
    out: set[int] = set()
    for node in cl.map()["nodes"]:
        meta = node["collections"].get(collection) or {}
        if node["healthy"]:
            out |= {int(k) for k, p in (meta.get("partitions") or {}).items()
                    if p["state"] == "serving"}  # fmt: skip
    return out


@pytest.mark.slow
def test_one_router_serves_every_collection_of_the_cluster(make_cluster: Any) -> None:
    cl = make_cluster(partitions=4, dim=8)
    small_topic = create_topic(cl.broker.bootstrap, unique("small"), partitions=2)
    for node_id in ("s1", "s2"):
        cl.add_node(node_id, "g1", wait=False, extra=small_spec(cl, small_topic, "g1-small"))
    for node in cl.nodes.values():
        node.wait_ready()
    router = cl.start_router().url
    wait_for(lambda: serving(cl, "docs") == {0, 1, 2, 3} and serving(cl, "small") == {0, 1})

    r = httpx.get(router + "/collections", timeout=10)
    assert [c["name"] for c in r.json()["result"]["collections"]] == ["docs", "small"]
    meta = {n: cl.map()["nodes"][0]["collections"][n] for n in ("docs", "small")}
    assert meta["docs"]["topic"] == cl.topic and meta["small"]["topic"] == small_topic
    assert (meta["docs"]["partitions_total"], meta["small"]["partitions_total"]) == (4, 2)

    rng = np.random.default_rng(3)
    docs = rng.standard_normal((300, 8)).astype(np.float32)
    small = rng.standard_normal((200, 4)).astype(np.float32)
    for name, vectors in (("docs", docs), ("small", small)):
        points = [{"id": i, "vector": v.tolist(), "payload": {"c": name}} for i, v in
                  enumerate(vectors)]  # fmt: skip
        r = httpx.put(router + f"/collections/{name}/points", params={"wait": "true"},
                      json={"points": points}, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
    for name, vectors in (("docs", docs), ("small", small)):
        url = router + f"/collections/{name}"
        assert post(url + "/points/count", {}).json()["result"]["count"] == len(vectors)
        info = httpx.get(url, timeout=10).json()["result"]
        assert info["config"]["params"]["vectors"]["size"] == vectors.shape[1]
        assert info["points_count"] == len(vectors)
        q = vectors[7] + 0.01
        if name == "small":  # l2
            d = ((vectors - q) ** 2).sum(axis=1)
        else:  # docs: cosine
            d = -(vectors @ q) / np.linalg.norm(vectors, axis=1)
        want = sorted(range(len(vectors)), key=lambda i: (d[i], i))[:10]
        r = post(url + "/points/query",
                 {"query": q.tolist(), "limit": 10, "params": {"exact": True},
                  "with_payload": True})  # fmt: skip
        assert r.status_code == 200, r.text
        hits = r.json()["result"]["points"]
        assert [h["id"] for h in hits] == want
        assert all(h["payload"] == {"c": name} for h in hits)
    # a vector of the other collection's size is refused by the one it is sent to
    r = post(router + "/collections/small/points/query", {"query": docs[0].tolist()})
    assert r.status_code == 400 and "dimension" in r.text.lower()


def test_a_clustered_collection_is_fed_by_exactly_one_topic(make_cluster: Any) -> None:
    """A node refuses to start when a clustered collection would have two topics' partitions."""
    from tests.cluster.conftest import REPO, node_args
    from tests.http.conftest import free_port

    cl = make_cluster(partitions=2, dim=4)
    second = create_topic(cl.broker.bootstrap, unique("second"), partitions=2)
    cases = {
        "2 topics": ["--kafka-topic", second],  # the spec's topics: cl.topic and second
        "2 specs": [
            "--ingest", "kafka", "--kafka-bootstrap", cl.broker.bootstrap, "--kafka-topic",
            second, "--kafka-group", "g1", "--collection", "docs",
        ],
    }  # fmt: skip
    for case, extra in cases.items():
        port = free_port()
        args = node_args(cl.broker.bootstrap, cl.topic, "g1", cl.name, "x", port, 4) + extra
        data = cl.tmp / f"refused-{case.replace(' ', '-')}"
        done = subprocess.run(
            [sys.executable, "-m", "vdb", "serve", "--data", str(data), "--port", str(port), *args],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode != 0, (case, done.stdout[-2000:], done.stderr[-2000:])
        assert "fed by exactly one topic" in done.stderr, (case, done.stderr[-2000:])
