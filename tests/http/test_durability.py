"""Crash and shutdown: what got a 200 survives kill -9; SIGTERM drains and loses nothing."""

from __future__ import annotations

import signal
import threading

import httpx
import numpy as np
import pytest

WAIT = 60.0  # seconds; generous, the test machine is shared and noisy

DIM = 8
WRITERS = 6
BATCH = 5


class Writers:
    """Threads that upsert unique ids until told to stop or the server goes away."""

    def __init__(self, url: str):
        self.url = url
        self.acked: list[int] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.enough = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(w,)) for w in range(WRITERS)]

    def run(self, worker: int) -> None:
        rng = np.random.default_rng(worker)
        batch_no = 0
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set():
                ids = [worker * 1_000_000 + batch_no * BATCH + j for j in range(BATCH)]
                batch_no += 1
                body = {
                    "batch": {
                        "ids": ids,
                        "vectors": rng.standard_normal((BATCH, DIM)).tolist(),
                        "payloads": [{"w": worker} for _ in ids],
                    }
                }
                try:
                    r = http.put("/collections/d/points?wait=true", json=body)
                except httpx.HTTPError:
                    return  # the server is gone
                with self.lock:
                    self.statuses.append(r.status_code)
                    if r.status_code == 200:
                        self.acked.extend(ids)
                        if len(self.acked) >= 250:
                            self.enough.set()

    def start(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def create(url: str) -> None:
    r = httpx.put(
        timeout=WAIT,
        url=url + "/collections/d",
        json={"vectors": {"size": DIM, "distance": "Cosine"}},
    )
    assert r.status_code == 200


def missing(url: str, ids: list[int]) -> set[int]:
    found: set[int] = set()
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            r = http.post("/collections/d/points", json={"ids": chunk, "with_payload": False})
            assert r.status_code == 200
            found.update(p["id"] for p in r.json()["result"])
    return set(ids) - found


@pytest.mark.slow
def test_kill_9_during_concurrent_upserts_loses_no_acknowledged_write(serve, tmp_path):
    data = tmp_path / "crash"
    server = serve(data_dir=data)
    create(server.url)
    writers = Writers(server.url).start()
    assert writers.enough.wait(120), "writers made no progress"
    server.kill9()
    writers.join()
    acked = list(writers.acked)
    assert len(acked) >= 250
    assert set(writers.statuses) == {200}
    again = serve(data_dir=data)
    assert missing(again.url, acked) == set()
    count = httpx.post(timeout=WAIT, url=again.url + "/collections/d/points/count", json={}).json()[
        "result"
    ]["count"]
    assert count >= len(acked)


@pytest.mark.slow
def test_sigterm_drains_requests_in_flight_and_loses_nothing(serve, tmp_path):
    data = tmp_path / "graceful"
    server = serve(data_dir=data)
    create(server.url)
    writers = Writers(server.url).start()
    assert writers.enough.wait(120), "writers made no progress"
    server.signal(signal.SIGTERM)
    code = server.wait(timeout=60)
    writers.join()
    assert code == 0
    assert "database closed" in server.log()
    assert set(writers.statuses) <= {200}  # in-flight requests finished, none failed
    acked = list(writers.acked)
    again = serve(data_dir=data)
    assert missing(again.url, acked) == set()


@pytest.mark.slow
def test_second_signal_exits_at_once_without_losing_acknowledged_writes(serve, tmp_path):
    data = tmp_path / "twice"
    server = serve(data_dir=data)
    create(server.url)
    writers = Writers(server.url).start()
    assert writers.enough.wait(120), "writers made no progress"
    server.signal(signal.SIGTERM)
    server.signal(signal.SIGTERM)
    code = server.wait(timeout=60)
    writers.join()
    assert code in (0, 128 + signal.SIGTERM)
    acked = list(writers.acked)
    again = serve(data_dir=data)
    assert missing(again.url, acked) == set()
