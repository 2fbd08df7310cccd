"""Payload filters: grammar, semantics, and the index against brute force.

Three references keep each other honest: ``matches`` (our brute-force
evaluation), ``qdrant_client``'s local mode (Qdrant's own Python evaluation
of the same JSON), and ``PayloadIndex.mask`` (the column index).
"""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qdrant_client.http import models
from qdrant_client.local.payload_filters import check_filter

from vdb.errors import InvalidFilter, InvalidInput
from vdb.filters import (
    PayloadIndex,
    matches,
    parse_datetime,
    parse_filter,
    parse_key,
    render_key,
)

PROPERTY = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------
# strategies: small vocabularies so that conditions actually hit values

KEYS = ["a", "b", "c", "d"]
STRINGS = [
    "x",
    "y",
    "Hello world",
    "hello",
    "world, HELLO again",
    "2024-01-01T00:00:00Z",
    "2024-03-05",
    "2024-02-10 12:30:00+02:00",
    "9999-12-31T23:59:59.999999Z",
    "L" * 300,
    "L" * 300 + "!",
]
scalars = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([2**70, -(2**64)]),
    st.sampled_from([0.5, 1.0, 2.0, -1.5]),
    st.booleans(),
    st.sampled_from(STRINGS),
    st.none(),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(KEYS), children, max_size=3),
    ),
    max_leaves=8,
)
payloads = st.one_of(st.none(), st.dictionaries(st.sampled_from(KEYS), values, max_size=4))

PATHS = ["a", "b", "c", "d", "a.b", "a.c", "a[].b", "a[]", "a[0]", "b[1].a", "c.a.b", '"a"', "e"]
NUMBERS = [-2, 0, 0.5, 1, 2.5, 3]
DATES = [
    "2024-01-01",
    "2024-02-01T00:00:00Z",
    "2024-03-05T00:00:00+01:00",
    "9999-12-31T23:59:59.999998Z",
]


LONG = "L" * 301
MATCH_TEXTS = ["hello", "Hello world", "world hello", "x", "", "again!"]


@st.composite
def _bounds(draw, choices: list, min_size: int = 0) -> dict:
    names = draw(
        st.lists(
            st.sampled_from(["gt", "gte", "lt", "lte"]), min_size=min_size, max_size=2, unique=True
        )
    )
    return {name: draw(st.sampled_from(choices)) for name in names}


@st.composite
def _match(draw) -> dict:
    kind = draw(
        st.sampled_from(
            ["value", "any", "except", "text", "text_any", "phrase", "prefix", "substring"]
        )
    )
    if kind == "value":
        return {
            "value": draw(st.one_of(st.integers(-3, 3), st.booleans(), st.sampled_from(STRINGS)))
        }
    if kind in ("any", "except"):
        items = st.one_of(
            st.lists(st.sampled_from(STRINGS), max_size=3), st.lists(st.integers(-3, 3), max_size=3)
        )
        return {kind: draw(items)}
    if kind in ("prefix", "substring"):
        return {kind: draw(st.sampled_from(["x", "He", "ll", "", LONG]))}
    return {kind: draw(st.sampled_from(MATCH_TEXTS))}


@st.composite
def _leaf(draw, with_ids: bool) -> dict:
    key = draw(st.sampled_from(PATHS))
    kind = draw(st.integers(0, 8 if with_ids else 7))
    if kind == 0:
        return {"key": key, "match": draw(_match())}
    if kind == 1:
        return {"key": key, "range": draw(_bounds(NUMBERS))}
    if kind == 2:
        return {"key": key, "range": draw(_bounds(DATES, min_size=1))}
    if kind == 3:
        return {"key": key, "values_count": draw(_bounds([0, 1, 2, 3]))}
    if kind == 4:
        return {"is_empty": {"key": key}}
    if kind == 5:
        return {"is_null": {"key": key}}
    if kind == 6:
        return {"key": key, draw(st.sampled_from(["is_empty", "is_null"])): draw(st.booleans())}
    if kind == 7:
        return {"key": key, "match": draw(_match())}
    return {"has_id": draw(st.lists(st.integers(1000, 1030), max_size=4))}


@st.composite
def _condition(draw, with_ids: bool, depth: int) -> dict:
    kind = draw(st.integers(0, 4)) if depth > 0 else 0
    if kind == 3:
        return draw(_filters(with_ids, depth - 1))
    if kind == 4:
        key = draw(st.sampled_from(["a", "c", "a[]", "c.a"]))
        return {"nested": {"key": key, "filter": draw(_filters(False, depth - 1))}}
    return draw(_leaf(with_ids))


@st.composite
def _clause(draw, with_ids: bool, depth: int):
    shape = draw(st.integers(0, 2))
    if shape == 0:
        return None
    if shape == 1:
        return draw(_condition(with_ids, depth))
    return draw(st.lists(_condition(with_ids, depth), max_size=3))


@st.composite
def _filters(draw, with_ids: bool = True, depth: int = 2) -> dict:
    spec = {}
    for name in ("must", "should", "must_not"):
        clause = draw(_clause(with_ids, depth))
        if clause is not None:
            spec[name] = clause
    if draw(st.booleans()):
        conditions = draw(st.lists(_condition(with_ids, depth), min_size=1, max_size=3))
        spec["min_should"] = {
            "conditions": conditions,
            "min_count": draw(st.integers(1, len(conditions))),
        }
    return spec


def _build(
    items: list, max_fields: int = 256
) -> tuple[PayloadIndex, np.ndarray, list[int], dict[int, int]]:
    index = PayloadIndex(max_fields=max_fields)
    for slot, payload in enumerate(items):
        index.set(slot, payload)
    ids = [1000 + slot for slot in range(len(items))]
    return index, np.ones(len(items), dtype=bool), ids, {pid: s for s, pid in enumerate(ids)}


def _reference(items: list, ids: list, compiled) -> list[bool]:
    return [matches(payload, ids[slot], compiled) for slot, payload in enumerate(items)]


# ---------------------------------------------------------------------------
# property tests


@PROPERTY
@given(
    items=st.lists(payloads, min_size=1, max_size=25),
    spec=_filters(),
    max_fields=st.sampled_from([256, 256, 1, 4]),  # few fields: conditions fall back to scans
    data=st.data(),
)
def test_mask_and_count_agree_with_matches(items, spec, max_fields, data):
    index, live, ids, slot_of = _build(items, max_fields)
    live = np.array(
        data.draw(st.lists(st.booleans(), min_size=len(items), max_size=len(items))), dtype=bool
    )
    compiled = parse_filter(spec)
    expected = np.array(_reference(items, ids, compiled), dtype=bool) & live
    mask = index.mask(compiled, len(items), live, slot_of.get)
    assert mask.dtype == bool and mask.shape == (len(items),)
    assert mask.tolist() == expected.tolist(), spec
    assert index.count(compiled, live, slot_of.get) == int(expected.sum())


@PROPERTY
@given(items=st.lists(payloads, min_size=1, max_size=12), spec=_filters())
def test_matches_agrees_with_qdrant_local_mode(items, spec):
    """Our reference evaluation equals Qdrant's own (qdrant_client local mode)."""
    compiled = parse_filter(spec)
    model = models.Filter.model_validate(spec)
    for slot, payload in enumerate(items):
        point_id = 1000 + slot
        ours = matches(payload, point_id, compiled)
        theirs = check_filter(model, payload or {}, point_id, has_vector={})
        assert ours == theirs, (spec, payload)


@PROPERTY
@given(
    first=st.lists(payloads, min_size=1, max_size=20),
    updates=st.lists(
        st.tuples(st.integers(0, 24), st.one_of(payloads, st.just("remove"))), max_size=30
    ),
    spec=_filters(),
    text_fields=st.lists(st.sampled_from(["a", "b", "c", "a[].b"]), max_size=2),
)
def test_index_follows_set_replace_remove(first, updates, spec, text_fields):
    index = PayloadIndex()
    for field in text_fields:  # token indexes must follow the updates too
        index.create_index(field, "text")
    current: dict[int, dict | None] = {}
    for slot, payload in enumerate(first):
        index.set(slot, payload)
        current[slot] = payload
    for slot, payload in updates:
        if payload == "remove":
            index.remove(slot)
            current.pop(slot, None)
        else:
            index.set(slot, payload)
            current[slot] = payload
    capacity = 25
    live = np.zeros(capacity, dtype=bool)
    live[list(current)] = True
    compiled = parse_filter(spec)
    resolve = {1000 + s: s for s in range(capacity)}.get
    expected = [
        bool(live[s]) and matches(current.get(s), 1000 + s, compiled) for s in range(capacity)
    ]
    assert index.mask(compiled, capacity, live, resolve).tolist() == expected, spec
    held = {slot: payload for slot, payload in current.items() if payload is not None}
    assert len(index) == len(held)  # a slot set to None holds no entry
    assert dict(index.items()) == held
    assert all(index.get(slot) == payload for slot, payload in current.items())


# ---------------------------------------------------------------------------
# semantics, by hand (Qdrant documentation examples and the edge cases)

CITIES = [
    {"city": "London", "color": "green"},
    {"city": "London", "color": "red"},
    {"city": "London", "color": "blue"},
    {"city": "Berlin", "color": "red"},
    {"city": "Moscow", "color": "green"},
    {"city": "Moscow", "color": "blue"},
]


def _ids(items: list, spec) -> list[int]:
    """Ids (1-based, as in Qdrant's docs) selected by the index; checks brute force agrees."""
    index, live, _, _ = _build(items)
    resolve = {s + 1: s for s in range(len(items))}.get
    compiled = parse_filter(spec)
    mask = index.mask(compiled, len(items), live, resolve)
    chosen = [int(s) + 1 for s in np.flatnonzero(mask)]
    assert chosen == [s + 1 for s, p in enumerate(items) if matches(p, s + 1, compiled)]
    return chosen


def test_qdrant_documentation_clauses():
    london = {"key": "city", "match": {"value": "London"}}
    red = {"key": "color", "match": {"value": "red"}}
    assert _ids(CITIES, {"must": [london, red]}) == [2]
    assert _ids(CITIES, {"should": [london, red]}) == [1, 2, 3, 4]
    assert _ids(CITIES, {"must_not": [london, red]}) == [5, 6]
    assert _ids(CITIES, {"must": [london], "must_not": [red]}) == [1, 3]
    assert _ids(CITIES, {"must_not": [{"must": [london, red]}]}) == [1, 3, 4, 5, 6]
    two_of = {
        "min_should": {
            "conditions": [london, red, {"key": "color", "match": {"value": "blue"}}],
            "min_count": 2,
        }
    }
    assert _ids(CITIES, two_of) == [2, 3]
    assert _ids(CITIES, {"must": london}) == [1, 2, 3]  # a single condition, not a list
    assert _ids(CITIES, None) == [1, 2, 3, 4, 5, 6]
    assert _ids(CITIES, {}) == [1, 2, 3, 4, 5, 6]
    assert _ids(CITIES, {"should": []}) == [1, 2, 3, 4, 5, 6]  # no alternatives = no constraint
    assert _ids(CITIES, {"must": [{"key": "city", "match": {"any": ["Berlin", "Moscow"]}}]}) == [
        4,
        5,
        6,
    ]
    assert _ids(CITIES, {"must": [{"key": "color", "match": {"except": ["red", "blue"]}}]}) == [
        1,
        5,
    ]


def test_exact_match_respects_json_types():
    items = [{"v": 1}, {"v": True}, {"v": "1"}, {"v": 1.0}, {"v": [0, 1]}, {"v": 2**64 - 1}]
    assert _ids(items, {"must": {"key": "v", "match": {"value": 1}}}) == [1, 5]
    assert _ids(items, {"must": {"key": "v", "match": {"value": True}}}) == [2]
    assert _ids(items, {"must": {"key": "v", "match": {"value": "1"}}}) == [3]
    assert _ids(items, {"must": {"key": "v", "match": {"any": [1, 2]}}}) == [1, 5]
    # floats are never selected by match; range selects them
    assert _ids(items, {"must": {"key": "v", "range": {"gte": 1, "lte": 1}}}) == [1, 4, 5]


def test_except_skips_missing_and_null():
    items = [
        {"c": "a"},
        {"c": "b"},
        {},
        {"c": None},
        {"c": ["a", "b"]},
        {"c": ["a"]},
        {"c": 3},
        {"c": 1.5},
    ]
    # missing and null keys do not match `except` (Qdrant); other types always do
    assert _ids(items, {"must": {"key": "c", "match": {"except": ["a"]}}}) == [2, 5, 7, 8]
    # to also get points without the key, negate `any`
    assert _ids(items, {"must_not": {"key": "c", "match": {"any": ["a"]}}}) == [2, 3, 4, 7, 8]


def test_is_empty_and_is_null():
    items = [
        {"k": None},
        {"k": []},
        {"k": [None]},
        {},
        {"k": 0},
        {"k": ""},
        {"k": [1, None]},
        {"k": {}},
    ]
    assert _ids(items, {"must": {"is_empty": {"key": "k"}}}) == [1, 2, 4]
    assert _ids(items, {"must": {"is_null": {"key": "k"}}}) == [1, 3, 7]
    assert _ids(items, {"must": {"key": "k", "is_empty": False}}) == [3, 5, 6, 7, 8]
    assert _ids(items, {"must": {"key": "k", "is_null": False}}) == [2, 4, 5, 6, 8]
    assert _ids(items, {"must_not": {"is_empty": {"key": "k"}}}) == [3, 5, 6, 7, 8]


def test_range_numbers_and_datetimes():
    items = [
        {"p": 1},
        {"p": 2.5},
        {"p": "3"},
        {"p": True},
        {"p": [0, 10]},
        {},
        {"t": "2024-01-01T00:00:00Z"},
        {"t": "2024-01-01 02:00:00+03:00"},
        {"t": "2024-06-01"},
        {"t": "soon"},
    ]
    assert _ids(items, {"must": {"key": "p", "range": {"gt": 1, "lte": 2.5}}}) == [2]
    assert _ids(items, {"must": {"key": "p", "range": {"gte": 5}}}) == [5]
    assert _ids(items, {"must": {"key": "p", "range": {}}}) == [1, 2, 5]  # any number
    # a value must satisfy both bounds by itself: 0 and 10 do not make 5
    assert _ids(items, {"must": {"key": "p", "range": {"gt": 4, "lt": 6}}}) == []
    day = {"gte": "2024-01-01T00:00:00Z", "lt": "2024-01-02"}
    assert _ids(items, {"must": {"key": "t", "range": day}}) == [7]  # +03:00 is Dec 31 23:00 UTC
    assert _ids(items, {"must": {"key": "t", "range": {"gt": "2023-12-31T22:00:00Z"}}}) == [7, 8, 9]
    assert (
        parse_datetime("2024-01-01T00:00:00.5Z") == parse_datetime("2024-01-01T00:00:00Z") + 500_000
    )
    assert parse_datetime("2024-13-01") is None


def test_values_count():
    items = [
        {"t": ["a", "b", "c"]},
        {"t": "a"},
        {"t": []},
        {},
        {"t": None},
        {"t": [{"x": 1}, {"x": 2}]},
    ]
    assert _ids(items, {"must": {"key": "t", "values_count": {"gt": 2}}}) == [1]
    assert _ids(items, {"must": {"key": "t", "values_count": {"gte": 1, "lte": 2}}}) == [2, 6]
    assert _ids(items, {"must": {"key": "t", "values_count": {"lt": 1}}}) == [3, 4, 5]


def test_full_text_prefix_and_substring():
    items = [
        {"s": "Hello World"},
        {"s": "hello"},
        {"s": "world of hello"},
        {"s": ["x", "say hello world"]},
        {"s": 5},
    ]
    assert _ids(items, {"must": {"key": "s", "match": {"text": "hello world"}}}) == [1, 3, 4]
    assert _ids(items, {"must": {"key": "s", "match": {"phrase": "hello world"}}}) == [1, 4]
    assert _ids(items, {"must": {"key": "s", "match": {"text_any": "world nope"}}}) == [1, 3, 4]
    assert _ids(items, {"must": {"key": "s", "match": {"prefix": "hel"}}}) == [2]
    assert _ids(items, {"must": {"key": "s", "match": {"substring": "llo"}}}) == [1, 2, 3, 4]
    assert _ids(items, {"must": {"key": "s", "match": {"text": "..."}}}) == []


def test_key_paths():
    items = [
        {"a": {"b": 1}},
        {"a": [{"b": 1}, {"b": 2}]},
        {"a": {"b": [3, 1]}},
        {"a.b": 1},
        {"a": [[{"b": 1}]]},
    ]
    assert _ids(items, {"must": {"key": "a.b", "match": {"value": 1}}}) == [1, 3]
    assert _ids(items, {"must": {"key": "a[].b", "match": {"value": 2}}}) == [2]
    assert _ids(items, {"must": {"key": "a[0].b", "match": {"value": 1}}}) == [2]
    assert _ids(items, {"must": {"key": "a.b[1]", "match": {"value": 1}}}) == [3]
    assert _ids(items, {"must": {"key": '"a.b"', "match": {"value": 1}}}) == [4]
    assert _ids(items, {"must": {"key": "a[][].b", "match": {"value": 1}}}) == [5]
    assert parse_key('a[].b[3]."x y"') == ("a", None, "b", 3, "x y")
    assert render_key(parse_key('a[].b[3]."x y"')) == 'a[].b[3]."x y"'


def test_nested_requires_one_element_to_match():
    items = [
        {"diet": [{"food": "meat", "likes": False}, {"food": "leaves", "likes": True}]},
        {"diet": [{"food": "meat", "likes": True}]},
        {"diet": {"food": "meat", "likes": True}},  # not an array: nested never matches
        {},
    ]
    both = {
        "must": [
            {"key": "food", "match": {"value": "meat"}},
            {"key": "likes", "match": {"value": True}},
        ]
    }
    assert _ids(items, {"must": {"nested": {"key": "diet", "filter": both}}}) == [2]
    assert _ids(items, {"must": {"nested": {"key": "diet[]", "filter": both}}}) == [2]
    # the flat form mixes elements: point 1 matches it
    flat = {
        "must": [
            {"key": "diet[].food", "match": {"value": "meat"}},
            {"key": "diet[].likes", "match": {"value": True}},
        ]
    }
    assert _ids(items, flat) == [1, 2]
    assert _ids(items, {"must_not": {"nested": {"key": "diet", "filter": both}}}) == [1, 3, 4]


def test_has_id_keeps_int_and_string_ids_apart():
    index = PayloadIndex()
    for slot in range(4):
        index.set(slot, {"n": slot})
    slot_of = {1: 0, "1": 1, "u": 2, 7: 3}
    live = np.ones(4, dtype=bool)
    mask = index.mask(parse_filter({"must": {"has_id": [1, "u", 99]}}), 4, live, slot_of.get)
    assert mask.tolist() == [True, False, True, False]
    assert matches({}, 1, {"must": {"has_id": [1]}}) and not matches(
        {}, "1", {"must": {"has_id": [1]}}
    )
    live[0] = False
    assert index.count({"must": {"has_id": [1, "1"]}}, live, slot_of.get) == 1


def test_mask_only_live_slots_and_capacity():
    index = PayloadIndex()
    for slot in range(10):
        index.set(slot, {"g": slot % 2, "tags": ["t", str(slot)]})
    live = np.zeros(12, dtype=bool)
    live[[0, 2, 3, 4]] = True
    spec = {"must": {"key": "g", "match": {"value": 0}}}
    assert np.flatnonzero(index.mask(spec, 12, live, {}.get)).tolist() == [0, 2, 4]
    assert np.flatnonzero(index.mask(spec, 3, live, {}.get)).tolist() == [
        0,
        2,
    ]  # slots >= capacity are cut
    assert index.mask(None, 12, live, {}.get).tolist() == live.tolist()
    tags = {"must": {"key": "tags", "match": {"any": ["t"]}}}
    assert np.flatnonzero(index.mask(tags, 16, live, {}.get)).tolist() == [0, 2, 3, 4]


def test_churn_compacts_multi_valued_columns_and_stays_exact():
    rng = random.Random(7)
    index = PayloadIndex()
    current: dict[int, dict] = {}
    for step in range(4000):
        slot = rng.randrange(150)
        if rng.random() < 0.1:
            index.remove(slot)
            current.pop(slot, None)
            continue
        payload = {
            "tags": rng.sample(["a", "b", "c", "d", "e"], rng.randint(0, 3)),
            "price": [rng.random() for _ in range(rng.randint(1, 3))],
            "cat": f"c{step % 7}",
        }
        index.set(slot, payload)
        current[slot] = payload
    live = np.zeros(150, dtype=bool)
    live[list(current)] = True
    for spec in (
        {
            "must": [
                {"key": "tags", "match": {"any": ["a", "e"]}},
                {"key": "price", "range": {"lt": 0.3}},
            ]
        },
        {"must": {"key": "tags", "values_count": {"gte": 2}}},
        {"should": [{"key": "cat", "match": {"value": "c3"}}, {"is_empty": {"key": "tags"}}]},
    ):
        expected = [bool(live[s]) and matches(current.get(s), None, spec) for s in range(150)]
        assert index.mask(spec, 150, live, {}.get).tolist() == expected
    column = index._fields[("tags",)].keywords
    assert column.garbage * 2 <= max(column.used, 2048)  # compaction ran


def test_paths_past_the_automatic_limit_scan_payloads():
    index = PayloadIndex(max_fields=2)
    items = [{"a": i, "b": i % 3, "c": i % 2, "d": {"e": i}} for i in range(30)]
    for slot, payload in enumerate(items):
        index.set(slot, payload)
    live = np.ones(30, dtype=bool)
    for spec in (
        {"must": {"key": "c", "match": {"value": 1}}},
        {"must": [{"key": "b", "match": {"value": 0}}, {"key": "d.e", "range": {"gt": 10}}]},
        {"must": {"is_empty": {"key": "c"}}},
    ):
        expected = [matches(p, None, spec) for p in items]
        assert index.mask(spec, 30, live, {}.get).tolist() == expected
    index.create_index("c", "integer")
    assert index.schema()["c"] == {"data_type": "integer", "points": 30}
    spec = {"must": {"key": "c", "match": {"value": 1}}}
    assert index.count(spec, live, {}.get) == 15
    index.set(0, {"c": 1})
    assert index.count(spec, live, {}.get) == 16


def test_schema_explicit_indexes_and_checkpoint_roundtrip():
    index = PayloadIndex()
    index.set(0, {"city": "Oslo", "n": 1, "when": "2024-01-01"})
    index.set(1, {"city": "Rome", "n": 2.5})
    index.set(2, None)
    index.create_index("city", "keyword")
    index.create_index("later", {"type": "float"})
    assert index.schema() == {
        "city": {"data_type": "keyword", "points": 2},
        "later": {"data_type": "float", "points": 0},
    }
    auto = index.schema(include_auto=True)
    assert auto["n"]["data_type"] == "float" and auto["when"]["data_type"] == "datetime"
    assert index.drop_index("later") and not index.drop_index("later")
    with pytest.raises(InvalidInput, match="geo"):
        index.create_index("city", "geo")
    with pytest.raises(InvalidInput, match="schema type"):
        index.create_index("city", "blob")
    copy = PayloadIndex.from_items(index.items(), index.indexes())
    assert list(copy.items()) == list(index.items()) and len(copy) == 2  # None: no entry
    assert copy.get(2) is None and copy.get(0) == {"city": "Oslo", "n": 1, "when": "2024-01-01"}
    assert copy.schema() == index.schema()
    live = np.ones(3, dtype=bool)
    spec = {"must": {"key": "n", "range": {"gt": 1}}}
    assert copy.mask(spec, 3, live, {}.get).tolist() == [False, True, False]


def test_bad_payloads_are_refused_without_changing_the_index():
    index = PayloadIndex()
    index.set(0, {"a": 1})
    with pytest.raises(InvalidInput, match="object"):
        index.set(0, ["not", "a", "dict"])
    with pytest.raises(InvalidInput, match="slot"):
        index.set(-1, {})
    assert index.get(0) == {"a": 1}
    assert index.count({"must": {"key": "a", "match": {"value": 1}}}, np.ones(1, bool), {}.get) == 1


# ---------------------------------------------------------------------------
# bad filters name the problem

BAD = [
    ({"must": [{"key": "a", "match": {}}]}, "match has no value"),
    ({"must": [{"key": "a", "match": {"value": None}}]}, "match has no value"),
    ({"must": [{"key": "a", "match": {"vlaue": 1}}]}, "unknown match kind 'vlaue'"),
    ({"must": [{"key": "a", "match": {"value": 1.5}}]}, "use range for floats"),
    ({"must": [{"key": "a", "match": {"value": [1]}}]}, "string, integer or boolean"),
    ({"must": [{"key": "a", "match": {"any": [1, "x"]}}]}, "only strings or only integers"),
    ({"must": [{"key": "a", "match": {"any": [True]}}]}, "only strings or only integers"),
    ({"must": [{"key": "a", "match": {"value": 1, "text": "x"}}]}, "several kinds"),
    ({"must": [{"key": "a", "range": {"gt": "abc"}}]}, "must[0].range.gt"),
    (
        {"must": [{"key": "a", "range": {"gt": 1, "lt": "2024-01-01"}}]},
        "all be numbers or all be datetimes",
    ),
    ({"must": [{"key": "a", "range": {"gt": True}}]}, "range.gt"),
    ({"must": [{"key": "a", "range": {"from": 1}}]}, "unknown range bound 'from'"),
    ({"must": [{"key": "a", "range": {"gt": float("nan")}}]}, "NaN"),
    ({"must": [{"key": "a", "values_count": {"gt": -1}}]}, "non-negative integer"),
    ({"must": [{"key": "a"}]}, "needs one of match, range"),
    ({"must": [{"key": "a", "match": {"value": 1}, "range": {"gt": 1}}]}, "several tests"),
    ({"must": [{"key": "a", "matches": {"value": 1}}]}, "unknown field condition 'matches'"),
    ({"must": [{"key": "a..b", "match": {"value": 1}}]}, "invalid key path"),
    ({"must": [{"key": "a[x]", "match": {"value": 1}}]}, "bad array index"),
    ({"must": [{"key": "", "match": {"value": 1}}]}, "non-empty string"),
    (
        {"must": [{"key": "loc", "geo_radius": {"center": {"lat": 0, "lon": 0}, "radius": 1}}]},
        "geo filters are not supported",
    ),
    ({"must": [{"foo": 1}]}, "unknown condition 'foo'"),
    ({"must": "a"}, "expected a condition or a list"),
    ({"must": ["a"]}, "must[0]: a condition must be an object"),
    ({"mst": []}, "unknown filter key 'mst'"),
    ({"min_should": {"conditions": [], "min_count": 0}}, "min_count: must be 1 or larger"),
    ({"min_should": {"min_count": 1}}, "'conditions' is required"),
    ({"must": [{"has_id": [-1]}]}, "unsigned 64-bit"),
    ({"must": [{"has_id": [True]}]}, "is not a point id"),
    ({"must": [{"has_id": 5}]}, "list of point ids"),
    ({"must": [{"is_empty": {"field": "a"}}]}, "is_empty"),
    (
        {"must": [{"nested": {"key": "a", "filter": {"must": {"has_id": [1]}}}}]},
        "has_id is not allowed inside a nested",
    ),
    ({"must": [{"nested": {"key": "a"}}]}, "nested"),
    ({"must": [{"slice": {"total": 2, "index": 0}}]}, "slice conditions are not supported"),
    ({"must": [{"has_vector": "image"}]}, "unknown vector name"),
    ("must", "a filter must be an object"),
]


@pytest.mark.parametrize(("spec", "problem"), BAD, ids=[problem for _, problem in BAD])
def test_bad_filters_raise_invalid_filter_naming_the_problem(spec, problem):
    with pytest.raises(InvalidFilter) as error:
        parse_filter(spec)
    assert problem in str(error.value)
    assert error.value.status_code == 400


def test_deep_filters_are_refused_not_crashing():
    spec: dict = {"must": [{"key": "a", "match": {"value": 1}}]}
    for _ in range(200):
        spec = {"must": [spec]}
    with pytest.raises(InvalidFilter, match="nested deeper"):
        parse_filter(spec)


def test_qdrant_client_models_are_accepted():
    model = models.Filter(
        must=[
            models.FieldCondition(key="city", match=models.MatchExcept(**{"except": ["London"]}))
        ],
        should=models.FieldCondition(key="color", match=models.MatchAny(any=["red", "green"])),
    )
    assert _ids(CITIES, model) == [4, 5]
    assert _ids(CITIES, model.model_dump(by_alias=True, exclude_none=True)) == [4, 5]


def test_many_values_in_any_and_except_use_the_lookup_table():
    words = [f"w{i}" for i in range(30)]
    items = [
        {"w": words[i % 30], "ws": [words[i % 30], words[(i * 7) % 30]]} for i in range(90)
    ] + [{}]
    many = words[:12]
    expected_any = [i + 1 for i, p in enumerate(items) if p.get("w") in many]
    assert _ids(items, {"must": {"key": "w", "match": {"any": many}}}) == expected_any
    expected_except = [i + 1 for i, p in enumerate(items) if "w" in p and p["w"] not in many]
    assert _ids(items, {"must": {"key": "w", "match": {"except": many}}}) == expected_except
    multi = [i + 1 for i, p in enumerate(items) if any(w in many for w in p.get("ws", []))]
    assert _ids(items, {"must": {"key": "ws", "match": {"any": many}}}) == multi


def test_nested_uses_rooted_conditions_and_stays_exact():
    rng = random.Random(3)
    items = [
        {
            "diet": [
                {"food": rng.choice(["meat", "fish", "leaves"]), "kg": rng.randint(0, 5)}
                for _ in range(rng.randint(0, 3))
            ]
        }
        for _ in range(200)
    ]
    spec = {
        "must": {
            "nested": {
                "key": "diet",
                "filter": {
                    "must": [
                        {"key": "food", "match": {"value": "fish"}},
                        {"key": "kg", "range": {"gte": 4}},
                    ]
                },
            }
        }
    }
    chosen = _ids(items, spec)
    assert chosen == [
        i + 1
        for i, p in enumerate(items)
        if any(e["food"] == "fish" and e["kg"] >= 4 for e in p["diet"])
    ]
    assert chosen  # the data holds such points


def test_odd_payload_values_agree_between_index_and_matches():
    class Tag(str):
        pass

    items = [
        {"v": float("nan")},
        {"v": float("inf")},
        {"v": Tag("x")},
        {"v": "٢٠٢٤-٠١-٠١"},  # non-ASCII digits are not a datetime
        {"v": " 2024-01-01"},
        {"v": object()},
        {"v": (1, 2)},
        {"v": 2**70},
    ]
    specs = [
        {"must": {"key": "v", "range": {}}},
        {"must": {"key": "v", "range": {"gt": 1e300}}},
        {"must": {"key": "v", "match": {"value": "x"}}},
        {"must": {"key": "v", "match": {"except": ["x"]}}},
        {"must": {"key": "v", "range": {"gte": "2024-01-01"}}},
        {"must": {"key": "v", "values_count": {"gte": 2}}},
        {"must": {"key": "v", "match": {"any": [1, 2]}}},
    ]
    chosen = [_ids(items, spec) for spec in specs]
    # a tuple is an array; a str subclass is a string; NaN is no number; 2**70 is a float in range
    assert chosen == [[2, 7, 8], [2], [3], [1, 2, 4, 5, 6, 7, 8], [5], [7], [7]]


def test_deep_payloads_and_non_string_keys_are_indexed_as_far_as_filters_reach():
    deep: dict = {"leaf": 1}
    for _ in range(40):
        deep = {"n": deep, "arr": [{"x": 1}]}
    items = [deep, {"a": {1: "x", "b": 2}}, {"n": {"n": {"leaf": 1}}}]
    key = ".".join(["n"] * 40) + ".leaf"
    assert _ids(items, {"must": {"key": key, "match": {"value": 1}}}) == [1]
    assert _ids(items, {"must": {"key": "n.n.leaf", "match": {"value": 1}}}) == [3]
    assert _ids(
        items, {"must": {"key": ".".join(["n"] * 20) + ".arr[].x", "match": {"value": 1}}}
    ) == [1]
    assert _ids(items, {"must": {"key": "a.b", "range": {"gte": 2}}}) == [2]
    assert _ids(items, {"must": {"key": "a.1", "is_empty": False}}) == []


def test_text_index_serves_full_text_exactly():
    rng = random.Random(5)
    words = ["alpha", "Beta", "gamma", "delta", "EPSILON"]
    items = []
    for i in range(300):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))
        value = [sentence, rng.choice(words)] if i % 5 == 0 else sentence
        items.append({"t": value + "!" * 300 if i % 37 == 0 and isinstance(value, str) else value})
    specs = [
        {"must": {"key": "t", "match": {kind: query}}}
        for kind in ("text", "text_any", "phrase")
        for query in ("alpha beta", "gamma", "beta alpha", "nope", "EPSILON delta gamma", "")
    ]
    plain = [_ids(items, spec) for spec in specs]
    index, live, _, _ = _build(items)
    index.create_index("t", {"type": "text", "tokenizer": "word", "lowercase": True})
    assert index._fields[("t",)].tokens is not None
    assert index.schema()["t"] == {"data_type": "text", "points": 300}
    for spec, expected in zip(specs, plain, strict=True):
        chosen = [int(s) + 1 for s in np.flatnonzero(index.mask(spec, 300, live, {}.get))]
        assert chosen == expected, spec
    assert any(plain) and any(not p for p in plain)
    for slot in range(0, 300, 3):  # updates keep the token index exact
        index.set(slot, {"t": "alpha beta"} if slot % 2 else None)
        items[slot] = {"t": "alpha beta"} if slot % 2 else None
    spec = {"must": {"key": "t", "match": {"text": "beta alpha"}}}
    expected = [i + 1 for i, p in enumerate(items) if matches(p, None, spec)]
    assert [int(s) + 1 for s in np.flatnonzero(index.mask(spec, 300, live, {}.get))] == expected
    assert index.drop_index("t") and index._fields[("t",)].tokens is None
    assert [int(s) + 1 for s in np.flatnonzero(index.mask(spec, 300, live, {}.get))] == expected


def test_concurrent_readers_and_one_writer():
    index = PayloadIndex()
    spec = parse_filter(
        {"must": [{"key": "tags", "match": {"any": ["a"]}}, {"key": "n", "range": {"gte": 0}}]}
    )
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                mask = index.mask(spec, 600, np.ones(600, dtype=bool), {}.get)
                assert mask.shape == (600,)
        except BaseException as error:  # surfaced below
            errors.append(error)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    rng = random.Random(11)
    final: dict[int, dict] = {}
    for step in range(3000):
        slot = rng.randrange(600)
        payload = {
            "tags": rng.sample("abcd", rng.randint(0, 3)),
            "n": [step, -step][: rng.randint(1, 2)],
        }
        index.set(slot, payload)
        final[slot] = payload
    done.set()
    for thread in readers:
        thread.join()
    assert not errors
    expected = [s in final and matches(final[s], None, spec) for s in range(600)]
    assert index.mask(spec, 600, np.ones(600, dtype=bool), {}.get).tolist() == expected
