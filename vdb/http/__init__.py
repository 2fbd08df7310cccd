"""vdb's HTTP API: a Qdrant-compatible REST subset plus vdb's own routes.

``build_app(db, config)`` returns the Starlette app; ``server.main`` runs it
under uvicorn (``python -m vdb serve``). The app holds no data of its own.

Qdrant routes (bodies and answers shaped as Qdrant's, ``{"result", "status":
"ok", "time"}``; errors ``{"status": {"error": msg}, "time"}``)::

    GET    /                                     version (qdrant-client's compatibility check)
    GET    /collections                          list
    PUT    /collections/{name}                   create (vectors size + Cosine|Euclid|Dot, hnsw m, ef_construct)
    GET    /collections/{name}                   CollectionInfo
    DELETE /collections/{name}                   drop (false if missing)
    GET    /collections/{name}/exists
    PUT    /collections/{name}/points            upsert: {"points": [...]} or {"batch": {...}}
    POST   /collections/{name}/points            retrieve by ids
    GET    /collections/{name}/points/{id}
    POST   /collections/{name}/points/delete     by ids or filter
    POST   /collections/{name}/points/payload    set (merge; optional nested key)
    PUT    /collections/{name}/points/payload    overwrite
    POST   /collections/{name}/points/payload/delete | /payload/clear
    POST   /collections/{name}/points/scroll     id-ordered pages, next_page_offset
    POST   /collections/{name}/points/count
    POST   /collections/{name}/points/query      nearest by vector or by point id; no query = id order
    POST   /collections/{name}/points/query/batch
    POST   /collections/{name}/points/search[/batch]   legacy, for older clients
    PUT    /collections/{name}/index             accepted: every payload field is indexed already
    POST/GET /collections/{name}/snapshots, GET/DELETE .../snapshots/{file}
    POST/GET /snapshots, GET/DELETE /snapshots/{file}   (whole database)

vdb's own: ``GET /healthz``, ``/livez``, ``/readyz``, ``/metrics``
(Prometheus), ``/dead-letters?limit=N``, ``/stats`` (the figures the
dashboard draws) and ``/dashboard`` (a static page; ``vdb.http.dashboard``). Every write answers only once it
is durable and searchable. Bodies may be msgpack (``Content-Type:
application/msgpack``; vectors as lists or raw little-endian float32 bytes,
a batch's vectors also as one ``n x dim`` blob); ``Accept:
application/msgpack`` returns msgpack with vectors as float32 bytes.
"""

from __future__ import annotations

__all__ = ["build_app"]


def build_app(*args, **kwargs):
    """See ``vdb.http.app.build_app``."""
    from vdb.http.app import build_app as _build_app

    return _build_app(*args, **kwargs)
