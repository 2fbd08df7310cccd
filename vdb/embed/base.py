"""The ``Embedder`` interface (texts in, float32 vectors out) and the registry of models.

An embedder turns a list of strings into a ``float32 [n, dimension]`` array,
one row per text, in order. It knows nothing of collections, the WAL or the
network: the core calls it before a write's WAL transaction (so the WAL holds
vectors and recovery never runs a model) and before a text query.

Models are registered by name, like ingest sources (``vdb.ingest.source``):
``register_embedder(spec)`` with an ``EmbedderSpec`` that says the model's
dimension, metric and token limit *without* loading it, and a factory that
builds it. ``get_embedder(name)`` loads a model once per process (it is
shared by every collection and thread; ``embed`` must be thread-safe) and
``embedder_spec(name)`` answers the cheap questions (create a collection,
check a model name) without loading anything.

A registered model whose optional packages are missing raises
``EmbedderUnavailable`` naming the extra to install; vdb never downloads a
model at run time.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vdb.errors import InvalidInput, VdbError

EXTRA_HINT = "pip install 'vdb[embed]'"


class EmbedderUnavailable(VdbError):
    """A registered model cannot run here: its optional packages are not installed."""

    status_code = 501


@runtime_checkable
class Embedder(Protocol):
    """A sentence-embedding model.

    ``name`` is the registry name; ``dimension`` the length of every vector;
    ``metric`` the one its vectors are meant for (``cosine``, ``ip`` or
    ``l2``); ``max_tokens`` the input length beyond which a text is truncated
    (a longer text is embedded from its first ``max_tokens`` tokens, not
    refused). ``embed`` returns ``float32 [len(texts), dimension]`` and may be
    called from many threads at once.
    """

    name: str
    dimension: int
    metric: str
    max_tokens: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class EmbedderSpec:
    """What is known of a model before it is loaded, and how to load it.

    ``requires`` are the importable modules the factory needs (checked with
    ``importlib.util.find_spec``, nothing imported); ``aliases`` are other
    names that resolve to it (e.g. the Hugging Face id Qdrant clients send).
    """

    name: str
    dimension: int
    metric: str
    max_tokens: int
    factory: Callable[[], Embedder]
    aliases: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    extra_hint: str = EXTRA_HINT
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def missing(self) -> list[str]:
        """The required modules that are not installed."""
        return [mod for mod in self.requires if importlib.util.find_spec(mod) is None]

    def check_available(self) -> None:
        """Raise ``EmbedderUnavailable`` when a required package is missing."""
        missing = self.missing()
        if missing:
            raise EmbedderUnavailable(
                f"embedder {self.name!r} needs the optional packages of the 'embed' extra "
                f"(missing: {', '.join(missing)}); install them with {self.extra_hint}"
            )


_SPECS: dict[str, EmbedderSpec] = {}
_ALIASES: dict[str, str] = {}
_LOADED: dict[str, Embedder] = {}
_LOCK = threading.Lock()
_STATS = {"loads": 0}


def register_embedder(spec: EmbedderSpec) -> None:
    """Make a model available under its name and aliases (a later spec replaces an earlier)."""
    with _LOCK:
        _SPECS[spec.name] = spec
        _ALIASES[spec.name] = spec.name
        for alias in spec.aliases:
            _ALIASES[alias] = spec.name
        _LOADED.pop(spec.name, None)


def unregister_embedder(name: str) -> bool:
    """Remove a model and its aliases; returns whether it was registered."""
    with _LOCK:
        spec = _SPECS.pop(name, None)
        if spec is None:
            return False
        for alias in (spec.name, *spec.aliases):
            if _ALIASES.get(alias) == spec.name:
                del _ALIASES[alias]
        _LOADED.pop(name, None)
        return True


def embedder_names(aliases: bool = False) -> list[str]:
    """Registered model names (with their aliases if asked), sorted."""
    return sorted(_ALIASES if aliases else _SPECS)


def resolve_name(name: Any) -> str:
    """The registry name for ``name`` or an alias; ``InvalidInput`` naming the models otherwise."""
    if isinstance(name, str):
        found = _ALIASES.get(name)
        if found is None:
            found = _ALIASES.get(name.lower())
        if found is not None:
            return found
    raise InvalidInput(
        f"unknown embedding model {name!r}; available: {', '.join(embedder_names(aliases=True))}"
    )


def embedder_spec(name: str) -> EmbedderSpec:
    """The spec of a model (by name or alias), without loading it."""
    return _SPECS[resolve_name(name)]


def get_embedder(name: str) -> Embedder:
    """The loaded model (by name or alias); loaded on first use, then shared.

    Raises ``InvalidInput`` for an unknown name and ``EmbedderUnavailable``
    when the model's packages are not installed.
    """
    key = resolve_name(name)
    model = _LOADED.get(key)
    if model is not None:
        return model
    spec = _SPECS[key]
    spec.check_available()
    with _LOCK:
        model = _LOADED.get(key)
        if model is None:
            model = spec.factory()
            if int(model.dimension) != spec.dimension:
                raise VdbError(
                    f"embedder {key!r} produces {model.dimension}-d vectors, its spec says "
                    f"{spec.dimension}"
                )
            _LOADED[key] = model
            _STATS["loads"] += 1
    return model


def loaded_embedders() -> list[str]:
    """Names of the models loaded in this process (for metrics and tests)."""
    return sorted(_LOADED)


def load_count() -> int:
    """How many times a model was loaded in this process."""
    return _STATS["loads"]


def check_texts(texts: Any, what: str = "documents") -> list[str]:
    """Validate texts for embedding: a list of non-empty strings (whitespace alone is empty).

    Raises ``InvalidInput`` naming the first bad one, so a batch with one bad
    text writes nothing.
    """
    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise InvalidInput(f"{what}: expected a list of strings, got {type(texts).__name__}")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise InvalidInput(f"{what}[{i}]: a text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InvalidInput(f"{what}[{i}]: the text is empty")
    return out
