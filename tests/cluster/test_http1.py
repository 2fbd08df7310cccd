"""The router's HTTP/1.1 server (``vdb.cluster.http1``) on a real socket, in front of a real
Starlette app: keep-alive, pipelining, 100-continue, HEAD, streaming, the limits and errors."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.http.conftest import free_port
from vdb.cluster.http1 import serve_app


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {"method": request.method, "path": request.url.path, "query": request.url.query,
         "length": len(body), "type": request.headers.get("content-type")}
    )  # fmt: skip


async def stream(request: Request) -> Response:
    async def parts() -> Iterator[bytes]:
        for i in range(3):
            yield b"part%d;" % i

    return StreamingResponse(parts(), media_type="text/plain")


async def boom(request: Request) -> Response:
    raise RuntimeError("boom")


async def raw_asgi(scope, receive, send) -> None:  # noqa: ANN001 - ASGI
    if scope["path"] == "/raw":
        message = await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"got " + message["body"]})
        return
    await APP(scope, receive, send)


APP = Starlette(
    routes=[
        Route("/echo/{x}", echo, methods=["GET", "POST", "HEAD"]),
        Route("/stream", stream),
        Route("/boom", boom),
    ]
)


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    port = free_port()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    done = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve_app(raw_asgi, "127.0.0.1", port, max_body=1000, stop=stop))
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            threading.Event().wait(0.05)
    yield port
    loop.call_soon_threadsafe(stop.set)
    assert done.wait(15)


def exchange(port: int, data: bytes, want: int = 1) -> bytes:
    """Send raw bytes; read until ``want`` responses' heads arrived and the peer is quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.settimeout(0.5)
        out = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if out.count(b"HTTP/1.1 ") >= want:
                    return out
                continue
            if not chunk:
                return out
            out += chunk


def test_keep_alive_query_and_path_through_httpx(server: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{server}") as client:
        for i in range(3):
            r = client.post(f"/echo/a%20b{i}", params={"q": "1,2"}, json={"k": i})
            assert r.status_code == 200
            assert r.json() == {"method": "POST", "path": f"/echo/a b{i}", "query": "q=1%2C2",
                                "length": 7, "type": "application/json"}  # fmt: skip
        r = client.post("/raw", content=b"xyz")
        assert (r.status_code, r.content) == (201, b"got xyz")  # no content-length given
        r = client.get("/stream")
        assert r.text == "part0;part1;part2;" and r.headers["transfer-encoding"] == "chunked"
        r = client.head("/echo/x")
        assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0
        r = client.get("/boom")
        assert r.status_code == 500
        assert client.get("/echo/again").json()["path"] == "/echo/again"


def test_pipelined_requests_are_answered_in_order(server: int) -> None:
    data = b"".join(
        b"GET /echo/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)
    ) + b"POST /echo/last HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    out = exchange(server, data, want=4)
    assert out.count(b"HTTP/1.1 200 OK") == 4
    assert [out.index(b'"/echo/%s"' % p) for p in (b"0", b"1", b"2", b"last")] == sorted(
        out.index(b'"/echo/%s"' % p) for p in (b"0", b"1", b"2", b"last")
    )
    assert out.rstrip().endswith(b"}") and b"connection: close" in out


def test_expect_continue_limits_and_bad_requests(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        sock.sendall(b"POST /echo/c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")  # fmt: skip
        assert sock.recv(1000) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        answer = b""
        while not answer.endswith(b"}"):
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 OK") and b'"length":5' in answer
    cases = [
        (b"POST /echo/x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", b"413"),
        (b"POST /echo/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"411"),
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /echo/x HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
        (b"GET /echo/x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b"400"),
        (b"GET /echo/x HTTP/1.1\r\nX: " + b"a" * 70_000, b"431"),
    ]
    for request, status in cases:
        out = exchange(server, request)
        assert out.startswith(b"HTTP/1.1 " + status), (request[:60], out[:200])
        assert b'{"status":{"error":' in out
    out = exchange(server, b"GET /echo/old HTTP/1.0\r\n\r\n")  # HTTP/1.0: closed after one
    assert out.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in out
