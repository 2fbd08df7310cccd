"""Request parsing: ids, vectors, payload selectors, filters (pure functions, no server)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vdb.errors import DimensionMismatch, InvalidInput
from vdb.http import parsing as p
from vdb.http.metrics import flatten


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_unsigned_ints_are_ids(n):
    assert p.parse_id(n) == n


@given(st.uuids())
def test_every_uuid_form_becomes_hyphenated_lower_case(u):
    canonical = str(u)
    for form in (canonical, canonical.upper(), u.hex, "{" + canonical + "}", u.urn):
        assert p.parse_id(form) == canonical


@given(
    st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=2**64),
        st.text().filter(lambda s: not _is_uuid(s)),
        st.booleans(),
        st.floats(),
        st.none(),
        st.lists(st.integers(), max_size=2),
    )
)
def test_everything_else_is_refused(value):
    with pytest.raises(InvalidInput):
        p.parse_id(value)


def _is_uuid(s: str) -> bool:
    try:
        uuid.UUID(s)
        return True
    except ValueError:
        return False


def test_vectors_are_checked_for_type_dimension_and_finiteness():
    np.testing.assert_array_equal(p.parse_vector([1, 2.5], "v", 2), np.array([1, 2.5], np.float32))
    raw = np.array([0.5, -1], dtype="<f4").tobytes()
    np.testing.assert_array_equal(p.parse_vector(raw, "v", 2), [0.5, -1])
    for bad in ([1, True], [1, "2"], [1, None], [], "xy", [1e39, 1], b"\x00" * 3):
        with pytest.raises(InvalidInput):
            p.parse_vector(bad, "v")
    with pytest.raises(DimensionMismatch):
        p.parse_vector([1, 2, 3], "v", 2)
    with pytest.raises(InvalidInput):
        p.parse_vector(np.array([np.nan, 1], "<f4").tobytes(), "v", 2)


def test_payload_selectors_include_and_exclude_nested_keys():
    payload = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}
    _, include = p.parse_with_payload(["a", "b.c"], "w", False)
    assert include(payload) == {"a": 1, "b": {"c": 2}}
    _, exclude = p.parse_with_payload({"exclude": ["b.d", "e"]}, "w", False)
    assert exclude(payload) == {"a": 1, "b": {"c": 2}}
    assert payload == {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}  # the stored dict is untouched
    assert p.parse_with_payload(None, "w", True) == (True, None)
    with pytest.raises(InvalidInput):
        p.parse_with_payload({"include": ["a"], "exclude": ["b"]}, "w", False)


def test_has_id_in_filters_follows_the_wire_rules():
    u = uuid.uuid4()
    flt = {"must": [{"has_id": [1, u.hex.upper()]}], "should": {"must_not": [{"has_id": [2]}]}}
    out = p.parse_filter(flt)
    assert out["must"][0]["has_id"] == [1, str(u)]
    assert out["should"]["must_not"][0]["has_id"] == [2]
    with pytest.raises(InvalidInput):
        p.parse_filter({"must": [{"has_id": ["123"]}]})
    with pytest.raises(InvalidInput):
        p.parse_filter({"must": [{"key": "x", "match": {"value": float("nan")}}]})


def test_stats_flatten_into_labelled_gauges():
    stats = {
        "records": 7,
        "state": "running",
        "batch_latency_ms": {"last": 3.5, "p99": 9.0},
        "freshness_ms": [1, 2, 3, 40],
        "partitions": {"t/0": {"lag": 4, "paused": False, "topic": "t"}},
    }
    got = {(name, labels): v for name, labels, v in flatten(stats, ("ingest",), (("handle", "0"),))}
    h = (("handle", "0"),)
    assert got[("vdb_ingest_records", h)] == 7
    assert got[("vdb_ingest_batch_latency_ms_p99", h)] == 9.0
    assert got[("vdb_ingest_freshness_ms_max", h)] == 40
    assert got[("vdb_ingest_freshness_ms_samples", h)] == 4
    assert got[("vdb_ingest_partition_lag", (*h, ("partition", "t/0")))] == 4
    assert got[("vdb_ingest_partition_paused", (*h, ("partition", "t/0")))] == 0
    assert not any("state" in name or "topic" in name for name, _ in got)


def test_scores_are_always_finite_numbers():
    from vdb.http.qdrant import F32_MAX, finite_score

    assert finite_score(9.0, euclid=True) == 3.0
    assert finite_score(-1e-7, euclid=True) == 0.0  # rounding below zero
    assert finite_score(-2.5, euclid=False) == -2.5
    assert finite_score(float("inf"), euclid=True) == F32_MAX
    assert finite_score(float("inf"), euclid=False) == F32_MAX
    assert finite_score(float("-inf"), euclid=False) == -F32_MAX
    assert finite_score(float("nan"), euclid=True) == F32_MAX  # the worst distance
    assert finite_score(float("nan"), euclid=False) == -F32_MAX  # the worst similarity
