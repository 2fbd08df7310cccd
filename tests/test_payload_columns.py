"""Checkpointed payload-index columns: a database opens with the columns its checkpoint
holds (no payload re-indexed), and every filter answers as the index rebuilt from the
payloads and as brute force do, after reopen, replay, snapshot/restore, and from a
checkpoint written before the columns were kept."""

from __future__ import annotations

import numpy as np

import vdb
from bench.segments import strip_columns  # a checkpoint as written before the columns
from vdb.filters import PayloadIndex, matches

DIM = 8
UUIDS = ["6f1c2a4e-0b7d-4c1e-9a55-3d2f8e1b7c90", "0d8e7f6a-5b4c-4d3e-8f2a-1b0c9d8e7f6a"]

FILTERS = [
    {"must": [{"key": "kw", "match": {"value": "w3"}}]},
    {"must": [{"key": "kw", "match": {"any": ["w1", "w5", "new"]}}]},
    {"must": [{"key": "kw", "match": {"except": ["w0", "w1"]}}]},
    {"must": [{"key": "n", "match": {"value": 7}}]},
    {"must": [{"key": "n", "range": {"gte": 10, "lt": 40}}]},
    {"must": [{"key": "f", "range": {"gt": 2.5, "lte": 900.0}}]},
    {"must": [{"key": "b", "match": {"value": True}}]},
    {"must": [{"key": "b", "match": {"value": False}}]},
    {"must": [{"key": "at", "range": {"gte": "2024-01-05T00:00:00Z", "lt": "2024-01-20"}}]},
    {"must": [{"key": "u", "match": {"value": UUIDS[0]}}]},
    {"must": [{"key": "tags", "match": {"any": ["a1", "b2"]}}]},
    {"must": [{"key": "nums", "match": {"any": [1, 3]}}]},
    {"must": [{"key": "nums", "range": {"gte": 2}}]},
    {"must": [{"key": "tags", "values_count": {"gte": 3}}]},
    {"must": [{"key": "text", "match": {"text": "hello 3"}}]},
    {"must": [{"key": "text", "match": {"text_any": "world seven"}}]},
    {"must": [{"key": "text", "match": {"phrase": "world 4"}}]},
    {"must": [{"key": "kw", "match": {"prefix": "w1"}}]},
    {"must": [{"key": "long", "match": {"substring": "zz"}}]},
    {"must": [{"is_empty": {"key": "kw"}}]},
    {"must": [{"is_null": {"key": "maybe"}}]},
    {"must": [{"key": "obj.inner", "match": {"value": "x2"}}]},
    {"must": [{"key": "items[].x", "range": {"lt": 2}}]},
    {
        "must": [
            {"nested": {"key": "items", "filter": {"must": [{"key": "x", "match": {"value": 2}}]}}}
        ]
    },
    {
        "must_not": [{"key": "n", "range": {"lt": 50}}],
        "should": [{"key": "b", "match": {"value": True}}],
    },
    {
        "min_should": {
            "conditions": [
                {"key": "kw", "match": {"value": "w2"}},
                {"key": "b", "match": {"value": True}},
                {"key": "tags", "match": {"value": "a0"}},
            ],
            "min_count": 2,
        }
    },
    {"must": [{"has_id": [1, 2, 3, 500, 1999, "s7"]}]},
]


def payload(i: int, version: int = 0) -> dict | None:
    """A payload with every kind of value the index keeps (some points have none)."""
    if i % 17 == 0:
        return None
    p: dict = {
        "kw": f"w{(i + version) % 9}",
        "n": (i * 7 + version) % 101,
        "f": i / 3.0 + version,
        "b": bool((i + version) % 2),
        "at": f"2024-01-{1 + (i + version) % 28:02d}T{i % 24:02d}:00:00Z",
        "u": UUIDS[i % 2],
        "tags": [f"a{i % 5}", f"b{i % 3}"] + ([f"c{i % 2}"] if i % 4 == 0 else []),
        "nums": [i % 4, (i + 1) % 4],
        "text": f"Hello world {i % 11} seven" if i % 3 else f"world {i % 6}",
        "obj": {"inner": f"x{i % 4}"},
        "items": [{"x": i % 4}, {"x": 9, "y": "z"}],
    }
    if i % 5 == 0:
        p["maybe"] = None
    if i % 7 == 0:
        p["long"] = "z" * 300 + str(i)  # past the keyword dictionary's length
    if i % 11 == 0:
        p["kw"] = []
        p["n"] = 2**63 + 5  # beyond int64: never matched, still a number for range
    return p


def fill(col, rng, ids, version=0):
    col.upsert(
        ids,
        rng.standard_normal((len(ids), DIM)).astype(np.float32),
        [payload(i if isinstance(i, int) else 7 * len(i), version) for i in ids],
    )


def answers(col) -> list[set]:
    """Each filter's matching ids, from the collection's index; checked against brute
    force and against an index rebuilt from the stored payloads."""
    index = col._payloads
    cap = col._capacity()
    live = col._ids.live_mask(cap)
    rebuilt = PayloadIndex.from_items(index.items(), indexes=index.indexes())
    points = [(s, col._ids.ids[s]) for s in np.flatnonzero(live).tolist()]
    out = []
    for f in FILTERS:
        got = {col._ids.ids[s] for s in np.flatnonzero(index.mask(f, cap, live, col._ids.get))}
        again = {col._ids.ids[s] for s in np.flatnonzero(rebuilt.mask(f, cap, live, col._ids.get))}
        brute = {pid for s, pid in points if matches(index.get(s), pid, f)}
        assert got == brute == again, f
        assert col.count(filter=f) == len(brute)
        out.append(got)
    assert sum(map(len, out)) > 0
    return out


def build(db, rng):
    col = db.create_collection("c", dim=DIM, metric="l2")
    fill(col, rng, list(range(2000)))
    fill(col, rng, [f"s{i}" for i in range(50)])
    col.create_payload_index("text", "text")
    col.create_payload_index("kw", "keyword")
    return col


def mutate(db, col, rng, round_: int):
    """Deletes, updates to other values (freeing and reusing dictionary codes and
    multi-valued entries), new points (reusing freed slots), payload edits."""
    col.delete(list(range(round_, 2000, 13)))
    fill(col, rng, list(range(100 * round_, 100 * round_ + 300)), version=round_ + 1)
    col.set_payload([1, 2, 3], {"kw": "new", "tags": ["a1", "a1", "z"]})
    col.delete_payload([4, 5], ["n", "tags"])
    col.clear_payload([6])
    fill(col, rng, list(range(3000 + 100 * round_, 3050 + 100 * round_)), version=round_)


def open_db(path, **options):
    return vdb.open(path, checkpoint_interval_s=None, checkpoint_wal_bytes=None, **options)


def test_reopen_loads_the_columns_and_answers_identically(tmp_path):
    rng = np.random.default_rng(1)
    with open_db(tmp_path / "d") as db:
        col = build(db, rng)
        db.checkpoint()
        mutate(db, col, rng, 1)
        db.checkpoint()  # incremental: only the parts touched since
        mutate(db, col, rng, 2)
        before = answers(col)
    with open_db(tmp_path / "d") as db:
        col = db.collection("c")
        assert db.stats()["recovered_records"] == 0
        assert col._payloads._loaded_upto > 0  # the columns came from the checkpoint
        assert col._payloads.schema()["text"]["data_type"] == "text"
        assert answers(col) == before
        # writes to loaded slots find their old values through the loaded flags
        mutate(db, col, rng, 3)
        after = answers(col)
        col.delete_payload_index("text")  # the tokens leave every part
        assert answers(col) == after
    with open_db(tmp_path / "d") as db:
        col = db.collection("c")
        assert "text" not in col._payloads.schema()
        assert answers(col) == after


def test_replay_applies_on_top_of_loaded_columns(tmp_path):
    rng = np.random.default_rng(2)
    db = open_db(tmp_path / "d")
    col = build(db, rng)
    db.checkpoint()
    mutate(db, col, rng, 1)
    before = answers(col)
    db.close(checkpoint=False)  # as after kill -9: the WAL holds the mutations
    with open_db(tmp_path / "d") as db:
        col = db.collection("c")
        assert db.stats()["recovered_records"] > 0
        assert col._payloads._loaded_upto > 0
        assert answers(col) == before


def test_snapshot_restore_keeps_the_columns(tmp_path):
    rng = np.random.default_rng(3)
    with open_db(tmp_path / "d") as db:
        col = build(db, rng)
        db.checkpoint()
        mutate(db, col, rng, 1)
        before = answers(col)
        db.snapshot(tmp_path / "s.vdbsnap")
    vdb.restore(tmp_path / "s.vdbsnap", tmp_path / "r")
    with open_db(tmp_path / "r") as db:
        col = db.collection("c")
        assert col._payloads._loaded_upto > 0
        assert answers(col) == before


def test_a_checkpoint_without_columns_is_rebuilt_then_written_whole(tmp_path):
    rng = np.random.default_rng(4)
    with open_db(tmp_path / "d") as db:
        col = build(db, rng)
        mutate(db, col, rng, 1)
        before = answers(col)
    assert strip_columns(tmp_path / "d") > 0
    with open_db(tmp_path / "d") as db:
        col = db.collection("c")
        assert col._payloads._loaded_upto == 0  # rebuilt from the payloads
        assert answers(col) == before
        col.upsert([1], rng.standard_normal((1, DIM)).astype(np.float32), [payload(1, 5)])
        before = answers(col)
        db.checkpoint()
        blobs = db._state.manifests[col.uid]["blobs"]
        parts = [k for k in blobs if k.startswith("x/pi/part/")]
        assert len(parts) == (max(col._payloads._payloads) >> 12) + 1  # all, not only the first
    with open_db(tmp_path / "d") as db:
        col = db.collection("c")
        assert col._payloads._loaded_upto > 0
        assert answers(col) == before


def test_a_checkpoint_writes_only_the_column_parts_that_changed(tmp_path):
    rng = np.random.default_rng(5)
    with open_db(tmp_path / "d") as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        fill(col, rng, list(range(3 * 4096)))
        db.checkpoint()
        first = db._state.manifests[col.uid]["blobs"]
        written = {k: m["written_bytes"] for k, m in first.items() if k.startswith("x/pi/part/")}
        assert len(written) == 3 and all(written.values())
        slot = col._ids.get(5000)
        col.set_payload([5000], {"kw": "w-new"})  # a new word: one dictionary part changes
        db.checkpoint()
        blobs = db._state.manifests[col.uid]["blobs"]
        changed = sorted(
            k for k, m in blobs.items() if k.startswith("x/pi/") and m["written_bytes"] > 0
        )
        field = list(col._payloads._fields).index(("kw",))
        assert changed == [
            "x/pi/meta",
            f"x/pi/part/{slot >> 12:08d}",
            f"x/pi/words/{field}/k/00000000",
        ]
        assert sorted(k for k in blobs if k.startswith("x/pi/part/")) == sorted(written)
        before = answers(col)
    with open_db(tmp_path / "d") as db:
        col = db.collection("c")
        assert col.get([5000])[0].payload["kw"] == "w-new"
        assert answers(col) == before
