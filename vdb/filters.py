"""Payload filters (Qdrant's filter grammar) and the payload index behind them.

``parse_filter`` validates a filter dict strictly and compiles it into a tree
of condition nodes; ``matches`` evaluates such a tree against one payload by
brute force (the reference); ``PayloadIndex`` keeps every payload plus
per-field columns so that ``mask`` answers a filter with vectorised numpy
operations instead of a Python loop over every payload.

Grammar (the JSON that Qdrant and ``qdrant_client`` send)::

    Filter    := {"must"?: C | [C], "should"?: C | [C], "must_not"?: C | [C],
                  "min_should"?: {"conditions": [C], "min_count": int >= 1}}
    C         := {"key": K, "match": M} | {"key": K, "range": R}
               | {"key": K, "values_count": R} | {"key": K, "is_empty": bool}
               | {"key": K, "is_null": bool} | {"is_empty": {"key": K}}
               | {"is_null": {"key": K}} | {"has_id": [id, ...]}
               | {"has_vector": ""} | {"nested": {"key": K, "filter": Filter}} | Filter
    M         := {"value": str | int | bool} | {"any": [str..] | [int..]}
               | {"except": [str..] | [int..]} | {"text": str} | {"text_any": str}
               | {"phrase": str} | {"prefix": str} | {"substring": str}
    K         := a | a.b | a[].b | a[0] | "quoted.key"

Semantics (those of Qdrant; where versions differ the choice is named here):

- ``must`` = AND, ``should`` = OR (an empty ``should`` is no constraint),
  ``must_not`` = NOR, ``min_should`` = at least ``min_count`` of its
  conditions. ``None`` and ``{}`` match everything.
- A key selects zero or more values; ``[]`` walks every element of an array
  and ``[n]`` one element. For ``match`` and ``range`` a selected array is
  unwrapped one level, and the condition holds if ANY value matches.
- ``match.value``/``any`` compare by JSON type: ``1`` never matches ``true``,
  ``"1"`` or ``1.0`` (floats are never matched by ``match``: use ``range``).
  Integers outside the signed 64-bit range never match.
- ``match.except`` holds if some non-null value is not in the list. A
  missing key, or a key whose only values are null, does NOT match (Qdrant
  1.x, server and local mode alike); wrap ``match.any`` in ``must_not`` to
  also select points without the key.
- ``match.text`` is Qdrant's full-text match without a custom text index:
  both sides are split into lowercase word tokens and every query token must
  occur in the value (``text_any``: at least one; ``phrase``: consecutive).
  ``prefix`` and ``substring`` are case-sensitive raw string tests.
- ``range`` with numeric bounds compares numbers only (as float64; booleans
  and strings never match). With RFC 3339 bounds it compares string values
  that parse as datetimes (no offset = UTC), at microsecond resolution.
- ``values_count`` counts the elements of each selected array (a scalar
  counts 1, null 0, a missing key 0) and holds if any selected value's count
  is within all bounds.
- ``is_empty``: the key is missing, null or ``[]`` (``[null]`` is not empty).
  ``is_null``: some selected value is null or an array holding a null.
- ``nested`` applies its filter to each object element of the array at its
  key and holds if one element satisfies the whole filter. ``has_id`` is not
  allowed inside ``nested``.
- ``has_id``: user ids; ``1`` and ``"1"`` are different points.
- geo conditions and ``slice`` are refused with ``InvalidFilter``.
"""

from __future__ import annotations

import copy
import logging
import math
import operator
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from itertools import compress, repeat
from typing import Any

import numpy as np

from vdb.errors import InvalidFilter, InvalidInput
from vdb.types import PART_SHIFT, PointId
from vdb.wal.store import pack, unpack

logger = logging.getLogger(__name__)

__all__ = [
    "Filter",
    "PayloadIndex",
    "matches",
    "parse_filter",
    "parse_key",
    "render_key",
]

MAX_DEPTH = 32
"""Deepest nesting of filters accepted (guards the recursion)."""

LONG_STRING = 256
"""Strings longer than this are kept out of the keyword dictionary."""

MAX_AUTO_FIELDS = 256
"""Key paths indexed automatically; conditions on later paths scan payloads."""

MAX_INDEXED_DEPTH = 16
"""Longest key path (in items) the index keeps; deeper conditions scan payloads."""

_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_U64_MAX = (1 << 64) - 1
_FILTER_KEYS = frozenset({"must", "should", "must_not", "min_should"})
_MATCH_KINDS = ("value", "any", "except", "text", "text_any", "phrase", "prefix", "substring")
_GEO_KEYS = ("geo_bounding_box", "geo_radius", "geo_polygon")
_FIELD_KEYS = frozenset(
    {"key", "match", "range", "values_count", "is_empty", "is_null", *_GEO_KEYS}
)
_BOUNDS = ("gt", "gte", "lt", "lte")
SCHEMA_TYPES = frozenset({"keyword", "integer", "float", "bool", "datetime", "text", "uuid"})

Path = tuple  # items: str = object key, None = every array element ([]), int = one element


# ---------------------------------------------------------------------------
# Key paths


def _is_key_char(c: str) -> bool:
    return c.isalnum() or c == "_" or c == "-"


def parse_key(key: Any) -> Path:
    """Parse a Qdrant key path (``a.b``, ``a[].b``, ``a[0]``, ``"x.y"``) into a tuple.

    Raises ``InvalidFilter`` when the path does not follow the grammar.
    """
    if not isinstance(key, str) or not key:
        raise InvalidFilter(f"key must be a non-empty string, got {key!r}")
    items: list[Any] = []
    n, i = len(key), 0
    while True:
        if key[i] == '"':
            j = key.find('"', i + 1)
            if j < 0 or "\\" in key[i + 1 : j]:
                raise InvalidFilter(f"invalid key path {key!r}: unterminated quoted key")
            items.append(key[i + 1 : j])
            i = j + 1
        else:
            j = i
            while j < n and _is_key_char(key[j]):
                j += 1
            if j == i:
                raise InvalidFilter(f"invalid key path {key!r} at position {i}")
            items.append(key[i:j])
            i = j
        while i < n and key[i] == "[":
            j = key.find("]", i)
            if j < 0:
                raise InvalidFilter(f"invalid key path {key!r}: '[' without ']'")
            inner = key[i + 1 : j]
            if inner == "":
                items.append(None)
            elif inner.isascii() and inner.isdigit():
                items.append(int(inner))
            else:
                raise InvalidFilter(f"invalid key path {key!r}: bad array index [{inner}]")
            i = j + 1
        if i == n:
            return tuple(items)
        if key[i] != "." or i + 1 == n:
            raise InvalidFilter(f"invalid key path {key!r} at position {i}")
        i += 1


def render_key(path: Path) -> str:
    """The canonical string of a parsed key path (inverse of ``parse_key``)."""
    out: list[str] = []
    for item in path:
        if item is None:
            out.append("[]")
        elif isinstance(item, int):
            out.append(f"[{item}]")
        else:
            text = item if item and all(_is_key_char(c) for c in item) else f'"{item}"'
            out.append("." + text if out else text)
    return "".join(out)


def _indexable(path: Path) -> bool:
    """Whether the payload index keeps a column for this path (keys and inner ``[]`` only)."""
    if not path or len(path) > MAX_INDEXED_DEPTH or not isinstance(path[0], str):
        return False
    if path[-1] is None:
        return False
    after_wildcard = False
    for item in path:
        if item is None:
            if after_wildcard:
                return False
            after_wildcard = True
        elif isinstance(item, str):
            after_wildcard = False
        else:
            return False
    return True


def _select(payload: dict | None, path: Path) -> list[Any]:
    """The values a key path selects in a payload (arrays at the end are not unwrapped)."""
    if not payload:
        return []
    current: list[Any] = [payload]
    for item in path:
        found: list[Any] = []
        if isinstance(item, str):
            for value in current:
                if isinstance(value, dict) and item in value:
                    found.append(value[item])
        elif item is None:
            for value in current:
                if isinstance(value, list | tuple):
                    found.extend(value)
        else:
            for value in current:
                if isinstance(value, list | tuple) and item < len(value):
                    found.append(value[item])
        if not found:
            return found
        current = found
    return current


def _flatten(values: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for value in values:
        if isinstance(value, list | tuple):
            flat.extend(value)
        else:
            flat.append(value)
    return flat


# ---------------------------------------------------------------------------
# Value helpers shared by the reference evaluation and the index


class _BoolKey:
    """Dictionary key of a boolean value, so that ``True`` never collides with ``1``."""

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "true" if self.value else "false"


_TRUE, _FALSE = _BoolKey(True), _BoolKey(False)


def _match_key(value: Any) -> Any:
    """The exact-match key of a payload value, or ``None`` if ``match`` can never select it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, int):
        return value if _I64_MIN <= value <= _I64_MAX else None
    return None


def _as_number(value: Any) -> float | None:
    """A payload value as a float for ``range``, or ``None`` if it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return None


_WORD = re.compile(r"[^\W_]+")


def _tokens(text: str) -> list[str]:
    return [token.lower() for token in _WORD.findall(text)]


_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})"
    r"(?::(\d{2})(?:\.(\d+))?"
    r"(?: ?(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)| UTC)?)?)?",
    re.ASCII,
)
_NO_TIME = -(1 << 63)  # "no datetime" in an int64 column of microseconds
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def parse_datetime(text: Any) -> int | None:
    """Microseconds since the epoch of a Qdrant/RFC 3339 datetime string, else ``None``.

    Accepts ``YYYY-MM-DD``, ``YYYY-MM-DD[T ]HH:MM`` and
    ``YYYY-MM-DD[T ]HH:MM:SS[.frac][ ][Z|±HH[:MM]| UTC]``; no offset means UTC.
    """
    if not isinstance(text, str) or not text or len(text) > 64:
        return None
    if not (text[0].isdigit() or text[0].isspace()):
        return None
    m = _DATETIME.fullmatch(text.lstrip())
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, _, sign, off_h, off_m = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            micro,
            tzinfo=UTC,
        )
    except ValueError:
        return None
    if sign:
        offset = timedelta(hours=int(off_h), minutes=int(off_m or 0))
        moment = moment - offset if sign == "+" else moment + offset
    return (moment - _EPOCH) // _MICROSECOND


def _datetime_bound(value: Any, where: str) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // _MICROSECOND
    if isinstance(value, date):
        return (datetime(value.year, value.month, value.day, tzinfo=UTC) - _EPOCH) // (_MICROSECOND)
    micros = parse_datetime(value)
    if micros is None:
        raise InvalidFilter(f"{where}: {value!r} is not an RFC 3339 datetime")
    return micros


def _bounds_test(gt: Any, gte: Any, lt: Any, lte: Any) -> Callable[[Any], bool]:
    def test(x: Any) -> bool:
        return (
            (gt is None or x > gt)
            and (gte is None or x >= gte)
            and (lt is None or x < lt)
            and (lte is None or x <= lte)
        )

    return test


def _bounds_vector(
    gt: Any, gte: Any, lt: Any, lte: Any, missing: int | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """Vectorised bounds test over a column; NaN (or ``missing``) = no value = False."""

    def test(v: np.ndarray) -> np.ndarray:
        out = ~np.isnan(v) if missing is None else v != missing
        if gt is not None:
            out &= v > gt
        if gte is not None:
            out &= v >= gte
        if lt is not None:
            out &= v < lt
        if lte is not None:
            out &= v <= lte
        return out

    return test


# ---------------------------------------------------------------------------
# Per-field storage


class _Column:
    """Values of one kind at one key path, per slot.

    Single-valued slots live in a dense array (``missing`` marks no value);
    multi-valued slots are appended to a pair of flat arrays (value, slot),
    so a query is one vectorised test over each. Removing a multi-valued
    slot leaves a tombstone (slot ``-1``) that compaction reclaims.
    """

    __slots__ = ("dtype", "missing", "single", "values", "slots", "used", "spans", "garbage")

    def __init__(self, dtype: Any, missing: Any) -> None:
        self.dtype = dtype
        self.missing = missing
        self.single = np.full(0, missing, dtype=dtype)
        self.values = np.empty(0, dtype=dtype)
        self.slots = np.empty(0, dtype=np.int32)
        self.used = 0
        self.spans: dict[int, tuple[int, int]] = {}
        self.garbage = 0

    def put(self, slot: int, values: list[Any]) -> None:
        if len(values) == 1:
            if slot >= len(self.single):
                grown = np.full(max(slot + 1, 2 * len(self.single), 64), self.missing, self.dtype)
                grown[: len(self.single)] = self.single
                self.single = grown
            self.single[slot] = values[0]
            return
        count = len(values)
        start = self.used
        if start + count > len(self.values):
            size = max(start + count, 2 * len(self.values), 64)
            values_grown = np.empty(size, dtype=self.dtype)
            values_grown[:start] = self.values[:start]
            slots_grown = np.full(size, -1, dtype=np.int32)
            slots_grown[:start] = self.slots[:start]
            self.values, self.slots = values_grown, slots_grown
        self.values[start : start + count] = values
        self.slots[start : start + count] = slot
        self.spans[slot] = (start, count)
        self.used = start + count

    def get(self, slot: int) -> list[Any]:
        span = self.spans.get(slot)
        if span is not None:
            return self.values[span[0] : span[0] + span[1]].tolist()
        if slot < len(self.single):
            value = self.single[slot]
            if not self._is_missing(value):
                return [value.item()]
        return []

    def _is_missing(self, value: Any) -> bool:
        if isinstance(self.missing, float) and math.isnan(self.missing):
            return bool(np.isnan(value))
        return bool(value == self.missing)

    def drop(self, slot: int) -> None:
        if slot < len(self.single):
            self.single[slot] = self.missing
        span = self.spans.pop(slot, None)
        if span is not None:
            self.slots[span[0] : span[0] + span[1]] = -1
            self.garbage += span[1]
            if self.garbage > 1024 and 2 * self.garbage > self.used:
                self._compact()

    def _compact(self) -> None:
        keep = self.slots[: self.used] >= 0
        values = self.values[: self.used][keep]
        slots = self.slots[: self.used][keep]
        size = max(64, 2 * len(values))
        self.values = np.empty(size, dtype=self.dtype)
        self.values[: len(values)] = values
        self.slots = np.full(size, -1, dtype=np.int32)
        self.slots[: len(slots)] = slots
        self.used = len(values)
        self.garbage = 0
        spans: dict[int, tuple[int, int]] = {}
        if len(slots):
            starts = np.flatnonzero(np.r_[True, slots[1:] != slots[:-1]])
            ends = np.r_[starts[1:], len(slots)]
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
                spans[int(slots[start])] = (start, end - start)
        self.spans = spans

    def select(self, test: Callable[[np.ndarray], np.ndarray], capacity: int) -> np.ndarray:
        """Mask of the slots (< capacity) where ``test`` holds for at least one value."""
        out = np.zeros(capacity, dtype=bool)
        single = self.single[:capacity]
        if len(single):
            out[: len(single)] = test(single)
        if self.used:
            hit = test(self.values[: self.used])
            slots = self.slots[: self.used][hit]
            slots = slots[(slots >= 0) & (slots < capacity)]
            out[slots] = True
        return out

    def has(self, capacity: int) -> np.ndarray:
        """Mask of the slots that hold a value in this column."""
        if isinstance(self.missing, float):
            return self.select(lambda v: ~np.isnan(v), capacity)
        missing = self.missing
        return self.select(lambda v: v != missing, capacity)


def _code_test(codes: list[int], n_codes: int, negate: bool) -> Callable[[np.ndarray], np.ndarray]:
    """Vectorised membership test of int32 codes (``-1`` = no value never matches).

    A few codes are compared one by one (SIMD equality is far faster than
    ``np.isin``); more use a lookup table whose last entry answers ``-1``.
    """
    if len(codes) <= 8:

        def test(v: np.ndarray) -> np.ndarray:
            hit = np.zeros(v.shape, dtype=bool)
            for code in codes:
                hit |= v == code
            return (v >= 0) & ~hit if negate else hit

        return test
    table = np.full(n_codes + 1, negate, dtype=bool)
    table[codes] = not negate
    table[-1] = False
    return lambda v: table[v]


# flag bits per slot and field
_PRESENT = 1  # the path selects at least one value (null included)
_NONEMPTY = 2  # not is_empty
_NULL = 4  # is_null
_OTHER = 8  # a non-null value that match can never select (float, object, nested array)
_LONG = 16  # a string too long for the keyword dictionary
_STRINGS = 32  # more than one string value (token matches need a check)

# data kinds seen (for schema inference)
_KIND_NAMES = (
    (1, "keyword"),
    (2, "integer"),
    (4, "float"),
    (8, "bool"),
    (16, "datetime"),
)


class _Dictionary:
    """Values <-> dense int32 codes; reference counts let unused codes be reused."""

    __slots__ = ("codes", "words", "refs", "free", "dirty")

    def __init__(self) -> None:
        self.codes: dict[Any, int] = {}  # value -> code
        self.words: list[Any] = []  # code -> value (None when free)
        self.refs: list[int] = []  # code -> number of slots holding it
        self.free: list[int] = []
        self.dirty: set[int] = set()  # parts (code >> PART_SHIFT) of ``words`` changed

    def __len__(self) -> int:
        return len(self.words)

    def code(self, key: Any) -> int:
        """The code of ``key`` (allocated if new), counting one more holder."""
        code = self.codes.get(key)
        if code is None:
            if self.free:
                code = self.free.pop()
                self.words[code] = key
                self.refs[code] = 0
            else:
                code = len(self.words)
                self.words.append(key)
                self.refs.append(0)
            self.codes[key] = code
            self.dirty.add(code >> PART_SHIFT)
        self.refs[code] += 1
        return code

    def release(self, code: int) -> None:
        self.refs[code] -= 1
        if self.refs[code] == 0:
            del self.codes[self.words[code]]
            self.words[code] = None
            self.free.append(code)
            self.dirty.add(code >> PART_SHIFT)


class _Field:
    """Everything the index keeps for one key path.

    ``flags`` (uint8 per slot) answer presence, is_empty and is_null;
    ``keywords`` hold dictionary codes of strings, integers and booleans;
    ``numbers`` and ``datetimes`` hold what ``range`` compares; ``counts``
    the value counts that are not exactly ``[1]``. With a ``text`` index,
    ``tokens`` hold the codes of the lowercase words of every string.
    """

    __slots__ = (
        "path",
        "flags",
        "keywords",
        "dictionary",
        "numbers",
        "datetimes",
        "counts",
        "kinds",
        "tokens",
        "vocabulary",
    )

    def __init__(self, path: Path) -> None:
        self.path = path
        self.flags = np.zeros(0, dtype=np.uint8)
        self.keywords: _Column | None = None
        self.dictionary = _Dictionary()
        self.numbers: _Column | None = None
        self.datetimes: _Column | None = None
        self.counts: _Column | None = None
        self.kinds = 0
        self.tokens: _Column | None = None
        self.vocabulary: _Dictionary | None = None

    def put(self, slot: int, selected: list[Any]) -> None:
        flags = _PRESENT
        counts: list[int] = []
        flat: list[Any] = []
        for value in selected:
            if value is None:
                flags |= _NULL
                counts.append(0)
            elif isinstance(value, list | tuple):
                counts.append(len(value))
                if value:
                    flags |= _NONEMPTY
                for element in value:
                    if element is None:
                        flags |= _NULL
                flat.extend(value)
            else:
                flags |= _NONEMPTY
                counts.append(1)
                flat.append(value)
        keys: dict[Any, None] = {}
        numbers: list[float] = []
        datetimes: list[int] = []
        strings = 0
        kinds = 0
        for value in flat:
            kind = type(value)
            if kind is not str and kind is not float and kind is not int and kind is not bool:
                # subclasses (and None, objects) take the slow, exact route
                if value is None:
                    continue
                if isinstance(value, str):
                    kind = str
                elif isinstance(value, bool):
                    kind = bool
                elif isinstance(value, int):
                    kind = int
                elif isinstance(value, float):
                    kind = float
                else:
                    flags |= _OTHER
                    continue
            if kind is str:
                strings += 1
                if len(value) <= LONG_STRING:
                    keys[value] = None
                else:
                    flags |= _LONG
                micros = parse_datetime(value)
                if micros is not None:
                    datetimes.append(micros)
                    kinds |= 16
                else:
                    kinds |= 1
            elif kind is float:
                flags |= _OTHER
                if value == value:  # NaN is no number
                    numbers.append(value)
                kinds |= 4
            elif kind is int:
                if _I64_MIN <= value <= _I64_MAX:
                    keys[value] = None
                else:
                    flags |= _OTHER
                numbers.append(_as_number(value))  # type: ignore[arg-type]
                kinds |= 2
            else:
                keys[_TRUE if value else _FALSE] = None
                kinds |= 8
        if strings > 1:
            flags |= _STRINGS
        self.kinds |= kinds
        if slot >= len(self.flags):
            grown = np.zeros(max(slot + 1, 2 * len(self.flags), 64), dtype=np.uint8)
            grown[: len(self.flags)] = self.flags
            self.flags = grown
        self.flags[slot] = flags
        if keys:
            dictionary = self.dictionary
            if self.keywords is None:
                self.keywords = _Column(np.int32, -1)
            self.keywords.put(slot, [dictionary.code(key) for key in keys])
        if numbers:
            if self.numbers is None:
                self.numbers = _Column(np.float64, math.nan)
            self.numbers.put(slot, numbers)
        if datetimes:
            if self.datetimes is None:
                self.datetimes = _Column(np.int64, _NO_TIME)
            self.datetimes.put(slot, datetimes)
        if counts != [1]:
            if self.counts is None:
                self.counts = _Column(np.float64, math.nan)
            self.counts.put(slot, counts)
        if self.vocabulary is not None and strings:
            self._put_tokens(slot, flat)

    def _put_tokens(self, slot: int, flat: list[Any]) -> None:
        words: dict[str, None] = {}
        for value in flat:
            if isinstance(value, str):
                words.update(dict.fromkeys(_tokens(value)))
        if words:
            vocabulary = self.vocabulary
            self.tokens.put(slot, [vocabulary.code(word) for word in words])  # type: ignore[union-attr]

    def enable_text(self, payloads: dict[int, dict | None]) -> None:
        """Start a token index, filled from the stored payloads."""
        if self.vocabulary is not None:
            return
        self.vocabulary = _Dictionary()
        self.tokens = _Column(np.int32, -1)
        for slot in np.flatnonzero(self.flags & _PRESENT).tolist():
            self._put_tokens(slot, _flatten(_select(payloads.get(slot), self.path)))

    def disable_text(self) -> None:
        self.vocabulary = None
        self.tokens = None

    def drop(self, slot: int) -> None:
        if slot >= len(self.flags) or not self.flags[slot]:
            return
        self.flags[slot] = 0
        if self.keywords is not None:
            for code in self.keywords.get(slot):
                self.dictionary.release(code)
            self.keywords.drop(slot)
        if self.tokens is not None:
            for code in self.tokens.get(slot):
                self.vocabulary.release(code)  # type: ignore[union-attr]
            self.tokens.drop(slot)
        for column in (self.numbers, self.datetimes, self.counts):
            if column is not None:
                column.drop(slot)

    def flag(self, bit: int, capacity: int) -> np.ndarray:
        out = np.zeros(capacity, dtype=bool)
        flags = self.flags[:capacity]
        out[: len(flags)] = (flags & bit) != 0
        return out

    def keyword_select(self, codes: list[int], capacity: int, negate: bool = False) -> np.ndarray:
        """Slots with a keyword code in ``codes`` (``negate``: a code not in ``codes``)."""
        if self.keywords is None or (not codes and not negate):
            return np.zeros(capacity, dtype=bool)
        return self.keywords.select(_code_test(codes, len(self.dictionary), negate), capacity)

    def token_select(self, words: list[str], capacity: int, every: bool) -> np.ndarray:
        """Slots holding every (or any) of ``words`` among their tokens."""
        vocabulary, tokens = self.vocabulary, self.tokens
        assert vocabulary is not None and tokens is not None
        codes = [vocabulary.codes.get(word) for word in words]
        if every:
            if None in codes:
                return np.zeros(capacity, dtype=bool)
            out = None
            for code in dict.fromkeys(codes):
                hit = tokens.select(_code_test([code], len(vocabulary), False), capacity)
                out = hit if out is None else out & hit
            return out if out is not None else np.zeros(capacity, dtype=bool)
        known = [code for code in codes if code is not None]
        if not known:
            return np.zeros(capacity, dtype=bool)
        return tokens.select(_code_test(known, len(vocabulary), False), capacity)

    def points(self) -> int:
        return int(np.count_nonzero(self.flags & _NONEMPTY))


# ---------------------------------------------------------------------------
# Compiled filter nodes


class _Context:
    """What a mask evaluation needs besides the node: the index, the size, the id map."""

    __slots__ = ("index", "capacity", "resolve_id")

    def __init__(
        self, index: PayloadIndex, capacity: int, resolve_id: Callable[[PointId], int | None]
    ) -> None:
        self.index = index
        self.capacity = capacity
        self.resolve_id = resolve_id


class _Node:
    """A compiled condition.

    ``test`` is the reference evaluation of one point. ``mask(ctx, within)``
    returns the slots inside ``within`` where the condition holds, exactly
    (never True outside ``within``). ``cost`` orders ``must`` children:
    index-served conditions first, payload scans last, so that scans only
    visit the slots the cheaper conditions left.
    """

    cost = 0

    def test(self, payload: dict | None, point_id: Any) -> bool:
        raise NotImplementedError

    def mask(self, ctx: _Context, within: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _Always(_Node):
    def test(self, payload: dict | None, point_id: Any) -> bool:
        return True

    def mask(self, ctx: _Context, within: np.ndarray) -> np.ndarray:
        return within.copy()


class Filter(_Node):
    """A compiled boolean filter: must (AND), should (OR), must_not (NOR), min_should."""

    def __init__(
        self,
        must: list[_Node],
        should: list[_Node],
        must_not: list[_Node],
        min_should: tuple[list[_Node], int] | None,
    ) -> None:
        self.must = sorted(must, key=lambda node: node.cost)
        self.should = should
        self.must_not = sorted(must_not, key=lambda node: node.cost)
        self.min_should = min_should
        children = must + should + must_not + (min_should[0] if min_should else [])
        self.cost = max((child.cost for child in children), default=0)

    def test(self, payload: dict | None, point_id: Any) -> bool:
        for node in self.must:
            if not node.test(payload, point_id):
                return False
        for node in self.must_not:
            if node.test(payload, point_id):
                return False
        if self.should and not any(node.test(payload, point_id) for node in self.should):
            return False
        if self.min_should is not None:
            nodes, min_count = self.min_should
            hits = 0
            for node in nodes:
                hits += node.test(payload, point_id)
                if hits >= min_count:
                    break
            if hits < min_count:
                return False
        return True

    def mask(self, ctx: _Context, within: np.ndarray) -> np.ndarray:
        allowed = within
        for node in self.must:
            allowed = node.mask(ctx, allowed)
            if not allowed.any():
                return allowed
        for node in self.must_not:
            allowed = allowed & ~node.mask(ctx, allowed)
        if self.should:
            hits = np.zeros_like(allowed)
            remaining = allowed
            for node in sorted(self.should, key=lambda n: n.cost):
                hit = node.mask(ctx, remaining)
                hits |= hit
                remaining = remaining & ~hit
            allowed = hits
        if self.min_should is not None:
            nodes, min_count = self.min_should
            counts = np.zeros(len(allowed), dtype=np.int32)
            for node in nodes:
                counts += node.mask(ctx, allowed)
            allowed = allowed & (counts >= min_count)
        return allowed


class _HasId(_Node):
    def __init__(self, ids: list[PointId]) -> None:
        self.ids = frozenset(ids)

    def test(self, payload: dict | None, point_id: Any) -> bool:
        return point_id in self.ids

    def mask(self, ctx: _Context, within: np.ndarray) -> np.ndarray:
        out = np.zeros(len(within), dtype=bool)
        slots = []
        for point_id in self.ids:
            slot = ctx.resolve_id(point_id)
            if slot is not None and 0 <= slot < len(within):
                slots.append(slot)
        if slots:
            out[slots] = True
        return out & within


class _FieldNode(_Node):
    """A condition on the values one key path selects."""

    cost = 0

    def __init__(self, path: Path) -> None:
        self.path = path
        self.if_missing = self.test_values([])

    def test_values(self, selected: list[Any]) -> bool:
        raise NotImplementedError

    def test(self, payload: dict | None, point_id: Any) -> bool:
        return self.test_values(_select(payload, self.path))

    def indexed(self, ctx: _Context, field: _Field, within: np.ndarray) -> np.ndarray:
        """The slots where the condition holds, from the field's columns.

        Slots outside ``within`` may come back either way (the caller masks
        them); payload scans only visit slots inside it.
        """
        raise NotImplementedError

    def mask(self, ctx: _Context, within: np.ndarray) -> np.ndarray:
        index = ctx.index
        path = self.path
        field = index._fields.get(path)
        if field is not None:
            return self.indexed(ctx, field, within) & within
        if _indexable(path) and not index._saturated:
            # no point ever had a value at this path
            return within.copy() if self.if_missing else np.zeros_like(within)
        return index._scan(self, within, self._candidates(index, within))

    def _candidates(self, index: PayloadIndex, within: np.ndarray) -> np.ndarray | None:
        """Slots that may select a value (a mask), or None when any slot may."""
        for end in range(len(self.path) - 1, 0, -1):
            prefix = self.path[:end]
            field = index._fields.get(prefix)
            if field is not None and _indexable(prefix):
                return field.flag(_PRESENT, len(within))
        return None

    def scan_long(
        self, ctx: _Context, field: _Field, within: np.ndarray, out: np.ndarray
    ) -> np.ndarray:
        """Add the slots holding long strings that satisfy the condition (payload scan)."""
        long = field.flag(_LONG, ctx.capacity) & within
        if long.any():
            hits = ctx.index._scan(self, long, long)
            out |= hits
        return out


class _MatchValues(_FieldNode):
    """``match.value`` and ``match.any``: some value is one of ``keys``."""

    def __init__(self, path: Path, keys: list[Any]) -> None:
        self.keys = frozenset(keys)
        self.has_long = any(isinstance(k, str) and len(k) > LONG_STRING for k in keys)
        super().__init__(path)

    def test_values(self, selected: list[Any]) -> bool:
        keys = self.keys
        for value in _flatten(selected):
            key = _match_key(value)
            if key is not None and key in keys:
                return True
        return False

    def indexed(self, ctx: _Context, field: _Field, within: np.ndarray) -> np.ndarray:
        codes = [field.dictionary.codes[key] for key in self.keys if key in field.dictionary.codes]
        out = field.keyword_select(codes, ctx.capacity)
        if self.has_long:
            self.scan_long(ctx, field, within, out)
        return out


class _MatchExcept(_FieldNode):
    """``match.except``: some non-null value is not one of ``keys``."""

    def __init__(self, path: Path, keys: list[Any]) -> None:
        self.keys = frozenset(keys)
        super().__init__(path)

    def test_values(self, selected: list[Any]) -> bool:
        keys = self.keys
        for value in _flatten(selected):
            if value is None:
                continue
            key = _match_key(value)
            if key is None or key not in keys:
                return True
        return False

    def indexed(self, ctx: _Context, field: _Field, within: np.ndarray) -> np.ndarray:
        codes = [field.dictionary.codes[key] for key in self.keys if key in field.dictionary.codes]
        out = field.keyword_select(codes, ctx.capacity, negate=True)
        out |= field.flag(_OTHER, ctx.capacity)
        return self.scan_long(ctx, field, within, out)


class _StringTest(_FieldNode):
    """A per-value test on strings (full text, phrase, prefix, substring)."""

    def __init__(self, path: Path, kind: str, text: str) -> None:
        self.kind = kind
        self.text = text
        self.query = _tokens(text)
        self.query_set = frozenset(self.query)
        super().__init__(path)

    def test_string(self, value: str) -> bool:
        kind = self.kind
        if kind == "prefix":
            return value.startswith(self.text)
        if kind == "substring":
            return self.text in value
        if not self.query:
            return False
        tokens = _tokens(value)
        if kind == "text":
            return self.query_set.issubset(tokens)
        if kind == "text_any":
            return not self.query_set.isdisjoint(tokens)
        width = len(self.query)
        return any(tokens[i : i + width] == self.query for i in range(len(tokens) - width + 1))

    def test_values(self, selected: list[Any]) -> bool:
        return any(isinstance(v, str) and self.test_string(v) for v in _flatten(selected))

    def indexed(self, ctx: _Context, field: _Field, within: np.ndarray) -> np.ndarray:
        capacity = ctx.capacity
        if field.tokens is not None and self.kind in ("text", "text_any", "phrase"):
            if not self.query:
                return np.zeros(capacity, dtype=bool)
            if self.kind == "text_any":
                return field.token_select(self.query, capacity, every=False)
            found = field.token_select(self.query, capacity, every=True) & within
            if self.kind == "text":
                # all words in one string: exact unless the slot has several strings
                exact = found & ~field.flag(_STRINGS, capacity)
                check = found & ~exact
            else:
                exact, check = np.zeros(capacity, dtype=bool), found
            if check.any():
                exact |= ctx.index._scan(self, check, check)
            return exact
        codes = [
            code
            for code, word in enumerate(field.dictionary.words)
            if isinstance(word, str) and self.test_string(word)
        ]
        out = field.keyword_select(codes, capacity)
        return self.scan_long(ctx, field, within, out)


class _Range(_FieldNode):
    """``range`` over numbers (float64) or over datetimes (microseconds)."""

    def __init__(self, path: Path, bounds: dict[str, Any], datetimes: bool) -> None:
        self.bounds = bounds
        self.datetimes = datetimes
        self.check = _bounds_test(*(bounds.get(b) for b in _BOUNDS))
        self.vector = _bounds_vector(
            *(bounds.get(b) for b in _BOUNDS), missing=_NO_TIME if datetimes else None
        )
        super().__init__(path)

    def test_values(self, selected: list[Any]) -> bool:
        check = self.check
        for value in _flatten(selected):
            x = parse_datetime(value) if self.datetimes else _as_number(value)
            if x is not None and check(x):
                return True
        return False

    def indexed(self, ctx: _Context, field: _Field, within: np.ndarray) -> np.ndarray:
        column = field.datetimes if self.datetimes else field.numbers
        if column is None:
            return np.zeros(ctx.capacity, dtype=bool)
        return column.select(self.vector, ctx.capacity)


class _ValuesCount(_FieldNode):
    def __init__(self, path: Path, bounds: dict[str, int]) -> None:
        self.bounds = bounds
        self.check = _bounds_test(*(bounds.get(b) for b in _BOUNDS))
        self.vector = _bounds_vector(*(bounds.get(b) for b in _BOUNDS))
        super().__init__(path)

    def test_values(self, selected: list[Any]) -> bool:
        if not selected:
            return self.check(0)
        for value in selected:
            if value is None:
                count = 0
            elif isinstance(value, list | tuple):
                count = len(value)
            else:
                count = 1
            if self.check(count):
                return True
        return False

    def indexed(self, ctx: _Context, field: _Field, within: np.ndarray) -> np.ndarray:
        capacity = ctx.capacity
        present = field.flag(_PRESENT, capacity)
        counted = field.counts.has(capacity) if field.counts is not None else None
        out = np.zeros(capacity, dtype=bool)
        if self.check(1):
            out |= present if counted is None else present & ~counted
        if counted is not None:
            out |= field.counts.select(self.vector, capacity)  # type: ignore[union-attr]
        if self.check(0):
            out |= ~present
        return out


class _IsEmpty(_FieldNode):
    """``is_empty`` (``want=True``) or its negation (``{"key": k, "is_empty": false}``)."""

    def __init__(self, path: Path, want: bool = True) -> None:
        self.want = want
        super().__init__(path)

    def test_values(self, selected: list[Any]) -> bool:
        empty = all(v is None or (isinstance(v, list | tuple) and not v) for v in selected)
        return empty == self.want

    def indexed(self, ctx: _Context, field: _Field, within: np.ndarray) -> np.ndarray:
        nonempty = field.flag(_NONEMPTY, ctx.capacity)
        return ~nonempty if self.want else nonempty


class _IsNull(_FieldNode):
    """``is_null`` (``want=True``) or its negation (``{"key": k, "is_null": false}``)."""

    def __init__(self, path: Path, want: bool = True) -> None:
        self.want = want
        super().__init__(path)

    def test_values(self, selected: list[Any]) -> bool:
        null = any(
            v is None or (isinstance(v, list | tuple) and any(e is None for e in v))
            for v in selected
        )
        return null == self.want

    def indexed(self, ctx: _Context, field: _Field, within: np.ndarray) -> np.ndarray:
        null = field.flag(_NULL, ctx.capacity)
        return null if self.want else ~null


class _Nested(_FieldNode):
    """``nested``: one object element of the array at ``path`` satisfies ``filter``.

    Answered by scanning payloads, but only those of slots that pass the
    inner ``must`` value conditions re-rooted at ``path[]`` (if an element
    matches ``x``, the point's ``path[].x`` matches too), which the columns
    answer first.
    """

    cost = 2

    def __init__(self, path: Path, inner: Filter) -> None:
        self.inner = inner
        super().__init__(path)
        self.hints: list[_FieldNode] = []
        for node in inner.must:
            if isinstance(node, _MatchValues | _MatchExcept | _StringTest | _Range):
                rooted = (*path, None, *node.path)
                if _indexable(rooted):
                    hint = copy.copy(node)
                    hint.path = rooted
                    self.hints.append(hint)

    def elements(self, selected: list[Any]) -> Iterator[dict]:
        for value in selected:
            if isinstance(value, list | tuple):
                for element in value:
                    if isinstance(element, dict):
                        yield element

    def test_values(self, selected: list[Any]) -> bool:
        return any(self.inner.test(element, None) for element in self.elements(selected))

    def mask(self, ctx: _Context, within: np.ndarray) -> np.ndarray:
        index = ctx.index
        field = index._fields.get(self.path)
        if field is None:
            return super().mask(ctx, within)
        candidates = field.flag(_PRESENT, len(within)) & within
        for hint in self.hints:
            if hint.path in index._fields or not index._saturated:
                candidates = hint.mask(ctx, candidates)
        return index._scan(self, candidates, candidates)


# ---------------------------------------------------------------------------
# Parsing


def parse_filter(spec: Any) -> Filter | None:
    """Validate a Qdrant filter and compile it; ``None`` means "match everything".

    Accepts a filter dict (each clause a condition or a list of them),
    ``None``/``{}``, an already compiled ``Filter`` (returned as is), or a
    pydantic model from ``qdrant_client`` (dumped by alias). Raises
    ``InvalidFilter`` naming the location (``filter.must[1].range.gt``) and
    the problem. The compiled filter is immutable and may be reused by any
    number of threads and ``PayloadIndex`` instances.
    """
    if spec is None or isinstance(spec, Filter):
        return spec
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump(by_alias=True, exclude_none=True)
    compiled = _parse_filter(spec, "filter", 0, nested=False)
    if not (compiled.must or compiled.should or compiled.must_not or compiled.min_should):
        return None
    return compiled


def _clause(value: Any, where: str, depth: int, nested: bool) -> list[_Node]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [_parse_condition(value, where, depth, nested)]
    if isinstance(value, list):
        return [_parse_condition(c, f"{where}[{i}]", depth, nested) for i, c in enumerate(value)]
    raise InvalidFilter(f"{where}: expected a condition or a list of conditions, got {value!r}")


def _parse_filter(spec: Any, where: str, depth: int, nested: bool) -> Filter:
    if depth > MAX_DEPTH:
        raise InvalidFilter(f"{where}: filters are nested deeper than {MAX_DEPTH} levels")
    if not isinstance(spec, dict):
        raise InvalidFilter(f"{where}: a filter must be an object, got {type(spec).__name__}")
    unknown = set(spec) - _FILTER_KEYS
    if unknown:
        raise InvalidFilter(
            f"{where}: unknown filter key {sorted(map(str, unknown))[0]!r} "
            "(expected must, should, must_not, min_should)"
        )
    must = _clause(spec.get("must"), f"{where}.must", depth + 1, nested)
    should = _clause(spec.get("should"), f"{where}.should", depth + 1, nested)
    must_not = _clause(spec.get("must_not"), f"{where}.must_not", depth + 1, nested)
    min_should = None
    raw = spec.get("min_should")
    if raw is not None:
        at = f"{where}.min_should"
        if not isinstance(raw, dict) or set(raw) - {"conditions", "min_count"}:
            raise InvalidFilter(f"{at}: expected {{'conditions': [...], 'min_count': n}}")
        if "conditions" not in raw:
            raise InvalidFilter(f"{at}: 'conditions' is required")
        min_count = raw.get("min_count")
        if isinstance(min_count, bool) or not isinstance(min_count, int):
            raise InvalidFilter(f"{at}.min_count: expected an integer, got {min_count!r}")
        if min_count < 1:
            raise InvalidFilter(f"{at}.min_count: must be 1 or larger, got {min_count}")
        conditions = _clause(raw["conditions"], f"{at}.conditions", depth + 1, nested)
        min_should = (conditions, min_count)
    return Filter(must, should, must_not, min_should)


def _parse_path(key: Any, where: str) -> Path:
    try:
        return parse_key(key)
    except InvalidFilter as error:
        raise InvalidFilter(f"{where}: {error}") from None


def _parse_condition(cond: Any, where: str, depth: int, nested: bool) -> _Node:
    if depth > MAX_DEPTH:
        raise InvalidFilter(f"{where}: filters are nested deeper than {MAX_DEPTH} levels")
    if not isinstance(cond, dict):
        raise InvalidFilter(f"{where}: a condition must be an object, got {cond!r}")
    if "key" in cond:
        return _parse_field_condition(cond, where)
    if len(cond) == 1:
        ((name, body),) = cond.items()
        if name in ("is_empty", "is_null"):
            if not isinstance(body, dict) or set(body) != {"key"}:
                raise InvalidFilter(f"{where}.{name}: expected {{'key': ...}}, got {body!r}")
            path = _parse_path(body["key"], f"{where}.{name}.key")
            return _IsEmpty(path) if name == "is_empty" else _IsNull(path)
        if name == "has_id":
            if nested:
                raise InvalidFilter(f"{where}: has_id is not allowed inside a nested filter")
            return _HasId(_parse_ids(body, f"{where}.has_id"))
        if name == "has_vector":
            if body != "":
                raise InvalidFilter(
                    f"{where}.has_vector: unknown vector name {body!r} (points have one unnamed vector, '')"
                )
            return _Always()
        if name == "nested":
            return _parse_nested(body, f"{where}.nested", depth)
        if name == "slice":
            raise InvalidFilter(f"{where}: slice conditions are not supported")
    if set(cond) <= _FILTER_KEYS:
        return _parse_filter(cond, where, depth + 1, nested)
    unknown = sorted(map(str, set(cond) - _FILTER_KEYS))
    raise InvalidFilter(
        f"{where}: unknown condition {unknown[0]!r} (expected a field condition with 'key', "
        "is_empty, is_null, has_id, has_vector, nested, or a filter)"
    )


def _parse_ids(body: Any, where: str) -> list[PointId]:
    if not isinstance(body, list):
        raise InvalidFilter(f"{where}: expected a list of point ids, got {body!r}")
    ids: list[PointId] = []
    for i, value in enumerate(body):
        if isinstance(value, uuid.UUID):
            value = str(value)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise InvalidFilter(f"{where}[{i}]: {value!r} is not a point id")
        if isinstance(value, int) and not 0 <= value <= _U64_MAX:
            raise InvalidFilter(f"{where}[{i}]: integer ids are unsigned 64-bit, got {value}")
        if isinstance(value, str) and not value:
            raise InvalidFilter(f"{where}[{i}]: the empty string is not a point id")
        ids.append(value)
    return ids


def _parse_nested(body: Any, where: str, depth: int) -> _Node:
    if not isinstance(body, dict) or set(body) != {"key", "filter"}:
        raise InvalidFilter(f"{where}: expected {{'key': ..., 'filter': {{...}}}}")
    path = _parse_path(body["key"], f"{where}.key")
    if len(path) > 1 and path[-1] is None:
        path = path[:-1]
    inner = _parse_filter(body["filter"], f"{where}.filter", depth + 1, nested=True)
    return _Nested(path, inner)


def _parse_field_condition(cond: dict, where: str) -> _Node:
    unknown = set(cond) - _FIELD_KEYS
    if unknown:
        raise InvalidFilter(
            f"{where}: unknown field condition {sorted(map(str, unknown))[0]!r} "
            "(expected match, range, values_count, is_empty or is_null)"
        )
    path = _parse_path(cond["key"], f"{where}.key")
    given = [name for name in _FIELD_KEYS - {"key"} if cond.get(name) is not None]
    if not given:
        raise InvalidFilter(
            f"{where}: field condition on {cond['key']!r} needs one of match, range, "
            "values_count, is_empty, is_null"
        )
    if len(given) > 1:
        raise InvalidFilter(f"{where}: field condition has several tests {sorted(given)}; use one")
    name = given[0]
    body = cond[name]
    at = f"{where}.{name}"
    if name in _GEO_KEYS:
        raise InvalidFilter(f"{at}: geo filters are not supported")
    if name == "match":
        return _parse_match(path, body, at)
    if name == "range":
        return _parse_range(path, body, at)
    if name == "values_count":
        return _ValuesCount(path, _parse_count_bounds(body, at))
    if not isinstance(body, bool):
        raise InvalidFilter(f"{at}: expected true or false, got {body!r}")
    return _IsEmpty(path, body) if name == "is_empty" else _IsNull(path, body)


def _match_operand(value: Any, where: str) -> Any:
    if isinstance(value, str | bool):
        return _match_key(value)
    if isinstance(value, int):
        if not _I64_MIN <= value <= _I64_MAX:
            raise InvalidFilter(f"{where}: integer {value} is outside the 64-bit range")
        return value
    if isinstance(value, float):
        raise InvalidFilter(
            f"{where}: match takes a string, integer or boolean, not the float {value!r} "
            "(use range for floats)"
        )
    raise InvalidFilter(f"{where}: match takes a string, integer or boolean, got {value!r}")


def _parse_match(path: Path, body: Any, where: str) -> _Node:
    if not isinstance(body, dict):
        raise InvalidFilter(f"{where}: expected an object such as {{'value': ...}}, got {body!r}")
    given = [kind for kind in body if body[kind] is not None]
    unknown = [kind for kind in body if kind not in _MATCH_KINDS]
    if unknown:
        raise InvalidFilter(
            f"{where}: unknown match kind {str(unknown[0])!r} (expected one of {', '.join(_MATCH_KINDS)})"
        )
    if not given:
        raise InvalidFilter(
            f"{where}: match has no value (expected one of {', '.join(_MATCH_KINDS)})"
        )
    if len(given) > 1:
        raise InvalidFilter(f"{where}: match has several kinds {given}; use one")
    kind = given[0]
    value = body[kind]
    at = f"{where}.{kind}"
    if kind == "value":
        return _MatchValues(path, [_match_operand(value, at)])
    if kind in ("any", "except"):
        if not isinstance(value, list):
            raise InvalidFilter(f"{at}: expected a list of strings or of integers, got {value!r}")
        kinds = {type(v) for v in value}
        if kinds - {str, int} or (kinds == {str, int}):
            raise InvalidFilter(
                f"{at}: expected a list of only strings or only integers, got {value!r}"
            )
        keys = [_match_operand(v, f"{at}[{i}]") for i, v in enumerate(value)]
        return _MatchValues(path, keys) if kind == "any" else _MatchExcept(path, keys)
    if not isinstance(value, str):
        raise InvalidFilter(f"{at}: expected a string, got {value!r}")
    return _StringTest(path, kind, value)


def _parse_range(path: Path, body: Any, where: str) -> _Node:
    if not isinstance(body, dict):
        raise InvalidFilter(f"{where}: expected an object with gt/gte/lt/lte, got {body!r}")
    unknown = [b for b in body if b not in _BOUNDS]
    if unknown:
        raise InvalidFilter(
            f"{where}: unknown range bound {str(unknown[0])!r} (expected gt, gte, lt, lte)"
        )
    given = {b: v for b, v in body.items() if v is not None}
    numeric = [
        b for b, v in given.items() if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    if len(numeric) == len(given):
        bounds: dict[str, Any] = {}
        for b, v in given.items():
            if isinstance(v, float) and math.isnan(v):
                raise InvalidFilter(f"{where}.{b}: NaN is not a bound")
            bounds[b] = _as_number(v)
        return _Range(path, bounds, datetimes=False)
    for b, v in given.items():
        if b in numeric or not isinstance(v, str | date):
            raise InvalidFilter(
                f"{where}.{b}: expected a number or an RFC 3339 datetime string, got {v!r}"
                + (" (bounds must all be numbers or all be datetimes)" if numeric else "")
            )
    bounds = {b: _datetime_bound(v, f"{where}.{b}") for b, v in given.items()}
    return _Range(path, bounds, datetimes=True)


def _parse_count_bounds(body: Any, where: str) -> dict[str, int]:
    if not isinstance(body, dict):
        raise InvalidFilter(f"{where}: expected an object with gt/gte/lt/lte, got {body!r}")
    bounds: dict[str, int] = {}
    for b, v in body.items():
        if b not in _BOUNDS:
            raise InvalidFilter(f"{where}: unknown bound {str(b)!r} (expected gt, gte, lt, lte)")
        if v is None:
            continue
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InvalidFilter(f"{where}.{b}: expected a non-negative integer, got {v!r}")
        bounds[b] = v
    return bounds


# ---------------------------------------------------------------------------
# Reference evaluation


def matches(payload: dict | None, point_id: PointId | None, f: Filter | dict | None) -> bool:
    """Whether one point satisfies a filter (brute force; the reference for ``mask``)."""
    if f is not None and not isinstance(f, Filter):
        f = parse_filter(f)
    if f is None:
        return True
    return f.test(payload, point_id)


# ---------------------------------------------------------------------------
# The payload index


def _collect(payload: dict) -> dict[Path, list[Any]]:
    """Every indexable key path of a payload with the values it selects.

    Walks objects and the object elements of arrays (``a[].b``) down to
    ``MAX_INDEXED_DEPTH`` path items. Keys that are not strings can never be
    named by a filter, so they are skipped.
    """
    found: dict[Path, list[Any]] = {}

    def visit(prefix: Path, obj: dict) -> None:
        depth = len(prefix) + 1  # items in the paths recorded here
        for key, value in obj.items():
            if type(key) is not str and not isinstance(key, str):
                continue
            path = (*prefix, key)
            values = found.get(path)
            if values is None:
                found[path] = [value]
            else:
                values.append(value)
            if isinstance(value, dict):
                if depth < MAX_INDEXED_DEPTH:
                    visit(path, value)
            elif isinstance(value, list | tuple) and depth + 2 <= MAX_INDEXED_DEPTH:
                inner = (*path, None)
                for element in value:
                    if isinstance(element, dict):
                        visit(inner, element)

    visit((), payload)
    return found


# ---------------------------------------------------------------------------
# Checkpointed columns
#
# A checkpoint keeps the columns as they are in memory, so that opening a
# database loads them instead of re-indexing every payload:
#
# - ``pi/meta``: the fields in their order (key path, kinds seen, which columns,
#   dictionary sizes), the explicit indexes and the limits (msgpack);
# - ``pi/part/<part>``: per part of ``2**PART_SHIFT`` slots, for each field with a
#   value there, its flags, each column's single values and the multi-valued
#   entries (values and slots) of the part's slots;
# - ``pi/words/<field>/<k|t>/<part>``: a dictionary's words (keywords ``k``,
#   text tokens ``t``) per part of ``2**PART_SHIFT`` codes.
#
# Parts are taken with the payload parts (the same dirty set); dictionary parts
# when a code in them was allocated or freed. Parts not written are carried from
# the previous checkpoint. Reference counts are recounted on load from the
# columns, spans from the multi-valued entries (one vectorised pass each).

COLUMNS_PREFIX = "pi/"
COLUMNS_VERSION = 1
_COLUMNS = {  # column attribute of ``_Field`` -> (dtype, missing)
    "keywords": (np.int32, -1),
    "numbers": (np.float64, math.nan),
    "datetimes": (np.int64, _NO_TIME),
    "counts": (np.float64, math.nan),
    "tokens": (np.int32, -1),
}


def _blob(value: Any) -> np.ndarray:
    return np.frombuffer(pack(value), np.uint8)


def _multi_by_part(column: _Column | None, parts: np.ndarray) -> dict[int, np.ndarray]:
    """``{part: positions in column.values}`` of the multi-valued entries of ``parts``'s
    slots, each in stored order (a slot's entries stay together)."""
    if column is None or not column.used:
        return {}
    slots = column.slots[: column.used]
    of = np.where(slots >= 0, slots >> PART_SHIFT, -1)
    where = np.flatnonzero(np.isin(of, parts))
    if not where.size:
        return {}
    order = np.argsort(of[where], kind="stable")
    where = where[order]
    keys = of[where]
    cuts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[cuts[1:], len(where)]
    return {int(keys[a]): where[a:b] for a, b in zip(cuts.tolist(), ends.tolist(), strict=True)}


def _restore_multi(column: _Column, pieces: list[tuple[bytes, bytes]]) -> None:
    """Fill a column's multi-valued entries from checkpointed pieces (parts in order)."""
    if not pieces:
        return
    values = np.concatenate([np.frombuffer(v, column.dtype) for v, _ in pieces])
    slots = np.concatenate([np.frombuffer(s, np.int32) for _, s in pieces])
    size = max(64, len(values))
    column.values = np.empty(size, column.dtype)
    column.values[: len(values)] = values
    column.slots = np.full(size, -1, np.int32)
    column.slots[: len(slots)] = slots
    column.used = len(values)
    starts = np.flatnonzero(np.r_[True, slots[1:] != slots[:-1]])
    counts = np.diff(np.r_[starts, len(slots)])
    column.spans = dict(
        zip(slots[starts].tolist(), zip(starts.tolist(), counts.tolist(), strict=True), strict=True)
    )


def _load_words(blobs: dict[str, np.ndarray], field: int, tag: str, n: int) -> _Dictionary:
    """A dictionary from its checkpointed word parts (reference counts come later)."""
    dictionary = _Dictionary()
    words: list[Any] = []
    for part in range(-(-n >> PART_SHIFT)):
        words.extend(
            unpack(np.asarray(blobs[f"{COLUMNS_PREFIX}words/{field}/{tag}/{part:08d}"]).tobytes())
        )
    words = [(_TRUE if w else _FALSE) if type(w) is bool else w for w in words[:n]]
    if len(words) != n:
        raise ValueError(f"a dictionary holds {len(words)} of its {n} words")
    dictionary.words = words
    dictionary.codes = {w: c for c, w in enumerate(words) if w is not None}
    dictionary.free = [c for c, w in enumerate(words) if w is None]
    return dictionary


def _recount(dictionary: _Dictionary, column: _Column | None) -> None:
    """A dictionary's reference counts: the slots holding each code in ``column``."""
    n = len(dictionary.words)
    refs = np.zeros(n, np.int64)
    if column is not None and n:
        single = column.single[column.single >= 0]
        multi = column.values[: column.used][column.slots[: column.used] >= 0]
        refs = np.bincount(np.concatenate([single, multi]).astype(np.int64), minlength=n)[:n]
    dictionary.refs = refs.tolist()


class PayloadIndex:
    """Payloads per slot, plus per-key-path columns that answer filters as masks.

    Every key path a payload contains (``a``, ``a.b``, ``a[].b``) is indexed
    automatically, up to ``max_fields`` paths: a keyword dictionary (strings,
    integers, booleans -> int32 codes per slot), float64 columns of numbers
    and of datetimes, value counts, and per-slot flags (present, empty, null).
    Conditions the columns cannot answer (``nested``, ``a[0]``, long strings,
    paths past the limit) scan the payloads of the slots the other
    conditions left.

    One writer and any number of readers may use it at once (a lock keeps
    ``set``/``remove`` and ``mask`` apart). The index keeps a reference to
    each payload: do not mutate a payload after handing it over.
    """

    def __init__(self, max_fields: int = MAX_AUTO_FIELDS) -> None:
        self.max_fields = max_fields
        self._payloads: dict[int, dict | None] = {}
        self._fields: dict[Path, _Field] = {}
        self._slot_fields: dict[int, tuple[_Field, ...]] = {}
        self._explicit: dict[Path, str] = {}
        self._saturated = False
        self._lock = threading.RLock()
        self._dirty: set[int] = set()  # parts (slot >> PART_SHIFT) changed since the capture
        # Slots below this came from checkpointed columns without a ``_slot_fields`` entry:
        # their fields are found from the fields' flags (see ``_fields_of``).
        self._loaded_upto = 0
        self._words_full = False  # a failed checkpoint took dictionary parts: write them all

    # -- writes -------------------------------------------------------------

    def set(self, slot: int, payload: dict | None) -> None:
        """Add or replace the payload of ``slot``; the columns follow."""
        slot = self._check_slot(slot)
        if payload is not None and not isinstance(payload, dict):
            raise InvalidInput(f"a payload must be an object, got {type(payload).__name__}")
        collected = _collect(payload) if payload else {}
        with self._lock:
            self._dirty.add(slot >> PART_SHIFT)
            self._unindex(slot)
            if payload is None:  # kept as absent: no entry per point without a payload
                self._payloads.pop(slot, None)
                return
            self._payloads[slot] = payload
            touched = []
            for path, selected in collected.items():
                field = self._fields.get(path)
                if field is None:
                    if path[-1] is None or self._saturated:
                        continue
                    if len(self._fields) >= self.max_fields:
                        self._saturated = True
                        logger.warning(
                            "payload index: more than %d key paths; conditions on new paths "
                            "scan payloads",
                            self.max_fields,
                        )
                        continue
                    field = self._fields[path] = _Field(path)
                field.put(slot, selected)
                touched.append(field)
            if touched:
                self._slot_fields[slot] = tuple(touched)

    def set_absent(self, slots: np.ndarray) -> None:
        """``set(slot, None)`` for many slots (the writer's upserts without a payload): the
        parts are marked once each, and only slots that may hold something are visited."""
        if len(slots) == 0:
            return
        with self._lock:
            self._dirty.update(np.unique(np.asarray(slots) >> PART_SHIFT).tolist())
            upto, fields, payloads = self._loaded_upto, self._slot_fields, self._payloads
            for slot in np.asarray(slots).tolist():
                if slot < upto or slot in fields or slot in payloads:
                    self._unindex(slot)
                    payloads.pop(slot, None)

    def remove(self, slot: int) -> None:
        """Forget the payload of ``slot`` (no error if it had none)."""
        slot = self._check_slot(slot)
        with self._lock:
            self._dirty.add(slot >> PART_SHIFT)
            self._unindex(slot)
            self._payloads.pop(slot, None)

    def _unindex(self, slot: int) -> None:
        for field in self._fields_of(slot, pop=True):
            field.drop(slot)

    def _fields_of(self, slot: int, pop: bool = False) -> tuple[_Field, ...]:
        """The fields holding a value of ``slot`` (``pop``: and forget the entry)."""
        fields = self._slot_fields.pop(slot, None) if pop else self._slot_fields.get(slot)
        if fields is None:
            if slot >= self._loaded_upto:
                return ()
            fields = tuple(
                f for f in self._fields.values() if slot < len(f.flags) and f.flags[slot]
            )
        return fields

    @staticmethod
    def _check_slot(slot: Any) -> int:
        if isinstance(slot, bool) or not isinstance(slot, int | np.integer) or slot < 0:
            raise InvalidInput(f"slot must be a non-negative integer, got {slot!r}")
        return int(slot)

    # -- reads --------------------------------------------------------------

    def get(self, slot: int) -> dict | None:
        """The payload of ``slot`` (``None`` when it has none)."""
        return self._payloads.get(int(slot))

    def items(self) -> Iterator[tuple[int, dict | None]]:
        """``(slot, payload)`` for every slot that holds a payload, ascending by slot."""
        with self._lock:
            snapshot = sorted(self._payloads.items())
        yield from snapshot

    def __len__(self) -> int:
        return len(self._payloads)

    # -- checkpoints --------------------------------------------------------

    def take_dirty(self) -> set[int]:
        """The parts (``slot >> PART_SHIFT``) set or removed since the last call."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        return dirty

    def mark_dirty(self, parts: Iterable[int]) -> None:
        """Give back parts taken by a checkpoint that failed (and, with them, every part of
        the dictionaries: the next capture writes them all)."""
        with self._lock:
            self._dirty.update(parts)
            self._words_full = True

    def capture_parts(self, parts: set[int], missing: Any) -> dict[int, list[Any]]:
        """``{part: [payload of each slot of the part, or missing]}``: references only.

        Payloads are replaced, never mutated, once handed to the index, so the
        references are a consistent capture; encoding happens later, outside any lock.
        """
        size = 1 << PART_SHIFT
        get = self._payloads.get
        with self._lock:
            return {
                part: list(map(get, range(part * size, (part + 1) * size), repeat(missing)))
                for part in parts
            }

    def __contains__(self, slot: object) -> bool:
        return slot in self._payloads

    def capture_columns(self, parts: set[int], full: bool = False) -> dict[str, np.ndarray]:
        """The columns of the given slot parts and what changed of the dictionaries, as
        blobs for a checkpoint (``{name: uint8 array}``, see "Checkpointed columns").

        ``parts`` are those ``take_dirty`` returned (the same parts as the payloads);
        ``full``: every part (the previous checkpoint has no columns to carry from).
        The caller keeps the writer out; the copies are O(parts taken) except one
        vectorised pass over each multi-valued column.
        """
        with self._lock:
            fields = list(self._fields.values())
            if full:
                parts = self._all_parts()
            words_full = full or self._words_full
            self._words_full = False
            meta_fields = []
            out: dict[str, np.ndarray] = {}
            for i, field in enumerate(fields):
                columns = {}
                for name in _COLUMNS:
                    column = getattr(field, name)
                    if column is not None:
                        columns[name] = True
                vocabulary = field.vocabulary
                meta_fields.append(
                    {
                        "path": list(field.path),
                        "kinds": field.kinds,
                        "columns": sorted(columns),
                        "words": len(field.dictionary.words),
                        "vocabulary": None if vocabulary is None else len(vocabulary.words),
                    }
                )
                for tag, dictionary in (("k", field.dictionary), ("t", vocabulary)):
                    if dictionary is None:
                        continue
                    taken = dictionary.dirty
                    dictionary.dirty = set()
                    if words_full:
                        taken = set(range(-(-len(dictionary.words) >> PART_SHIFT)))
                    for part in taken:
                        words = dictionary.words[part << PART_SHIFT : (part + 1) << PART_SHIFT]
                        out[f"{COLUMNS_PREFIX}words/{i}/{tag}/{part:08d}"] = _blob(
                            [w.value if type(w) is _BoolKey else w for w in words]
                        )
            meta = {
                "version": COLUMNS_VERSION,
                "part_shift": PART_SHIFT,
                "max_fields": self.max_fields,
                "saturated": self._saturated,
                "explicit": [[list(path), schema] for path, schema in self._explicit.items()],
                "fields": meta_fields,
            }
            out[f"{COLUMNS_PREFIX}meta"] = _blob(meta)
            if not parts:
                return out
            wanted = np.array(sorted(parts), np.int64)
            multi = [
                {name: _multi_by_part(getattr(f, name), wanted) for name in _COLUMNS}
                for f in fields
            ]
            size = 1 << PART_SHIFT
            for part in wanted.tolist():
                lo, hi = part * size, (part + 1) * size
                held = []
                for i, field in enumerate(fields):
                    flags = field.flags[lo:hi]
                    if not flags.any():
                        continue
                    cols = {}
                    for name in _COLUMNS:
                        column = getattr(field, name)
                        if column is None:
                            continue
                        single = column.single[lo:hi]
                        entries = multi[i][name].get(part)
                        cols[name] = [
                            single.tobytes() if len(single) else None,
                            None if entries is None else column.values[entries].tobytes(),
                            None if entries is None else column.slots[entries].tobytes(),
                        ]
                    held.append([i, flags.tobytes(), cols])
                out[f"{COLUMNS_PREFIX}part/{part:08d}"] = _blob(held)
            return out

    @classmethod
    def from_checkpoint(
        cls,
        items: Iterable[tuple[int, dict | None]],
        indexes: dict[str, Any] | None,
        blobs: dict[str, np.ndarray],
    ) -> PayloadIndex:
        """The index of a checkpoint: its payloads plus its columns as saved
        (``capture_columns``; no payload is re-indexed), or, for a checkpoint written
        without columns (or by another version of them), rebuilt from the payloads."""
        raw = blobs.get(f"{COLUMNS_PREFIX}meta")
        meta = None if raw is None else unpack(np.asarray(raw).tobytes())
        if (
            not isinstance(meta, dict)
            or meta.get("version") != COLUMNS_VERSION
            or meta.get("part_shift") != PART_SHIFT
        ):
            if raw is not None:
                logger.warning("payload index: unknown checkpointed columns; rebuilding them")
            return cls.from_items(items, indexes=indexes)
        index = cls(max_fields=int(meta["max_fields"]))
        index._payloads = dict(items if isinstance(items, list) else list(items))
        if len(index._payloads) and min(index._payloads) < 0:
            raise InvalidInput("a checkpointed payload has a negative slot")
        index._saturated = bool(meta["saturated"])
        index._explicit = {tuple(path): schema for path, schema in meta["explicit"]}
        size = 1 << PART_SHIFT
        prefix = f"{COLUMNS_PREFIX}part/"
        parts = sorted((int(k[len(prefix) :]), k) for k in blobs if k.startswith(prefix))
        capacity = (parts[-1][0] + 1) * size if parts else 0
        fields = []
        multi: list[dict[str, list[tuple[bytes, bytes]]]] = []
        for i, spec in enumerate(meta["fields"]):
            field = _Field(tuple(spec["path"]))
            field.kinds = int(spec["kinds"])
            field.flags = np.zeros(capacity, np.uint8)
            for name in spec["columns"]:
                dtype, missing = _COLUMNS[name]
                column = _Column(dtype, missing)
                column.single = np.full(capacity, missing, dtype)
                setattr(field, name, column)
            field.dictionary = _load_words(blobs, i, "k", int(spec["words"]))
            if spec["vocabulary"] is not None:
                field.vocabulary = _load_words(blobs, i, "t", int(spec["vocabulary"]))
                if field.tokens is None:
                    field.tokens = _Column(np.int32, -1)
            fields.append(field)
            multi.append({name: [] for name in spec["columns"]})
            index._fields[field.path] = field
        for part, key in parts:
            lo = part * size
            for i, flags, cols in unpack(np.asarray(blobs[key]).tobytes()):
                field = fields[i]
                flags = np.frombuffer(flags, np.uint8)
                field.flags[lo : lo + len(flags)] = flags
                for name, (single, values, slots) in cols.items():
                    column = getattr(field, name, None)
                    if column is None:  # dropped since (a text index): nothing to keep
                        continue
                    if single is not None:
                        single = np.frombuffer(single, column.dtype)
                        column.single[lo : lo + len(single)] = single
                    if values is not None:
                        multi[i][name].append((values, slots))
        for field, held in zip(fields, multi, strict=True):
            for name, pieces in held.items():
                _restore_multi(getattr(field, name), pieces)
            _recount(field.dictionary, field.keywords)
            if field.vocabulary is not None:
                _recount(field.vocabulary, field.tokens)
        index._loaded_upto = capacity
        return index

    @classmethod
    def from_items(
        cls,
        items: Iterable[tuple[int, dict | None]],
        indexes: dict[str, Any] | None = None,
        max_fields: int = MAX_AUTO_FIELDS,
    ) -> PayloadIndex:
        """Rebuild an index from ``items()`` (and ``indexes()``) of a checkpoint.

        Slots without a payload (``None``) are stored in one dict build, without a
        Python call each: only payloads with keys feed the columns."""
        index = cls(max_fields=max_fields)
        items = items if isinstance(items, list) else list(items)
        index._payloads = dict(items)
        if len(index._payloads) and min(index._payloads) < 0:
            raise InvalidInput("a checkpointed payload has a negative slot")
        has_keys = map(operator.is_not, map(operator.itemgetter(1), items), repeat(None))
        for slot, payload in compress(items, has_keys):
            index.set(slot, payload)
        for field, schema in (indexes or {}).items():
            index.create_index(field, schema)
        return index

    def mask(
        self,
        f: Filter | dict | None,
        capacity: int,
        live: np.ndarray,
        resolve_id: Callable[[PointId], int | None],
    ) -> np.ndarray:
        """Allowed slots: bool[capacity], True only for live slots that satisfy ``f``."""
        if f is not None and not isinstance(f, Filter):
            f = parse_filter(f)
        live = np.asarray(live, dtype=bool)
        within = np.zeros(capacity, dtype=bool)
        n = min(capacity, len(live))
        within[:n] = live[:n]
        if f is None:
            return within
        with self._lock:
            return f.mask(_Context(self, capacity, resolve_id), within)

    def count(
        self,
        f: Filter | dict | None,
        live: np.ndarray,
        resolve_id: Callable[[PointId], int | None],
    ) -> int:
        """Number of live slots that satisfy ``f``."""
        return int(np.count_nonzero(self.mask(f, len(live), live, resolve_id)))

    def _scan(self, node: _Node, within: np.ndarray, candidates: np.ndarray | None) -> np.ndarray:
        """Evaluate a field condition by reading payloads, over ``within``.

        Slots outside ``candidates`` select no value at the condition's path,
        so they all get the condition's answer for a missing key.
        """
        out = np.zeros(len(within), dtype=bool)
        if candidates is None:
            todo = within
        else:
            todo = within & candidates
            if getattr(node, "if_missing", False):
                out |= within & ~candidates
        payloads = self._payloads
        empty: dict = {}
        for slot in np.flatnonzero(todo).tolist():
            if node.test(payloads.get(slot) or empty, None):
                out[slot] = True
        return out

    # -- explicit indexes (Qdrant's create_payload_index) ----------------------

    def create_index(self, field: str, schema_type: Any) -> None:
        """Declare an index on ``field`` (every indexable path is indexed anyway).

        ``schema_type`` is a Qdrant payload schema name (keyword, integer,
        float, bool, datetime, text, uuid) or a params object with ``type``.
        ``text`` adds a token index (lowercase words of every string), which
        serves ``match.text``/``text_any``/``phrase`` without scanning. A path
        past the automatic limit is built now from the payloads. Declaring
        a field again replaces its type.
        """
        if isinstance(schema_type, dict):
            schema_type = schema_type.get("type")
        schema_type = getattr(schema_type, "value", schema_type)
        if schema_type == "geo":
            raise InvalidInput("geo indexes are not supported")
        if schema_type not in SCHEMA_TYPES:
            raise InvalidInput(
                f"unknown payload schema type {schema_type!r} (expected one of {sorted(SCHEMA_TYPES)})"
            )
        try:
            path = parse_key(field)
        except InvalidFilter as error:
            raise InvalidInput(str(error)) from None
        if not _indexable(path):
            raise InvalidInput(f"cannot index {field!r}: only keys and inner [] are indexable")
        with self._lock:
            if path not in self._fields:
                built = _Field(path)
                if self._saturated:  # otherwise no payload has a value there yet
                    for slot, payload in self._payloads.items():
                        selected = _select(payload, path)
                        if selected:
                            built.put(slot, selected)
                            self._slot_fields[slot] = (*self._fields_of(slot), built)
                self._fields[path] = built
            field = self._fields[path]
            if schema_type == "text":
                field.enable_text(self._payloads)
            else:
                field.disable_text()
            self._explicit[path] = schema_type
            self._dirty.update(self._all_parts())  # columns changed in every part

    def drop_index(self, field: str) -> bool:
        """Forget an explicit index; returns whether there was one."""
        try:
            path = parse_key(field)
        except InvalidFilter as error:
            raise InvalidInput(str(error)) from None
        with self._lock:
            field = self._fields.get(path)
            if field is not None:
                if field.vocabulary is not None:
                    self._dirty.update(self._all_parts())  # the tokens leave every part
                field.disable_text()
            return self._explicit.pop(path, None) is not None

    def _all_parts(self) -> set[int]:
        """Every part that holds a payload (columns hold values of those slots only)."""
        return set(range((max(self._payloads, default=-1) >> PART_SHIFT) + 1))

    def indexes(self) -> dict[str, str]:
        """The explicit indexes as ``{field: schema type}`` (to checkpoint them)."""
        return {render_key(path): schema for path, schema in self._explicit.items()}

    def schema(self, include_auto: bool = False) -> dict[str, dict[str, Any]]:
        """``{field: {"data_type": ..., "points": n}}`` for the explicit indexes.

        ``points`` counts the slots with a non-empty value at the field. With
        ``include_auto`` the automatically indexed paths are listed too, with
        the data type inferred from the values seen.
        """
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            if include_auto:
                for path, field in self._fields.items():
                    kinds = [name for bit, name in _KIND_NAMES if field.kinds & bit]
                    if kinds == ["integer", "float"]:
                        kinds = ["float"]
                    out[render_key(path)] = {
                        "data_type": kinds[0] if len(kinds) == 1 else "mixed" if kinds else "none",
                        "points": field.points(),
                    }
            for path, schema_type in self._explicit.items():
                field = self._fields.get(path)
                out[render_key(path)] = {
                    "data_type": schema_type,
                    "points": field.points() if field is not None else 0,
                }
            return out

    def memory_bytes(self) -> int:
        """Approximate bytes held by the numpy columns (payloads not included)."""
        total = 0
        for field in self._fields.values():
            total += field.flags.nbytes
            columns = (field.keywords, field.numbers, field.datetimes, field.counts, field.tokens)
            for column in columns:
                if column is not None:
                    total += column.single.nbytes + column.values.nbytes + column.slots.nbytes
        return total
