"""Merging per-partition answers into the answer one node holding every point would give.

Like Milvus' proxy reduce: each replica returns its best ``limit + offset``
hits in score order; a heap merge by score keeps the global order, duplicate
ids (a point produced under two keys) keep their best hit, and the offset and
limit are applied last. Scroll pages merge in id order (ints ascending, then
strings, as ``Collection.scroll``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

from vdb.ids import sort_key


def _id_key(point_id: Any) -> tuple[int, Any]:
    return sort_key(point_id)


def merge_hits(
    lists: Iterable[list[dict[str, Any]]],
    *,
    ascending: bool,
    offset: int,
    limit: int,
    exclude: Any = None,
) -> list[dict[str, Any]]:
    """Merge score-ordered hit lists (best first), dedup by id, then ``[offset:offset+limit]``."""
    sign = 1.0 if ascending else -1.0
    merged = heapq.merge(*lists, key=lambda hit: sign * float(hit["score"]))
    seen: set[tuple[type, Any]] = set()
    out: list[dict[str, Any]] = []
    want = offset + limit
    for hit in merged:
        key = (type(hit["id"]), hit["id"])
        if key in seen or (exclude is not None and key == (type(exclude), exclude)):
            continue
        seen.add(key)
        out.append(hit)
        if len(out) >= want:
            break
    return out[offset:want]


def merge_by_id(
    lists: Iterable[list[dict[str, Any]]], *, offset: int, limit: int
) -> list[dict[str, Any]]:
    """Merge id-ordered point lists (a query without ``query``), dedup, ``[offset:offset+limit]``."""
    merged = heapq.merge(*lists, key=lambda point: _id_key(point["id"]))
    seen: set[tuple[type, Any]] = set()
    out: list[dict[str, Any]] = []
    for point in merged:
        key = (type(point["id"]), point["id"])
        if key in seen:
            continue
        seen.add(key)
        out.append(point)
        if len(out) >= offset + limit:
            break
    return out[offset : offset + limit]


def merge_scroll(
    pages: Iterable[tuple[list[dict[str, Any]], Any]], *, limit: int
) -> tuple[list[dict[str, Any]], Any]:
    """Merge scroll pages ``(points, next_page_offset)``, each in id order, into one page.

    The next offset is the smallest id after the page: either a point some
    replica returned beyond the first ``limit``, or the smallest of the
    replicas' own next offsets.
    """
    pages = list(pages)
    merged = heapq.merge(*(points for points, _ in pages), key=lambda p: _id_key(p["id"]))
    seen: set[tuple[type, Any]] = set()
    out: list[dict[str, Any]] = []
    beyond = None
    for point in merged:
        key = (type(point["id"]), point["id"])
        if key in seen:
            continue
        seen.add(key)
        if len(out) < limit:
            out.append(point)
        else:
            beyond = point["id"]
            break
    candidates = [nxt for _, nxt in pages if nxt is not None]
    if beyond is not None:
        candidates.append(beyond)
    next_offset = min(candidates, key=_id_key) if candidates else None
    return out, next_offset
