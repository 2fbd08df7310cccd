"""The router's merge and partitioner against brute force (no processes)."""

from __future__ import annotations

import random

from vdb.cluster.merge import merge_by_id, merge_hits, merge_scroll
from vdb.cluster.partitioner import partition_for, point_key
from vdb.ids import sort_key


def test_partitioner_is_kafkas_murmur2() -> None:
    # The Java client's own test values (Utils.murmur2), so any producer agrees.
    for key, java in [("21", -973932308), ("foobar", -790332482), ("abc", 479470107)]:
        want = (java & 0x7FFFFFFF) % 7
        assert partition_for(key.encode(), 7) == want
    assert point_key(17) == b"17" and point_key("abc") == b"abc"
    assert point_key("00000000-0000-0000-0000-000000000001").startswith(b"00000000-")


def test_merge_hits_equals_sorting_everything() -> None:
    rng = random.Random(7)
    for ascending in (True, False):
        for _ in range(50):
            hits = [{"id": i, "score": rng.random()} for i in range(60)]
            shards: list[list[dict]] = [[], [], []]
            for h in hits:
                shards[rng.randrange(3)].append(h)
            dup = dict(hits[5], score=hits[5]["score"] + (1 if ascending else -1))
            shards[0].append(dup)  # a worse copy of an id elsewhere: the best one stays
            for shard in shards:
                shard.sort(key=lambda h: h["score"], reverse=not ascending)
            offset, limit = rng.randrange(5), rng.randrange(1, 20)
            want = sorted(hits, key=lambda h: h["score"], reverse=not ascending)
            got = merge_hits(shards, ascending=ascending, offset=offset, limit=limit)
            assert got == want[offset : offset + limit]
            got = merge_hits(shards, ascending=ascending, offset=0, limit=10, exclude=want[0]["id"])
            assert got == want[1:11]


def test_int_and_string_ids_are_different_points() -> None:
    got = merge_hits(
        [[{"id": 1, "score": 0.9}], [{"id": "1", "score": 0.8}]], ascending=False, offset=0, limit=5
    )
    assert [h["id"] for h in got] == [1, "1"]


def test_merge_scroll_pages_like_one_list() -> None:
    rng = random.Random(3)
    ids = list(range(40)) + [f"s{i:02d}" for i in range(20)]
    shards: list[list] = [[], [], []]
    for point_id in ids:
        shards[rng.randrange(3)].append(point_id)
    everything = sorted(ids, key=sort_key)
    for limit in (1, 7, 25, 100):
        offset, seen = None, []
        while True:
            pages = []
            for shard in shards:
                mine = sorted(
                    (i for i in shard if offset is None or sort_key(i) >= sort_key(offset)),
                    key=sort_key,
                )
                pages.append(
                    ([{"id": i} for i in mine[:limit]], mine[limit] if len(mine) > limit else None)
                )
            points, offset = merge_scroll(pages, limit=limit)
            seen.extend(p["id"] for p in points)
            if offset is None:
                break
        assert seen == everything
    got = merge_by_id([[{"id": 2}, {"id": "a"}], [{"id": 1}, {"id": 3}]], offset=1, limit=2)
    assert [p["id"] for p in got] == [2, 3]
