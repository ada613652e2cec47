"""Concurrent requests that need the same answer share one call for it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """`call(key, fetch)` runs `fetch()` unless a call for `key` is already in flight, in
    which case it waits for that one's result (or exception). In a burst, thousands of requests
    find the same cache entry missing at once; without this each would fetch it. `start` is
    the same for a caller that does not wait."""

    def __init__(self) -> None:
        self._in_flight: dict[K, asyncio.Future[V]] = {}

    async def call(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        # shield: one caller hanging up must not cancel the call the others wait for.
        return await asyncio.shield(self.start(key, fetch))

    def start(self, key: K, fetch: Callable[[], Awaitable[V]]) -> asyncio.Future[V]:
        """The call for `key` in flight, started with `fetch()` if there is none; for a caller
        that need not wait for it (a refresh ahead of expiry)."""
        flight = self._in_flight.get(key)
        if flight is None:
            flight = asyncio.ensure_future(fetch())
            self._in_flight[key] = flight
            flight.add_done_callback(lambda _: self._in_flight.pop(key, None))
            # Mark a failure as seen even when every caller hung up before it came (or none
            # waited): asyncio would otherwise log "exception was never retrieved" for it.
            flight.add_done_callback(lambda f: f.cancelled() or f.exception())
        return flight
