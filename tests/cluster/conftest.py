"""Real clusters for the cluster tests: a Tansu broker, ``serve --cluster`` nodes, a router.

Every part is a real process on 127.0.0.1 stopped by its pid: the broker
(``tests.ingest.broker``), the nodes (``python -m vdb serve`` with Kafka
ingest in a consumer group) and the router (``python -m vdb router``).
Consumer settings join fast on Tansu (``FAST_GROUP``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import fixture
from tests.http.conftest import ServerProcess, free_port, serve
from tests.ingest import conftest as ingest_conftest
from tests.ingest.broker import Broker
from tests.ingest.conftest import FAST_GROUP, create_topic, unique, wait_until

REPO = Path(__file__).resolve().parents[2]

broker = ingest_conftest.broker  # the real Tansu broker, one per test module

__all__ = ["FAST_GROUP", "create_topic", "serve", "unique", "wait_until"]


def minilm(n: int, n_queries: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The first ``n`` base vectors, ``n_queries`` queries and the base texts (float32)."""
    data = fixture()
    return data.base[:n].copy(), data.queries[:n_queries].copy(), data.texts[:n]


def node_args(
    bootstrap: str, topic: str, group: str, cluster: str, node_id: str, port: int, dim: int,
    metric: str = "cosine",
) -> list[str]:  # fmt: skip
    args = [
        "--cluster", cluster, "--node-id", node_id,
        "--advertise-url", f"http://127.0.0.1:{port}",
        "--ingest", "kafka", "--kafka-bootstrap", bootstrap, "--kafka-topic", topic,
        "--kafka-group", group, "--collection", "docs", "--create-dim", str(dim),
        "--create-metric", metric,
    ]  # fmt: skip
    for key, value in FAST_GROUP.items():
        args += ["--kafka-option", f"{key}={value}"]
    return args


class RouterProcess:
    """One ``python -m vdb router`` process."""

    def __init__(self, log_path: Path, bootstrap: str, cluster: str, *extra: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.cmd = [
            sys.executable, "-m", "vdb", "router", "--kafka-bootstrap", bootstrap,
            "--cluster", cluster, "--port", str(self.port), "--log-level", "warning", *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RouterProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited: {self.log_path.read_text()[-3000:]}")
            try:
                return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=60, interval=0.1)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class Cluster:
    """Nodes in replica groups over one topic, and a router in front."""

    def __init__(
        self, tmp: Path, broker: Broker, partitions: int, dim: int, create: dict | None = None
    ) -> None:
        self.tmp = tmp
        self.create = create  # create_collection keywords: the nodes' collection made up front
        self.broker = broker
        self.dim = dim
        self.topic = create_topic(broker.bootstrap, unique("cl"), partitions=partitions)
        self.name = unique("vdbc")
        self.partitions = partitions
        self.nodes: dict[str, ServerProcess] = {}
        self.groups: dict[str, str] = {}
        self.router: RouterProcess | None = None

    def add_node(
        self, node_id: str, group: str, wait: bool = True, extra: tuple[str, ...] = ()
    ) -> ServerProcess:
        """Start node ``node_id`` in ``group``; ``extra``: more serve flags (more ingest specs)."""
        old = self.nodes.get(node_id)
        port = old.port if old is not None else free_port()
        args = node_args(
            self.broker.bootstrap, self.topic, group, self.name, node_id, port, self.dim
        ) + list(extra)
        data_dir = self.tmp / node_id
        if self.create is not None and old is None:
            import vdb

            with vdb.open(data_dir, warm=False) as db:
                db.create_collection("docs", **self.create)
        node = ServerProcess(data_dir, *args, port=port)
        self.nodes[node_id] = node
        self.groups[node_id] = group
        return node.start(wait=wait)

    def start_router(self, *extra: str) -> RouterProcess:
        self.router = RouterProcess(
            self.tmp / "router.log", self.broker.bootstrap, self.name, *extra
        ).start()
        return self.router

    def map(self) -> dict[str, Any]:
        assert self.router is not None
        return httpx.get(self.router.url + "/cluster", timeout=5).json()["result"]

    def serving(self, group: str | None = None) -> dict[int, set[str]]:
        """Partition -> nodes serving it (healthy, state serving), optionally of one group."""
        out: dict[int, set[str]] = {}
        for node in self.map()["nodes"]:
            if not node["healthy"]:
                continue
            if group is not None and self.groups.get(node["node_id"]) != group:
                continue
            meta = node["collections"].get("docs") or {}
            for key, part in (meta.get("partitions") or {}).items():
                if part["state"] == "serving":
                    out.setdefault(int(key), set()).add(node["node_id"])
        return out

    def covered(self, group: str) -> bool:
        return set(self.serving(group)) == set(range(self.partitions))

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
        for node in self.nodes.values():
            node.stop(timeout=30)


@pytest.fixture(scope="module")
def make_cluster(
    tmp_path_factory: pytest.TempPathFactory, broker: Broker
) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(partitions: int = 4, dim: int = 384, create: dict | None = None) -> Cluster:
        cluster = Cluster(tmp_path_factory.mktemp("cluster"), broker, partitions, dim, create)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def post(url: str, body: Any, **params: Any) -> httpx.Response:
    return httpx.post(url, json=body, params=params or None, timeout=30)


def wait_for(predicate: Callable[[], Any], timeout: float = 90.0) -> Any:
    return wait_until(predicate, timeout=timeout, interval=0.2)


def now() -> float:
    return time.monotonic()
