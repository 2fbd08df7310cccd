"""Text through the embedded API: create with an embedder, upsert documents, search by text."""

from __future__ import annotations

import numpy as np
import pytest

import vdb
from tests.embed.conftest import cosines
from tests.helpers import recall_at_k
from vdb.errors import DimensionMismatch, InvalidInput


@pytest.fixture
def db(tmp_path):
    with vdb.open(tmp_path / "data") as database:
        yield database


def test_embedder_sets_dimension_and_metric_and_is_durable(tmp_path):
    with vdb.open(tmp_path / "d") as db:
        col = db.create_collection("docs", embedder="minilm")
        assert (col.dim, col.metric, col.info()["embedder"]) == (384, "cosine", "minilm")
        same = db.create_collection("docs2", dim=384, metric="cosine", embedder="minilm")
        assert same.info()["embedder"] == "minilm"
        alias = db.create_collection("docs3", embedder="sentence-transformers/all-MiniLM-L6-v2")
        assert alias.info()["embedder"] == "minilm"  # stored by its registry name
        col.upsert(["apt"], documents=["command-line package manager"])
    with vdb.open(tmp_path / "d") as db:
        col = db.collection("docs")
        assert col.config["embedder"] == "minilm" and col.info()["embedder"] == "minilm"
        assert col.search(text="package manager", k=1)[0].id == "apt"


def test_embedder_and_explicit_options_must_agree(db):
    with pytest.raises(DimensionMismatch, match="384"):
        db.create_collection("a", dim=128, embedder="minilm")
    with pytest.raises(InvalidInput, match="cosine"):
        db.create_collection("b", metric="l2", embedder="minilm")
    with pytest.raises(InvalidInput, match="available: .*minilm"):
        db.create_collection("c", embedder="no-such-model")
    assert db.list_collections() == []
    plain = db.create_collection("plain", dim=8)  # without an embedder, as before
    assert plain.metric == "cosine" and plain.info()["embedder"] is None


def test_upsert_documents_and_search_by_text(db, texts):
    col = db.create_collection("debian", embedder="minilm")
    n = 400
    col.upsert(texts.names[:n], documents=texts.texts[:n], payloads=[{"row": i} for i in range(n)])
    assert col.count() == n
    # the stored vectors are the model's (the fixture's) vectors, the text is in the payload
    records = col.get(texts.names[:50], with_vectors=True)
    assert cosines(np.stack([r.vector for r in records]), texts.base[:50]).min() >= 0.999
    assert records[3].payload == {"row": 3, "document": texts.texts[3]}
    # a text finds itself first
    hit = col.search(text=texts.texts[17], k=3)[0]
    assert hit.id == texts.names[17] and hit.score > 0.999
    # batch text queries: one list per text
    rows = col.search(text=[texts.texts[5], texts.texts[6]], k=2)
    assert [r[0].id for r in rows] == [texts.names[5], texts.names[6]]
    # filters work with text queries; vectors are still accepted
    flt = {"must": [{"key": "row", "range": {"lt": 10}}]}
    assert all(h.payload["row"] < 10 for h in col.search(text="a game", k=5, filter=flt))
    assert col.search(texts.base[17], k=1)[0].id == texts.names[17]


def test_store_documents_false_keeps_payload_as_given(db):
    col = db.create_collection("docs", embedder="minilm")
    col.upsert([1, 2], documents=["first text", "second text"], payloads=[{"a": 1}, None],
               store_documents=False)  # fmt: skip
    got = {r.id: r.payload for r in col.get([1, 2])}
    assert got == {1: {"a": 1}, 2: None}
    col.upsert(3, documents="a single text for a single id")
    assert col.get([3])[0].payload == {"document": "a single text for a single id"}


def test_text_queries_reach_the_fixture_recall(db, texts):
    """Base vectors from the fixture, queries as text: recall@10 >= 0.9 against the truth."""
    col = db.create_collection("debian", embedder="minilm", ef=128)
    col.upsert(list(range(len(texts.base))), texts.base)
    hits = col.search(text=texts.query_texts, k=10)
    found = np.array([[h.id for h in row] for row in hits])
    assert recall_at_k(found, texts.gt_ids, k=10) >= 0.9


def test_bad_text_input_writes_nothing(db):
    col = db.create_collection("docs", embedder="minilm")
    col.upsert(["keep"], documents=["already here"])
    seq = db.last_seq
    bad_batches = [
        (["a", "b"], ["fine", ""], "documents\\[1\\]: the text is empty"),
        (["a", "b"], ["fine", "   "], "documents\\[1\\]: the text is empty"),
        (["a", "b"], ["fine", 42], "documents\\[1\\]: a text must be a string, got int"),
        (["a", "b"], ["fine", None], "a text must be a string, got NoneType"),
        (["a", "b"], ["only one"], "1 documents for 2 ids"),
        (["a", "b"], "one string", "expected a list of strings"),
    ]
    for ids, docs, message in bad_batches:
        with pytest.raises(InvalidInput, match=message):
            col.upsert(ids, documents=docs)
    with pytest.raises(InvalidInput, match="not both"):
        col.upsert(["a"], np.ones((1, 384)), documents=["x"])
    with pytest.raises(InvalidInput, match="needs vectors or documents"):
        col.upsert(["a"])
    with pytest.raises(InvalidInput, match="the text is empty"):
        col.search(text="")
    with pytest.raises(InvalidInput, match="must be a string"):
        col.search(text=[3])
    with pytest.raises(InvalidInput, match="not both"):
        col.search(np.ones(384), text="x")
    assert db.last_seq == seq and col.count() == 1
    assert [r.id for r in col.get(["a", "b", "keep"])] == ["keep"]


def test_documents_need_a_collection_with_an_embedder(db):
    col = db.create_collection("vectors", dim=384)
    with pytest.raises(InvalidInput, match="has no embedder"):
        col.upsert(["a"], documents=["text"])
    with pytest.raises(InvalidInput, match="has no embedder"):
        col.search(text="text")
    assert col.count() == 0


def test_over_long_text_is_truncated_not_refused(db):
    col = db.create_collection("docs", embedder="minilm")
    long = "lorem " * 5000
    col.upsert(["long", "prefix"], documents=[long, "lorem " * 254])
    got = {r.id: r for r in col.get(["long", "prefix"], with_vectors=True)}
    assert got["long"].payload["document"] == long  # the whole text is kept
    assert float(got["long"].vector @ got["prefix"].vector) > 0.99999
