"""User ids <-> internal slots, and validation of user ids.

A user id is an unsigned 64-bit integer or a non-empty string (UUIDs
included). ``1`` and ``"1"`` are different points: Python dict keys already
keep them apart (``bool`` is refused so that ``True`` never aliases ``1``).
Only this map knows both the user id and the slot; the index sees slots.

The map is written by the single writer and read by any number of readers.
Each slot carries the generation of its last change so that a reader can
tell whether a slot it got back from a search was reused while it searched.

A map loaded from a checkpoint (``from_state``) builds its id -> slot dict on
first use, not at open: a search maps slots to ids through ``ids`` and needs
no dict, so a large collection answers its first query sooner. Every method
that changes the map touches ``slot_of`` before anything else, so the dict is
always built from the state as loaded.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from vdb.errors import InvalidInput
from vdb.types import PART_SHIFT, PointId

MAX_UINT64 = (1 << 64) - 1
MAX_STRING_ID = 1024
NO_PARTITION = -1
SMALL_CHECK = 64  # changed_since checks this many slots or fewer one by one


def normalize_id(value: Any) -> PointId:
    """Validate one user id; return it as a plain ``int`` or ``str``."""
    if isinstance(value, bool):
        raise InvalidInput(
            f"point id {value!r}: booleans are not ids (use an unsigned int or a string)"
        )
    if isinstance(value, int | np.integer):
        n = int(value)
        if n < 0 or n > MAX_UINT64:
            raise InvalidInput(f"point id {n}: integer ids must be unsigned 64-bit (0 .. 2**64-1)")
        return n
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        if not value:
            raise InvalidInput("point id: the empty string is not an id")
        if len(value) > MAX_STRING_ID:
            raise InvalidInput(f"point id: string ids are at most {MAX_STRING_ID} characters")
        return value
    raise InvalidInput(
        f"point id {value!r}: must be an unsigned int or a string, not {type(value).__name__}"
    )


def normalize_ids(values: Any) -> list[PointId]:
    """Validate a sequence of ids (a single id is accepted and wrapped)."""
    if isinstance(values, str | int | np.integer | uuid.UUID) and not isinstance(values, bool):
        return [normalize_id(values)]
    if isinstance(values, np.ndarray):
        values = values.tolist()
    try:
        items = list(values)
    except TypeError:
        raise InvalidInput(f"ids must be a list of ids, not {type(values).__name__}") from None
    return [normalize_id(v) for v in items]


def sort_key(point_id: PointId) -> tuple[int, int | str]:
    """Scroll order: integers ascending first, then strings ascending."""
    return (0, point_id) if isinstance(point_id, int) else (1, point_id)


class IdMap:
    """user id <-> slot, plus the source partition of each slot.

    ``ids[slot]`` is the user id of the point in ``slot`` (``None`` when
    free), ``live[slot]`` whether it holds a point, ``partitions[slot]`` the
    stream partition it came from (``-1`` when it did not come from a
    stream) and ``changed[slot]`` the generation of its last change.
    """

    def __init__(self, capacity: int = 0) -> None:
        self.slot_of: dict[PointId, int] = {}
        self.ids: list[PointId | None] = [None] * capacity
        self.live = np.zeros(capacity, dtype=bool)
        self.partitions = np.full(capacity, NO_PARTITION, dtype=np.int32)
        self.changed = np.zeros(capacity, dtype=np.int64)
        self.dirty: set[int] = set()  # parts (slot >> PART_SHIFT) changed since the capture
        # live points per source partition: a search restricted to partitions that cover
        # every one held needs no mask (what a cluster node is asked for, every request)
        self.per_partition: dict[int, int] = {}

    def __getattr__(self, name: str) -> Any:
        # only called while ``slot_of`` is not built yet (see the module docstring)
        if name != "slot_of":
            raise AttributeError(name)
        pending = self.__dict__.get("_pending")
        if pending is None:
            raise AttributeError(name)
        with pending[0]:
            if "slot_of" not in self.__dict__:
                ids, slots = pending[1], pending[2]
                slot_of = dict(zip(ids, slots.tolist(), strict=True))
                if len(slot_of) != len(ids):
                    from vdb.errors import CorruptData

                    raise CorruptData("id map checkpoint: an id is stored twice")
                self.__dict__["slot_of"] = slot_of
                self.__dict__["_pending"] = None
        return self.__dict__["slot_of"]

    def __len__(self) -> int:
        pending = self.__dict__.get("_pending")
        if pending is not None:  # loaded and unchanged: as many points as loaded ids
            return len(pending[1])
        return len(self.slot_of)

    def __contains__(self, point_id: object) -> bool:
        return point_id in self.slot_of

    def get(self, point_id: PointId) -> int | None:
        return self.slot_of.get(point_id)

    def _ensure(self, slot: int) -> None:
        n = len(self.ids)
        if slot < n:
            return
        new = max(slot + 1, 2 * n, 1024)
        self.ids.extend([None] * (new - n))
        live = np.zeros(new, dtype=bool)
        live[:n] = self.live
        partitions = np.full(new, NO_PARTITION, dtype=np.int32)
        partitions[:n] = self.partitions
        changed = np.zeros(new, dtype=np.int64)
        changed[:n] = self.changed
        # Publish the grown arrays before readers could see a larger slot.
        self.changed = changed
        self.partitions = partitions
        self.live = live

    def _count(self, slot: int, delta: int) -> None:
        """Add ``delta`` to the live count of ``slot``'s partition (call while it is live)."""
        part = int(self.partitions[slot])
        left = self.per_partition.get(part, 0) + delta
        if left > 0:
            self.per_partition[part] = left
        else:
            self.per_partition.pop(part, None)

    def partitions_held(self) -> set[int]:
        """The source partitions of the live points (``NO_PARTITION`` for points that did
        not come from a stream)."""
        return set(list(self.per_partition))  # one C-level copy: safe beside the writer

    def assign(self, point_id: PointId, slot: int, partition: int | None, generation: int) -> None:
        slot_of = self.slot_of  # built before anything changes (see the module docstring)
        self._ensure(slot)
        self.dirty.add(slot >> PART_SHIFT)
        self.changed[slot] = generation
        if self.live[slot]:
            self._count(slot, -1)
        self.ids[slot] = point_id
        self.partitions[slot] = NO_PARTITION if partition is None else partition
        self.live[slot] = True
        self._count(slot, 1)
        slot_of[point_id] = slot

    def assign_new(
        self,
        point_ids: Sequence[PointId],
        slots: np.ndarray,
        partitions: Sequence[int | None] | None,
        generation: int,
    ) -> None:
        """``assign`` for ids that hold no slot yet, at slots that are not live: the same
        changes in the same order (marks, ids, partitions, live flags, then the id -> slot
        entries), made with one array operation each instead of one call per point."""
        if len(point_ids) == 0:
            return
        slot_of = self.slot_of  # built before anything changes (see the module docstring)
        listed = slots.tolist()
        self._ensure(max(listed))
        self.dirty.update(np.unique(slots >> PART_SHIFT).tolist())
        self.changed[slots] = generation
        ids = self.ids
        for point_id, slot in zip(point_ids, listed, strict=True):
            ids[slot] = point_id
        if partitions is None or all(p is None for p in partitions):
            parts = np.full(len(listed), NO_PARTITION, np.int32)
        else:
            parts = np.array([NO_PARTITION if p is None else p for p in partitions], dtype=np.int32)
        self.partitions[slots] = parts
        self.live[slots] = True
        values, counts = np.unique(parts, return_counts=True)
        per = self.per_partition
        for part, n in zip(values.tolist(), counts.tolist(), strict=True):
            per[part] = per.get(part, 0) + n
        slot_of.update(zip(point_ids, listed, strict=True))

    def set_partition(self, slot: int, partition: int | None) -> None:
        self.slot_of  # noqa: B018 - built before anything changes
        self.dirty.add(slot >> PART_SHIFT)
        live = bool(self.live[slot])
        if live:
            self._count(slot, -1)
        self.partitions[slot] = NO_PARTITION if partition is None else partition
        if live:
            self._count(slot, 1)

    def remove(self, point_id: PointId, generation: int) -> int | None:
        slot = self.slot_of.pop(point_id, None)
        if slot is None:
            return None
        self.dirty.add(slot >> PART_SHIFT)
        self.changed[slot] = generation
        if self.live[slot]:
            self._count(slot, -1)
        self.live[slot] = False
        self.ids[slot] = None
        self.partitions[slot] = NO_PARTITION
        return slot

    def release(self, slot: int, generation: int) -> None:
        """Empty ``slot`` whose id already moved to another slot (``assign`` did)."""
        self.slot_of  # noqa: B018 - built before anything changes
        self.dirty.add(slot >> PART_SHIFT)
        self.changed[slot] = generation
        if self.live[slot]:
            self._count(slot, -1)
        self.live[slot] = False
        self.ids[slot] = None
        self.partitions[slot] = NO_PARTITION

    def changed_since(self, slots: np.ndarray, generation: int) -> bool:
        """True if any of ``slots`` (``-1`` ignored) was marked at ``generation`` or later.

        The writer marks slots with an odd generation before changing them
        (see ``Collection._apply_record``), so a reader that read
        ``generation`` before it started sees every change made since.
        """
        slots = np.asarray(slots).ravel()
        changed = self.changed
        if slots.size <= SMALL_CHECK:  # one search's hits: a loop costs less than numpy calls
            n = len(changed)
            for slot in slots.tolist():
                if slot >= 0 and (slot >= n or changed[slot] >= generation):
                    return True
            return changed is not self.changed
        slots = slots[slots >= 0]
        if slots.size == 0:
            return False
        if int(slots.max()) >= len(changed):
            return True
        if bool((changed[slots] >= generation).any()):
            return True
        return changed is not self.changed  # grown meanwhile: marks may be in the new array

    def live_mask(self, capacity: int) -> np.ndarray:
        live = self.live
        out = np.zeros(capacity, dtype=bool)
        n = min(capacity, len(live))
        out[:n] = live[:n]
        return out

    # -- checkpoint form ----------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """A copy of the map as plain arrays and lists (for checkpoints)."""
        id_list = self.ids
        slots = np.flatnonzero(self.live[: len(id_list)]).astype(np.int32)
        return {
            "slots": slots,
            "ids": [id_list[s] for s in slots.tolist()],
            "partitions": self.partitions[slots].copy() if slots.size else np.zeros(0, np.int32),
        }

    def capture_parts(
        self, parts: set[int]
    ) -> dict[int, tuple[list[PointId | None], np.ndarray, np.ndarray]]:
        """Copies of the given parts: ``{part: (ids per slot, live flags, partitions)}``.

        A part is the slots ``[part << PART_SHIFT, (part + 1) << PART_SHIFT)``; slots past
        the map's end are free. The caller keeps the writer out while it copies.
        """
        size = 1 << PART_SHIFT
        out = {}
        n = len(self.ids)
        for part in parts:
            lo, hi = part * size, min(n, (part + 1) * size)
            ids: list[PointId | None] = self.ids[lo:hi] if lo < n else []
            live = np.zeros(size, np.bool_)
            partitions = np.full(size, NO_PARTITION, np.int32)
            if lo < n:
                live[: hi - lo] = self.live[lo:hi]
                partitions[: hi - lo] = self.partitions[lo:hi]
            out[part] = (ids + [None] * (size - len(ids)), live, partitions)
        return out

    def take_dirty(self) -> set[int]:
        """The parts changed since the last call (the caller keeps the writer out)."""
        dirty, self.dirty = self.dirty, set()
        return dirty

    def all_parts(self) -> set[int]:
        return set(range(-(-len(self.ids) >> PART_SHIFT)))

    @classmethod
    def from_state(
        cls, slots: Iterable[int], ids: Iterable[PointId], partitions: Iterable[int]
    ) -> IdMap:
        """The map from its checkpoint form: the live slots, their ids (a list, or a uint64
        array when all are integers) and partitions. Built with numpy, not per slot."""
        slots = np.asarray(slots if isinstance(slots, np.ndarray) else list(slots), np.int64)
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        partitions = np.asarray(
            partitions if isinstance(partitions, np.ndarray) else list(partitions), np.int32
        )
        if not (len(slots) == len(ids) == len(partitions)):
            from vdb.errors import CorruptData

            raise CorruptData("id map checkpoint: slots, ids and partitions differ in length")
        m = cls(int(slots.max()) + 1 if slots.size else 0)
        if not slots.size:
            return m
        if len(ids) == len(m.ids) and int(slots[0]) == 0 and bool((np.diff(slots) == 1).all()):
            m.ids = ids  # every slot up to the last is live and the slots ascend: ids as they are
        else:
            held = np.empty(len(ids), object)
            held[:] = ids  # the same Python objects, no new ints
            table = np.empty(len(m.ids), object)
            table[slots] = held
            m.ids = table.tolist()
        m.live[slots] = True
        m.partitions[slots] = partitions
        held_parts, counts = np.unique(partitions, return_counts=True)
        m.per_partition = dict(zip(held_parts.tolist(), counts.tolist(), strict=True))
        del m.slot_of  # built on first use from the loaded ids and slots
        m._pending = (threading.Lock(), ids, slots)
        return m
