"""What LangChain and LlamaIndex send, recorded and fed to ``vdb.http.query_api``.

The frameworks run unmodified against the recording endpoint of
``tests/http/wire.py`` (it answers like an empty Qdrant), in their dense,
sparse and hybrid modes. Every collection config, point vector and query they
send must parse, and must name vectors the collection has. Embeddings come
from LangChain's deterministic fake embedder, a hashing sparse embedder
written here, and fixed vectors for LlamaIndex: nothing is downloaded.
"""

from __future__ import annotations

import zlib

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_qdrant import QdrantVectorStore, RetrievalMode, SparseEmbeddings, SparseVector
from qdrant_client import QdrantClient, models

from tests.http.wire import Wire
from vdb.http import query_api as qa

TEXTS = ["red apples and pears", "green pears", "a red car", "blue sky over the sea"]
DIM = 8


class HashingSparse(SparseEmbeddings):
    """Word counts hashed into 2**20 dimensions."""

    def _one(self, text: str) -> SparseVector:
        counts: dict[int, float] = {}
        for word in text.lower().split():
            h = zlib.crc32(word.encode()) & ((1 << 20) - 1)
            counts[h] = counts.get(h, 0.0) + 1.0
        return SparseVector(indices=list(counts), values=list(counts.values()))

    def embed_documents(self, texts: list[str]) -> list[SparseVector]:
        return [self._one(t) for t in texts]

    def embed_query(self, text: str) -> SparseVector:
        return self._one(text)


def sparse_fn(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
    vectors = HashingSparse().embed_documents(texts)
    return [v.indices for v in vectors], [v.values for v in vectors]


def parsed_config(wire: Wire) -> qa.VectorsConfig:
    (create,) = wire.bodies("PUT", "/collections/docs")
    return qa.parse_collection_vectors(create)


def parsed_points(wire: Wire, config: qa.VectorsConfig) -> list[dict[str, qa.Vector]]:
    out = []
    for body in wire.bodies("PUT", "/points"):
        for i, point in enumerate(body["points"]):
            out.append(qa.parse_point_vector(point["vector"], f"points[{i}].vector", config))
    return out


def parsed_queries(wire: Wire, config: qa.VectorsConfig) -> list[qa.QueryRequest]:
    out = [qa.parse_query_request(b) for b in wire.bodies("POST", "/points/query")]
    for body in wire.bodies("POST", "/points/query/batch"):
        out += qa.parse_query_batch(body)
    for request in out:
        qa.check_query_vectors(request, config)
    return out


FILTER = models.Filter(
    must=[models.FieldCondition(key="metadata.colour", match=models.MatchValue(value="red"))]
)


@pytest.mark.parametrize("mode", [RetrievalMode.DENSE, RetrievalMode.SPARSE, RetrievalMode.HYBRID])
def test_langchain_modes(mode):
    embedding = DeterministicFakeEmbedding(size=DIM)
    with Wire() as wire:
        store = QdrantVectorStore.from_texts(
            TEXTS,
            embedding=embedding if mode != RetrievalMode.SPARSE else None,
            sparse_embedding=HashingSparse() if mode != RetrievalMode.DENSE else None,
            retrieval_mode=mode,
            metadatas=[{"colour": c} for c in ("red", "green", "red", "blue")],
            ids=[1, 2, 3, "0b8e4c4e-3f4b-4a8e-9a53-0d6c2f7a9b10"],
            url=wire.url,
            collection_name="docs",
            check_compatibility=False,  # passed through to QdrantClient
        )
        store.similarity_search_with_score("red fruit", k=2, filter=FILTER)
        if mode == RetrievalMode.DENSE:
            store.max_marginal_relevance_search("red fruit", k=2, fetch_k=3, lambda_mult=0.4)
        store.delete([2])
        store.get_by_ids([1, 3])

        config = parsed_config(wire)
        if mode == RetrievalMode.DENSE:
            assert config.dense == {"": qa.DenseVectorConfig("", DIM, "cosine")}
            assert config.sparse == {}
        elif mode == RetrievalMode.SPARSE:
            assert config.dense == {}
            assert config.sparse == {"langchain-sparse": qa.SparseVectorConfig("langchain-sparse")}
        else:
            assert set(config.dense) == {""} and set(config.sparse) == {"langchain-sparse"}
        points = parsed_points(wire, config)
        assert len(points) == len(TEXTS)
        expected_names = set(config.dense) | set(config.sparse)
        assert all(set(p) == expected_names for p in points)
        (upsert,) = wire.bodies("PUT", "/points")
        assert upsert["points"][0]["payload"] == {
            "page_content": TEXTS[0],
            "metadata": {"colour": "red"},
        }
        queries = parsed_queries(wire, config)
        search = queries[0]
        if mode == RetrievalMode.HYBRID:
            assert search.query == qa.Fusion("rrf")
            assert [p.using for p in search.prefetch] == ["", "langchain-sparse"]
            assert all(p.limit == 2 for p in search.prefetch)
            assert all(p.filter == FILTER.model_dump(exclude_none=True) for p in search.prefetch)
        else:
            assert isinstance(search.query, qa.Nearest)
            assert search.using == ("" if mode == RetrievalMode.DENSE else "langchain-sparse")
            assert search.limit == 2 and search.offset == 0
        assert search.filter == {"must": [{"key": "metadata.colour", "match": {"value": "red"}}]}
        if mode == RetrievalMode.DENSE:
            mmr = queries[1]
            assert mmr.query.mmr == qa.Mmr(0.4, 3) and mmr.limit == 2
            assert mmr.with_vector is True
        assert wire.bodies("POST", "/points/delete") == [{"points": [2]}]
        (retrieve,) = wire.bodies("POST", "/collections/docs/points")
        assert retrieve["ids"] == [1, 3] and retrieve["with_payload"] is True


def test_langchain_uuid_hex_ids_are_sent_unhyphenated():
    with Wire() as wire:
        QdrantVectorStore.from_texts(
            TEXTS[:1], embedding=DeterministicFakeEmbedding(size=DIM), url=wire.url,
            collection_name="docs", check_compatibility=False,
        )  # fmt: skip
        (upsert,) = wire.bodies("PUT", "/points")
        point_id = upsert["points"][0]["id"]
        assert len(point_id) == 32 and "-" not in point_id  # uuid4().hex: vdb must accept it


def test_llama_index_dense_and_hybrid():
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
    from llama_index.core.vector_stores.types import (
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
    )
    from llama_index.vector_stores.qdrant import QdrantVectorStore as LlamaStore

    def nodes():
        out = []
        for i, text in enumerate(TEXTS):
            node = TextNode(
                text=text,
                id_=f"00000000-0000-0000-0000-00000000000{i}",
                embedding=[float(i + 1)] + [0.5] * (DIM - 1),
                metadata={"colour": "red" if "red" in text else "other"},
            )
            node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc{i % 2}")
            out.append(node)
        return out

    filters = MetadataFilters(filters=[MetadataFilter(key="colour", value="red")])
    for hybrid in (False, True):
        with Wire() as wire:
            client = QdrantClient(url=wire.url, prefer_grpc=False, check_compatibility=False)
            options = {"enable_hybrid": True, "sparse_doc_fn": sparse_fn, "sparse_query_fn": sparse_fn} if hybrid else {}  # fmt: skip
            store = LlamaStore(collection_name="docs", client=client, **options)
            store.add(nodes())
            query = [1.0] + [0.5] * (DIM - 1)
            store.query(
                VectorStoreQuery(query_embedding=query, similarity_top_k=2, filters=filters)
            )
            if hybrid:
                store.query(
                    VectorStoreQuery(
                        query_embedding=query, query_str="red", similarity_top_k=2,
                        mode=VectorStoreQueryMode.HYBRID, filters=filters,
                    )
                )  # fmt: skip
                store.query(
                    VectorStoreQuery(
                        query_str="red", similarity_top_k=2, mode=VectorStoreQueryMode.SPARSE
                    )
                )
            store.delete("doc0")
            client.close()

            config = parsed_config(wire)
            if hybrid:
                assert set(config.dense) == {"text-dense"}
                assert config.sparse == {
                    "text-sparse-new": qa.SparseVectorConfig("text-sparse-new")
                }
            else:
                # an unnamed vector; the store then finds it and writes under the name ""
                assert set(config.dense) == {""} and config.sparse == {}
            (index,) = wire.bodies("PUT", "/collections/docs/index")
            assert index == {"field_name": "doc_id", "field_schema": "keyword"}
            points = parsed_points(wire, config)
            assert len(points) == len(TEXTS)
            names = {"text-dense", "text-sparse-new"} if hybrid else {""}
            assert all(set(p) == names for p in points)
            queries = parsed_queries(wire, config)
            red = {"must": [{"must": [{"key": "colour", "match": {"value": "red"}}]}]}
            assert queries[0].filter == red and queries[0].limit == 2
            if hybrid:
                # hybrid: one batch of a dense and a sparse request, fused by the framework
                usings = [q.using for q in queries]
                assert usings.count("text-sparse-new") == 2 and "text-dense" in usings
                assert all(not q.prefetch for q in queries)
            (delete,) = wire.bodies("POST", "/points/delete")
            assert delete == {"filter": {"must": [{"key": "doc_id", "match": {"value": "doc0"}}]}}
