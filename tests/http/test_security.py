"""API keys, TLS, body size limit and rate limit, each on a real server."""

from __future__ import annotations

import ssl
import warnings

import httpx
import pytest
import trustme
from qdrant_client import QdrantClient
from qdrant_client import models as m
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import UnexpectedResponse

WAIT = 60.0  # seconds; generous, the test machine is shared and noisy

RW, RO = "rw-key-0123456789", "ro-key-9876543210"


def client(url: str, **kw) -> QdrantClient:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "api key over an insecure connection"
        return QdrantClient(url=url, timeout=60, **kw)


def test_api_keys_read_write_and_read_only(serve):
    server = serve("--api-key", RW, "--read-only-api-key", RO)
    rw = client(server.url, api_key=RW, https=False)
    ro = client(server.url, api_key=RO, https=False)
    rw.create_collection("k", vectors_config=m.VectorParams(size=2, distance=m.Distance.DOT))
    rw.upsert("k", m.Batch(ids=[1, 2], vectors=[[1, 0], [0, 1]]))
    # the read-only key reads ...
    assert ro.count("k").count == 2
    assert [p.id for p in ro.query_points("k", query=[1.0, 0.0], limit=1).points] == [1]
    assert len(ro.retrieve("k", [1, 2])) == 2
    assert len(ro.scroll("k")[0]) == 2
    # ... and may not write
    with pytest.raises(UnexpectedResponse) as err:
        ro.upsert("k", m.Batch(ids=[3], vectors=[[1, 1]]))
    assert err.value.status_code == 403
    with pytest.raises(UnexpectedResponse) as err:
        ro.delete_collection("k")
    assert err.value.status_code == 403
    assert rw.count("k").count == 2
    # no key or a wrong key: 401 with a JSON body
    for headers in ({}, {"api-key": "wrong"}, {"Authorization": "Bearer wrong"}):
        r = httpx.get(timeout=WAIT, url=server.url + "/collections", headers=headers)
        assert r.status_code == 401
        assert r.json()["status"]["error"]
    # Bearer works like the api-key header
    r = httpx.get(
        timeout=WAIT, url=server.url + "/collections", headers={"Authorization": f"Bearer {RO}"}
    )
    assert r.status_code == 200 and r.json()["result"]["collections"] == [{"name": "k"}]
    r = httpx.put(
        timeout=WAIT,
        url=server.url + "/collections/k/points",
        json={"points": [{"id": 9, "vector": [1, 1]}]},
        headers={"Authorization": f"Bearer {RO}"},
    )
    assert r.status_code == 403
    # health and version stay open
    assert httpx.get(timeout=WAIT, url=server.url + "/healthz").status_code == 200
    assert (
        httpx.get(timeout=WAIT, url=server.url + "/").json()["title"]
        == "qdrant - vector search engine"
    )
    # settings are logged once at start, keys masked
    log = server.log()
    assert log.count("vdb serve settings") == 1
    assert RW not in log and RO not in log and '"api_key": "***"' in log


def test_tls_with_a_self_signed_certificate(serve, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    server = serve(
        "--ssl-certfile",
        str(cert_path),
        "--ssl-keyfile",
        str(key_path),
        "--api-key",
        RW,
        scheme="https",
        verify=ctx,
    )
    # with api_key and no https= the client switches to https by itself
    c = QdrantClient(url=server.url, api_key=RW, verify=ctx, check_compatibility=False, timeout=60)
    c.create_collection("tls", vectors_config=m.VectorParams(size=3, distance=m.Distance.COSINE))
    c.upsert("tls", m.Batch(ids=[1], vectors=[[1, 2, 3]]))
    assert c.count("tls").count == 1
    with pytest.raises(httpx.HTTPError):  # an untrusted certificate is refused
        httpx.get(timeout=WAIT, url=server.url + "/healthz")
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
        httpx.get(timeout=WAIT, url=server.url.replace("https", "http") + "/healthz")


def test_body_limit_is_413_before_reading(serve):
    server = serve("--max-body-bytes", "4096")
    url = server.url
    assert (
        httpx.put(
            timeout=WAIT,
            url=url + "/collections/b",
            json={"vectors": {"size": 4, "distance": "Dot"}},
        ).status_code
        == 200
    )
    big = {
        "points": [{"id": i, "vector": [0.5] * 4, "payload": {"t": "x" * 100}} for i in range(100)]
    }
    r = httpx.put(timeout=WAIT, url=url + "/collections/b/points", json=big)
    assert r.status_code == 413
    assert "limit" in r.json()["status"]["error"]

    def chunks():  # no Content-Length: counted while it streams
        yield b'{"points": ['
        for i in range(200):
            yield b'{"id": %d, "vector": [1, 2, 3, 4], "payload": {"t": "%s"}},' % (i, b"y" * 50)
        yield b'{"id": 999, "vector": [1, 2, 3, 4]}]}'

    r = httpx.put(
        timeout=WAIT,
        url=url + "/collections/b/points",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["status"]["error"]
    small = {"points": [{"id": 1, "vector": [1, 2, 3, 4]}]}
    assert httpx.put(timeout=WAIT, url=url + "/collections/b/points", json=small).status_code == 200
    r = httpx.post(timeout=WAIT, url=url + "/collections/b/points/count", json={})
    assert r.json()["result"]["count"] == 1


def test_rate_limit_is_429_with_retry_after_per_key(serve):
    server = serve(
        "--rate-limit", "0.5", "--rate-burst", "2", "--api-key", RW, "--read-only-api-key", RO
    )
    statuses, retry = [], []
    with httpx.Client(base_url=server.url, timeout=WAIT, headers={"api-key": RO}) as http:
        for _ in range(8):
            r = http.get("/collections")
            statuses.append(r.status_code)
            if r.status_code == 429:
                retry.append(int(r.headers["Retry-After"]))
                assert r.json()["status"]["error"]
    assert statuses[0] == 200
    assert 429 in statuses and set(statuses) <= {200, 429}
    assert all(s >= 1 for s in retry)
    # the other key has a bucket of its own: its first request passes
    r = httpx.get(timeout=WAIT, url=server.url + "/collections", headers={"api-key": RW})
    assert r.status_code == 200
    c = client(server.url, api_key=RW, https=False, check_compatibility=False)
    with pytest.raises(ResourceExhaustedResponse) as err:
        for _ in range(8):
            c.get_collections()
    assert err.value.retry_after_s >= 1
    # health is never limited
    assert httpx.get(timeout=WAIT, url=server.url + "/healthz").status_code == 200
