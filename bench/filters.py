"""Payload filters: time to turn a filter into an allowed mask, against a full payload scan.

For each filter case, one JSON line with the median and best time of
``PayloadIndex.mask`` over ``--n`` payloads and, as the anchor measured in
the same run, the time of evaluating the reference ``matches`` on every
payload (what a filter costs without payload indexes). A second group of
lines times full-text conditions with and without a ``text`` index.

    PYTHONPATH=. python -m bench.filters [--n 100000] [--quick]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from bench.common import emit, host_info, log
from vdb.filters import PayloadIndex, matches, parse_filter

CASES = {
    "keyword": {"must": {"key": "category", "match": {"value": "cat7"}}},
    "range_1pct": {"must": {"key": "price", "range": {"gte": 100, "lt": 110}}},
    "range_50pct": {"must": {"key": "price", "range": {"lt": 500}}},
    "tags_any": {"must": {"key": "tags", "match": {"any": ["tag3", "tag4"]}}},
    "keyword_and_range": {
        "must": [
            {"key": "category", "match": {"value": "cat7"}},
            {"key": "price", "range": {"lt": 100}},
        ]
    },
    "should_2": {
        "should": [
            {"key": "category", "match": {"value": "cat7"}},
            {"key": "tags", "match": {"value": "tag9"}},
        ]
    },
    "must_not": {"must_not": {"key": "category", "match": {"any": ["cat1", "cat2"]}}},
    "except": {"must": {"key": "category", "match": {"except": ["cat1"]}}},
    "values_count": {"must": {"key": "tags", "values_count": {"gte": 3}}},
    "is_empty": {"must": {"is_empty": {"key": "missing"}}},
    "prefix": {"must": {"key": "category", "match": {"prefix": "cat9"}}},
    "keyword_then_payload_read": {
        "must": [
            {"key": "category", "match": {"value": "cat7"}},
            {"key": "tags[0]", "match": {"value": "tag1"}},
        ]
    },
}

TEXT_CASES = {
    "text_2words": {"must": {"key": "description", "match": {"text": "w7 w42"}}},
    "text_any": {"must": {"key": "description", "match": {"text_any": "w7 w42"}}},
    "phrase": {"must": {"key": "description", "match": {"phrase": "w7 w42"}}},
}


def _time_mask(index: PayloadIndex, f, n: int, live: np.ndarray, reps: int):
    index.mask(f, n, live, {}.get)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        mask = index.mask(f, n, live, {}.get)
        times.append(time.perf_counter() - start)
    return mask, times


def bench_structured(n: int, reps: int) -> None:
    rng = random.Random(1)
    cats = [f"cat{i}" for i in range(100)]
    tags = [f"tag{i}" for i in range(50)]
    payloads = [
        {
            "category": rng.choice(cats),
            "price": rng.uniform(0, 1000),
            "tags": rng.sample(tags, rng.randint(2, 3)),
        }
        for _ in range(n)
    ]
    start = time.perf_counter()
    index = PayloadIndex()
    for slot, payload in enumerate(payloads):
        index.set(slot, payload)
    build_s = time.perf_counter() - start
    emit(
        {
            "bench": "filters.build",
            "n": n,
            "seconds": build_s,
            "per_payload_us": build_s / n * 1e6,
            "index_mb": index.memory_bytes() / 1e6,
            **host_info(),
        }
    )
    live = np.ones(n, dtype=bool)
    live[::97] = False
    for name, spec in CASES.items():
        f = parse_filter(spec)
        mask, times = _time_mask(index, f, n, live, reps)
        start = time.perf_counter()
        scan = np.fromiter((matches(p, None, f) for p in payloads), dtype=bool, count=n) & live
        scan_s = time.perf_counter() - start
        if not np.array_equal(mask, scan):
            raise SystemExit(f"filter case {name}: mask disagrees with the payload scan")
        emit(
            {
                "bench": "filters.mask",
                "case": name,
                "n": n,
                "selected": int(mask.sum()),
                "median_ms": float(np.median(times)) * 1e3,
                "min_ms": min(times) * 1e3,
                "anchor": "full payload scan (matches)",
                "anchor_ms": scan_s * 1e3,
                "speedup": scan_s / max(float(np.median(times)), 1e-9),
            }
        )


def bench_text(n: int, reps: int) -> None:
    rng = random.Random(2)
    vocab = [f"w{i}" for i in range(2000)]
    payloads = [
        {"description": " ".join(rng.choices(vocab, k=rng.randint(5, 20)))} for _ in range(n)
    ]
    index = PayloadIndex()
    for slot, payload in enumerate(payloads):
        index.set(slot, payload)
    live = np.ones(n, dtype=bool)
    before = {}
    for name, spec in TEXT_CASES.items():
        mask, times = _time_mask(index, parse_filter(spec), n, live, 1)
        before[name] = (mask, min(times))
    start = time.perf_counter()
    index.create_index("description", "text")
    emit(
        {
            "bench": "filters.text_index_build",
            "n": n,
            "seconds": time.perf_counter() - start,
            "index_mb": index.memory_bytes() / 1e6,
        }
    )
    for name, spec in TEXT_CASES.items():
        mask, times = _time_mask(index, parse_filter(spec), n, live, reps)
        if not np.array_equal(mask, before[name][0]):
            raise SystemExit(f"text case {name}: indexed result differs from the scan")
        emit(
            {
                "bench": "filters.text",
                "case": name,
                "n": n,
                "selected": int(mask.sum()),
                "median_ms": float(np.median(times)) * 1e3,
                "anchor": "no text index",
                "anchor_ms": before[name][1] * 1e3,
            }
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="payloads (default 100,000)")
    parser.add_argument("--quick", action="store_true", help="10,000 payloads, fewer repeats")
    args = parser.parse_args(argv)
    n = 10_000 if args.quick else args.n
    reps = 5 if args.quick else 15
    log(f"filters: {n} payloads")
    bench_structured(n, reps)
    bench_text(n, reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
