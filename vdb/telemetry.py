"""OpenTelemetry traces: setup from the standard ``OTEL_*`` variables, spans, W3C trace context.

Tracing is off by default. When it is off nothing of OpenTelemetry is
imported and every helper here returns at once: ``span()`` hands back one
shared no-op context manager, so the instrumented paths (HTTP requests,
the writer's group commit, ingest batches) pay a function call and an
``is None`` test, nothing more.

It is switched on by ``configure()`` (``vdb serve`` calls it at start) from
the standard variables:

* ``OTEL_TRACES_EXPORTER``: ``otlp``, ``console`` or ``none`` (a comma list
  is allowed, e.g. ``console,otlp``); unset or ``none`` keeps tracing off.
* ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
  ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_PROTOCOL``
  (``http/protobuf``, the default, or ``grpc``): read by the OTLP exporter.
* ``OTEL_SERVICE_NAME`` (default ``vdb``), ``OTEL_RESOURCE_ATTRIBUTES``,
  ``OTEL_TRACES_SAMPLER`` / ``_ARG``: read by the SDK; ``OTEL_SDK_DISABLED=true``
  keeps tracing off whatever else is set.

An application that embeds vdb and has its own ``TracerProvider`` calls
``enable(provider)`` instead. The SDK and the exporters are optional
dependencies (the ``trace`` and ``otlp`` extras); asking for an exporter
that is not installed is an ``InvalidInput`` naming the package.

Trace context is W3C ``traceparent`` / ``tracestate``: ``extract_http``
reads it from ASGI headers (a request continues the caller's trace),
``message_link`` from a Kafka message's headers (a batch span *links* to
each producer span, as the messaging conventions say for batches), and
``kafka_headers`` writes it for a producer.

Work handed to vdb's single writer thread carries the submitting thread's
span context (``carry``), so a group commit's span is a child of the
request or batch that caused it and links to the others it merged.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from vdb.errors import InvalidInput

log = logging.getLogger(__name__)

TRACER_NAME = "vdb"
MAX_LINKS = 128
"""Links per span at most (the SDK's default limit): one per distinct producer span."""

F = TypeVar("F", bound=Callable[..., Any])

_tracer: Any = None  # opentelemetry.trace.Tracer while tracing is on, else None
_provider: Any = None  # the provider configure() made (shut down by shutdown())
_lock = threading.Lock()


class _NoopSpan:
    """Stands in for a span while tracing is off: every method does nothing."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass

    def update_name(self, name: str) -> None:
        pass

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        pass

    def is_recording(self) -> bool:
        return False

    def end(self, end_time: int | None = None) -> None:
        pass

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


NOOP_SPAN = _NoopSpan()


def enabled() -> bool:
    """Whether spans are being recorded."""
    return _tracer is not None


def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: str = "internal",
    parent: Any = None,
    links: Iterable[Any] | None = None,
    start_time: int | None = None,
) -> Any:
    """A context manager that makes ``name`` the current span (a no-op while tracing is off).

    ``kind``: ``internal``, ``server``, ``client``, ``producer`` or ``consumer``.
    ``parent``: an OpenTelemetry ``Context`` (e.g. from ``extract_http``) or a
    ``SpanContext``; default the current span. ``links``: ``Link`` objects.
    ``start_time``: nanoseconds since the epoch, for a span that began earlier.
    An exception leaving the block is recorded on the span and sets its status.
    """
    tracer = _tracer
    if tracer is None:
        return NOOP_SPAN
    return tracer.start_as_current_span(
        name,
        context=_as_context(parent),
        kind=_KINDS[kind],
        attributes=attributes,
        links=list(links) if links else None,
        start_time=start_time,
    )


def record_span(
    name: str,
    start_time: int,
    end_time: int,
    attributes: Mapping[str, Any] | None = None,
    *,
    parent: Any = None,
) -> None:
    """Record a span that already happened (e.g. a poll timed in another thread)."""
    tracer = _tracer
    if tracer is None:
        return
    started = tracer.start_span(
        name, context=_as_context(parent), attributes=attributes, start_time=start_time
    )
    started.end(end_time=max(end_time, start_time))


def traced(
    name: str, attributes: Callable[..., Mapping[str, Any]] | None = None
) -> Callable[[F], F]:
    """Decorate a function so each call is a span ``name``.

    ``attributes(*args, **kwargs)`` (called only while tracing is on) gives
    the span's attributes from the call's arguments. A dict result of the
    call adds its number and string items as ``vdb.result.<key>`` attributes.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _tracer is None:
                return func(*args, **kwargs)
            attrs = attributes(*args, **kwargs) if attributes is not None else None
            with span(name, attrs) as current:
                result = func(*args, **kwargs)
                if isinstance(result, dict):
                    for key, value in result.items():
                        if isinstance(value, int | float | str) and not isinstance(value, bool):
                            current.set_attribute(f"vdb.result.{key}", value)
                return result

        return wrapper  # type: ignore[return-value]

    return decorate


# -- the writer: requests carry their submitter's context ---------------------------------


def carry(request: Any) -> None:
    """Remember the current span context on a write request (done in the submitting thread)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        try:
            request.trace_context = context
        except AttributeError:  # a request type without room for it: no parent then
            pass


def group_commit(func: F) -> F:
    """Decorate the writer's ``_process(self, group)``: one ``vdb.group_commit`` span per group.

    The span's parent is the first request's carried context (the HTTP
    request or ingest batch that woke the writer); every other carried
    context becomes a link, since a group commit serves many callers.
    """

    @functools.wraps(func)
    def wrapper(self: Any, group: list[Any]) -> Any:
        if _tracer is None:
            return func(self, group)
        from opentelemetry.trace import Link

        contexts = []
        seen = set()
        for request in group:
            context = getattr(request, "trace_context", None)
            if context is not None and context.span_id not in seen:
                seen.add(context.span_id)
                contexts.append(context)
        collections = sorted(
            {r.collection.name for r in group if getattr(r, "collection", None) is not None}
        )
        attrs: dict[str, Any] = {
            "db.system.name": "vdb",
            "db.operation.name": "group_commit",
            "db.operation.batch.size": len(group),
            "vdb.writes.ops": sum(int(getattr(r, "n_ops", 0) or 0) for r in group),
        }
        if len(collections) == 1:
            attrs["db.collection.name"] = collections[0]
        elif collections:
            attrs["vdb.collections"] = collections
        parent = contexts[0] if contexts else None
        links = [Link(c) for c in contexts[1:MAX_LINKS]]
        with span("vdb.group_commit", attrs, parent=parent, links=links):
            return func(self, group)

    return wrapper  # type: ignore[return-value]


def apply_attributes(db: Any, run: list[tuple[Any, int]]) -> dict[str, Any]:
    """Attributes of the writer's ``_apply_run(run)`` span: one collection's committed records."""
    return {
        "db.collection.name": run[0][0].collection.name,
        "vdb.apply.records": len(run),
        "vdb.apply.ops": sum(int(r.n_ops) for r, _ in run),
        "vdb.apply.last_seq": run[-1][1],
    }


# -- W3C trace context ----------------------------------------------------------------------


def extract_http(headers: Iterable[tuple[bytes, bytes]]) -> Any:
    """The caller's context from ASGI headers (``traceparent``), or ``None`` when absent."""
    carrier = {}
    for name, value in headers:
        if name == b"traceparent" or name == b"tracestate":
            carrier[name.decode("latin-1")] = value.decode("latin-1")
    if "traceparent" not in carrier:
        return None
    return _propagator().extract(carrier)


def message_link(
    headers: Iterable[tuple[str, bytes | None]] | None, attributes: Mapping[str, Any] | None = None
) -> Any:
    """A ``Link`` to the producer span named by a Kafka message's ``traceparent`` header.

    ``None`` when the message has no valid ``traceparent``.
    """
    if not headers:
        return None
    carrier = {}
    for name, value in headers:
        if name in ("traceparent", "tracestate") and value is not None:
            carrier[name] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    if "traceparent" not in carrier:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import Link

    context = trace.get_current_span(_propagator().extract(carrier)).get_span_context()
    if not context.is_valid:
        return None
    return Link(context, attributes)


def kafka_headers() -> list[tuple[str, bytes]]:
    """The current span's context as Kafka message headers (for producers); empty when off."""
    if _tracer is None:
        return []
    carrier: dict[str, str] = {}
    _propagator().inject(carrier)
    return [(k, v.encode("latin-1")) for k, v in carrier.items()]


# -- setup ----------------------------------------------------------------------------------


def configure(environ: Mapping[str, str] | None = None) -> bool:
    """Switch tracing on from the ``OTEL_*`` variables (see the module docstring).

    Returns whether tracing is on. Calling it again replaces the previous setup.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        disable()
        return False
    names = [
        n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()
    ]
    names = [n for n in names if n != "none"]
    if not names:
        disable()
        return False
    unknown = sorted(set(names) - {"otlp", "console"})
    if unknown:
        raise InvalidInput(
            f"OTEL_TRACES_EXPORTER: unknown exporter(s) {', '.join(unknown)} "
            "(vdb knows otlp, console, none)"
        )
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise InvalidInput(
            f"OTEL_TRACES_EXPORTER={env.get('OTEL_TRACES_EXPORTER')} needs the OpenTelemetry SDK: "
            "pip install 'vdb[trace]'"
        ) from exc
    attributes = {}
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes[SERVICE_NAME] = "vdb"
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(env)))
    enable(provider)
    with _lock:
        global _provider
        _provider = provider
    log.info("tracing on: exporter(s) %s", ",".join(names))
    return True


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        else:
            raise InvalidInput(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: vdb exports http/protobuf or grpc"
            )
    except ImportError as exc:
        package = "opentelemetry-exporter-otlp-proto-" + ("grpc" if protocol == "grpc" else "http")
        raise InvalidInput(
            f"OTEL_TRACES_EXPORTER=otlp needs {package}: pip install 'vdb[otlp]'"
        ) from exc
    return OTLPSpanExporter()  # endpoint, headers, timeout from OTEL_EXPORTER_OTLP_*


def enable(provider: Any = None) -> None:
    """Record spans with ``provider`` (a ``TracerProvider``; default the global one)."""
    from opentelemetry import trace

    global _tracer
    with _lock:
        source = provider if provider is not None else trace.get_tracer_provider()
        from vdb.version import __version__

        _tracer = source.get_tracer(TRACER_NAME, __version__)


def disable() -> None:
    """Stop recording spans (the provider is left as it is; see ``shutdown``)."""
    global _tracer
    with _lock:
        _tracer = None


def shutdown() -> None:
    """Stop tracing and flush the exporters that ``configure()`` set up."""
    global _provider
    disable()
    with _lock:
        provider, _provider = _provider, None
    if provider is not None:
        try:
            provider.shutdown()
        except Exception:  # exporting is best effort; never fail a shutdown over it
            log.warning("flushing the trace exporters failed", exc_info=True)


@contextmanager
def enabled_with(provider: Any) -> Iterator[None]:
    """Trace with ``provider`` inside the block, then go back to what was before (tests)."""
    global _tracer
    previous = _tracer
    enable(provider)
    try:
        yield
    finally:
        with _lock:
            _tracer = previous


# -- internals --------------------------------------------------------------------------------


def _as_context(parent: Any) -> Any:
    if parent is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext

    if isinstance(parent, SpanContext):
        return trace.set_span_in_context(NonRecordingSpan(parent))
    return parent


@functools.cache
def _propagator() -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


class _Kinds(dict):
    def __missing__(self, key: str) -> Any:
        from opentelemetry.trace import SpanKind

        try:
            kind = SpanKind[key.upper()]
        except KeyError:
            raise ValueError(f"unknown span kind {key!r}") from None
        self[key] = kind
        return kind


_KINDS = _Kinds()
