"""LangChain and LlamaIndex, unmodified, against a real ``vdb serve``.

LangChain's ``QdrantVectorStore`` in dense, sparse and hybrid retrieval modes and
LlamaIndex's ``QdrantVectorStore`` (plain and hybrid) create their collections, write,
search with filters, run MMR, delete and read back through vdb; every answer is compared
with a direct query of the same vectors through qdrant-client. Embeddings come from
LangChain's deterministic fake embedder, fixed vectors and the hashing sparse embedder of
``test_framework_wire``: nothing is downloaded.
"""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_qdrant import QdrantVectorStore, RetrievalMode
from qdrant_client import QdrantClient
from qdrant_client import models as m

from tests.http.test_framework_wire import HashingSparse, sparse_fn

DIM = 16
WORDS = "red green blue apple pear car sky sea road tree stone river light".split()
COLOURS = ("red", "green", "blue")


def _texts(n: int, offset: int = 0) -> list[str]:
    out = []
    for i in range(offset, offset + n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(1 + i % 4)]
        out.append(" ".join([COLOURS[i % 3], *words, f"item{i}"]))
    return out


@pytest.fixture(scope="module")
def client(server):
    c = QdrantClient(url=server.url, prefer_grpc=False, timeout=60)
    yield c
    c.close()


FILTER = m.Filter(must=[m.FieldCondition(key="metadata.colour", match=m.MatchValue(value="red"))])


def _direct(client, name, mode, dense, sparse, query, k, flt):
    """The same search through qdrant-client: (page_content, score) pairs."""
    dq = dense.embed_query(query) if dense else None
    sv = sparse.embed_query(query) if sparse else None
    svq = m.SparseVector(indices=sv.indices, values=sv.values) if sv else None
    if mode == RetrievalMode.DENSE:
        res = client.query_points(
            name, query=dq, using="", query_filter=flt, limit=k, with_payload=True
        )
    elif mode == RetrievalMode.SPARSE:
        res = client.query_points(
            name, query=svq, using="langchain-sparse", query_filter=flt, limit=k, with_payload=True
        )
    else:
        res = client.query_points(
            name,
            prefetch=[
                m.Prefetch(query=dq, using="", filter=flt, limit=k),
                m.Prefetch(query=svq, using="langchain-sparse", filter=flt, limit=k),
            ],
            query=m.FusionQuery(fusion=m.Fusion.RRF),
            query_filter=flt,
            limit=k,
            with_payload=True,
        )
    return [(p.payload["page_content"], p.score) for p in res.points]


@pytest.mark.parametrize("mode", [RetrievalMode.DENSE, RetrievalMode.SPARSE, RetrievalMode.HYBRID])
def test_langchain_store_against_vdb(server, client, mode):
    dense = DeterministicFakeEmbedding(size=DIM) if mode != RetrievalMode.SPARSE else None
    sparse = HashingSparse() if mode != RetrievalMode.DENSE else None
    name = f"lc-{mode.value}"
    texts = _texts(40)
    docs = [
        Document(page_content=t, metadata={"colour": COLOURS[i % 3], "n": i})
        for i, t in enumerate(texts)
    ]
    store = QdrantVectorStore.from_documents(
        docs,
        embedding=dense,
        sparse_embedding=sparse,
        retrieval_mode=mode,
        url=server.url,
        collection_name=name,
        force_recreate=True,
    )
    more = _texts(20, offset=40)
    added = store.add_texts(
        more, metadatas=[{"colour": COLOURS[i % 3], "n": 40 + i} for i in range(20)]
    )
    assert len(added) == 20
    assert client.count(name).count == 60
    info = client.get_collection(name).config.params
    if mode == RetrievalMode.SPARSE:
        assert set(info.sparse_vectors) == {"langchain-sparse"}

    query = "red apple item3"
    got = store.similarity_search_with_score(query, k=5, filter=FILTER)
    assert len(got) == 5 and all(d.metadata["colour"] == "red" for d, _ in got)
    want = _direct(client, name, mode, dense, sparse, query, 5, FILTER)
    assert [(d.page_content, s) for d, s in got] == [(t, pytest.approx(s)) for t, s in want]
    plain = store.similarity_search(query, k=4)
    assert [d.page_content for d in plain] == [
        t for t, _ in _direct(client, name, mode, dense, sparse, query, 4, None)
    ]
    assert [d.page_content for d in store.as_retriever(search_kwargs={"k": 4}).invoke(query)] == [
        d.page_content for d in plain
    ]

    if dense is not None:
        mmr = store.max_marginal_relevance_search(query, k=4, fetch_k=12, lambda_mult=0.3)
        res = client.query_points(
            name,
            query=m.NearestQuery(
                nearest=dense.embed_query(query), mmr=m.Mmr(diversity=0.3, candidates_limit=12)
            ),
            using="",
            limit=4,
            with_payload=True,
        )
        assert [d.page_content for d in mmr] == [p.payload["page_content"] for p in res.points]
        top12 = [
            t for t, _ in _direct(client, name, RetrievalMode.DENSE, dense, None, query, 12, None)
        ]
        assert len(mmr) == 4 and {d.page_content for d in mmr} <= set(top12)

    assert store.delete(added[:5]) is True
    assert client.count(name).count == 55
    back = store.get_by_ids(added[:7])
    assert sorted(d.page_content for d in back) == sorted(more[5:7])


def test_llama_index_store_against_vdb(client):
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
    from llama_index.core.vector_stores.types import (
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
    )
    from llama_index.vector_stores.qdrant import QdrantVectorStore as LlamaStore

    embed = DeterministicFakeEmbedding(size=DIM)
    texts = _texts(30)

    def nodes():
        out = []
        for i, text in enumerate(texts):
            node = TextNode(
                text=text,
                id_=f"00000000-0000-0000-0000-{i:012d}",
                embedding=embed.embed_query(text),
                metadata={"colour": COLOURS[i % 3]},
            )
            node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc{i % 2}")
            out.append(node)
        return out

    filters = MetadataFilters(filters=[MetadataFilter(key="colour", value="red")])
    red = m.Filter(must=[m.FieldCondition(key="colour", match=m.MatchValue(value="red"))])
    query_text = "red pear item6"
    q = embed.embed_query(query_text)
    for hybrid in (False, True):
        name = f"li-{hybrid}"
        if client.collection_exists(name):
            client.delete_collection(name)
        options = {"enable_hybrid": True, "sparse_doc_fn": sparse_fn, "sparse_query_fn": sparse_fn} if hybrid else {}  # fmt: skip
        store = LlamaStore(collection_name=name, client=client, **options)
        ids = store.add(nodes())
        assert len(ids) == len(texts) and client.count(name).count == len(texts)
        dense_name = "text-dense" if hybrid else ""
        res = store.query(VectorStoreQuery(query_embedding=q, similarity_top_k=5, filters=filters))
        direct = client.query_points(name, query=q, using=dense_name, query_filter=red, limit=5)
        assert res.ids == [str(p.id) for p in direct.points]
        assert res.similarities == pytest.approx([p.score for p in direct.points])
        assert all(n.metadata["colour"] == "red" for n in res.nodes)
        if hybrid:
            sparse_res = store.query(
                VectorStoreQuery(
                    query_str=query_text, similarity_top_k=5, mode=VectorStoreQueryMode.SPARSE
                )
            )
            (indices,), (values,) = sparse_fn([query_text])
            direct = client.query_points(
                name,
                query=m.SparseVector(indices=indices, values=values),
                using="text-sparse-new",
                limit=5,
            )
            assert sparse_res.ids == [str(p.id) for p in direct.points]
            both = store.query(
                VectorStoreQuery(
                    query_embedding=q, query_str=query_text, similarity_top_k=5,
                    mode=VectorStoreQueryMode.HYBRID, filters=filters,
                )
            )  # fmt: skip
            assert both.ids and all(n.metadata["colour"] == "red" for n in both.nodes)
        store.delete("doc0")
        assert client.count(name).count == len(texts) // 2
        res = store.query(VectorStoreQuery(query_embedding=q, similarity_top_k=30))
        assert len(res.ids) == len(texts) // 2
        assert all(n.ref_doc_id == "doc1" for n in res.nodes)
