"""``GET /metrics``: Prometheus text format.

Request figures (count and latency per route, method and status) are kept
by ``MetricsMiddleware`` in a registry of the app's own. Database figures
(points per collection, WAL and checkpoint numbers from ``db.stats()``) and
ingest figures (``handle.stats()`` of each ingest handle) are read at scrape
time and rendered generically as gauges, so new figures appear without a
change here: nested dict keys join into the metric name, dicts keyed by
collection, partition or other non-identifier keys become labels, lists of
numbers become count/p50/p99/max.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_NAME_OK = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LABEL_PARENTS = {
    "collections": "collection",
    "partitions": "partition",
    "topics": "topic",
    "sources": "source",
    "handles": "handle",
}
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class HttpMetrics:
    """The request counter and latency histogram of one app."""

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "vdb_http_requests",
            "HTTP requests answered, by route, method and status code",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "vdb_http_request_duration_seconds",
            "HTTP request latency, by route, method and status code",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:  # the labelled children are looked up once per label set
            labels = (route, method, str(status))
            children = (self.requests.labels(*labels), self.latency.labels(*labels))
            if len(self._children) < 10_000:  # methods and routes are few; stay bounded
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class MetricsMiddleware:
    """Times every HTTP request; the route label is the matched endpoint's name."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope.setdefault("state", {})["vdb_started"] = started
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = scope.get("endpoint")
            route = getattr(endpoint, "__name__", None) or "unmatched"
            self.metrics.observe(route, scope["method"], status, time.perf_counter() - started)


def _metric_name(parts: Iterable[str]) -> str:
    name = "_".join(re.sub(r"[^a-zA-Z0-9_]", "_", str(p)) for p in parts if str(p))
    name = re.sub(r"_+", "_", name).strip("_")
    return "vdb_" + name


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        or hasattr(value, "dtype")
        and getattr(value, "ndim", 1) == 0
    )


def flatten(
    value: Any, parts: tuple[str, ...] = (), labels: tuple[tuple[str, str], ...] = ()
) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
    """Yield ``(metric name, labels, value)`` for every number inside ``value``."""
    if isinstance(value, bool):
        yield _metric_name(parts), labels, float(value)
    elif _is_number(value):
        number = float(value)
        if not math.isnan(number):
            yield _metric_name(parts), labels, number
    elif isinstance(value, dict):
        parent = parts[-1] if parts else ""
        keys_are_names = all(isinstance(k, str) and _NAME_OK.match(k) for k in value)
        if parent in _LABEL_PARENTS or not keys_are_names:
            label = _LABEL_PARENTS.get(parent, "le" if _numeric_keys(value) else "key")
            inner = (*parts[:-1], label) if parent in _LABEL_PARENTS else parts
            if label == "le":
                inner = (*parts, "bucket")
            for k, v in value.items():
                key = "/".join(map(str, k)) if isinstance(k, tuple) else str(k)
                yield from flatten(v, inner, (*labels, (label, key)))
        else:
            for k, v in value.items():
                yield from flatten(v, (*parts, k), labels)
    elif isinstance(value, list | tuple) and value and all(_is_number(v) for v in value):
        ordered = sorted(float(v) for v in value)
        n = len(ordered)
        yield _metric_name((*parts, "samples")), labels, float(n)
        yield _metric_name((*parts, "p50")), labels, ordered[n // 2]
        yield _metric_name((*parts, "p99")), labels, ordered[min(n - 1, int(n * 0.99))]
        yield _metric_name((*parts, "max")), labels, ordered[-1]


def _numeric_keys(value: dict) -> bool:
    try:
        for k in value:
            float(str(k).replace("+Inf", "inf"))
        return bool(value)
    except ValueError:
        return False


class StatsCollector(Collector):
    """Renders ``db.stats()`` and every ingest handle's ``stats()`` as gauges at scrape time."""

    def __init__(self, sources: Callable[[], list[tuple[tuple[str, ...], dict, dict]]]):
        self.sources = sources

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[tuple[str, tuple[str, ...]], GaugeMetricFamily] = {}
        try:
            sources = self.sources()
        except Exception:  # a broken figure must never break the scrape
            log.exception("collecting stats for /metrics failed")
            return
        for prefix, base_labels, stats in sources:
            for name, labels, number in flatten(stats, prefix, tuple(base_labels.items())):
                label_names = tuple(k for k, _ in labels)
                family_key = (name, label_names)
                family = families.get(family_key)
                if family is None:
                    if any(n == name for n, _ in families):
                        continue  # same name with other labels: Prometheus forbids it
                    family = families[family_key] = GaugeMetricFamily(
                        name, f"vdb figure {name[4:]}", labels=list(label_names)
                    )
                family.add_metric([v for _, v in labels], number)
        yield from families.values()


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
