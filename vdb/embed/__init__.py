"""Embedders: text in, vectors out, inside the process.

    from vdb.embed import get_embedder
    model = get_embedder("minilm")            # loaded once, shared
    vectors = model.embed(["a text", "another"])   # float32 [2, 384], unit rows

See ``vdb.embed.base`` for the interface and the registry, and
``vdb.embed.minilm`` for the built-in model.
"""

from __future__ import annotations

from vdb.embed import minilm as _minilm  # noqa: F401 - registers the built-in (loads nothing)
from vdb.embed.base import (
    Embedder,
    EmbedderSpec,
    EmbedderUnavailable,
    check_texts,
    embedder_names,
    embedder_spec,
    get_embedder,
    load_count,
    loaded_embedders,
    register_embedder,
    resolve_name,
    unregister_embedder,
)

__all__ = [
    "Embedder",
    "EmbedderSpec",
    "EmbedderUnavailable",
    "check_texts",
    "embedder_names",
    "embedder_spec",
    "get_embedder",
    "load_count",
    "loaded_embedders",
    "register_embedder",
    "resolve_name",
    "unregister_embedder",
]
