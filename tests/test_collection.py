"""Collection: the embedded API end to end on a real LMDB in a temp directory."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vdb
from tests.helpers import recall_at_k
from vdb.errors import CollectionNotFound, DimensionMismatch, InvalidFilter, InvalidInput
from vdb.filters import matches
from vdb.types import DeadLetter, Delete, Upsert


@pytest.fixture
def db(tmp_path):
    with vdb.open(tmp_path / "data") as database:
        yield database


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_top(col_vectors: np.ndarray, ids: list, query: np.ndarray, k: int, metric: str) -> list:
    if metric == "l2":
        d = ((col_vectors - query) ** 2).sum(1)
        order = np.argsort(d, kind="stable")
    else:
        order = np.argsort(-(col_vectors @ query), kind="stable")
    return [ids[i] for i in order[:k]]


def test_upsert_get_search_delete_roundtrip(db):
    rng = np.random.default_rng(1)
    col = db.create_collection("docs", dim=16, metric="cosine")
    x = unit(rng, 200, 16)
    ids = [f"p{i}" for i in range(100)] + list(range(100))
    payloads = [{"n": i, "kind": "str" if i < 100 else "int"} for i in range(200)]
    col.upsert(ids, x, payloads)
    assert col.count() == 200
    hits = col.search(x[7], k=5)
    assert hits[0].id == "p7"
    assert hits[0].payload == {"n": 7, "kind": "str"}
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # int 5 and "5" are different points
    col.upsert(["5"], x[:1], [{"s": True}])
    col.upsert(["np"], x[:1], [{"f": np.float32(0.5), "i": np.int64(3), "a": np.arange(2)}])
    assert col.get(["np"])[0].payload == {"f": 0.5, "i": 3, "a": [0, 1]}
    col.delete(["np"])
    got = {r.id: r.payload for r in col.get([5, "5", "missing"])}
    assert got == {5: {"n": 105, "kind": "int"}, "5": {"s": True}}
    recs = col.get(["p3"], with_vectors=True)
    np.testing.assert_allclose(recs[0].vector, x[3], atol=1e-6)
    assert col.delete(["p3", "nope", 5]) == 2
    assert col.get(["p3", 5]) == []
    assert col.count() == 199
    assert all(h.id != "p3" for h in col.search(x[3], k=10))


def test_upsert_replaces_vector_and_payload(db):
    rng = np.random.default_rng(2)
    col = db.create_collection("c", dim=8, metric="l2")
    x = rng.standard_normal((50, 8)).astype(np.float32)
    col.upsert(list(range(50)), x, [{"v": 1}] * 50)
    new = rng.standard_normal((1, 8)).astype(np.float32) + 10
    col.upsert([3], new, [{"v": 2}])
    assert col.count() == 50
    rec = col.get([3], with_vectors=True)[0]
    np.testing.assert_allclose(rec.vector, new[0])
    assert rec.payload == {"v": 2}
    assert col.search(new[0], k=1)[0].id == 3
    col.upsert([3], new)  # no payload: the payload is replaced by none
    assert col.get([3])[0].payload is None


def test_batch_upsert_replacing_many_existing_ids(tmp_path):
    rng = np.random.default_rng(21)
    ids = list(range(300)) + [f"p{i}" for i in range(100)]
    x = rng.standard_normal((400, 16)).astype(np.float32)
    with vdb.open(tmp_path / "data") as db:
        col = db.create_collection("c", dim=16, metric="cosine")
        col.upsert(ids, x, [{"gen": 0}] * 400)
        # one batch: 150 existing ids (ints and strings) get new vectors, 50 ids are new
        changed = ids[::4] + ids[1::8][:50]
        fresh = [f"n{i}" for i in range(50)]
        y = rng.standard_normal((len(changed) + 50, 16)).astype(np.float32)
        col.upsert(changed + fresh, y, [{"gen": 1}] * len(y))
        assert col.count() == 450
        expect = dict(zip(ids, x, strict=True)) | dict(zip(changed + fresh, y, strict=True))
        records = col.get(list(expect), with_vectors=True)
        assert len(records) == 450
        for rec in records:
            want = expect[rec.id] / np.linalg.norm(expect[rec.id])
            np.testing.assert_allclose(rec.vector, want, rtol=1e-5, atol=1e-6)
            assert rec.payload == {"gen": int(rec.id in set(changed + fresh))}
        hits = col.search(y, k=1, ef=128, with_payload=False)
        assert [h[0].id for h in hits] == changed + fresh
        assert all(h[0].score == pytest.approx(1.0, abs=1e-5) for h in hits)
    with vdb.open(tmp_path / "data", warm=False) as db:  # recovery replays the same batch
        hits = db.collection("c").search(y, k=1, ef=128, with_payload=False)
        assert [h[0].id for h in hits] == changed + fresh


def test_duplicate_ids_in_one_batch_last_wins(db):
    col = db.create_collection("c", dim=4, metric="l2")
    v = np.eye(4, dtype=np.float32)
    col.upsert([1, 2, 1], v[:3], [{"a": 0}, {"a": 1}, {"a": 2}])
    assert col.count() == 2
    rec = col.get([1], with_vectors=True)[0]
    assert rec.payload == {"a": 2}
    np.testing.assert_allclose(rec.vector, v[2])
    # apply: the last operation on an id wins, across upsert and delete
    col.apply([Upsert(9, v[0]), Delete(9), Upsert(8, v[1]), Delete(8), Upsert(8, v[3])])
    assert col.get([9]) == []
    np.testing.assert_allclose(col.get([8], with_vectors=True)[0].vector, v[3])


@pytest.mark.parametrize(
    "ids, vectors, payloads, error",
    [
        ([1], np.zeros((1, 5), np.float32), None, DimensionMismatch),
        ([1, 2], np.ones((1, 4), np.float32), None, InvalidInput),
        ([1], np.array([[1, np.nan, 0, 0]], np.float32), None, InvalidInput),
        ([1], np.array([[1, np.inf, 0, 0]], np.float32), None, InvalidInput),
        ([True], np.ones((1, 4), np.float32), None, InvalidInput),
        ([-1], np.ones((1, 4), np.float32), None, InvalidInput),
        ([2**64], np.ones((1, 4), np.float32), None, InvalidInput),
        ([1.5], np.ones((1, 4), np.float32), None, InvalidInput),
        ([""], np.ones((1, 4), np.float32), None, InvalidInput),
        ([1], [["a", "b", "c", "d"]], None, InvalidInput),
        ([1], np.ones((1, 4), np.float32), [{"x": object()}], InvalidInput),
        ([1], np.ones((1, 4), np.float32), [{1: "int key"}], InvalidInput),
        ([1], np.ones((1, 4), np.float32), ["not a dict"], InvalidInput),
        ([1], np.zeros((1, 4), np.float32), None, InvalidInput),  # cosine zero vector
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(db, ids, vectors, payloads, error):
    col = db.create_collection("c", dim=4, metric="cosine")
    col.upsert([100], np.ones((1, 4), np.float32), [{"keep": 1}])
    seq = db.last_seq
    # a good point in the same batch must not be written either
    with pytest.raises(error):
        if isinstance(vectors, np.ndarray) and vectors.shape == (len(ids), 4):
            col.upsert([7, *ids], np.vstack([np.ones((1, 4), np.float32), vectors]),
                       None if payloads is None else [None, *payloads])  # fmt: skip
        else:
            col.upsert(ids, vectors, payloads)
    assert db.last_seq == seq
    assert col.count() == 1
    assert col.get([7]) == []


@pytest.mark.parametrize(
    "bad, words",
    [([1, np.nan, 0, 0], "NaN or infinity"), ([1, -np.inf, 0, 0], "NaN or infinity"),
     ([0, 0, 0, 0], "all zeros")],
)  # fmt: skip
def test_bad_cosine_queries_are_refused_alone_and_in_a_batch(db, bad, words):
    col = db.create_collection("c", dim=4, metric="cosine")
    rng = np.random.default_rng(3)
    good = rng.standard_normal((5, 4)).astype(np.float32)
    col.upsert(list(range(5)), good)
    for query in (np.array(bad, np.float32), np.array([good[0], bad], np.float32)):
        with pytest.raises(InvalidInput, match=words):
            col.search(query, k=3)
    # one query alone scores as it does in a batch (the same normalisation), and as numpy
    batch = col.search(good * 7, k=5)
    unit = good / np.linalg.norm(good.astype(np.float64), axis=1, keepdims=True)
    for i in range(5):
        alone = col.search(good[i] * 7, k=5)
        assert [(h.id, h.score) for h in alone] == [(h.id, h.score) for h in batch[i]]
        assert alone[0].id == i
        scores = {h.id: h.score for h in alone}
        for j in range(5):
            assert scores[j] == pytest.approx(float(unit[i] @ unit[j]), abs=1e-6)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_vectors_whose_scores_would_overflow_float32_are_refused(db, metric):
    from vdb.collection import MAX_SQUARED_NORM

    col = db.create_collection("c", dim=4, metric=metric)
    edge = float(np.sqrt(MAX_SQUARED_NORM)) * 0.999  # the largest norm accepted, nearly
    col.upsert([1, 2, 3], [[edge, 0, 0, 0], [-edge, 0, 0, 0], [1, 2, 3, 4]])
    seq = db.last_seq
    big = [3e19, 0, 0, 0]  # finite in float32, but its squared norm is not
    f32_max = float(np.finfo(np.float32).max)
    assert big[0] < f32_max < big[0] ** 2
    spread = [1.6e19, 1.6e19, 1.6e19, 1.6e19]  # every value modest, the norm too big
    for bad in (big, spread):
        with pytest.raises(InvalidInput, match="too large.*squared norm.*overflow float32"):
            col.upsert([7, 8], [[1, 1, 1, 1], bad])
        with pytest.raises(InvalidInput, match="operation 1 vector.*too large"):
            col.apply([Upsert(9, [1, 1, 1, 1]), Upsert(10, bad)])
        with pytest.raises(InvalidInput, match="query.*too large"):
            col.search(bad, k=2)
    assert db.last_seq == seq and col.count() == 3
    # the extreme points that were accepted give finite scores, approximate or exact
    for exact in (False, True):
        for q in ([edge, 0, 0, 0], [-edge, 0, 0, 0]):
            hits = col.search(q, k=3, exact=exact)
            assert len(hits) == 3
            assert all(np.isfinite(h.score) for h in hits)
            assert np.isfinite(np.float32(hits[-1].score))
    # cosine normalises in float64 first: a large vector is fine there
    cos = db.create_collection("cos", dim=4, metric="cosine")
    cos.upsert([1], [big])
    assert cos.search(big, k=1)[0].score == pytest.approx(1.0)


def test_unknown_collection_and_dropped_handle(db):
    with pytest.raises(CollectionNotFound):
        db.collection("nope")
    col = db.create_collection("gone", dim=4)
    assert db.drop_collection("gone") is True
    assert db.drop_collection("gone") is False
    with pytest.raises(CollectionNotFound):
        col.upsert([1], np.ones((1, 4), np.float32))
    with pytest.raises(CollectionNotFound):
        col.search(np.ones(4, np.float32))


def test_search_batch_k_ef_threshold_and_vectors(db):
    rng = np.random.default_rng(3)
    col = db.create_collection("c", dim=8, metric="l2", ef=32)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    col.upsert(list(range(300)), x)
    res = col.search(x[:5], k=4, ef=100, with_vectors=True, with_payload=False)
    assert len(res) == 5 and all(len(r) == 4 for r in res)
    for i, hits in enumerate(res):
        assert hits[0].id == i and hits[0].score == pytest.approx(0.0, abs=1e-5)
        assert [h.id for h in hits] == brute_top(x, list(range(300)), x[i], 4, "l2")
        np.testing.assert_allclose(hits[1].vector, x[hits[1].id])
        assert hits[0].payload is None
    far = col.search(x[0], k=10, score_threshold=1e-3)
    assert [h.id for h in far] == [0]
    with pytest.raises(InvalidInput):
        col.search(x[0], k=0)
    with pytest.raises(DimensionMismatch):
        col.search(np.ones(3, np.float32))
    with pytest.raises(InvalidFilter):
        col.search(x[0], filter={"must": [{"bogus": 1}]})


FILTERS = [
    {"must": [{"key": "color", "match": {"value": "red"}}]},
    {"must": [{"key": "n", "range": {"gte": 10, "lt": 40}}]},
    {
        "should": [
            {"key": "color", "match": {"any": ["green", "blue"]}},
            {"key": "n", "range": {"lt": 5}},
        ]
    },
    {"must_not": [{"key": "color", "match": {"value": "red"}}]},
    {"must": [{"key": "tags", "match": {"value": "rare"}}]},
    {"must": [{"key": "color", "match": {"except": ["red", "green"]}}]},
    {"must": [{"is_empty": {"key": "tags"}}]},
    {"must": [{"has_id": [3, 17, "s5", 999]}]},
    {
        "must": [
            {"key": "meta.level", "range": {"gt": 2}},
            {"key": "color", "match": {"value": "blue"}},
        ]
    },
    {"must": [{"key": "n", "range": {"gt": 1000}}]},
]


@pytest.mark.parametrize("flt", FILTERS)
def test_filtered_search_returns_min_k_matching_exactly(db, flt):
    rng = np.random.default_rng(4)
    col = db.create_collection("c", dim=12, metric="cosine")
    n = 400
    x = unit(rng, n, 12)
    ids = list(range(n - 20)) + [f"s{i}" for i in range(20)]
    colors = ["red", "green", "blue"]
    payloads = []
    for i in range(n):
        p = {"n": i, "color": colors[i % 3], "meta": {"level": i % 5}}
        if i % 7 == 0:
            p["tags"] = ["rare"] if i % 49 == 0 else ["common", "x"]
        payloads.append(p)
    col.upsert(ids, x, payloads)
    matching = [j for j in range(n) if matches(payloads[j], ids[j], vdb.filters.parse_filter(flt))]
    assert col.count(filter=flt) == len(matching)
    for qi in range(5):
        q = x[qi * 31]
        for k in (1, 10):
            hits = col.search(q, k=k, filter=flt)
            assert len(hits) == min(k, len(matching))
            got = {h.id for h in hits}
            assert got <= {ids[j] for j in matching}
            if matching:
                truth = brute_top(x[matching], [ids[j] for j in matching], q, k, "cosine")
                assert hits[0].id == truth[0]


def true_scores(vectors: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """Float64 scores as vdb defines them (l2: squared distance; ip/cosine: dot of unit vectors)."""
    x = vectors.astype(np.float64)
    q = query.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q)
    if metric == "l2":
        return ((x - q) ** 2).sum(1)
    return x @ q


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("filtered", [False, True])
def test_exact_search_matches_numpy_brute_force(db, metric, filtered):
    rng = np.random.default_rng(11)
    # a deliberately poor graph: the approximate walk misses neighbours, the exact scan must not
    col = db.create_collection("c", dim=12, metric=metric, M=2, ef_construction=4, ef=4)
    n = 700
    x = rng.standard_normal((n, 12)).astype(np.float32)
    col.upsert(list(range(n)), x, [{"g": i % 4} for i in range(n)])
    assert col.wait_indexed(timeout=60)  # the walk below is over the graph
    deleted = list(range(0, n, 9))
    col.delete(deleted)
    flt = {"must": [{"key": "g", "match": {"any": [1, 2]}}]} if filtered else None
    alive = np.array([i % 9 != 0 and (not filtered or i % 4 in (1, 2)) for i in range(n)])
    queries = rng.standard_normal((6, 12)).astype(np.float32)
    k = 15
    batch = col.search(queries, k=k, filter=flt, exact=True, with_payload=False)
    missed = 0
    for q, hits in zip(queries, batch, strict=True):
        one = col.search(q, k=k, filter=flt, exact=True, with_payload=False)
        assert [h.id for h in one] == [h.id for h in hits]
        np.testing.assert_allclose([h.score for h in one], [h.score for h in hits], rtol=1e-5)
        truth = true_scores(x, q, metric)
        truth[~alive] = np.nan
        best = np.sort(truth[alive]) if metric == "l2" else -np.sort(-truth[alive])
        assert len(hits) == k
        got = np.array([h.score for h in hits])
        # the k best scores, in order, and each hit's score is really its own
        np.testing.assert_allclose(got, best[:k], rtol=1e-4, atol=1e-4)
        for h in hits:
            assert alive[h.id]
            assert h.score == pytest.approx(truth[h.id], rel=1e-4, abs=1e-4)
        approx = col.search(q, k=k, filter=flt, ef=4, with_payload=False)
        missed += len({h.id for h in hits} - {h.id for h in approx})
    if not filtered:  # the walk on this graph is approximate; the scan is what makes it exact
        assert missed > 0
    # k beyond the allowed points: every allowed point, best first; nothing for no match
    few = {"must": [{"has_id": [1, 2, 3, 9]}]}
    hits = col.search(queries[0], k=10, filter=few, exact=True)
    assert sorted(h.id for h in hits) == [1, 2, 3]
    assert col.search(queries[0], k=5, filter={"must": [{"has_id": [9]}]}, exact=True) == []
    with pytest.raises(InvalidInput):
        col.search(queries[0], exact="yes")


def test_delete_by_filter_and_payload_operations(db):
    col = db.create_collection("c", dim=4, metric="l2")
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    col.upsert(list(range(10)), x, [{"g": i % 2, "a": {"b": i}} for i in range(10)])
    assert col.delete(filter={"must": [{"key": "g", "match": {"value": 1}}]}) == 5
    assert sorted(r.id for r in col.scroll(limit=100)[0]) == [0, 2, 4, 6, 8]
    assert col.set_payload([0, 2, 77], {"x": 1}) == 2
    assert col.get([0])[0].payload == {"g": 0, "a": {"b": 0}, "x": 1}
    col.set_payload([0], {"c": 5}, key="a")
    assert col.get([0])[0].payload == {"g": 0, "a": {"b": 0, "c": 5}, "x": 1}
    col.delete_payload([0], ["a.b", "x"])
    assert col.get([0])[0].payload == {"g": 0, "a": {"c": 5}}
    col.overwrite_payload([2], {"only": True})
    assert col.get([2])[0].payload == {"only": True}
    col.clear_payload([2])
    assert col.get([2])[0].payload is None
    n = col.set_payload(None, {"tagged": 1}, filter={"must": [{"key": "g", "match": {"value": 0}}]})
    assert n == 4  # point 2 lost its payload, so g no longer matches
    assert col.count(filter={"must": [{"key": "tagged", "match": {"value": 1}}]}) == 4


def test_scroll_orders_ints_then_strings_and_pages(db):
    col = db.create_collection("c", dim=2, metric="l2")
    ids = [5, "b", 1, "a", 2**63, 3, "c"]
    col.upsert(ids, np.ones((len(ids), 2), np.float32), [{"i": i} for i in range(len(ids))])
    seen = []
    offset = None
    while True:
        page, offset = col.scroll(limit=2, offset=offset)
        seen.extend(r.id for r in page)
        if offset is None:
            break
    assert seen == [1, 3, 5, 2**63, "a", "b", "c"]
    page, nxt = col.scroll(filter={"must": [{"key": "i", "range": {"gte": 3}}]}, limit=10)
    assert [r.id for r in page] == [3, 2**63, "a", "c"] and nxt is None


def test_apply_writes_offsets_and_dead_letters_with_partition(db):
    col = db.create_collection("c", dim=3, metric="l2")
    letter = DeadLetter("kafka", "t", 0, 41, b"k", b"garbage", "not json")
    col.apply(
        [Upsert("a", [1, 0, 0], {"p": 1}, partition=2), Upsert("b", [0, 1, 0], partition=2)],
        source_offsets={("kafka", "t", 0): 41, ("kafka", "t", 2): 7},
        dead_letters=[letter],
    )
    col.apply([], source_offsets={("kafka", "t", 0): 45}, dead_letters=[])
    assert db.source_offsets("kafka") == {("t", 0): 45, ("t", 2): 7}
    assert db.source_offsets("other") == {}
    letters = db.dead_letters()
    assert len(letters) == 1 and letters[0].reason == "not json" and letters[0].value == b"garbage"
    assert col.source_partition("a") == 2
    col.upsert(["plain"], [[0.0, 0.0, 1.0]])
    assert col.source_partition("plain") is None
    with pytest.raises(InvalidInput, match="operation 1"):
        col.apply(
            [Upsert("y", [1, 2, 3]), Upsert("z", [1, 2])], source_offsets={("kafka", "t", 0): 99}
        )
    with pytest.raises(InvalidInput, match="partition"):
        col.apply([Upsert("y", [1, 2, 3], partition=-1)])
    col.apply([Upsert("np", [1, 2, 3], partition=np.int64(5))])
    assert col.source_partition("np") == 5
    with pytest.raises(InvalidInput, match="operation 0"):
        col.apply([Upsert("z", [1, float("nan"), 3])], source_offsets={("kafka", "t", 0): 99})
    assert db.source_offsets("kafka")[("t", 0)] == 45  # refused batch wrote no offset


def test_concurrent_searches_while_writing(db):
    rng = np.random.default_rng(5)
    col = db.create_collection("c", dim=16, metric="cosine")
    base = unit(rng, 500, 16)
    col.upsert(list(range(500)), base, [{"id": i} for i in range(500)])
    errors = []
    stop = threading.Event()

    def reader():
        r = np.random.default_rng(threading.get_ident() % 1000)
        while not stop.is_set():
            q = unit(r, 3, 16)
            try:
                for hits in col.search(q, k=5):
                    for h in hits:
                        # a hit's payload always belongs to its id
                        assert h.payload is None or h.payload["id"] == h.id
            except Exception as exc:  # surfaced below
                errors.append(exc)
                return

    def writer(offset):
        r = np.random.default_rng(offset)
        for _i in range(30):
            ids = [int(v) for v in r.integers(0, 800, 10)]
            col.upsert(ids, unit(r, 10, 16), [{"id": j} for j in ids])
            col.delete([int(r.integers(0, 800))])

    readers = [threading.Thread(target=reader) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[0]
    # read-your-writes: every write that returned is visible
    last = col.upsert(["final"], unit(rng, 1, 16), [{"id": "final"}])
    assert last == db.last_seq
    assert col.get(["final"])[0].payload == {"id": "final"}
    assert db.stats()["wal_txns_committed"] <= db.stats()["group_commit_requests_total"]


@pytest.mark.slow
def test_minilm_end_to_end_string_ids_and_payloads(tmp_path, minilm):
    n = 10000
    names = minilm.names[:n]
    vectors = minilm.base[:n]
    with vdb.open(tmp_path / "data") as db:
        col = db.create_collection("debian", dim=384, metric="cosine", M=16, ef_construction=128)
        for lo in range(0, n, 2000):
            col.upsert(
                names[lo : lo + 2000],
                vectors[lo : lo + 2000],
                [
                    {"description": t, "section": i % 4}
                    for i, t in enumerate(minilm.texts[lo : lo + 2000], lo)
                ],
            )
        assert col.count() == n
        queries = minilm.queries[:100]
        exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
        hits = col.search(queries, k=10, ef=64)
        row = {name: i for i, name in enumerate(names)}
        found = np.array([[row[h.id] for h in hs] for hs in hits])
        assert recall_at_k(found, exact, 10) >= 0.9
        assert hits[0][0].payload["description"] == minilm.texts[found[0][0]]
        flt = {"must": [{"key": "section", "match": {"value": 1}}]}
        fhits = col.search(queries[:10], k=10, filter=flt)
        assert all(len(hs) == 10 and all(h.payload["section"] == 1 for h in hs) for hs in fhits)
        assert col.wait_indexed(timeout=120)  # the same graph is then checkpointed
        before = [[h.id for h in hs] for hs in col.search(queries[:20], k=10)]
    with vdb.open(tmp_path / "data") as db:
        col = db.collection("debian")
        assert [[h.id for h in hs] for hs in col.search(queries[:20], k=10)] == before
        assert col.get([names[42]])[0].payload["description"] == minilm.texts[42]


id_strategy = st.one_of(
    st.integers(0, 6), st.integers(2**64 - 3, 2**64 - 1), st.sampled_from(["0", "1", "a", "é"])
)
op_strategy = st.one_of(
    st.tuples(st.just("up"), st.lists(id_strategy, min_size=1, max_size=5), st.integers(0, 1000)),
    st.tuples(st.just("del"), st.lists(id_strategy, min_size=1, max_size=3), st.just(0)),
    st.tuples(st.just("set"), st.lists(id_strategy, min_size=1, max_size=3), st.integers(0, 1000)),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(op_strategy, min_size=1, max_size=12))
def test_random_operations_match_a_dict_model(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("prop")
    model: dict = {}
    with vdb.open(path / "d", warm=False) as db:
        col = db.create_collection("c", dim=3, metric="l2")
        for kind, ids, value in ops:
            if kind == "up":
                vectors = [[float(value), float(j), 1.0] for j in range(len(ids))]
                col.upsert(ids, vectors, [{"v": value, "j": j} for j in range(len(ids))])
                for j, point_id in enumerate(ids):  # the last occurrence wins
                    model[point_id] = ({"v": value, "j": j}, vectors[j])
            elif kind == "del":
                assert col.delete(ids) == len({i for i in ids if i in model})
                for point_id in ids:
                    model.pop(point_id, None)
            else:
                col.set_payload(ids, {"s": value})
                for point_id in set(ids):
                    if point_id in model:
                        payload, vector = model[point_id]
                        model[point_id] = ({**payload, "s": value}, vector)
        records = col.scroll(limit=1000, with_vectors=True)[0]
        expected_order = sorted(model, key=lambda i: (isinstance(i, str), i))
        assert [r.id for r in records] == expected_order
        for r in records:
            assert r.payload == model[r.id][0]
            np.testing.assert_array_equal(r.vector, np.asarray(model[r.id][1], np.float32))
        assert col.count() == len(model)
    with vdb.open(path / "d", warm=False) as db:
        again = db.collection("c").scroll(limit=1000, with_vectors=True)[0]
        assert [(r.id, r.payload) for r in again] == [(r.id, r.payload) for r in records]
