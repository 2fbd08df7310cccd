"""The core's partition restriction and drop, and the node's ``vdb_partitions`` parameter."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

import vdb
from vdb.errors import InvalidInput
from vdb.types import Upsert

N = 400


def fill(path: Path) -> np.ndarray:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((N, 8)).astype(np.float32)
    with vdb.open(path, warm=False) as db:
        col = db.create_collection("docs", dim=8, metric="l2")
        ops = [Upsert(i, vectors[i], {"g": i % 3}, partition=i % 4) for i in range(N)]
        col.apply(ops, source_offsets={("kafka:g", "t", p): 100 + p for p in range(4)})
    return vectors


def test_search_count_scroll_restricted_to_partitions(tmp_path: Path) -> None:
    vectors = fill(tmp_path)
    with vdb.open(tmp_path, warm=False) as db:
        col = db.collection("docs")
        flt = {"must": [{"key": "g", "match": {"value": 1}}]}
        mine = {i for i in range(N) if i % 4 in (1, 3)}
        assert col.count(partitions=[1, 3]) == len(mine)
        assert col.count(filter=flt, partitions=[3]) == sum(
            1 for i in mine if i % 4 == 3 and i % 3 == 1
        )
        assert col.count(partitions=[0, 1, 2, 3]) == N and col.count(partitions=[]) == 0
        for q in vectors[:10]:
            exact = col.search(q, k=10, exact=True, partitions=[1, 3])
            d = ((vectors - q) ** 2).sum(axis=1)
            want = sorted(mine, key=lambda i: (d[i], i))[:10]
            assert [h.id for h in exact] == want
            assert {h.id for h in col.search(q, k=10, partitions=[1, 3])} <= mine
            assert all(
                h.id % 4 == 3 and h.id % 3 == 1
                for h in col.search(q, k=5, filter=flt, partitions=[3])
            )
        records, _ = col.scroll(limit=N, partitions=[2])
        assert [r.id for r in records] == [i for i in range(N) if i % 4 == 2]
        with pytest.raises(InvalidInput):
            col.search(vectors[0], k=3, partitions=["x"])


def test_drop_partition_frees_points_and_offset_in_one_transaction(tmp_path: Path) -> None:
    fill(tmp_path)
    with vdb.open(tmp_path, warm=False) as db:
        col = db.collection("docs")
        assert col.drop_partition(2, source_offsets_to_forget=[("kafka:g", "t", 2)]) == N // 4
        assert col.count() == N - N // 4 and col.count(partitions=[2]) == 0
        assert db.source_offsets("kafka:g") == {("t", 0): 100, ("t", 1): 101, ("t", 3): 103}
        assert col.drop_partition(2, source_offsets_to_forget=[("kafka:g", "t", 3)]) == 0
        with pytest.raises(InvalidInput):
            col.drop_partition("2")
    with vdb.open(tmp_path, warm=False) as db:  # durable: the same after a reopen (WAL replay)
        col = db.collection("docs")
        assert col.count() == N - N // 4 and col.get([2, 6]) == []
        assert db.source_offsets("kafka:g") == {("t", 0): 100, ("t", 1): 101}


def test_node_http_takes_vdb_partitions(tmp_path: Path, serve) -> None:
    data = tmp_path / "node"
    vectors = fill(data)
    server = serve(data_dir=data)
    url = server.url + "/collections/docs/points"
    params = {"vdb_partitions": "0,2"}
    q = {"query": vectors[0].tolist(), "limit": 50, "params": {"exact": True}}
    hits = httpx.post(url + "/query", json=q, params=params).json()["result"]["points"]
    assert len(hits) == 50 and all(h["id"] % 4 in (0, 2) for h in hits)
    r = httpx.post(url + "/query/batch", json={"searches": [q, q]}, params=params)
    assert all(h["id"] % 4 in (0, 2) for s in r.json()["result"] for h in s["points"])
    assert httpx.post(url + "/count", json={}, params=params).json()["result"]["count"] == N // 2
    page = httpx.post(url + "/scroll", json={"limit": 3}, params=params).json()["result"]
    assert [p["id"] for p in page["points"]] == [0, 2, 4] and page["next_page_offset"] == 6
    got = httpx.post(url, json={"ids": [0, 1, 2, 3]}, params=params).json()["result"]
    assert [p["id"] for p in got] == [0, 2]
    assert httpx.get(url + "/1", params=params).status_code == 404
    assert httpx.get(url + "/2", params=params).status_code == 200
    assert httpx.post(url + "/count", json={}).json()["result"]["count"] == N
    r = httpx.post(url + "/count", json={}, params={"vdb_partitions": "0,x"})
    assert r.status_code == 400 and "vdb_partitions" in r.json()["status"]["error"]


def test_cluster_flags_are_checked() -> None:
    from vdb.config import ServerConfig

    with pytest.raises(InvalidInput, match="need --cluster"):
        ServerConfig(node_id="a").validate()
    with pytest.raises(InvalidInput, match="must not be empty"):
        ServerConfig(cluster=" ").validate()
    with pytest.raises(InvalidInput, match="--port 0 needs --advertise-url"):
        ServerConfig(cluster="c", port=0).validate()
    assert ServerConfig(cluster="c", node_id="a", advertise_url="http://h:1").validate().cluster


def test_serve_cluster_without_a_kafka_group_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.helpers import REPO

    r = subprocess.run(
        [sys.executable, "-m", "vdb", "serve", "--data", str(tmp_path / "d"), "--port", "0",
         "--cluster", "c", "--advertise-url", "http://127.0.0.1:1", "--no-warm"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert r.returncode == 1
    assert "--cluster" in r.stderr and "Kafka ingest pipeline with a group" in r.stderr


def test_partitions_held_follow_writes_deletes_moves_and_reopen(tmp_path: Path) -> None:
    """The live count per partition (which lets a node asked for all it holds skip the
    mask) stays exact through replaces into another partition, deletes, a drop, a
    checkpoint and a WAL replay; a restricted search never returns a point outside."""
    vectors = fill(tmp_path)

    def counted(col) -> dict[int, int]:
        return {p: col.count(partitions=[p]) for p in range(-1, 5)}

    with vdb.open(tmp_path, warm=False) as db:
        col = db.collection("docs")
        assert col._ids.partitions_held() == {0, 1, 2, 3}
        # points 0..9 move to partition 4, 10..14 lose their partition, 15..19 are deleted
        col.apply([Upsert(i, vectors[i], {"g": 0}, partition=4) for i in range(10)])
        col.upsert(list(range(10, 15)), vectors[10:15])
        col.delete(list(range(15, 20)))
        assert col.drop_partition(2) == len([i for i in range(20, N) if i % 4 == 2])
        want = {p: c for p, c in counted(col).items() if c}
        assert want[4] == 10 and want[-1] == 5 and 2 not in want
        assert col._ids.partitions_held() == set(want)
        assert dict(col._ids.per_partition) == want
        for q in vectors[:5]:
            assert {h.id for h in col.search(q, k=20, partitions=[0, 1, 3, 4])} <= {
                i for i in range(N) if i < 10 or (i >= 20 and i % 4 in (0, 1, 3))
            }
        db.checkpoint()
        col.delete([20, 21])
    with vdb.open(tmp_path, warm=False) as db:  # checkpoint + WAL replay
        col = db.collection("docs")
        want = {p: c for p, c in counted(col).items() if c}
        assert dict(col._ids.per_partition) == want and sum(want.values()) == col.count()
