"""When a worker runs CPython's cyclic garbage collector: when its memory grows, not while a
rush of requests is in flight.

A collection walks every container object of the generations it collects. In the 10,000-attempt
burst (`slotwise loadtest burst`) a worker held up to 560,000 more such objects than at rest —
the thousands of requests in flight, none of them garbage — and with a young collection every
20,000 new objects it walked each of them once: 29 collections and 0.26-0.29 s of each
worker's CPU, about 7% of all the CPU the machine spent on the burst's bookings, for nothing:
the booking paths leave no reference cycles (tests/integration/test_heap.py), so reference
counting frees all they make.

Some paths do leave cycles: a request Litestar's validation refuses leaves ~45 objects that
hold the request's values, its body too (500 invalid requests with 200 KB bodies held 290 MB
until a collection); OR-Tools leaves ~370 per queue auto-assignment. A count of objects says
nothing of the memory they hold, so the collector runs on two triggers:
- the young generation after a million new objects, more than such a rush makes;
- every generation once the worker's resident memory has grown by `GROWTH_BYTES` since the last
  such collection, measured every `CHECK_EVERY_S` (the burst grew a worker by ~120 MB).
"""

from __future__ import annotations

import asyncio
import gc
import os

YOUNG_THRESHOLD = 1_000_000
GROWTH_BYTES = 256 * 1024 * 1024
CHECK_EVERY_S = 0.1
_PAGE = os.sysconf("SC_PAGE_SIZE")


def settle() -> None:
    """Collect once and freeze what start-up made (the hundreds of thousands of objects imported
    with OR-Tools and Litestar are never walked again), then set the thresholds. An older
    generation is collected after 100 younger collections instead of 10: each walks every
    object promoted since, the requests in flight at each younger collection among them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 100, 10)


async def collect_on_growth(
    growth_bytes: int = GROWTH_BYTES, every_s: float = CHECK_EVERY_S
) -> None:
    """Run until cancelled: a full collection whenever resident memory has grown by
    ``growth_bytes`` since the last one (or since the start). Full, not young: with the
    thresholds of `settle`, an older generation is otherwise collected only after 100 or 1,000
    young collections, and garbage there would wait for it."""
    baseline = resident_bytes()
    while True:
        await asyncio.sleep(every_s)
        if resident_bytes() - baseline >= growth_bytes:
            gc.collect()
            baseline = resident_bytes()


def resident_bytes() -> int:
    """This process's resident memory (Linux)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE
