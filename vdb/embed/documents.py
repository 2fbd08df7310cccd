"""Documents to vectors: the small helpers the core, the HTTP layer and ingest call.

They keep the embedding step out of the callers' own code: the caller hands
texts (and the model name it has, from a collection's config or a request),
gets ``float32`` rows back and carries on with its vector path. Every text is
checked before the model runs, so a batch with one bad text fails whole and
nothing is written.

``DOCUMENT_KEY`` (``"document"``) is the payload key under which the core and
ingest keep a point's text, unless told not to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vdb.embed.base import check_texts, embedder_spec, get_embedder
from vdb.errors import DimensionMismatch, InvalidInput

DOCUMENT_KEY = "document"
"""Payload key that holds a point's text when it was upserted as a document."""


@dataclass(frozen=True, slots=True)
class Document:
    """A text to embed with a named model (the ``{"text", "model"}`` of Qdrant's inference)."""

    text: str
    model: str


def collection_embedder(
    embedder: Any, dim: Any = None, metric: Any = None
) -> tuple[str | None, Any, Any]:
    """Resolve ``create_collection``'s ``embedder`` with its ``dim`` and ``metric``.

    Returns ``(embedder name or None, dim, metric)``: with an embedder, a
    missing ``dim``/``metric`` comes from the model and an explicit one must
    agree with it (``InvalidInput`` otherwise); the model's packages must be
    installed (``EmbedderUnavailable``). Nothing is loaded.
    """
    if embedder is None:
        return None, dim, "cosine" if metric is None else metric
    spec = embedder_spec(embedder)
    spec.check_available()
    if dim is not None and dim != spec.dimension:
        raise DimensionMismatch(
            f"embedder {spec.name!r} produces {spec.dimension}-d vectors but dim={dim!r} was given"
        )
    if metric is not None and metric != spec.metric:
        raise InvalidInput(
            f"embedder {spec.name!r} is meant for metric {spec.metric!r} but metric={metric!r} "
            "was given"
        )
    return spec.name, spec.dimension, spec.metric


def require_embedder(config: dict[str, Any], what: str = "documents") -> str:
    """The embedder of a collection's config; ``InvalidInput`` when it has none."""
    name = config.get("embedder")
    if not name:
        raise InvalidInput(
            f"{what}: collection {config.get('name')!r} has no embedder; create it with "
            "embedder='minilm' (or pass vectors)"
        )
    return str(name)


def embed_texts(embedder: str, texts: Any, what: str = "documents") -> np.ndarray:
    """Check ``texts`` and embed them in one call: ``float32 [n, dim]``."""
    checked = check_texts(texts, what)
    if not checked:
        return np.zeros((0, embedder_spec(embedder).dimension), dtype=np.float32)
    return np.ascontiguousarray(get_embedder(embedder).embed(checked), dtype=np.float32)


def document_payloads(
    texts: Sequence[str], payloads: Any, n: int, key: str | None = DOCUMENT_KEY
) -> list[dict[str, Any] | None] | Any:
    """The payloads with each text under ``key`` (``None``: unchanged).

    ``payloads``: ``None``, a list of dicts/``None`` (or one dict for one
    document). The caller's dicts are not modified; the text replaces any
    value already under ``key``.
    """
    if key is None:
        return payloads
    if isinstance(payloads, dict) and n == 1:
        payloads = [payloads]
    if payloads is None:
        payloads = [None] * n
    payloads = list(payloads)
    if len(payloads) != n:
        raise InvalidInput(f"payloads: {len(payloads)} payloads for {n} documents")
    out: list[dict[str, Any] | None] = []
    for i, (text, payload) in enumerate(zip(texts, payloads, strict=True)):
        if payload is not None and not isinstance(payload, dict):
            raise InvalidInput(
                f"payloads[{i}]: a payload must be a JSON object (dict), not "
                f"{type(payload).__name__}"
            )
        merged = dict(payload or {})
        merged[key] = text
        out.append(merged)
    return out


def upsert_documents(
    config: dict[str, Any], documents: Any, payloads: Any, n: int, store: bool = True
) -> tuple[np.ndarray, Any]:
    """``Collection.upsert(ids, documents=...)``: ``(vectors [n, dim], payloads)``.

    One batched model call for all texts, before anything is written;
    ``store=False`` leaves the payloads as given (the text is not kept).
    """
    embedder = require_embedder(config)
    if isinstance(documents, str) and n == 1:
        documents = [documents]
    texts = check_texts(documents, "documents")
    if len(texts) != n:
        raise InvalidInput(f"documents: {len(texts)} documents for {n} ids")
    vectors = embed_texts(embedder, texts)
    return vectors, document_payloads(texts, payloads, n, DOCUMENT_KEY if store else None)


def query_vectors(config: dict[str, Any], text: Any) -> np.ndarray:
    """``Collection.search(text=...)``: one text → 1-D query, a list of texts → ``[n, dim]``."""
    embedder = require_embedder(config, "text")
    if isinstance(text, str):
        return embed_texts(embedder, [text], "text")[0]
    return embed_texts(embedder, text, "text")


def parse_document(value: Any, where: str) -> Document | None:
    """``{"text": str, "model": str, "options"?: {}}`` → ``Document``; anything else → ``None``.

    A dict with ``text`` or ``model`` that is malformed raises ``InvalidInput``
    naming the field; the model must be a registered name or alias (the
    message lists them). Options are not supported (an empty object or null
    is accepted).
    """
    if not isinstance(value, dict) or not ("text" in value or "model" in value):
        return None
    unknown = set(value) - {"text", "model", "options"}
    if unknown:
        raise InvalidInput(
            f"`{where}`: unknown field `{sorted(unknown)[0]}` in a document "
            "(expected `text`, `model`, `options`)"
        )
    if "model" not in value:
        raise InvalidInput(f"`{where}`: a document needs a `model`")
    model = value["model"]
    if not isinstance(model, str):
        raise InvalidInput(f"`{where}.model` must be a string, got {type(model).__name__}")
    if value.get("options"):
        raise InvalidInput(f"Bad request: `{where}.options`: document options are not supported")
    text = value.get("text")
    if not isinstance(text, str):
        raise InvalidInput(
            f"`{where}.text` must be a string, got {'null' if text is None else type(text).__name__}"
        )
    if not text.strip():
        raise InvalidInput(f"`{where}.text`: the text is empty")
    try:
        name = embedder_spec(model).name
    except InvalidInput as exc:
        raise InvalidInput(f"`{where}.model`: {exc}") from None
    return Document(text, name)


def embed_documents(documents: Sequence[Document], dim: int | None = None) -> np.ndarray:
    """Embed documents that may name different models: one batched call per model.

    ``dim``: the dimension the vectors must have (a collection's); a model
    of another dimension raises ``DimensionMismatch`` before anything runs.
    """
    by_model: dict[str, list[int]] = {}
    for i, doc in enumerate(documents):
        by_model.setdefault(doc.model, []).append(i)
    for model in by_model:
        spec = embedder_spec(model)
        if dim is not None and spec.dimension != dim:
            raise DimensionMismatch(
                f"Wrong input: Vector dimension error: model {model!r} produces "
                f"{spec.dimension}-d vectors, the collection has dimension {dim}"
            )
    width = (
        dim
        if dim is not None
        else (embedder_spec(documents[0].model).dimension if documents else 0)
    )
    out = np.empty((len(documents), width), dtype=np.float32)
    for model, rows in by_model.items():
        out[rows] = get_embedder(model).embed([documents[i].text for i in rows])
    return out
