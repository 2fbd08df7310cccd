"""Message formats: raw message -> ``Upsert`` / ``Delete``, or a ``DeadLetter`` with the reason.

Formats (``--format``):

``json``, ``msgpack``
    An object ``{"id": ..., "vector": [...], "payload": {...}?, "op": "upsert"|"delete"?}``.
    ``op: "delete"`` needs only the id. In msgpack the vector may also be a
    ``bin`` of little-endian float32. When the object has no ``id`` the
    message key is used. For a collection with named or sparse vectors
    ``vector`` is a map of names, as in Qdrant's ``PointStruct``:
    ``{"text": [...], "keywords": {"indices": [...], "values": [...]}}`` (a
    point may lack some names; ``""`` is the default vector). The decoder
    checks each value's shape (finite numbers; sparse indices distinct
    unsigned 32-bit integers with one value each); the names and sizes are
    the collection's to check when the batch is applied, and a message it
    refuses becomes a dead letter on its own.
``float32``
    The value is the raw little-endian float32 vector; the id is the key.
``text``
    A JSON object ``{"id": ..., "text": "...", "payload": {...}?, "op": ...?}`` for
    a collection with an embedder (``create_collection(..., embedder="minilm")``).
    The decoder checks the text (a non-empty string) and keeps it in the
    payload under ``"document"``; the vector is a ``PendingText`` that the
    pipeline embeds, a whole batch in one model call, before the batch's WAL
    transaction. Without an embedder every text message is a dead letter.

In every format a null value (a tombstone) deletes the key's point, so a
compacted topic is mirrored exactly.

Keys become ids by ``key_format``: ``auto`` (ASCII decimal without leading
zeros -> unsigned int, anything else -> UTF-8 string), ``str``, ``int`` or
``uint64be`` (8 bytes, big-endian). Producers that key JSON messages by
``str(id)`` therefore get tombstones that hit the same point.

Each message is validated on its own against the collection (dimension,
finite values, non-zero for cosine, id and payload types) so that one bad
message becomes one dead letter and never fails the batch around it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from vdb.embed.documents import DOCUMENT_KEY
from vdb.errors import InvalidInput
from vdb.ids import normalize_id
from vdb.ingest.source import Message
from vdb.types import DeadLetter, Delete, PointId, Upsert

FORMATS = ("json", "msgpack", "float32", "text")
KEY_FORMATS = ("auto", "str", "int", "uint64be")

Decoded = Upsert | Delete | DeadLetter


@dataclass(slots=True)
class PendingText:
    """The vector of a ``text`` message until the pipeline embeds it."""

    text: str


class Decoder:
    """Turns messages of one format into operations for a collection of ``dim`` dimensions."""

    def __init__(
        self,
        format: str,  # noqa: A002 - the user-facing name of the option
        *,
        dim: int,
        metric: str = "l2",
        source: str = "",
        key_format: str = "auto",
        embedder: str | None = None,
        store_documents: bool = True,
    ) -> None:
        if format not in FORMATS:
            raise InvalidInput(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
        if key_format not in KEY_FORMATS:
            raise InvalidInput(
                f"unknown key format {key_format!r}; known: {', '.join(KEY_FORMATS)}"
            )
        self.format = format
        self.dim = int(dim)
        self.metric = metric
        self.source = source
        self.key_format = key_format
        self.embedder = embedder  # the collection's model (text format)
        self.store_documents = store_documents

    def __call__(self, message: Message) -> Decoded:
        try:
            return self._decode(message)
        except InvalidInput as exc:
            return self.dead_letter(message, str(exc))
        except Exception as exc:  # a decoder bug must not stop ingest either
            return self.dead_letter(message, f"cannot decode: {type(exc).__name__}: {exc}")

    def dead_letter(self, message: Message, reason: str) -> DeadLetter:
        return DeadLetter(
            source=self.source,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value,
            reason=reason,
            timestamp_ms=message.timestamp_ms,
        )

    def _decode(self, message: Message) -> Decoded:
        if message.value is None:
            if message.key is None:
                raise InvalidInput("tombstone without a key: nothing to delete")
            return Delete(
                id=self.key_id(message.key),
                partition=message.partition,
                timestamp_ms=message.timestamp_ms,
            )
        if self.format == "float32":
            if message.key is None:
                raise InvalidInput("float32 message without a key: the key is the id")
            return Upsert(
                id=self.key_id(message.key),
                vector=self.vector_from_bytes(message.value),
                payload=None,
                partition=message.partition,
                timestamp_ms=message.timestamp_ms,
            )
        obj = self._parse(message.value)
        return self._from_object(obj, message)

    def _parse(self, value: bytes) -> Any:
        if self.format in ("json", "text"):
            try:
                return json.loads(value)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidInput(f"undecodable json: {exc}") from None
        try:
            return msgpack.unpackb(value, raw=False, strict_map_key=False)
        except Exception as exc:
            raise InvalidInput(f"undecodable msgpack: {type(exc).__name__}: {exc}") from None

    def _from_object(self, obj: Any, message: Message) -> Decoded:
        if not isinstance(obj, dict):
            raise InvalidInput(f"message must be an object, not {type(obj).__name__}")
        op = obj.get("op", "upsert")
        if op not in ("upsert", "delete"):
            raise InvalidInput(f"unknown op {op!r}: use 'upsert' or 'delete'")
        if "id" in obj:
            point_id = normalize_id(obj["id"])
        elif message.key is not None:
            point_id = self.key_id(message.key)
        else:
            raise InvalidInput("missing id: the message has no 'id' and no key")
        if op == "delete":
            return Delete(
                id=point_id, partition=message.partition, timestamp_ms=message.timestamp_ms
            )
        if self.format == "text":
            vector: Any = self.text(obj)
        else:
            if "vector" not in obj or obj["vector"] is None:
                raise InvalidInput("missing vector")
            raw = obj["vector"]
            if isinstance(raw, dict):
                vector = self.named_vectors(raw)
            elif isinstance(raw, bytes):
                vector = self.vector_from_bytes(raw)
            else:
                vector = self.vector(raw)
        payload = obj.get("payload")
        if payload is not None:
            if not isinstance(payload, dict):
                raise InvalidInput(f"payload must be an object, not {type(payload).__name__}")
            _check_payload(payload)
        if self.format == "text" and self.store_documents:
            payload = {**(payload or {}), DOCUMENT_KEY: vector.text}
        return Upsert(
            id=point_id,
            vector=vector,
            payload=payload,
            partition=message.partition,
            timestamp_ms=message.timestamp_ms,
        )

    def text(self, obj: dict[str, Any]) -> PendingText:
        """The checked text of a ``text`` message (embedded later by the pipeline)."""
        if not self.embedder:
            raise InvalidInput(
                "the collection has no embedder: the text format needs a collection created "
                "with embedder='minilm'"
            )
        if "text" not in obj or obj["text"] is None:
            raise InvalidInput("missing text")
        text = obj["text"]
        if not isinstance(text, str):
            raise InvalidInput(f"text must be a string, not {type(text).__name__}")
        if not text.strip():
            raise InvalidInput("empty text")
        return PendingText(text)

    def key_id(self, key: bytes) -> PointId:
        """The point id a message key names."""
        kf = self.key_format
        if kf == "uint64be":
            if len(key) != 8:
                raise InvalidInput(f"uint64be key must be 8 bytes, got {len(key)}")
            return int.from_bytes(key, "big")
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("key is not UTF-8") from None
        if kf == "str":
            return normalize_id(text)
        is_decimal = text.isascii() and text.isdigit() and (text == "0" or text[0] != "0")
        if kf == "int":
            if not is_decimal:
                raise InvalidInput(f"key {text[:40]!r} is not an unsigned decimal integer")
            return normalize_id(int(text))
        return normalize_id(int(text)) if is_decimal else normalize_id(text)

    def vector(self, values: Any) -> np.ndarray:
        """A validated float32 vector from a list of numbers."""
        if not isinstance(values, list | tuple):
            raise InvalidInput(f"vector must be a list of numbers, not {type(values).__name__}")
        if len(values) != self.dim:
            raise InvalidInput(f"wrong dimension: expected {self.dim}, got {len(values)}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise InvalidInput(f"vector must contain only numbers, found {type(v).__name__}")
        try:
            with np.errstate(over="ignore"):
                vector = np.asarray(values, dtype=np.float32)
        except (OverflowError, ValueError) as exc:
            raise InvalidInput(f"vector not representable as float32: {exc}") from None
        return self._check(vector)

    def vector_from_bytes(self, value: bytes) -> np.ndarray:
        """A validated float32 vector from little-endian float32 bytes."""
        if len(value) != 4 * self.dim:
            got = f"{len(value) // 4}" if len(value) % 4 == 0 else f"{len(value)} bytes"
            raise InvalidInput(f"wrong dimension: expected {self.dim}, got {got}")
        return self._check(np.frombuffer(value, dtype="<f4").astype(np.float32))

    def named_vectors(self, values: dict[Any, Any]) -> dict[str, Any]:
        """``{name: dense list | {"indices", "values"}}`` -> ``{name: float32 array | sparse}``."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            if not isinstance(name, str):
                raise InvalidInput(f"vector names must be strings, found {type(name).__name__}")
            where = f"vector[{name!r}]"
            if isinstance(value, dict):
                out[name] = _sparse(value, where)
                continue
            if isinstance(value, bytes):
                dense = np.frombuffer(value[: len(value) // 4 * 4], dtype="<f4").astype(np.float32)
            elif isinstance(value, list | tuple) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value
            ):
                try:
                    with np.errstate(over="ignore"):
                        dense = np.asarray(value, dtype=np.float32)
                except (OverflowError, ValueError) as exc:
                    raise InvalidInput(f"{where} not representable as float32: {exc}") from None
            else:
                raise InvalidInput(f"{where} must be a list of numbers or a sparse vector")
            if dense.size == 0 or not np.isfinite(dense).all():
                raise InvalidInput(f"{where} is empty or contains NaN or infinity")
            out[name] = dense
        return out

    def _check(self, vector: np.ndarray) -> np.ndarray:
        # one float64 dot product decides: float32 values squared and summed in float64
        # neither overflow nor underflow, so the sum is finite iff every value is, and
        # positive iff one is not zero (the checks below name the problem)
        wide = vector.astype(np.float64)
        if 0.0 < float(np.dot(wide, wide)) < math.inf:
            return vector
        if not np.isfinite(vector).all():
            raise InvalidInput("vector contains NaN or infinity")
        if self.metric == "cosine" and not np.any(vector):
            raise InvalidInput("zero vector cannot be normalised for cosine")
        return vector


def _sparse(value: dict[Any, Any], where: str) -> dict[str, np.ndarray]:
    """A sparse vector ``{"indices": [...], "values": [...]}`` as uint32 / float32 arrays."""
    if set(value) != {"indices", "values"}:
        raise InvalidInput(f"{where}: a sparse vector is {{'indices': [...], 'values': [...]}}")
    indices, values = value["indices"], value["values"]
    if not isinstance(indices, list | tuple) or not isinstance(values, list | tuple):
        raise InvalidInput(f"{where}: indices and values must be lists")
    if len(indices) != len(values):
        raise InvalidInput(f"{where}: {len(indices)} indices but {len(values)} values")
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 1 << 32 for i in indices):
        raise InvalidInput(f"{where}: indices must be integers in [0, 2**32)")
    if len(set(indices)) != len(indices):
        raise InvalidInput(f"{where}: indices must be distinct")
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        raise InvalidInput(f"{where}: values must be numbers")
    with np.errstate(over="ignore"):
        weights = np.asarray(values, dtype=np.float32)
    if not np.isfinite(weights).all():
        raise InvalidInput(f"{where}: values contain NaN or infinity")
    return {"indices": np.asarray(indices, dtype=np.uint32), "values": weights}


def _check_payload(value: Any, depth: int = 0) -> None:
    """Payloads must be JSON-like: objects with string keys, lists, str, numbers, bool, null."""
    if depth > 64:
        raise InvalidInput("payload nested too deeply")
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput("payload contains NaN or infinity")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidInput(f"payload keys must be strings, found {type(k).__name__}")
            _check_payload(v, depth + 1)
        return
    if isinstance(value, list | tuple):
        for v in value:
            _check_payload(v, depth + 1)
        return
    raise InvalidInput(f"payload value of type {type(value).__name__} is not JSON")
