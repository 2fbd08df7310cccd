"""A real OpenTelemetry SDK with the in-memory exporter, for the tracing tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vdb import telemetry


class Spans:
    """The finished spans of one test, with look-ups by name and parent."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {[s.name for s in self.all()]}"
        return found[0]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        return [
            s
            for s in self.all()
            if s.parent is not None and s.parent.span_id == parent.context.span_id
        ]

    def child(self, parent: ReadableSpan, name: str) -> ReadableSpan:
        found = [s for s in self.children(parent) if s.name == name]
        names = [s.name for s in self.children(parent)]
        assert len(found) == 1, f"{parent.name} has children {names}, not one {name!r}"
        return found[0]

    def clear(self) -> None:
        self.exporter.clear()


@contextmanager
def tracing() -> Iterator[Spans]:
    """vdb traces into an in-memory exporter inside the block."""
    spans = Spans()
    with telemetry.enabled_with(spans.provider):
        yield spans
    spans.provider.shutdown()


def attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})
