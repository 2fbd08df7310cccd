"""Request and response bodies: JSON (the Qdrant wire format) and msgpack.

msgpack is vdb's fast path for bulk loaders: a request with
``Content-Type: application/msgpack`` may carry vectors as lists of numbers or
as raw little-endian float32 bytes; a request with ``Accept:
application/msgpack`` gets a msgpack response in which vectors are raw
float32 bytes. Everything else is JSON.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import msgpack
import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from vdb.errors import InvalidInput

JSON = "application/json"
MSGPACK = "application/msgpack"
_MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


class BodyError(InvalidInput):
    """The body could not be decoded (malformed JSON or msgpack, wrong top-level type)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON value")


# orjson parses an integer beyond 64 bits as a float where ``json`` keeps it exact, so a
# body with a long run of integer digits is left to ``json``. The check maps digits to
# "0", "-" and "." to themselves and all else to " ": an integer literal is then a run of
# "0" after " " or "-" (a fraction's digits follow ".").
_DIGIT_CLASSES = bytes(
    ord("0") if chr(c).isdigit() and c < 128 else c if c in b"-." else ord(" ") for c in range(256)
)
_LONG_INT = b" " + b"0" * 20
_LONG_NEGATIVE_INT = b"-" + b"0" * 19


def _orjson_safe(raw: bytes) -> bool:
    """Whether orjson decodes ``raw`` exactly as ``json`` would (no integer wider than 64 bits)."""
    classes = b" " + raw.translate(_DIGIT_CLASSES)
    return _LONG_INT not in classes and _LONG_NEGATIVE_INT not in classes


def is_msgpack(content_type: str | None) -> bool:
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in _MSGPACK_TYPES


def decode(raw: bytes, content_type: str | None) -> Any:
    """Parse a request body; raise ``BodyError`` naming the problem."""
    if is_msgpack(content_type):
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise BodyError(f"Format error in msgpack body: {exc}") from None
    if _orjson_safe(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # json below decides, and words the error as it always has
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"Format error in JSON body: not UTF-8 ({exc.reason})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise BodyError(f"Format error in JSON body: {exc}") from None


def parse_body(raw: bytes, content_type: str | None, *, required: bool = True) -> dict | None:
    """Decode a body that must be an object; an empty body is ``None`` (400 if required)."""
    if not raw or raw.isspace():
        if required:
            raise BodyError("Format error in JSON body: the request body is empty")
        return None
    body = decode(raw, content_type)
    if not isinstance(body, dict):
        raise BodyError(f"Format error in JSON body: expected an object, got {type(body).__name__}")
    return body


def wants_msgpack(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return any(is_msgpack(part) for part in accept.split(","))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot encode {type(value).__name__}")


def _msgpack_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value, dtype="<f4").tobytes()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: map them to null (scores never are; payloads could be)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def encode(content: Any, *, msgpack_out: bool) -> tuple[bytes, str]:
    """Serialise a response body; numpy vectors become lists (JSON) or float32 bytes (msgpack)."""
    if msgpack_out:
        return msgpack.packb(content, default=_msgpack_default, use_bin_type=True), MSGPACK
    try:
        # non-finite floats become null, as _sanitize does; what orjson refuses
        # (an integer beyond 64 bits, a lone surrogate) goes the json way below
        return orjson.dumps(content, default=_json_default, option=orjson.OPT_NON_STR_KEYS), JSON
    except TypeError:
        pass
    try:
        text = json.dumps(content, default=_json_default, allow_nan=False, separators=(",", ":"))
    except ValueError:  # a non-finite float in a payload
        text = json.dumps(_sanitize(content), default=_json_default, separators=(",", ":"))
    return text.encode("utf-8"), JSON


def _sanitize(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitize(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_finite(float(v)) for v in value.ravel()]
    return _finite(value)


class EncodedResponse(Response):
    """A response rendered as JSON or msgpack depending on the request's ``Accept``."""

    def __init__(
        self, content: Any, *, status_code: int = 200, msgpack_out: bool = False, headers=None
    ):
        body, media_type = encode(content, msgpack_out=msgpack_out)
        super().__init__(body, status_code=status_code, media_type=media_type, headers=headers)


def envelope(result: Any, started: float, status: str = "ok") -> dict[str, Any]:
    """Qdrant's success envelope ``{"result", "status": "ok", "time"}``."""
    return {"result": result, "status": status, "time": time.perf_counter() - started}


def error_body(message: str, started: float | None = None) -> dict[str, Any]:
    """Qdrant's error body ``{"status": {"error": msg}, "time"}``."""
    elapsed = 0.0 if started is None else time.perf_counter() - started
    return {"status": {"error": message}, "time": elapsed}
