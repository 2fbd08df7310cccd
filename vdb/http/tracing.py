"""``TracingMiddleware``: one OpenTelemetry server span per HTTP request.

The span continues the caller's trace when the request carries a W3C
``traceparent`` header, is named ``METHOD /route/{template}`` once routing
has matched, and carries the HTTP and database attributes of the
conventions (``http.request.method``, ``http.route``,
``http.response.status_code``, ``db.collection.name``,
``db.operation.name``). The routes add children for their stages (parse,
filter, search, encode). The app installs this middleware only while
tracing is on (``vdb.telemetry``), so an untraced server does not pay for it.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vdb import telemetry


class TracingMiddleware:
    """Wraps each HTTP request in a server span (outermost: refusals are traced too)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not telemetry.enabled():
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        attrs: dict[str, Any] = {
            "http.request.method": method,
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
            "db.system.name": "vdb",
        }
        client = scope.get("client")
        if client:
            attrs["client.address"] = str(client[0])
        parent = telemetry.extract_http(scope.get("headers", ()))
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with telemetry.span(method, attrs, kind="server", parent=parent) as span:
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None)
                if template:
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)
                endpoint = scope.get("endpoint")
                operation = getattr(endpoint, "__name__", None)
                if operation:
                    span.set_attribute("db.operation.name", operation)
                name = (scope.get("path_params") or {}).get("name")
                if isinstance(name, str):
                    span.set_attribute("db.collection.name", name)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    from opentelemetry.trace import Status, StatusCode

                    span.set_status(Status(StatusCode.ERROR))
                    span.set_attribute("error.type", str(status))
