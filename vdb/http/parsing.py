"""Parsing and validation of Qdrant request bodies into plain values for the core.

Every function raises ``vdb.errors.InvalidInput`` with a message naming the
field at fault. Unknown fields are refused (Qdrant's models forbid extra
fields too); fields Qdrant accepts that vdb does not implement are refused
with a message saying so, never silently ignored.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from vdb.errors import DimensionMismatch, InvalidInput

MAX_UINT64 = (1 << 64) - 1
MIN_INT64 = -(1 << 63)
MAX_DEPTH = 64

DISTANCES = {"Cosine": "cosine", "Euclid": "l2", "Dot": "ip"}
METRIC_TO_DISTANCE = {v: k for k, v in DISTANCES.items()}


def fail(message: str) -> InvalidInput:
    return InvalidInput(message)


def check_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(f"`{where}` must be an object, got {_type_name(value)}")
    return value


def check_fields(
    body: dict[str, Any],
    where: str,
    allowed: Iterable[str],
    unsupported: Iterable[str] = (),
) -> None:
    """Refuse fields vdb does not know and known Qdrant fields it does not implement."""
    allowed = set(allowed)
    unsupported = set(unsupported)
    for key, value in body.items():
        if key in allowed:
            continue
        if key in unsupported:
            if value is None:
                continue
            raise fail(f"Bad request: field `{key}` of {where} is not supported by vdb")
        raise fail(f"Format error in JSON body: unknown field `{key}` in {where}")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, bytes):
        return "bytes"
    return type(value).__name__


# -- scalars --------------------------------------------------------------------


def parse_int(
    value: Any, where: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(f"`{where}` must be an integer, got {_type_name(value)}")
    if minimum is not None and value < minimum:
        raise fail(f"Validation error: `{where}` must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise fail(f"Validation error: `{where}` must be at most {maximum}, got {value}")
    return value


def parse_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise fail(f"`{where}` must be a boolean, got {_type_name(value)}")
    return value


def parse_float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(f"`{where}` must be a number, got {_type_name(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise fail(f"`{where}` must be finite")
    return number


def parse_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise fail(f"`{where}` must be a string, got {_type_name(value)}")
    return value


# -- ids ------------------------------------------------------------------------


def parse_id(value: Any, where: str = "id") -> int | str:
    """A Qdrant point id: an unsigned 64-bit int or a UUID (returned hyphenated lower-case)."""
    if isinstance(value, bool):
        raise fail(f"`{where}`: {value!r} is not a valid point ID")
    if isinstance(value, int):
        if 0 <= value <= MAX_UINT64:
            return value
        raise fail(
            f"`{where}`: {value} is not a valid point ID, valid values are either an unsigned "
            "integer or a UUID"
        )
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
        raise fail(
            f"`{where}`: value {value!r} is not a valid point ID, valid values are either an "
            "unsigned integer or a UUID"
        )
    raise fail(f"`{where}` must be an unsigned integer or a UUID string, got {_type_name(value)}")


def parse_ids(value: Any, where: str) -> list[int | str]:
    if not isinstance(value, list):
        raise fail(f"`{where}` must be an array of point ids, got {_type_name(value)}")
    return [parse_id(v, f"{where}[{i}]") for i, v in enumerate(value)]


def id_out(point_id: Any) -> Any:
    """Ids on the wire: ints as ints, strings as stored (UUIDs are stored hyphenated)."""
    return int(point_id) if isinstance(point_id, int | np.integer) else point_id


# -- vectors --------------------------------------------------------------------


_NUMBER_TYPES = frozenset({float, int})


def parse_vector(value: Any, where: str, dim: int | None = None) -> np.ndarray:
    """A dense vector: an array of numbers, or raw little-endian float32 bytes (msgpack)."""
    if isinstance(value, bytes | bytearray):
        if len(value) % 4:
            raise fail(f"`{where}`: float32 bytes must be a multiple of 4 long, got {len(value)}")
        vector = np.frombuffer(value, dtype="<f4").astype(np.float32)
    elif isinstance(value, list):
        if not set(map(type, value)) <= _NUMBER_TYPES:  # one C-level pass over the list
            for x in value:  # name the first culprit
                if type(x) is not float and type(x) is not int:
                    if isinstance(x, list):
                        raise fail(f"Bad request: `{where}`: multivectors are not supported by vdb")
                    raise fail(f"`{where}` must be an array of numbers, found {_type_name(x)}")
        try:
            with np.errstate(over="ignore"):  # too big for float32 -> inf -> refused below
                vector = np.array(value, dtype=np.float32)
        except (OverflowError, ValueError):
            raise fail(f"`{where}`: a number is out of float32 range") from None
    elif isinstance(value, dict):
        if set(value) <= {"indices", "values"} and value:
            raise fail(f"Bad request: `{where}`: sparse vectors are not supported by vdb")
        raise fail(f"Bad request: `{where}`: named vectors are not supported by vdb")
    else:
        raise fail(f"`{where}` must be an array of numbers, got {_type_name(value)}")
    if vector.size == 0:
        raise fail(f"`{where}`: the vector is empty")
    if not np.isfinite(vector).all():
        raise fail(f"`{where}`: vectors must be finite (no NaN or infinity)")
    if dim is not None and vector.size != dim:
        raise DimensionMismatch(
            f"Wrong input: Vector dimension error: expected dim: {dim}, got {vector.size} (`{where}`)"
        )
    return vector


def parse_vectors(value: Any, where: str, count: int, dim: int | None) -> np.ndarray:
    """The ``vectors`` of a batch: an array of vectors, or one float32 blob of ``count x dim``."""
    if isinstance(value, bytes | bytearray):
        if dim is None or len(value) != 4 * count * dim:
            raise fail(
                f"`{where}`: float32 blob of {len(value)} bytes does not hold {count} vectors "
                f"of dimension {dim}"
            )
        vectors = np.frombuffer(value, dtype="<f4").astype(np.float32).reshape(count, dim)
        if not np.isfinite(vectors).all():
            raise fail(f"`{where}`: vectors must be finite (no NaN or infinity)")
        return vectors
    if not isinstance(value, list):
        if isinstance(value, dict):
            raise fail(f"Bad request: `{where}`: named vectors are not supported by vdb")
        raise fail(f"`{where}` must be an array of vectors, got {_type_name(value)}")
    if len(value) != count:
        raise fail(f"`{where}` has {len(value)} vectors but there are {count} ids")
    rows = [parse_vector(v, f"{where}[{i}]", dim) for i, v in enumerate(value)]
    return stack(rows, where, dim)


def stack(rows: list[np.ndarray], where: str, dim: int | None) -> np.ndarray:
    if not rows:
        return np.zeros((0, dim or 0), dtype=np.float32)
    width = rows[0].size
    for i, row in enumerate(rows):
        if row.size != width:
            raise DimensionMismatch(
                f"Wrong input: Vector dimension error: expected dim: {width}, got {row.size} "
                f"(`{where}[{i}]`)"
            )
    return np.stack(rows)


# -- payloads and filters -------------------------------------------------------


def check_json(value: Any, where: str, depth: int = 0) -> None:
    """Payloads and filters must be plain JSON values that the storage can encode."""
    if depth > MAX_DEPTH:
        raise fail(f"`{where}` is nested too deeply (more than {MAX_DEPTH} levels)")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not MIN_INT64 <= value <= MAX_UINT64:
            raise fail(f"`{where}`: integer {value} is out of the 64-bit range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise fail(f"`{where}`: numbers must be finite")
        return
    if isinstance(value, str):
        _check_text(value, where)
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_json(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise fail(f"`{where}`: object keys must be strings")
            _check_text(key, where)
            check_json(item, f"{where}.{key}", depth + 1)
        return
    raise fail(f"`{where}`: {_type_name(value)} is not a JSON value")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise fail(f"`{where}`: strings must be valid Unicode (lone surrogate found)") from None


def parse_payload(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail(f"`{where}` must be an object, got {_type_name(value)}")
    check_json(value, where)
    return value


def parse_filter(value: Any, where: str = "filter") -> dict[str, Any] | None:
    """A Qdrant filter object; its grammar is checked by the core (``InvalidFilter``)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail(f"`{where}` must be a filter object, got {_type_name(value)}")
    check_json(value, where)
    return _normalize_has_id(value, where)


def _normalize_has_id(node: Any, where: str) -> Any:
    """Point ids inside ``has_id`` follow the wire rules (uint or UUID, UUIDs canonical)."""
    if isinstance(node, list):
        return [_normalize_has_id(item, f"{where}[{i}]") for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, item in node.items():
        if key == "has_id":
            ids = item if isinstance(item, list) else [item]
            out[key] = [parse_id(v, f"{where}.has_id[{i}]") for i, v in enumerate(ids)]
        elif key in ("must", "should", "must_not", "min_should", "conditions", "nested", "filter"):
            out[key] = _normalize_has_id(item, f"{where}.{key}")
        else:
            out[key] = item
    return out


# -- selectors ------------------------------------------------------------------


PayloadSelector = Callable[[dict[str, Any] | None], dict[str, Any] | None]


def parse_with_payload(
    value: Any, where: str, default: bool
) -> tuple[bool, PayloadSelector | None]:
    """``true|false|[keys]|{"include": [..]}|{"exclude": [..]}`` → (fetch, selector)."""
    if value is None:
        return default, None
    if isinstance(value, bool):
        return value, None
    if isinstance(value, list):
        keys = [parse_str(k, f"{where}[{i}]") for i, k in enumerate(value)]
        return True, _include(keys)
    if isinstance(value, dict):
        check_fields(value, where, ("include", "exclude"))
        if len(value) != 1:
            raise fail(f"`{where}` must have exactly one of `include` or `exclude`")
        ((mode, keys),) = value.items()
        if not isinstance(keys, list):
            keys = [keys]
        keys = [parse_str(k, f"{where}.{mode}[{i}]") for i, k in enumerate(keys)]
        return True, _include(keys) if mode == "include" else _exclude(keys)
    raise fail(f"`{where}` must be a boolean, an array of keys or an include/exclude object")


def _split(key: str) -> list[str]:
    return [p for p in key.split(".") if p]


def _include(keys: list[str]) -> PayloadSelector:
    paths = [_split(k) for k in keys]

    def select(payload: dict[str, Any] | None) -> dict[str, Any] | None:
        if payload is None:
            return None
        out: dict[str, Any] = {}
        for path in paths:
            _copy_path(payload, out, path)
        return out

    return select


def _copy_path(src: dict[str, Any], dst: dict[str, Any], path: list[str]) -> None:
    if not path:
        return
    head, rest = path[0], path[1:]
    if head not in src:
        return
    if not rest:
        dst[head] = src[head]
    elif isinstance(src[head], dict):
        _copy_path(src[head], dst.setdefault(head, {}), rest)


def _exclude(keys: list[str]) -> PayloadSelector:
    paths = [_split(k) for k in keys]

    def select(payload: dict[str, Any] | None) -> dict[str, Any] | None:
        if payload is None:
            return None
        out = _deep_copy_dicts(payload)
        for path in paths:
            node = out
            for part in path[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
                if node is None:
                    break
            if isinstance(node, dict) and path:
                node.pop(path[-1], None)
        return out

    return select


def _deep_copy_dicts(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy_dicts(v) for k, v in value.items()}
    return value


def parse_with_vector(value: Any, where: str, default: bool = False) -> bool:
    """``true|false|[names]``: vdb has one unnamed vector per point (name ``""``)."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, list):
        names = [parse_str(n, f"{where}[{i}]") for i, n in enumerate(value)]
        unknown = [n for n in names if n != ""]
        if unknown:
            raise fail(f"Wrong input: Not existing vector name error: {unknown[0]}")
        return bool(names)
    raise fail(f"`{where}` must be a boolean or an array of vector names")


def parse_limit(value: Any, where: str, default: int, maximum: int, minimum: int = 1) -> int:
    if value is None:
        return default
    return parse_int(value, where, minimum=minimum, maximum=maximum)


def parse_wait(raw: str | None) -> bool:
    if raw is None:
        return True
    lowered = raw.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise fail(f"query parameter `wait` must be true or false, got {raw!r}")
