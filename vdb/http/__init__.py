"""vdb's HTTP API: a Qdrant-compatible REST subset plus vdb's own routes.

``build_app(db, config)`` returns the Starlette app; ``server.main`` runs it
under uvicorn (``python -m vdb serve``).
"""

from __future__ import annotations

__all__ = ["build_app"]


def build_app(*args, **kwargs):
    """See ``vdb.http.app.build_app``."""
    from vdb.http.app import build_app as _build_app

    return _build_app(*args, **kwargs)
