"""When a worker runs CPython's cyclic garbage collector: when its memory grows, not every time
the requests in flight have made a few thousand objects.

A collection walks every container object of the generations it collects. In the 10,000-attempt
burst (`slotwise loadtest burst`) a worker held up to 560,000 more such objects than at rest —
the thousands of requests in flight, none of them garbage — and with a young collection every
20,000 new objects it walked each of them once: 29 collections and 0.26-0.29 s of each
worker's CPU, about 7% of all the CPU the machine spent on the burst's bookings, for nothing:
the booking requests leave no reference cycles (tests/integration/test_heap.py), so reference
counting frees all they make.

Some paths do leave cycles: a request Litestar's validation refuses leaves ~45 objects that
hold the request's values, its body too (500 invalid requests with 200 KB bodies held 290 MB
until a collection); OR-Tools leaves ~370 per queue auto-assignment. A count of objects says
nothing of the memory they hold, so the collector runs on three triggers:
- the young generation after a million more container objects than at the last collection,
  more than such a burst makes;
- every generation once, since the last such collection, resident memory has grown by
  `GROWTH_BYTES` (large objects: request bodies) or Python's small-object allocator has handed
  out `GROWTH_BLOCKS` more blocks (small ones, whose freed memory stays resident and would let
  the resident measure ratchet up), checked every `CHECK_EVERY_S`. The burst grew a worker by
  ~120 MB and ~950,000 blocks.
The price is longer pauses when a collection does come: a young collection may walk a million
objects, and a full one every object not frozen at start-up (~65 ms over the 560,000 of the
burst's peak).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys

YOUNG_THRESHOLD = 1_000_000
GROWTH_BYTES = 256 * 1024 * 1024
GROWTH_BLOCKS = 4_000_000
CHECK_EVERY_S = 0.1
_PAGE = os.sysconf("SC_PAGE_SIZE")
log = logging.getLogger(__name__)


def settle() -> None:
    """Collect once and freeze what start-up made (the hundreds of thousands of objects imported
    with OR-Tools and Litestar are never walked again), then set the thresholds. An older
    generation is collected after 100 younger collections instead of 10: each walks every
    object promoted since, the requests in flight at each younger collection among them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 100, 10)


async def collect_on_growth(
    growth_bytes: int = GROWTH_BYTES,
    growth_blocks: int = GROWTH_BLOCKS,
    every_s: float = CHECK_EVERY_S,
) -> None:
    """Run until cancelled: a full collection whenever resident memory has grown by
    ``growth_bytes``, or allocated small-object blocks by ``growth_blocks``, since the last
    one (or the start). Full, not young: with the thresholds of `settle`, an older generation
    is otherwise collected only after 100 or 1,000 young collections, and garbage there would
    wait for it. Where resident memory cannot be read, only the thresholds collect."""
    try:
        memory, blocks = resident_bytes(), sys.getallocatedblocks()
    except OSError as exc:
        log.warning("garbage is collected by object count only: %s", exc)
        return
    while True:
        await asyncio.sleep(every_s)
        grown = resident_bytes() - memory >= growth_bytes
        if grown or sys.getallocatedblocks() - blocks >= growth_blocks:
            gc.collect()
            memory, blocks = resident_bytes(), sys.getallocatedblocks()


def resident_bytes() -> int:
    """This process's resident memory (Linux)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE
