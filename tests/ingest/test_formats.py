"""Decoders: every format, tombstones, keys, and each kind of poison -> one dead letter."""

from __future__ import annotations

import json
import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vdb.ingest.formats import Decoder
from vdb.ingest.source import Message
from vdb.types import DeadLetter, Delete, Upsert


def msg(value, key=None, offset=3, ts=1234):
    return Message("t", 2, offset, key, value, ts)


def test_json_upsert_keeps_payload_partition_and_timestamp():
    d = Decoder("json", dim=3, source="s")
    op = d(msg(json.dumps({"id": 7, "vector": [1, 2.5, -3], "payload": {"a": [1, "x"]}}).encode()))
    assert isinstance(op, Upsert)
    assert (op.id, op.payload, op.partition, op.timestamp_ms) == (7, {"a": [1, "x"]}, 2, 1234)
    assert op.vector.dtype == np.float32 and op.vector.tolist() == [1.0, 2.5, -3.0]


def test_ids_from_the_object_or_the_key():
    d = Decoder("json", dim=2)
    assert d(msg(b'{"id": "u-1", "vector": [0, 1]}')).id == "u-1"
    assert d(msg(b'{"vector": [0, 1]}', key=b"42")).id == 42
    assert d(msg(b'{"vector": [0, 1]}', key=b"042")).id == "042"
    assert (
        Decoder("json", dim=2, key_format="str")(msg(b'{"vector": [0, 1]}', key=b"42")).id == "42"
    )
    big = (2**64 - 1).to_bytes(8, "big")
    assert (
        Decoder("float32", dim=1, key_format="uint64be")(msg(b"\0\0\0\0", key=big)).id == 2**64 - 1
    )


def test_deletes_by_tombstone_and_by_op():
    d = Decoder("json", dim=2)
    tomb = d(msg(None, key=b"9"))
    assert isinstance(tomb, Delete) and tomb.id == 9 and tomb.timestamp_ms == 1234
    op = d(msg(b'{"id": "x", "op": "delete"}'))
    assert isinstance(op, Delete) and op.id == "x"
    assert isinstance(Decoder("float32", dim=2)(msg(None, key=b"k")), Delete)


def test_msgpack_vector_as_array_or_bin():
    d = Decoder("msgpack", dim=2)
    a = d(msg(msgpack.packb({"id": 1, "vector": [0.5, 1.5]})))
    b = d(msg(msgpack.packb({"id": 1, "vector": np.asarray([0.5, 1.5], "<f4").tobytes()})))
    assert a.vector.tolist() == b.vector.tolist() == [0.5, 1.5]


def test_float32_value_with_key_id():
    d = Decoder("float32", dim=3)
    op = d(msg(np.asarray([1, 2, 3], "<f4").tobytes(), key=b"abc"))
    assert isinstance(op, Upsert) and op.id == "abc" and op.vector.tolist() == [1, 2, 3]


POISON = [
    ("json", b"{nope", b"1", "undecodable json"),
    ("json", b"\xff\xfe", b"1", "undecodable json"),
    ("msgpack", b"\xc1", b"1", "undecodable msgpack"),
    ("json", b'{"id": 1, "vector": [1, 2]}', None, "wrong dimension: expected 3, got 2"),
    ("json", b'{"id": 1, "vector": [1, NaN, 2]}', None, "NaN or infinity"),
    ("json", b'{"id": 1, "vector": [1, Infinity, 2]}', None, "NaN or infinity"),
    ("json", b'{"id": 1, "vector": [1, 1e300, 2]}', None, "NaN or infinity"),
    ("json", b'{"vector": [1, 2, 3]}', None, "missing id"),
    ("json", b'{"id": 1}', None, "missing vector"),
    ("json", b'{"id": -1, "vector": [1, 2, 3]}', None, "unsigned"),
    ("json", b'{"id": 1.5, "vector": [1, 2, 3]}', None, "must be an unsigned int or a string"),
    ("json", b'{"id": "", "vector": [1, 2, 3]}', None, "empty string"),
    ("json", b'{"id": false, "vector": [1, 2, 3]}', None, "booleans"),
    ("json", b'{"id": 1, "vector": [1, "2", 3]}', None, "only numbers"),
    ("json", b'{"id": 1, "vector": [1, true, 3]}', None, "only numbers"),
    ("json", b'{"id": 1, "vector": [[1, 2, 3]]}', None, "wrong dimension"),
    ("json", b'{"id": 1, "vector": "abc"}', None, "must be a list"),
    ("json", b'{"id": 1, "vector": [1, 2, 3], "payload": 5}', None, "payload must be an object"),
    (
        "json",
        b'{"id": 1, "vector": [1, 2, 3], "payload": {"x": NaN}}',
        None,
        "payload contains NaN",
    ),
    ("json", b'{"id": 1, "op": "upsert!"}', None, "unknown op"),
    ("json", b"[1, 2, 3]", None, "must be an object"),
    ("msgpack", msgpack.packb({"id": 1, "vector": b"\0" * 5}), None, "wrong dimension"),
    ("msgpack", msgpack.packb({"id": 1, "vector": [1, 2, 3], "payload": {1: 2}}), None, "keys"),
    ("float32", b"\0" * 8, b"k", "wrong dimension: expected 3, got 2"),
    ("float32", b"\0" * 7, b"k", "wrong dimension: expected 3, got 7 bytes"),
    ("float32", np.asarray([1, math.nan, 2], "<f4").tobytes(), b"k", "NaN or infinity"),
    ("float32", b"\0" * 12, None, "without a key"),
    ("float32", b"\0" * 12, b"\xff", "not UTF-8"),
    ("json", None, None, "tombstone without a key"),
]


@pytest.mark.parametrize(("fmt", "value", "key", "reason"), POISON)
def test_poison_becomes_a_dead_letter_with_the_reason(fmt, value, key, reason):
    d = Decoder(fmt, dim=3, source="src")
    out = d(msg(value, key=key))
    assert isinstance(out, DeadLetter), out
    assert reason in out.reason
    assert (out.source, out.topic, out.partition, out.offset) == ("src", "t", 2, 3)
    assert (out.key, out.value, out.timestamp_ms) == (key, value, 1234)


def test_cosine_refuses_a_zero_vector_but_l2_keeps_it():
    value = b'{"id": 1, "vector": [0, 0, 0]}'
    assert isinstance(Decoder("json", dim=3, metric="cosine")(msg(value)), DeadLetter)
    assert isinstance(Decoder("json", dim=3, metric="l2")(msg(value)), Upsert)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_finite_vectors_whose_squares_overflow_or_underflow_are_kept(metric):
    # their squares overflow or underflow float32; the decoder's check sums them in float64
    for values in ([3e30, -3e30, 1e30], [1e-30, 0.0, -2e-31], [1e-45, 0.0, 0.0]):
        vector = np.asarray(values, "<f4")
        for fmt, value in (
            ("float32", vector.tobytes()),
            ("json", json.dumps({"id": 7, "vector": values}).encode()),
        ):
            out = Decoder(fmt, dim=3, metric=metric)(msg(value, key=b"7"))
            assert isinstance(out, Upsert), out
            np.testing.assert_array_equal(out.vector, vector)


def test_unknown_format_is_refused_up_front():
    from vdb.errors import InvalidInput

    with pytest.raises(InvalidInput):
        Decoder("avro", dim=3)
    with pytest.raises(InvalidInput):
        Decoder("json", dim=3, key_format="hex")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(["json", "msgpack", "float32"]))
def test_arbitrary_bytes_never_raise(value, fmt):
    out = Decoder(fmt, dim=4)(msg(value, key=b"k"))
    assert isinstance(out, Upsert | Delete | DeadLetter)
    if isinstance(out, Upsert):
        assert out.vector.shape == (4,) and np.isfinite(out.vector).all()


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(0, 2**64 - 1), st.text(min_size=1, max_size=50)))
def test_json_ids_and_their_tombstone_keys_name_the_same_point(point_id):
    d = Decoder("json", dim=1)
    up = d(msg(json.dumps({"id": point_id, "vector": [1.0]}).encode()))
    tomb = d(msg(None, key=str(point_id).encode()))
    assert isinstance(up, Upsert) and up.id == point_id
    if isinstance(point_id, int) or not (point_id.isascii() and point_id.isdigit()):
        assert isinstance(tomb, Delete) and tomb.id == point_id
