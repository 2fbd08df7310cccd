"""vdb.http.query_api against the bodies the real qdrant-client sends.

The client talks to a recording endpoint (``tests/http/wire.py``) that keeps
every request body and answers with the minimal success envelope; the recorded
bodies are exactly what the client puts on the wire, and they are what the
parsers are fed.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qdrant_client import QdrantClient, models

from tests.http.wire import Wire
from vdb.errors import DimensionMismatch, InvalidInput
from vdb.http import query_api as qa


@pytest.fixture(scope="module")
def wire():
    with Wire() as server:
        client = QdrantClient(url=server.url, prefer_grpc=False, check_compatibility=False)

        def sent(call):
            """Run ``call(client)`` and return the body of the one request it made."""
            before = len(server.requests)
            call(client)
            made = server.requests[before:]
            assert len(made) == 1, made
            return made[0][3]

        yield sent
        client.close()


# -- collection config -------------------------------------------------------------------------


def test_langchain_style_default_name_and_empty_sparse(wire):
    body = wire(
        lambda c: c.create_collection(
            "c",
            vectors_config={"": models.VectorParams(size=4, distance=models.Distance.COSINE)},
            sparse_vectors_config={},
        )
    )
    assert body["vectors"] == {"": {"size": 4, "distance": "Cosine"}}
    config = qa.parse_collection_vectors(body)
    assert config.sparse == {}
    assert config.dense == {"": qa.DenseVectorConfig("", 4, "cosine")}
    # the same collection as bare VectorParams
    bare = wire(
        lambda c: c.create_collection(
            "c", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
        )
    )
    assert qa.parse_collection_vectors(bare) == config


def test_named_dense_and_sparse_with_idf(wire):
    body = wire(
        lambda c: c.create_collection(
            "c",
            vectors_config={
                "text-dense": models.VectorParams(
                    size=3,
                    distance=models.Distance.DOT,
                    hnsw_config=models.HnswConfigDiff(m=8, ef_construct=64),
                ),
                "title": models.VectorParams(size=2, distance=models.Distance.EUCLID),
            },
            sparse_vectors_config={
                "text-sparse": models.SparseVectorParams(
                    modifier=models.Modifier.IDF,
                    index=models.SparseIndexParams(full_scan_threshold=5000, on_disk=False),
                ),
                "plain": models.SparseVectorParams(),
            },
        )
    )
    config = qa.parse_collection_vectors(body)
    assert config.dense["text-dense"] == qa.DenseVectorConfig("text-dense", 3, "ip", 8, 64)
    assert config.dense["title"].metric == "l2"
    assert config.sparse["text-sparse"] == qa.SparseVectorConfig("text-sparse", "idf", 5000)
    assert config.sparse["plain"] == qa.SparseVectorConfig("plain", None, None)


def test_sparse_only_collection(wire):
    body = wire(
        lambda c: c.create_collection(
            "c",
            vectors_config={},
            sparse_vectors_config={"s": models.SparseVectorParams(modifier=models.Modifier.NONE)},
        )
    )
    config = qa.parse_collection_vectors(body)
    assert config.dense == {} and config.sparse == {"s": qa.SparseVectorConfig("s")}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "needs `vectors` or `sparse_vectors`"),
        ({"vectors": {}, "sparse_vectors": {}}, "needs `vectors` or `sparse_vectors`"),
        (
            {"vectors": {"a": {"size": 2, "distance": "Dot"}}, "sparse_vectors": {"a": {}}},
            "'a' is both",
        ),
        ({"sparse_vectors": {"s": {"modifier": "bm25"}}}, r"`sparse_vectors\.s\.modifier`"),
        ({"sparse_vectors": {"s": {"colour": 1}}}, "unknown field `colour`"),
        (
            {"sparse_vectors": {"s": {"index": {"on_disk": True}}}},
            r"`sparse_vectors\.s\.index\.on_disk` is not supported",
        ),
        ({"vectors": {"d": {"size": 0, "distance": "Dot"}}}, r"`vectors\.d\.size` must be at"),
        ({"vectors": {"d": {"size": 3}}}, r"`vectors\.d\.distance` is required"),
        (
            {"vectors": {"d": {"size": 3, "distance": "Manhattan"}}},
            r"`vectors\.d\.distance` 'Manhattan' is not supported",
        ),
        (
            {"vectors": {"d": {"size": 3, "distance": "Dot", "multivector_config": {}}}},
            "multivector_config",
        ),
        ({"vectors": {"d": 3}}, r"`vectors\.d` must be an object"),
    ],
)
def test_bad_collection_configs_name_the_field(body, message):
    with pytest.raises(InvalidInput, match=message):
        qa.parse_collection_vectors(body)


# -- point vectors -----------------------------------------------------------------------------

CONFIG = qa.VectorsConfig(
    dense={"text-dense": qa.DenseVectorConfig("text-dense", 3, "cosine")},
    sparse={"text-sparse": qa.SparseVectorConfig("text-sparse", "idf")},
)


def test_points_with_named_dense_and_sparse_vectors(wire):
    body = wire(
        lambda c: c.upsert(
            "c",
            points=[
                models.PointStruct(
                    id=1,
                    vector={
                        "text-dense": [0.1, 0.2, 0.3],
                        "text-sparse": models.SparseVector(indices=[9, 2], values=[0.5, 1.5]),
                    },
                    payload={"k": 1},
                ),
                models.PointStruct(id=2, vector={"text-dense": [1.0, 0.0, 0.0]}),  # no sparse
            ],
        )
    )
    first = qa.parse_point_vector(body["points"][0]["vector"], "points[0].vector", CONFIG)
    assert first["text-dense"].dtype == np.float32
    assert first["text-dense"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    sparse = first["text-sparse"]
    assert sparse.indices.tolist() == [9, 2] and sparse.indices.dtype == np.uint32
    assert sparse.values.tolist() == [0.5, 1.5] and sparse.values.dtype == np.float32
    second = qa.parse_point_vector(body["points"][1]["vector"], "points[1].vector", CONFIG)
    assert set(second) == {"text-dense"}


def test_batch_with_named_vectors(wire):
    body = wire(
        lambda c: c.upsert(
            "c",
            points=models.Batch(
                ids=[1, 2],
                vectors={
                    "text-dense": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                    "text-sparse": [
                        models.SparseVector(indices=[1], values=[1.0]),
                        models.SparseVector(indices=[], values=[]),
                    ],
                },
            ),
        )
    )
    rows = qa.parse_batch_vectors(body["batch"]["vectors"], "batch.vectors", 2, CONFIG)
    assert rows[0]["text-sparse"].indices.tolist() == [1]
    assert rows[1]["text-sparse"].indices.size == 0  # empty sparse vectors are allowed
    assert rows[1]["text-dense"].tolist() == [0.0, 1.0, 0.0]
    plain = qa.parse_batch_vectors([[1.0, 2.0]], "batch.vectors", 1)
    assert list(plain[0]) == [""]


def test_unnamed_dense_vector_is_the_default_name(wire):
    body = wire(lambda c: c.upsert("c", points=[models.PointStruct(id=5, vector=[1.0, 2.0])]))
    assert list(qa.parse_point_vector(body["points"][0]["vector"], "points[0].vector")) == [""]


def _sent_sparse(wire, indices, values):
    body = wire(
        lambda c: c.upsert(
            "c",
            points=[
                models.PointStruct(
                    id=1,
                    vector={"text-sparse": models.SparseVector(indices=indices, values=values)},
                )
            ],
        )
    )
    return body["points"][0]["vector"]


@pytest.mark.parametrize(
    ("indices", "values", "message"),
    [
        ([3, 1, 3], [1.0, 2.0, 3.0], r"`points\[0\]\.vector\.text-sparse\.indices`: .*index 3 is repeated"),
        ([1, 2], [1.0], r"`points\[0\]\.vector\.text-sparse`: indices and values must be the same length"),
        ([1, -2], [1.0, 2.0], r"`points\[0\]\.vector\.text-sparse\.indices\[1\]`: -2 is not a valid index"),
        ([1, 2**32], [1.0, 2.0], r"`points\[0\]\.vector\.text-sparse\.indices\[1\]`"),
    ],
)  # fmt: skip
def test_malformed_sparse_vectors_name_the_field(wire, indices, values, message):
    vector = _sent_sparse(wire, indices, values)
    with pytest.raises(InvalidInput, match=message):
        qa.parse_point_vector(vector, "points[0].vector", CONFIG)


def test_more_malformed_vectors():
    where = "points[0].vector"
    cases = [
        ({"text-sparse": {"indices": [1], "values": [float("nan")]}}, r"values\[0\]`: values must be finite"),
        ({"text-sparse": {"indices": [1], "values": [1e39]}}, "float32 range"),
        ({"text-sparse": {"indices": [1.0], "values": [1.0]}}, r"indices\[0\]` must be an integer"),
        ({"text-sparse": {"indices": [1]}}, r"`points\[0\]\.vector\.text-sparse\.values` is required"),
        ({"text-sparse": {"indices": [1], "values": [1], "x": 1}}, "unknown field `x`"),
        ({"text-sparse": [1.0, 2.0, 3.0]}, "vector 'text-sparse' is sparse"),
        ({"text-dense": {"indices": [1], "values": [1.0]}}, "vector 'text-dense' is dense"),
        ({"nope": [1.0]}, "Not existing vector name error: nope"),
        ({"indices": [1], "values": [1.0]}, "a sparse vector needs a name"),
        ({"text-dense": {"text": "hi", "model": "m"}}, "documents, images and inference"),
    ]  # fmt: skip
    for vector, message in cases:
        with pytest.raises(InvalidInput, match=message):
            qa.parse_point_vector(vector, where, CONFIG)
    with pytest.raises(DimensionMismatch, match="expected dim: 3, got 2"):
        qa.parse_point_vector({"text-dense": [1.0, 2.0]}, where, CONFIG)
    with pytest.raises(
        InvalidInput, match=r"`batch\.vectors\.text-dense` has 1 vectors but there are 2"
    ):
        qa.parse_batch_vectors({"text-dense": [[1.0, 0.0, 0.0]]}, "batch.vectors", 2, CONFIG)


# -- Query API ---------------------------------------------------------------------------------


def test_sparse_query_with_using_and_filter(wire):
    body = wire(
        lambda c: c.query_points(
            "c",
            query=models.SparseVector(indices=[4, 1], values=[1.0, 0.5]),
            using="text-sparse",
            query_filter=models.Filter(
                must=[models.FieldCondition(key="k", match=models.MatchValue(value=1))]
            ),
            limit=5,
            with_vectors=["text-dense"],
        )
    )
    req = qa.parse_query_request(body)
    assert req.using == "text-sparse" and req.limit == 5 and req.offset == 0
    assert isinstance(req.query, qa.Nearest) and req.query.mmr is None
    assert req.query.vector.indices.tolist() == [4, 1]
    assert req.filter == {"must": [{"key": "k", "match": {"value": 1}}]}
    assert req.with_vector == ("text-dense",)
    qa.check_query_vectors(req, CONFIG)


def test_hybrid_prefetch_with_rrf_fusion(wire):
    body = wire(
        lambda c: c.query_points(
            "c",
            prefetch=[
                models.Prefetch(query=[0.1, 0.2, 0.3], using="text-dense", limit=100),
                models.Prefetch(
                    query=models.SparseVector(indices=[1, 2], values=[1.0, 1.0]),
                    using="text-sparse",
                    limit=50,
                    filter=models.Filter(must_not=[models.HasIdCondition(has_id=[3])]),
                ),
            ],
            query=models.FusionQuery(fusion=models.Fusion.RRF),
            limit=10,
            with_payload=True,
        )
    )
    req = qa.parse_query_request(body)
    assert req.query == qa.Fusion("rrf")
    assert len(req.prefetch) == 2
    dense, sparse = req.prefetch
    assert dense.using == "text-dense" and dense.limit == 100 and dense.filter is None
    assert dense.query.vector.tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert sparse.using == "text-sparse" and sparse.limit == 50
    assert sparse.filter == {"must_not": [{"has_id": [3]}]}
    assert isinstance(sparse.query.vector, qa.SparseVector)
    assert req.with_payload is True and req.limit == 10
    qa.check_query_vectors(req, CONFIG)


def test_dbsf_single_prefetch_object_and_nested_prefetch(wire):
    body = wire(
        lambda c: c.query_points(
            "c",
            prefetch=models.Prefetch(
                prefetch=[
                    models.Prefetch(query=[1.0, 0.0, 0.0], using="text-dense", limit=30),
                    models.Prefetch(
                        query=models.SparseVector(indices=[7], values=[2.0]),
                        using="text-sparse",
                        limit=30,
                    ),
                ],
                query=models.FusionQuery(fusion=models.Fusion.DBSF),
                limit=20,
            ),
            query=[0.0, 1.0, 0.0],  # re-score the fused prefetch with the dense vector
            using="text-dense",
            limit=3,
        )
    )
    req = qa.parse_query_request(body)
    assert len(req.prefetch) == 1
    outer = req.prefetch[0]
    assert outer.query == qa.Fusion("dbsf") and outer.limit == 20
    assert [sub.using for sub in outer.prefetch] == ["text-dense", "text-sparse"]
    assert req.query.vector.tolist() == [0.0, 1.0, 0.0] and req.using == "text-dense"
    qa.check_query_vectors(req, CONFIG)


def test_rrf_with_k_and_weights(wire):
    body = wire(
        lambda c: c.query_points(
            "c",
            prefetch=[
                models.Prefetch(query=[1.0, 0.0, 0.0], using="text-dense"),
                models.Prefetch(query=models.SparseVector(indices=[1], values=[1.0]), using="text-sparse"),
            ],
            query=models.RrfQuery(rrf=models.Rrf(k=60, weights=[1.0, 3.0])),
        )
    )  # fmt: skip
    req = qa.parse_query_request(body)
    assert req.query == qa.Fusion("rrf", 60, (1.0, 3.0))
    assert [sub.limit for sub in req.prefetch] == [10, 10]  # Qdrant's default limit
    assert req.limit == 10


def test_mmr_point_id_and_batch(wire):
    body = wire(
        lambda c: c.query_points(
            "c",
            query=models.NearestQuery(
                nearest=[0.0, 0.0, 1.0], mmr=models.Mmr(diversity=0.3, candidates_limit=40)
            ),
            using="text-dense",
            limit=4,
        )
    )
    req = qa.parse_query_request(body)
    assert req.query.mmr == qa.Mmr(0.3, 40)
    by_id = qa.parse_query_request(wire(lambda c: c.query_points("c", query=7, using="text-dense")))
    assert by_id.query == qa.Nearest(point_id=7)
    batch = wire(
        lambda c: c.query_batch_points(
            "c",
            requests=[
                models.QueryRequest(query=[1.0, 0.0, 0.0], using="text-dense", limit=2),
                models.QueryRequest(
                    prefetch=[
                        models.Prefetch(query=[1.0, 0.0, 0.0], using="text-dense"),
                        models.Prefetch(
                            query=models.SparseVector(indices=[1], values=[1.0]),
                            using="text-sparse",
                        ),
                    ],
                    query=models.FusionQuery(fusion=models.Fusion.RRF),
                ),
            ],
        )
    )
    requests = qa.parse_query_batch(batch)
    assert requests[0].limit == 2 and requests[1].query == qa.Fusion("rrf")
    for r in requests:
        qa.check_query_vectors(r, CONFIG)


def test_bad_queries_name_the_field():
    cases = [
        ({"query": {"fusion": "rrf"}}, r"`query`: a fusion query needs `prefetch`"),
        ({"query": {"fusion": "max"}, "prefetch": {}}, r"`query\.fusion` must be \"rrf\" or \"dbsf\""),
        ({"query": {"recommend": {"positive": [1]}}}, "query type `recommend` is not supported"),
        ({"query": {"nearest": [1.0], "fusion": "rrf"}}, "exactly one query type"),
        ({"query": {"jump": 1}}, "unknown query type `jump`"),
        ({"prefetch": [{"query": {"indices": [1, 1], "values": [1.0, 2.0]}}]}, r"`prefetch\[0\]\.query\.indices`: .*repeated"),
        ({"prefetch": [{"prefetch": {"limit": -1}}]}, r"`prefetch\[0\]\.prefetch\.limit` must be at least 0"),
        ({"prefetch": [{"lookup_from": {"collection": "x"}}]}, "`lookup_from` .* not supported"),
        ({"prefetch": [{"usingg": "x"}]}, "unknown field `usingg`"),
        ({"prefetch": 3}, "`prefetch` must be a prefetch object"),
        ({"query": {"rrf": {"k": 0}}, "prefetch": [{}]}, r"`query\.rrf\.k` must be at least 1"),
        ({"query": {"rrf": {"weights": [1.0]}}, "prefetch": [{}, {}]}, "Number of weights in RRF"),
        ({"query": {"nearest": [1.0], "mmr": {"diversity": 2}}}, r"`query\.mmr\.diversity` must be in"),
        ({"query": {"text": "hello", "model": "m"}}, "documents, images and inference"),
        ({"with_vector": "yes"}, "`with_vector` must be a boolean"),
        ({"query": [1.0, float("nan")]}, "finite"),
    ]  # fmt: skip
    for body, message in cases:
        with pytest.raises(InvalidInput, match=message):
            qa.parse_query_request(body)
    nested: dict = {}
    node = nested
    for _ in range(qa.MAX_PREFETCH_DEPTH + 1):
        node["prefetch"] = {}
        node = node["prefetch"]
    with pytest.raises(InvalidInput, match="nest at most"):
        qa.parse_query_request(nested)
    with pytest.raises(InvalidInput, match=r"`searches\[1\]\.query`"):
        qa.parse_query_batch({"searches": [{}, {"query": {"jump": 1}}]})


def test_query_vectors_checked_against_the_collection():
    req = qa.parse_query_request({"query": [1.0, 2.0, 3.0], "using": "missing"})
    with pytest.raises(InvalidInput, match="Not existing vector name error: missing"):
        qa.check_query_vectors(req, CONFIG)
    req = qa.parse_query_request(
        {"query": {"indices": [1], "values": [1.0]}, "using": "text-dense"}
    )
    with pytest.raises(InvalidInput, match="is dense, got a sparse query"):
        qa.check_query_vectors(req, CONFIG)
    req = qa.parse_query_request(
        {"prefetch": [{"query": [1.0, 2.0], "using": "text-dense"}], "query": {"fusion": "rrf"}}
    )
    with pytest.raises(
        DimensionMismatch, match=r"expected dim: 3, got 2 \(`prefetch\[0\]\.query`\)"
    ):
        qa.check_query_vectors(req, CONFIG)


def test_legacy_named_vectors():
    assert qa.parse_named_vector([1.0, 2.0])[0] == ""
    name, vector = qa.parse_named_vector({"name": "text-dense", "vector": [1.0, 0.0, 0.0]})
    assert name == "text-dense" and vector.tolist() == [1.0, 0.0, 0.0]
    name, vector = qa.parse_named_vector(
        {"name": "text-sparse", "vector": {"indices": [3], "values": [1.0]}}
    )
    assert name == "text-sparse" and vector.indices.tolist() == [3]
    with pytest.raises(InvalidInput, match=r"`vector\.vector\.indices`"):
        qa.parse_named_vector({"name": "s", "vector": {"indices": [3, 3], "values": [1.0, 1.0]}})


def test_update_and_delete_vectors(wire):
    body = wire(
        lambda c: c.update_vectors(
            "c",
            points=[
                models.PointVectors(
                    id=1,
                    vector={
                        "text-dense": [1.0, 2.0, 3.0],
                        "text-sparse": models.SparseVector(indices=[1], values=[2.0]),
                    },
                )
            ],
        )
    )
    (update,) = qa.parse_update_vectors(body, CONFIG)
    assert update.id == 1 and set(update.vectors) == {"text-dense", "text-sparse"}
    body = wire(lambda c: c.delete_vectors("c", vectors=["text-dense"], points=[1, 2]))
    assert qa.parse_delete_vectors(body, CONFIG) == qa.DeleteVectors(("text-dense",), [1, 2], None)
    body = wire(
        lambda c: c.delete_vectors(
            "c",
            vectors=["text-sparse"],
            points=models.FilterSelector(
                filter=models.Filter(must=[models.HasIdCondition(has_id=[1])])
            ),
        )
    )
    deleted = qa.parse_delete_vectors(body, CONFIG)
    assert deleted.ids is None and deleted.filter == {"must": [{"has_id": [1]}]}
    with pytest.raises(InvalidInput, match="Not existing vector name error: nope"):
        qa.parse_delete_vectors({"points": [1], "vector": ["nope"]}, CONFIG)
    with pytest.raises(InvalidInput, match="exactly one of `points` or `filter`"):
        qa.parse_delete_vectors({"vector": ["text-dense"]}, CONFIG)
    with pytest.raises(InvalidInput, match=r"`points\[0\]\.vector\.text-sparse\.indices`"):
        qa.parse_update_vectors(
            {
                "points": [
                    {"id": 1, "vector": {"text-sparse": {"indices": [2, 2], "values": [1, 1]}}}
                ]
            },
            CONFIG,
        )
    with pytest.raises(InvalidInput, match=r"`points\[0\]\.vector` must hold at least one"):
        qa.parse_update_vectors({"points": [{"id": 1, "vector": {}}]}, CONFIG)


_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_sparse_like = st.fixed_dictionaries(
    {
        "indices": st.lists(
            st.one_of(st.integers(min_value=-3, max_value=2**32 + 3), _json_scalars), max_size=6
        ),
        "values": st.lists(
            st.one_of(st.floats(allow_nan=True, allow_infinity=True), _json_scalars), max_size=6
        ),
    }
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_sparse_like, _json))
def test_sparse_vectors_either_parse_valid_or_are_refused(value):
    try:
        vector = qa.parse_sparse_vector(value, "v")
    except InvalidInput as e:
        assert "`v" in str(e)
        return
    indices = vector.indices.tolist()
    assert len(indices) == len(set(indices)) == vector.values.shape[0]
    assert all(0 <= i < 2**32 for i in indices)
    assert np.isfinite(vector.values).all()
    assert indices == value["indices"]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["query", "prefetch", "using", "limit", "filter", "offset", "params"]),
        _json,
        max_size=4,
    )
)
def test_query_requests_parse_or_are_refused_cleanly(body):
    try:
        request = qa.parse_query_request(body)
    except InvalidInput:
        return
    assert isinstance(request, qa.QueryRequest)
    assert request.limit >= 0 and request.offset >= 0
