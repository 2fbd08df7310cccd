"""Real fixtures for the ingest tests: a Tansu broker (one per module), topics, producers."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.ingest.broker import Broker

# Fast group joins on Tansu: a join takes about half the session timeout.
FAST_GROUP = {
    "session_timeout_ms": 4000,
    "heartbeat_interval_ms": 400,
    "max_poll_interval_ms": 10000,
}

_names = itertools.count()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A Tansu broker for the test module; the test fails if it cannot start."""
    b = Broker(tmp_path_factory.mktemp("tansu") / "tansu.log")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def unique(prefix: str) -> str:
    """A topic / group name not used before in this session."""
    return f"{prefix}-{next(_names)}-{int(time.time() * 1000) % 100000}"


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    return name


@pytest.fixture
def producer(broker: Broker) -> Iterator[Any]:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=2)
    try:
        yield p
    finally:
        p.close(timeout=10)


def send_json(producer: Any, topic: str, obj: dict | None, key: Any = None, **kw: Any) -> None:
    """Send ``obj`` as JSON (``None`` = tombstone), keyed by ``str(id)`` unless ``key`` is given."""
    if key is None and obj is not None and "id" in obj:
        key = str(obj["id"])
    key_bytes = key if isinstance(key, bytes | None) else str(key).encode()
    value = None if obj is None else json.dumps(obj).encode()
    producer.send(topic, key=key_bytes, value=value, **kw)


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with a message after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
