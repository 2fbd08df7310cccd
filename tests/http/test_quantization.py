"""Scalar int8 quantization over Qdrant's REST API, driven by the real qdrant-client."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as m

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "minilm-10k"


@pytest.fixture(scope="module")
def client(server) -> QdrantClient:
    return QdrantClient(url=server.url, timeout=60)


def test_create_get_and_query_an_int8_collection(client):
    base = np.load(FIXTURE / "base.npy")[:2000].astype(np.float32)
    queries = np.load(FIXTURE / "queries.npy")[:20].astype(np.float32)
    client.create_collection(
        "q8",
        vectors_config=m.VectorParams(size=384, distance=m.Distance.COSINE, on_disk=True),
        quantization_config=m.ScalarQuantization(
            scalar=m.ScalarQuantizationConfig(
                type=m.ScalarType.INT8, quantile=0.99, always_ram=True
            )
        ),
    )
    info = client.get_collection("q8")
    quant = info.config.quantization_config
    assert isinstance(quant, m.ScalarQuantization)
    assert quant.scalar.type == m.ScalarType.INT8
    assert quant.scalar.quantile == 0.99 and quant.scalar.always_ram is True
    assert info.config.params.vectors.on_disk is True
    client.upsert(
        "q8",
        points=m.Batch(ids=list(range(2000)), vectors=base.tolist()),
        wait=True,
    )
    exact = client.query_points(
        "q8", query=queries[0].tolist(), limit=10, search_params=m.SearchParams(exact=True)
    )
    truth = [p.id for p in exact.points]
    for params in (
        None,
        m.QuantizationSearchParams(rescore=True, oversampling=2.0),
        m.QuantizationSearchParams(ignore=True),
    ):
        res = client.query_points(
            "q8",
            query=queries[0].tolist(),
            limit=10,
            search_params=m.SearchParams(hnsw_ef=64, quantization=params),
        )
        got = [p.id for p in res.points]
        assert len(set(got) & set(truth)) >= 8, params
        if params is None or params.rescore:
            by_id = {p.id: p.score for p in exact.points}
            for p in res.points:
                if p.id in by_id:
                    assert abs(p.score - by_id[p.id]) < 1e-4
    approx = client.query_points(
        "q8",
        query=queries[1].tolist(),
        limit=5,
        search_params=m.SearchParams(quantization=m.QuantizationSearchParams(rescore=False)),
    )
    assert len(approx.points) == 5
    batch = client.query_batch_points(
        "q8",
        requests=[
            m.QueryRequest(
                query=q.tolist(),
                limit=3,
                params=m.SearchParams(quantization=m.QuantizationSearchParams(oversampling=1.5)),
            )
            for q in queries[:4]
        ],
    )
    assert [len(r.points) for r in batch] == [3, 3, 3, 3]
    # a plain float collection reports no quantization
    client.create_collection("f32", vectors_config=m.VectorParams(size=4, distance=m.Distance.DOT))
    assert client.get_collection("f32").config.quantization_config is None


@pytest.mark.parametrize(
    "body, field",
    [
        ({"quantization_config": {"product": {"compression": "x16"}}}, "product"),
        ({"quantization_config": {"binary": {"always_ram": True}}}, "binary"),
        ({"quantization_config": {"scalar": {"type": "int4"}}}, "quantization_config.scalar.type"),
        ({"quantization_config": {"scalar": {"type": "int8", "quantile": 0.2}}}, "quantile"),
        ({"quantization_config": {"scalar": {"type": "int8", "quantile": "x"}}}, "quantile"),
        ({"quantization_config": {"scalar": {"type": "int8", "always_ram": 3}}}, "always_ram"),
        ({"quantization_config": {"scalar": {"type": "int8", "bits": 4}}}, "bits"),
        ({"quantization_config": {"scalar": []}}, "quantization_config.scalar"),
        ({"quantization_config": {}}, "quantization_config"),
        ({"quantization_config": "int8"}, "quantization_config"),
        ({"vectors_extra": {"quantization_config": {"binary": {}}}}, "vectors.quantization_config"),
        ({"vectors_extra": {"on_disk": "yes"}}, "vectors.on_disk"),
    ],
)
def test_malformed_quantization_configs_get_400_naming_the_field(server, body, field):
    vectors = {"size": 4, "distance": "Dot", **body.pop("vectors_extra", {})}
    r = httpx.put(f"{server.url}/collections/bad", json={"vectors": vectors, **body}, timeout=30)
    assert r.status_code == 400, r.text
    assert field in r.json()["status"]["error"]
    assert httpx.get(f"{server.url}/collections/bad/exists", timeout=30).json()["result"] == {
        "exists": False
    }


@pytest.mark.parametrize(
    "quantization, field",
    [
        ({"oversampling": 0.5}, "params.quantization.oversampling"),
        ({"rescore": "yes"}, "params.quantization.rescore"),
        ({"ignore": 1}, "params.quantization.ignore"),
        ({"speed": True}, "speed"),
        ([], "params.quantization"),
    ],
)
def test_malformed_quantization_search_params_get_400(server, client, quantization, field):
    if not client.collection_exists("small"):
        client.create_collection(
            "small",
            vectors_config=m.VectorParams(size=4, distance=m.Distance.DOT),
            quantization_config=m.ScalarQuantization(
                scalar=m.ScalarQuantizationConfig(type="int8")
            ),
        )
        client.upsert("small", points=m.Batch(ids=[1, 2], vectors=[[1, 0, 0, 0], [0, 1, 0, 0]]))
    body = {"query": [1, 0, 0, 0], "limit": 2, "params": {"quantization": quantization}}
    r = httpx.post(f"{server.url}/collections/small/points/query", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert field in r.json()["status"]["error"]
