"""The id map's and the payload index's bulk writes against their one-point forms."""

from __future__ import annotations

import numpy as np
import pytest

from vdb.filters import PayloadIndex
from vdb.ids import IdMap


def state(m: IdMap) -> tuple:
    n = len(m.ids)
    return (
        list(m.ids),
        m.live[:n].tolist(),
        m.partitions[:n].tolist(),
        m.changed[:n].tolist(),
        dict(m.per_partition),
        dict(m.slot_of),
        set(m.dirty),
        len(m),
    )


@pytest.mark.parametrize("with_partitions", [False, True])
def test_assign_new_is_assign_point_by_point(with_partitions):
    rng = np.random.default_rng(4)
    one, bulk = IdMap(), IdMap()
    for m in (one, bulk):  # some points already there, one slot given up
        for i, slot in enumerate((0, 1, 2, 5000)):
            m.assign(f"old{i}", slot, 3 if i % 2 else None, 1)
        m.release(1, 3)
    ids = [int(i) for i in rng.permutation(10_000)[:1500]] + ["u", "v"]
    slots = np.concatenate([[1], np.arange(3, 3 + len(ids) - 1)]).astype(np.int32)
    rng.shuffle(slots)
    parts = [int(p) if p >= 0 else None for p in rng.integers(-1, 4, len(ids))]
    parts = parts if with_partitions else None
    for i, (point_id, slot) in enumerate(zip(ids, slots.tolist(), strict=True)):
        one.assign(point_id, slot, parts[i] if parts else None, 7)
    bulk.assign_new(ids, slots, parts, 7)
    assert state(bulk) == state(one)
    before = 4  # the four ids assigned first (a released slot keeps its id's entry)
    assert len(bulk) == before + len(ids)
    assert [bulk.get(i) for i in ids] == slots.tolist()


def test_set_absent_is_set_none_point_by_point():
    one, bulk = PayloadIndex(), PayloadIndex()
    for index in (one, bulk):
        for slot in range(0, 3000, 7):
            index.set(slot, {"a": slot, "tag": ["x", "y"][slot % 2]})
    slots = np.arange(0, 6000, 3)
    for slot in slots.tolist():
        one.set(slot, None)
    bulk.set_absent(slots)
    for slot in range(6000):
        assert bulk.get(slot) == one.get(slot)
    assert bulk._dirty == one._dirty
    for index in (one, bulk):
        assert index.get(7) == {"a": 7, "tag": "y"}  # 7 is not a multiple of 3: kept
        assert index.get(21) is None
