"""HTTP tracing: a server span per request, parse/filter/search/encode children, traceparent.

The server is a real uvicorn on a free port, in this process, so that the
SDK's in-memory exporter sees its spans.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import uvicorn

import vdb
from tests.http.conftest import free_port
from tests.tracing import Spans, attrs, tracing
from vdb.config import ServerConfig
from vdb.http.app import build_app

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class InProcessServer:
    """uvicorn serving ``build_app(db)`` in a thread of this process."""

    def __init__(self, db: vdb.Database, config: ServerConfig):
        self.port = free_port()
        app = build_app(db, config, warm_in_background=False)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def traced_server(tmp_path) -> Iterator[tuple[InProcessServer, Spans]]:
    with vdb.open(tmp_path / "data", warm=False, checkpoint_interval_s=None) as db:
        col = db.create_collection("docs", dim=4, metric="l2")
        vectors = np.eye(4, dtype=np.float32)
        col.upsert([1, 2, 3, 4], vectors, [{"n": i} for i in range(4)])
        with tracing() as spans:
            with InProcessServer(db, ServerConfig(warm=False, api_key="k")) as server:
                yield server, spans


def _wait_for(spans: Spans, name: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = spans.named(name)
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"no span {name!r}: {[s.name for s in spans.all()]}")


def test_search_request_span_tree_continues_the_callers_trace(traced_server):
    server, spans = traced_server
    headers = {"api-key": "k", "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    r = httpx.post(
        server.url + "/collections/docs/points/query",
        json={"query": [1, 0, 0, 0], "limit": 2},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["result"]["points"][0]["id"] == 1
    (request,) = _wait_for(spans, "POST /collections/{name}/points/query")
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert format(request.parent.span_id, "016x") == PARENT_ID
    assert request.kind.name == "SERVER"
    a = attrs(request)
    assert a["http.request.method"] == "POST"
    assert a["http.route"] == "/collections/{name}/points/query"
    assert a["http.response.status_code"] == 200
    assert a["db.collection.name"] == "docs"
    assert a["db.operation.name"] == "query_points"
    children = [s.name for s in sorted(spans.children(request), key=lambda s: s.start_time)]
    assert children == ["vdb.http.parse", "vdb.search", "vdb.http.encode"]
    search = spans.child(request, "vdb.search")
    assert attrs(search)["db.response.returned_rows"] == 2
    assert attrs(search)["vdb.search.k"] == 2
    assert attrs(search)["db.collection.name"] == "docs"


def test_filtered_search_has_a_filter_span_and_runs_in_the_pool(traced_server):
    server, spans = traced_server
    body = {
        "query": [0, 1, 0, 0],
        "limit": 3,
        "filter": {"must": [{"key": "n", "range": {"gte": 1}}]},
        "with_payload": True,
    }
    r = httpx.post(
        server.url + "/collections/docs/points/query", json=body, headers={"api-key": "k"}
    )
    assert r.status_code == 200, r.text
    assert [p["id"] for p in r.json()["result"]["points"]][0] == 2
    (request,) = _wait_for(spans, "POST /collections/{name}/points/query")
    assert request.parent is None  # no traceparent: a new trace
    parse = spans.child(request, "vdb.http.parse")
    spans.child(parse, "vdb.http.filter")
    search = spans.child(request, "vdb.search")
    assert attrs(search)["vdb.search.filtered"] is True
    assert attrs(search)["db.response.returned_rows"] == 3


def test_upsert_request_parents_the_group_commit(traced_server):
    server, spans = traced_server
    r = httpx.put(
        server.url + "/collections/docs/points?wait=true",
        json={"points": [{"id": 9, "vector": [0.5, 0.5, 0, 0]}]},
        headers={"api-key": "k", "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
    )
    assert r.status_code == 200, r.text
    (request,) = _wait_for(spans, "PUT /collections/{name}/points")
    commit = spans.child(request, "vdb.group_commit")
    assert commit.context.trace_id == int(TRACE_ID, 16)
    spans.child(commit, "vdb.wal.commit")
    assert attrs(spans.child(commit, "vdb.apply"))["db.collection.name"] == "docs"


def test_refused_and_failed_requests_are_traced_with_their_status(traced_server):
    server, spans = traced_server
    r = httpx.post(server.url + "/collections/docs/points/query", json={"query": [1, 0, 0, 0]})
    assert r.status_code == 401
    r = httpx.post(
        server.url + "/collections/docs/points/query",
        content=b"{not json",
        headers={"api-key": "k", "content-type": "application/json"},
    )
    assert r.status_code == 400
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        server_spans = [s for s in spans.all() if s.kind.name == "SERVER"]
        if len(server_spans) >= 2:
            break
        time.sleep(0.02)
    statuses = sorted(attrs(s)["http.response.status_code"] for s in server_spans)
    assert statuses == [400, 401]
