"""Several indexed segments per collection: sealed graphs, per-partition graphs, compaction."""

from __future__ import annotations

import numpy as np
import pytest

import vdb
from tests.test_segments import DIM, Model, Race, answers, brute, check_against_model, top_ids
from vdb.checkpointer import capture_graph
from vdb.types import Upsert
from vdb.wal.checkpoint import PartialArray

SEAL = 300


def graphs_of(col) -> list[dict]:
    return col.info()["segments"]["graphs"]


def sealed_graphs(col) -> list[dict]:
    return [g for g in graphs_of(col) if g["sealed"]]


def test_a_sealed_graph_below_half_live_is_compacted_and_a_dead_one_dropped(tmp_path):
    rng = np.random.default_rng(3)
    model = Model()
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL) as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        x = rng.standard_normal((1500, DIM)).astype(np.float32)
        model.upsert(col, list(range(1500)), x, [{"g": i % 4, "v": 0} for i in range(1500)])
        assert col.wait_indexed(timeout=120)
        before = {g["id"] for g in sealed_graphs(col)}
        assert len(before) == 5
        # the first 300 points fill the first graph: delete all of it, and 2/3 of the second
        model.delete(col, list(range(300)) + [i for i in range(300, 600) if i % 3])
        assert col.wait_indexed(timeout=120)
        segs = col.info()["segments"]
        assert segs["graph_compactions"] >= 2
        after = {g["id"] for g in graphs_of(col)}
        assert len(before - after) == 2  # the dead graph and the one below half are gone
        assert all(2 * g["live"] >= g["points"] for g in graphs_of(col) if g["sealed"])
        assert sum(g["live"] for g in graphs_of(col)) == len(model.points)
        check_against_model(col, model, "l2", rng)
        for i in (303, 306, 900, 1499):  # moved points are found by their own vector
            assert col.search(model.points[i][0], k=1)[0].id == i


def test_readers_while_the_indexer_seals_and_starts_graphs(tmp_path):
    rng = np.random.default_rng(9)
    stable = 300
    base = rng.standard_normal((stable, DIM)).astype(np.float32)
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, fresh_limit=400) as db:
        col = db.create_collection("c", dim=DIM, metric="l2", ef=64)
        col.upsert(list(range(stable)), base, [{"v": -1}] * stable)
        race = Race()

        def write() -> None:
            wrng = np.random.default_rng(1)
            for round_ in range(25):
                ids = list(range(1000 + round_ * 200, 1200 + round_ * 200))
                vecs = wrng.standard_normal((len(ids), DIM)).astype(np.float32)
                vecs[:, 0] = 100.0 + round_
                col.upsert(ids, vecs, [{"v": round_}] * len(ids))
                col.delete(ids[::4])  # from fresh rows or from graphs, sealed or not
                race.deleted(ids[::4])

        def read(rrng) -> None:
            for i in rrng.choice(stable, 3, replace=False).tolist():
                race.hits(col.search(base[i], k=5, ef=128), first=i)
            q = rrng.standard_normal(DIM).astype(np.float32)
            q[0] = 100.0 + rrng.integers(0, 25)
            race.hits(col.search(q, k=30))

        race.run(write, read, readers=2)
        assert race.errors == []
        assert col.wait_indexed(timeout=120)
        live = stable + 25 * 150
        assert col.count() == live == sum(g["live"] for g in graphs_of(col))
        assert len(sealed_graphs(col)) >= 8
        # every live id exactly once over the graphs: each found by its own vector
        ids = [i for i in range(stable)] + [
            i for i in range(1000, 1000 + 25 * 200) if i not in race.dead
        ]
        got = {r.id: r.vector for r in col.get(ids, with_vectors=True)}
        assert len(got) == live
        found = col.search(np.stack([got[i] for i in ids[::37]]), k=1, ef=128)
        assert [hs[0].id for hs in found] == ids[::37]


def _manifest(db, col) -> dict:
    return db._state.manifests[col.uid]["blobs"]


def test_a_second_checkpoint_carries_sealed_graphs_without_writing_them(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1400, DIM)).astype(np.float32)
    queries = rng.standard_normal((10, DIM)).astype(np.float32)
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, checkpoint_interval_s=None) as db:
        col = db.create_collection("c", dim=DIM, metric="cosine")
        col.upsert(list(range(1000)), x[:1000], [{"i": i} for i in range(1000)])
        assert col.wait_indexed(timeout=120)
        db.checkpoint()
        first = _manifest(db, col)
        sealed = [g["id"] for g in sealed_graphs(col)]
        assert len(sealed) == 3
        immutable = [
            ("index/" if gid == 0 else f"index/g{gid}/") + name
            for gid in sealed
            for name in ("vectors", "links0", "upper", "upper_off", "levels", "labels")
        ]
        immutable = [name for name in immutable if name in first]
        assert len(immutable) >= 3 * 5  # graph 0 keeps local == slot: no labels
        # more points (a new growing graph), deletes in sealed graphs
        col.upsert(list(range(1000, 1400)), x[1000:1400])
        col.delete([1, 2, 350, 700])
        assert col.wait_indexed(timeout=120)
        db.checkpoint()
        second = _manifest(db, col)
        stats = db.stats()
        for name in immutable:
            assert second[name]["written_bytes"] == 0, name
            assert second[name]["chunk_gens"] == first[name]["chunk_gens"], name
        written = {n: m["written_bytes"] for n, m in second.items() if m["written_bytes"]}
        assert not set(written) & set(immutable)
        assert any("/deleted" in n or n == "index/deleted" for n in written)  # deletes recorded
        assert stats["last_checkpoint_bytes_written"] < stats["last_checkpoint_bytes"] / 2
        before = [[(h.id, round(h.score, 5)) for h in hs] for hs in col.search(queries, k=10)]
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, indexing=False) as db:
        col = db.collection("c")
        assert db.stats()["recovered_records"] == 0
        again = [[(h.id, round(h.score, 5)) for h in hs] for hs in col.search(queries, k=10)]
        assert again == before
        assert col.get([1, 350]) == [] and len(col) == 1396
        # a checkpoint after the reopen carries the sealed graphs too
        col.upsert([5000], x[:1])
        db.checkpoint()
        third = _manifest(db, col)
        for name in immutable:
            assert third[name]["chunk_gens"] == first[name]["chunk_gens"], name


def test_sealed_graphs_round_trip_through_reopen_replay_and_snapshot(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2000, DIM)).astype(np.float32)
    queries = rng.standard_normal((15, DIM)).astype(np.float32)

    with vdb.open(tmp_path / "d", graph_seal_size=SEAL) as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        col.upsert(list(range(1500)), x[:1500], [{"i": i} for i in range(1500)])
        assert col.wait_indexed(timeout=120)
        db.checkpoint()
        db.pause_indexing()
        col.upsert(list(range(1200, 1800)), x[1200:1800] * 2)  # replaces points of graphs
        col.delete(list(range(0, 2000, 9)))
        at_snapshot = answers(col, queries)
        db.snapshot(tmp_path / "s.vdbsnap")
        col.upsert(list(range(1800, 2000)), x[1800:2000])
        col.delete(list(range(1, 2000, 13)))
        before = answers(col, queries)
        db.close(checkpoint=False)  # as after kill -9: the WAL after the checkpoint is replayed
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, indexing=False) as db:
        col = db.collection("c")
        assert db.stats()["recovered_records"] > 0
        assert answers(col, queries) == before
        assert len(sealed_graphs(col)) >= 4
        db.resume_indexing()
        assert col.wait_indexed(timeout=120)
        assert answers(col, queries)[1] == before[1]
        after_index = answers(col, queries)
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, indexing=False) as db:
        assert (
            answers(db.collection("c"), queries) == after_index
        )  # clean close: from the checkpoint
    vdb.restore(tmp_path / "s.vdbsnap", tmp_path / "r")
    with vdb.open(tmp_path / "r", graph_seal_size=SEAL, indexing=False) as db:
        col = db.collection("c")
        assert answers(col, queries) == at_snapshot
        assert col.get([1601])[0].payload is None and col.get([1900]) == []


def _partitioned(db, n_parts: int, per_part: int, rng, metric: str = "l2"):
    col = db.create_collection("c", dim=DIM, metric=metric, partition_segments=True)
    x = rng.standard_normal((n_parts * per_part, DIM)).astype(np.float32)
    ops = [
        Upsert(i, x[i], {"g": i % 3, "p": i % n_parts}, partition=i % n_parts)
        for i in range(len(x))
    ]
    for lo in range(0, len(ops), 500):
        col.apply(ops[lo : lo + 500])
    return col, x


def test_partition_segments_restricted_search_equals_brute_force(tmp_path):
    rng = np.random.default_rng(8)
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL) as db:
        col, x = _partitioned(db, 4, 500, rng)
        col.upsert([9000, 9001], x[:2] + 0.01)  # points of no partition
        assert col.wait_indexed(timeout=120)
        graphs = graphs_of(col)
        assert {g["partition"] for g in graphs} == {0, 1, 2, 3, -1}
        assert all(g["points"] <= SEAL for g in graphs)
        db.pause_indexing()
        extra = rng.standard_normal((120, DIM)).astype(np.float32)
        col.apply([Upsert(5000 + i, extra[i], {"g": 0}, partition=i % 4) for i in range(120)])
        col.delete([1, 2, 3, 40, 41])
        assert col.info()["segments"]["fresh_points"] == 120
        points = {i: (x[i], i % 4) for i in range(2000) if i not in (1, 2, 3, 40, 41)}
        points.update({5000 + i: (extra[i], i % 4) for i in range(120)})
        for wanted in ([1], [0, 3], [2, 7]):
            sel = [i for i, (_, p) in points.items() if p in wanted]
            mat = np.stack([points[i][0] for i in sel])
            for q in rng.standard_normal((4, DIM)).astype(np.float32):
                truth = dict(zip(sel, brute(mat, q, "l2").tolist(), strict=True))
                best = top_ids(truth, 10, "l2")
                hits = col.search(q, k=10, ef=256, partitions=wanted)
                ids = [h.id for h in hits]
                assert all(points[i][1] in wanted for i in ids)
                assert len(ids) == len(set(ids)) == 10
                assert len(set(ids) & set(best)) >= 9
                exact = col.search(q, k=10, exact=True, partitions=wanted)
                assert [h.id for h in exact] == best
                flt = {"must": [{"key": "g", "match": {"value": 0}}]}
                fh = col.search(q, k=5, ef=256, partitions=wanted, filter=flt)
                assert all(h.payload["g"] == 0 for h in fh)
                assert all(col.source_partition(h.id) in wanted for h in fh)
                g0 = {i: s for i, s in truth.items() if i >= 5000 or i % 3 == 0}
                fx = col.search(q, k=5, exact=True, partitions=wanted, filter=flt)
                assert [h.id for h in fx] == top_ids(g0, 5, "l2")
        assert col.search(x[0], k=3, partitions=[11]) == []
        assert col.count(partitions=[0, 3]) == sum(1 for _, p in points.values() if p in (0, 3))


def test_partition_segments_drop_partition_removes_exactly_that_partition(tmp_path):
    rng = np.random.default_rng(12)
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL) as db:
        col, x = _partitioned(db, 3, 700, rng)
        assert col.wait_indexed(timeout=120)
        db.pause_indexing()
        col.apply([Upsert(8000 + i, x[i], partition=1) for i in range(50)])  # fresh rows of 1
        ones = [g for g in graphs_of(col) if g["partition"] == 1]
        assert len(ones) >= 3
        assert col.drop_partition(1) == 750
        assert col.count(partitions=[1]) == 0 and col.count() == 1400
        assert col.search(x[1], k=5, partitions=[1]) == []
        db.resume_indexing()
        assert col.wait_indexed(timeout=120)
        assert [g for g in graphs_of(col) if g["partition"] == 1] == []  # its graphs dropped
        for i in (0, 2, 3, 5, 2099):
            assert col.search(x[i], k=1)[0].id == i
        assert col.get([1, 4, 8001]) == []
        db.checkpoint()
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, indexing=False) as db:
        col = db.collection("c")
        assert col.count() == 1400 and col.count(partitions=[1]) == 0
        assert {g["partition"] for g in graphs_of(col)} == {0, 2}
        assert col.search(x[2099], k=1, partitions=[2])[0].id == 2099


def test_graph_seal_size_is_an_option_of_the_database_and_the_collection(tmp_path):
    with vdb.open(tmp_path / "d", graph_seal_size=500) as db:
        a = db.create_collection("a", dim=4)
        b = db.create_collection("b", dim=4, graph_seal_size=200)
        assert a.info()["segments"]["graph_seal_size"] == 500
        assert b.info()["segments"]["graph_seal_size"] == 200
        with pytest.raises(vdb.InvalidInput, match="graph_seal_size"):
            db.create_collection("c", dim=4, graph_seal_size=0)
        with pytest.raises(vdb.InvalidInput, match="partition_segments"):
            db.create_collection("c", dim=4, partition_segments="yes")
        assert "graphs" in db.stats()["collections"]["b"]
    with vdb.open(tmp_path / "d") as db:
        assert db.collection("b").info()["segments"]["graph_seal_size"] == 200
        assert db.collection("a").info()["segments"]["graph_seal_size"] == 1 << 20


def test_int8_on_disk_collection_keeps_its_settings_in_every_graph(tmp_path):
    rng = np.random.default_rng(21)
    x = rng.standard_normal((1000, DIM)).astype(np.float32)
    queries = rng.standard_normal((10, DIM)).astype(np.float32)
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL) as db:
        col = db.create_collection("c", dim=DIM, metric="cosine", quantization="int8", on_disk=True)
        col.upsert(list(range(1000)), x)
        assert col.wait_indexed(timeout=120)
        graphs = col._index.graphs
        assert len(graphs) == 4
        assert all(g.index.quantization == "int8" and g.index.on_disk for g in graphs)
        for i in (0, 299, 300, 999):
            assert col.search(x[i], k=1)[0].id == i
        col.delete(list(range(0, 1000, 5)))
        before = [[(h.id, round(h.score, 4)) for h in hs] for hs in col.search(queries, k=10)]
        exact = [[h.id for h in hs] for hs in col.search(queries, k=10, exact=True)]
        db.checkpoint()
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, indexing=False) as db:
        col = db.collection("c")
        assert all(g.index.quantization == "int8" and g.index.on_disk for g in col._index.graphs)
        again = [[(h.id, round(h.score, 4)) for h in hs] for hs in col.search(queries, k=10)]
        assert again == before
        assert [[h.id for h in hs] for hs in col.search(queries, k=10, exact=True)] == exact


def test_named_vectors_seal_their_graphs_and_round_trip(tmp_path):
    rng = np.random.default_rng(22)
    a = rng.standard_normal((900, DIM)).astype(np.float32)
    b = rng.standard_normal((900, 5)).astype(np.float32)
    have_b = [i for i in range(900) if i % 3]
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL) as db:
        col = db.create_collection(
            "c", vectors={"a": {"dim": DIM, "metric": "cosine"}, "b": {"dim": 5, "metric": "l2"}}
        )
        col.upsert(
            list(range(900)),
            vectors={"a": a, "b": [b[i] if i % 3 else None for i in range(900)]},
        )
        assert col.wait_indexed(timeout=120)
        space = col._spaces.dense["b"]
        assert len(space.segs.index.graphs) >= 2
        assert sum(len(g.index) for g in space.segs.index.graphs) == len(have_b)
        col.delete(list(range(0, 900, 4)))
        left = [i for i in have_b if i % 4]
        q = rng.standard_normal(5).astype(np.float32)
        truth = sorted(left, key=lambda i: (float(((b[i] - q) ** 2).sum()), i))[:10]
        assert [h.id for h in col.search(q, k=10, using="b", exact=True)] == truth
        approx = [h.id for h in col.search(q, k=10, using="b", ef=256)]
        assert len(set(approx) & set(truth)) >= 9
        db.checkpoint()
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, indexing=False) as db:
        col = db.collection("c")
        assert [h.id for h in col.search(q, k=10, using="b", ef=256)] == approx
        assert col.search(a[5], k=1, using="a")[0].id == 5
        assert col.count({"must": [{"has_vector": "b"}]}) == len(left)


def test_a_checkpoint_in_the_middle_of_a_compaction_loads_every_point_once(tmp_path):
    rng = np.random.default_rng(30)
    x = rng.standard_normal((1000, DIM)).astype(np.float32)
    queries = np.concatenate([x[300:330:3], rng.standard_normal((10, DIM)).astype(np.float32)])
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL) as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        col.upsert(list(range(1000)), x)
        assert col.wait_indexed(timeout=120)
        db.pause_indexing()
        col.delete([i for i in range(300) if i % 3])  # the first graph: 100 live of 300
        segs = col._segs
        segs._compact(col._apply_lock, budget=40)  # what one short indexer cycle would do
        assert segs._compacting is not None and segs._compacting.done == 40
        assert sum(g["live"] for g in graphs_of(col)) == col.count() + 40  # 40 in two graphs
        for i in (0, 3, 117, 297):  # found once, by their own vector
            hits = col.search(x[i], k=3)
            assert hits[0].id == i and len({h.id for h in hits}) == 3
        before = answers(col, queries)
        db.checkpoint()
        db.close(checkpoint=False)
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, indexing=False) as db:
        col = db.collection("c")
        assert answers(col, queries) == before
        assert sum(g["live"] for g in graphs_of(col)) == col.count() == 800
        db.resume_indexing()
        assert col.wait_indexed(timeout=120)
        assert 0 not in {g["id"] for g in graphs_of(col)}  # compacted after all
        assert sum(g["live"] for g in graphs_of(col)) == 800
        assert answers(col, queries)[1] == before[1]


NAMED = {
    "": {"dim": DIM, "metric": "l2"},
    "a": {"dim": DIM, "metric": "cosine", "quantization": "int8"},
    "b": {"dim": 5, "metric": "l2", "M": 8},
}


def _named_points(n: int, rng) -> dict[str, np.ndarray]:
    return {
        "": rng.standard_normal((n, DIM)).astype(np.float32),
        "a": rng.standard_normal((n, DIM)).astype(np.float32),
        "b": rng.standard_normal((n, 5)).astype(np.float32),
    }


def _named_columns(points: dict[str, np.ndarray], ids, scale: float = 1.0) -> dict:
    """Every point has "" and "a"; every third one lacks "b"."""
    return {
        "": points[""][ids] * scale,
        "a": points["a"][ids] * scale,
        "b": [points["b"][i] * scale if i % 3 else None for i in ids],
    }


def _named_answers(col, queries: dict[str, np.ndarray]) -> dict[str, tuple[list, list]]:
    """Per vector name: approximate (ids, rounded scores) and exact ids of its queries."""
    out = {}
    for name, qs in queries.items():
        ann = col.search(qs, k=10, using=name)
        exact = col.search(qs, k=10, using=name, exact=True)
        out[name] = (
            [[(h.id, round(h.score, 5)) for h in hs] for hs in ann],
            [[h.id for h in hs] for hs in exact],
        )
    return out


def _sealed_named_blobs(col, manifest: dict) -> dict[str, list[str]]:
    """Per sealed graph of the named vectors (``x/d{i}/index/<graph prefix>``): the names
    of its immutable blobs in ``manifest``."""
    out = {}
    for i, space in enumerate(col._spaces.extra.values()):
        for g in space.segs.index.graphs:
            if not g.sealed:
                continue
            p = f"x/d{i}/index/{g.prefix()}"
            names = [
                p + n
                for n in ("vectors", "links0", "upper", "upper_off", "levels", "labels")
                + ("codes", "terms", "quantizer")
                if p + n in manifest
            ]
            out[p] = names
    return out


def test_named_vectors_sealed_graphs_are_written_once_then_carried(tmp_path):
    rng = np.random.default_rng(24)
    points = _named_points(1400, rng)
    queries = {name: rng.standard_normal((8, x.shape[1])).astype(np.float32)
               for name, x in points.items()}  # fmt: skip
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, checkpoint_interval_s=None) as db:
        col = db.create_collection("c", vectors=NAMED)
        ids = list(range(1000))
        col.upsert(ids, vectors=_named_columns(points, ids), payloads=[{"i": i} for i in ids])
        assert col.wait_indexed(timeout=120)
        db.checkpoint()
        first = _manifest(db, col)
        sealed = _sealed_named_blobs(col, first)
        # "a": 1000 points, 3 sealed graphs; "b": 666 points, 2 sealed graphs
        assert sum(p.startswith("x/d0/") for p in sealed) == 3
        assert sum(p.startswith("x/d1/") for p in sealed) == 2
        immutable = [name for names in sealed.values() for name in names]
        assert all(len(names) >= 5 for names in sealed.values())
        assert any(name.endswith("/codes") for name in immutable)  # "a" is int8
        assert all(first[name]["written_bytes"] == first[name]["size"] for name in immutable)
        # more points (new growing graphs), deletes in sealed graphs of every name
        more = list(range(1000, 1400))
        col.upsert(more, vectors=_named_columns(points, more))
        col.delete([1, 2, 4, 350, 700, 701])
        assert col.wait_indexed(timeout=120)
        db.checkpoint()
        second = _manifest(db, col)
        stats = db.stats()
        for name in immutable:
            assert second[name]["written_bytes"] == 0, name
            assert second[name]["chunk_gens"] == first[name]["chunk_gens"], name
        for p in sealed:  # what a sealed graph writes: its small mutable arrays only
            written = {n[len(p) :] for n, m in second.items() if n.startswith(p)
                       and "/" not in n[len(p) :] and m["written_bytes"]}  # fmt: skip
            written.discard("graphs")  # the name's list of graphs (x/d{i}/index/graphs)
            assert written <= {"params", "deleted", "free"}, (p, written)
        assert {"deleted", "free"} <= {  # the deletes recorded
            n[len(p) :] for p in sealed for n, m in second.items()
            if n.startswith(p) and "/" not in n[len(p) :] and m["written_bytes"]
        }  # fmt: skip
        assert stats["last_checkpoint_bytes_written"] < stats["last_checkpoint_bytes"] / 2
        # what the next capture copies (not only what a write would find unchanged): of a
        # sealed graph its params, deleted and free; of a growing one the changed chunks
        partial = 0
        for prefix, segs in col._spaces.graph_segments():
            with segs.index_lock:
                cap = capture_graph(segs, second, "x/", prefix)
            segs.mark_graph_rows(cap.rows)  # given back, as after a failed checkpoint
            for g in segs.index.graphs:
                p = prefix + g.prefix()
                own = {k[len(p) :] for k in cap.arrays if k.startswith(p)}
                own = {k for k in own if "/" not in k} - {"graphs"}
                if g.sealed:
                    assert own == {"params", "deleted", "free"}, p
                    assert {"x/" + p + n for n in ("vectors", "links0", "levels")} <= set(cap.carry)
                elif "x/" + p + "vectors" in second:
                    assert isinstance(cap.arrays[p + "vectors"], PartialArray), p
                    partial += 1
        assert partial == 2  # the growing graph of each name
        before = _named_answers(col, queries)
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, indexing=False) as db:
        col = db.collection("c")
        assert db.stats()["recovered_records"] == 0
        assert _named_answers(col, queries) == before
        assert col.get([1, 350]) == [] and len(col) == 1394
        # a checkpoint after the reopen carries them too, and writes nothing of them
        col.upsert([5000], vectors=_named_columns(points, [3]))
        db.checkpoint()
        third = _manifest(db, col)
        for name in immutable:
            assert third[name]["chunk_gens"] == first[name]["chunk_gens"], name
        for name, meta in third.items():
            if name.startswith(tuple(sealed)):
                assert meta["written_bytes"] == 0, name
        after = _named_answers(col, queries)
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, indexing=False) as db:
        col = db.collection("c")
        assert db.stats()["recovered_records"] == 0
        assert _named_answers(col, queries) == after


def test_named_vectors_checkpoint_layout_is_the_graphs_arrays(tmp_path):
    """The named graphs' blobs hold exactly ``Graphs.to_arrays()`` (what every checkpoint
    wrote for them before sealed graphs were carried): names and contents, also when the
    sealed graphs were carried and only some chunks of the growing ones written."""
    from vdb.wal import checkpoint as ckpt

    rng = np.random.default_rng(25)
    points = _named_points(1200, rng)
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, checkpoint_interval_s=None) as db:
        col = db.create_collection("c", vectors=NAMED)
        ids = list(range(1000))
        col.upsert(ids, vectors=_named_columns(points, ids))
        assert col.wait_indexed(timeout=120)
        db.checkpoint()
        col.upsert(list(range(1000, 1200)), vectors=_named_columns(points, range(1000, 1200)))
        col.delete(list(range(0, 1200, 7)))
        assert col.wait_indexed(timeout=120)
        for _ in range(2):  # carried sealed graphs, growing graphs in changed chunks
            db.checkpoint()
            store = db._state.store
            with store.read() as txn:
                loaded = ckpt.load(store, txn, col.uid, db._state.manifests[col.uid])
            for i, space in enumerate(col._spaces.extra.values()):
                p = f"d{i}/index/"
                saved = {k[len(p) :]: v for k, v in loaded.extra.items() if k.startswith(p)}
                whole = space.segs.index.to_arrays()
                assert sorted(saved) == sorted(whole)
                assert "graphs" in saved and len(saved) > 20
                for key, arr in whole.items():
                    np.testing.assert_array_equal(saved[key], arr, err_msg=key)
            col.upsert([7000], vectors=_named_columns(points, [5]))
            assert col.wait_indexed(timeout=120)


def test_named_sealed_graphs_round_trip_through_reopen_replay_and_snapshot(tmp_path):
    rng = np.random.default_rng(26)
    points = _named_points(2000, rng)
    queries = {name: rng.standard_normal((10, x.shape[1])).astype(np.float32)
               for name, x in points.items()}  # fmt: skip
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL) as db:
        col = db.create_collection("c", vectors=NAMED)
        ids = list(range(1500))
        col.upsert(ids, vectors=_named_columns(points, ids), payloads=[{"i": i} for i in ids])
        assert col.wait_indexed(timeout=120)
        db.checkpoint()
        col.delete(list(range(5, 1500, 17)))
        assert col.wait_indexed(timeout=120)
        db.checkpoint()  # the sealed graphs carried
        db.pause_indexing()
        moved = list(range(1200, 1800))
        col.upsert(moved, vectors=_named_columns(points, moved, scale=2.0))  # replaces
        col.delete(list(range(0, 2000, 9)))
        at_snapshot = _named_answers(col, queries)
        db.snapshot(tmp_path / "s.vdbsnap")  # checkpoints with the graphs' points hidden
        rest = list(range(1800, 2000))
        col.upsert(rest, vectors=_named_columns(points, rest))
        col.delete(list(range(1, 2000, 13)))
        before = _named_answers(col, queries)
        db.close(checkpoint=False)  # as after kill -9: the WAL after the checkpoint is replayed
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, indexing=False) as db:
        col = db.collection("c")
        assert db.stats()["recovered_records"] > 0
        assert _named_answers(col, queries) == before
        for space in col._spaces.extra.values():
            assert sum(g.sealed for g in space.segs.index.graphs) >= 2
        db.resume_indexing()
        assert col.wait_indexed(timeout=120)
        after_index = _named_answers(col, queries)
        assert {n: a[1] for n, a in after_index.items()} == {n: b[1] for n, b in before.items()}
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, indexing=False) as db:
        assert _named_answers(db.collection("c"), queries) == after_index
    vdb.restore(tmp_path / "s.vdbsnap", tmp_path / "r")
    with vdb.open(tmp_path / "r", graph_seal_size=SEAL, indexing=False) as db:
        col = db.collection("c")
        assert _named_answers(col, queries) == at_snapshot
        assert col.get([1900]) == []
        got = col.get([1601], with_vectors=True)[0].vector
        np.testing.assert_allclose(got["b"], points["b"][1601] * 2, rtol=1e-6)


class PartitionModel:
    """What a partitioned collection should hold: id -> (vectors by name, partition, g)."""

    def __init__(self, named: bool) -> None:
        self.named = named
        self.points: dict[int, tuple[dict[str, np.ndarray], int, int]] = {}
        self.names = [("", DIM, "l2"), ("a", DIM, "cosine"), ("b", 5, "l2")] if named else [
            ("", DIM, "l2")
        ]  # fmt: skip

    def write(self, col, ids, rng, partition=None) -> None:
        ops = []
        for i in ids:
            p = i % 3 if partition is None else partition
            vectors = {"": rng.standard_normal(DIM).astype(np.float32)}
            if self.named:
                vectors["a"] = rng.standard_normal(DIM).astype(np.float32)
                if i % 4:
                    vectors["b"] = rng.standard_normal(5).astype(np.float32)
            self.points[i] = (vectors, p, i % 3)
            vector = vectors if self.named else vectors[""]
            ops.append(Upsert(i, vector, {"g": i % 3}, partition=p))
        for lo in range(0, len(ops), 500):
            col.apply(ops[lo : lo + 500])

    def delete(self, col, ids) -> None:
        col.delete(ids)
        for i in ids:
            self.points.pop(i, None)

    def drop(self, partition: int) -> None:
        self.points = {i: v for i, v in self.points.items() if v[1] != partition}

    def truth(self, name, metric, q, wanted, g=None) -> dict:
        sel = [
            i
            for i, (vecs, p, gi) in self.points.items()
            if p in wanted and name in vecs and (g is None or gi == g)
        ]
        if not sel:
            return {}
        x = np.stack([self.points[i][0][name] for i in sel])
        return dict(zip(sel, brute(x, q, metric).tolist(), strict=True))


def _restricted_answers(col, model: PartitionModel, rng, wanted_lists) -> list:
    """Restricted searches of every name (plain, filtered, exact, exact filtered) checked
    against brute force over the partitions' points; returns what they answered."""
    flt = {"must": [{"key": "g", "match": {"value": 0}}]}
    out = []
    for wanted in wanted_lists:
        for name, dim, metric in model.names:
            using = name if model.named else None
            for q in rng.standard_normal((3, dim)).astype(np.float32):
                truth = model.truth(name, metric, q, wanted)
                g0 = model.truth(name, metric, q, wanted, g=0)
                best, best0 = top_ids(truth, 10, metric), top_ids(g0, 5, metric)
                exact = col.search(q, k=10, exact=True, partitions=wanted, using=using)
                assert [h.id for h in exact] == best, (wanted, name)
                for h in exact:
                    assert h.score == pytest.approx(truth[h.id], rel=1e-4, abs=1e-4)
                fx = col.search(q, k=5, exact=True, partitions=wanted, filter=flt, using=using)
                assert [h.id for h in fx] == best0, (wanted, name)
                ann = col.search(q, k=10, ef=256, partitions=wanted, using=using)
                ids = [h.id for h in ann]
                assert len(ids) == len(set(ids)) == len(best)
                assert all(model.points[i][1] in wanted for i in ids)
                assert len(set(ids) & set(best)) >= min(len(best), 9), (wanted, name)
                fa = col.search(q, k=5, ef=256, partitions=wanted, filter=flt, using=using)
                fids = [h.id for h in fa]
                assert len(fids) == len(set(fids)) == len(best0)
                assert all(i in g0 for i in fids)
                assert len(set(fids) & set(best0)) >= min(len(best0), 4), (wanted, name)
                out.append((
                    [(h.id, round(h.score, 5)) for h in ann], [h.id for h in exact],
                    [h.id for h in fa], [h.id for h in fx],
                ))  # fmt: skip
    return out


def _partitioned_named(db, named: bool, sparse: bool = False):
    if not named:
        return db.create_collection("c", dim=DIM, metric="l2", partition_segments=True)
    return db.create_collection(
        "c",
        vectors={"": {"dim": DIM, "metric": "l2"}, "a": {"dim": DIM, "metric": "cosine"},
                 "b": {"dim": 5, "metric": "l2", "M": 8}},
        sparse_vectors={"s": {}} if sparse else None,
        partition_segments=True,
    )  # fmt: skip


def _dense_graphs(col) -> dict[str, list]:
    return {name: list(space.segs.index.graphs) for name, space in col._spaces.dense.items()} or {
        "": list(col._index.graphs)
    }


WANTED = ([1], [0, 2], [2, 7], [5])


@pytest.mark.parametrize("named", [False, True], ids=["default", "named"])
def test_partition_segments_restricted_searches_against_brute_force_drop_reopen_replay(
    tmp_path, named
):
    rng = np.random.default_rng(40)
    model = PartitionModel(named)
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL) as db:
        col = _partitioned_named(db, named)
        model.write(col, range(1800), rng)
        assert col.wait_indexed(timeout=120)
        for name, graphs in _dense_graphs(col).items():  # every name: graphs per partition
            assert {g.partition for g in graphs} == {0, 1, 2}, name
            assert sum(g.sealed for g in graphs) >= 3, name
        db.pause_indexing()
        model.write(col, range(1800, 1950), rng)  # fresh rows of every partition
        model.delete(col, list(range(0, 1800, 10)))  # hidden in graphs
        _restricted_answers(col, model, rng, WANTED)
        n_one = sum(1 for _, p, _ in model.points.values() if p == 1)
        assert col.drop_partition(1) == n_one
        model.drop(1)
        assert col.count(partitions=[1]) == 0 and col.count() == len(model.points)
        _restricted_answers(col, model, rng, WANTED)
        db.resume_indexing()
        assert col.wait_indexed(timeout=120)
        for name, graphs in _dense_graphs(col).items():  # the partition's graphs dropped
            assert {g.partition for g in graphs} == {0, 2}, name
        _restricted_answers(col, model, rng, WANTED)
        db.checkpoint()
        db.pause_indexing()
        model.write(col, range(2000, 2300), rng)  # partition 1 assigned again, and others
        model.delete(col, list(range(1, 1800, 7)))
        before = _restricted_answers(col, model, np.random.default_rng(1), WANTED)
        db.close(checkpoint=False)  # the WAL after the checkpoint is replayed
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL, indexing=False) as db:
        col = db.collection("c")
        assert db.stats()["recovered_records"] > 0
        assert _restricted_answers(col, model, np.random.default_rng(1), WANTED) == before
        for name, graphs in _dense_graphs(col).items():
            assert {g.partition for g in graphs} == {0, 2}, name
            assert all(g.partition is not None for g in graphs)
        db.resume_indexing()
        assert col.wait_indexed(timeout=120)
        for name, graphs in _dense_graphs(col).items():
            assert {g.partition for g in graphs} == {0, 1, 2}, name
        _restricted_answers(col, model, rng, WANTED)
        assert col.drop_partition(0) == sum(1 for _, p, _ in model.points.values() if p == 0)
        model.drop(0)
        _restricted_answers(col, model, rng, WANTED)
        db.checkpoint()
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL) as db:
        col = db.collection("c")
        assert db.stats()["recovered_records"] == 0
        _restricted_answers(col, model, rng, WANTED)


def test_restricted_filtered_and_exact_searches_walk_only_the_partitions(tmp_path, monkeypatch):
    """No mask over every slot by partition and no graph of another partition searched, for
    plain, filtered and exact searches of the default and the named vectors; the answers
    still equal brute force."""
    from vdb.index import HNSW

    rng = np.random.default_rng(41)
    model = PartitionModel(named=True)
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL) as db:
        col = _partitioned_named(db, named=True)
        model.write(col, range(1500), rng)
        assert col.wait_indexed(timeout=120)
        db.pause_indexing()
        model.write(col, range(1500, 1600), rng)
        owner = {id(g.index): g.partition for graphs in _dense_graphs(col).values() for g in graphs}
        searched: list[int | None] = []
        masks: list[int] = []
        real_search, real_mask = HNSW.search, col._partition_mask

        def search(self, *args, **kwargs):
            searched.append(owner.get(id(self), "?"))
            return real_search(self, *args, **kwargs)

        def partition_mask(partitions, capacity):
            if capacity:
                masks.append(capacity)
            return real_mask(partitions, capacity)

        monkeypatch.setattr(HNSW, "search", search)
        monkeypatch.setattr(col, "_partition_mask", partition_mask)
        _restricted_answers(col, model, rng, ([1], [0, 2]))
        assert masks == []
        assert searched and set(searched) <= {0, 1, 2}
        searched.clear()
        _restricted_answers(col, model, rng, ([1],))
        assert set(searched) == {1}
        assert masks == []
        # the drop finds the partition through its graphs and fresh rows (no scan of the id map)
        monkeypatch.setattr(
            col._ids, "live_mask", lambda capacity: pytest.fail("drop scanned every slot")
        )
        assert col.drop_partition(2) == sum(1 for _, p, _ in model.points.values() if p == 2)
        monkeypatch.undo()
        model.drop(2)
        _restricted_answers(col, model, rng, ([1], [2]))


def test_drop_partition_of_named_vectors_finds_points_with_sparse_vectors_only(tmp_path):
    rng = np.random.default_rng(42)
    model = PartitionModel(named=True)
    with vdb.open(tmp_path / "d", graph_seal_size=SEAL) as db:
        col = _partitioned_named(db, named=True, sparse=True)
        model.write(col, range(900), rng)
        col.apply([
            Upsert(5000 + i, {"s": {"indices": [i, 100 + i], "values": [1.0, 0.5]}}, partition=1)
            for i in range(20)
        ])  # fmt: skip
        assert col.wait_indexed(timeout=120)
        n_one = sum(1 for _, p, _ in model.points.values() if p == 1)
        assert col.drop_partition(1) == n_one + 20
        assert col.get([5000, 5019]) == []
        assert col.count(partitions=[1]) == 0
        assert col.search({"indices": [3], "values": [1.0]}, k=3, using="s") == []
        model.drop(1)
        _restricted_answers(col, model, rng, ([0], [1, 2]))
