"""What availability reads from Valkey: the live holds overlapping a window, against a
brute-force reference, on the real server.

Each example lays holds on a grid of half-hour slots over three resources — live, expired
(its hold key gone, its members left behind as an expired hold leaves them) or kept after
its booking — and asks for a window with arbitrary bounds."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.holds import Claim, RedisHoldStore, new_nonce, valkey_client
from tests.integration.conftest import Infra

SLOT_MS = 30 * 60 * 1000
RESOURCES = ["r0", "r1", "r2"]
STATES = st.sampled_from(["free", "live", "expired", "kept"])
# Window bounds on a half-slot grid, exactly or a millisecond off: the edges are where an
# off-by-one hides (a hold ending at the window's start, or starting at its end, is out).
EDGE = st.builds(
    lambda half, off: max(0, half * SLOT_MS // 2 + off),
    st.integers(0, 16),
    st.sampled_from([-1, 0, 0, 1]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    grid=st.lists(st.lists(STATES, min_size=8, max_size=8), min_size=3, max_size=3),
    lo=EDGE,
    length=EDGE.filter(lambda n: n > 0),
)
def test_live_claims_are_the_live_unbooked_holds_overlapping_the_window(
    infra: Infra, grid: list[list[str]], lo: int, length: int
) -> None:
    tenant = "live-" + new_nonce()
    hi = lo + length

    async def scenario() -> tuple[dict[str, list[tuple[int, int, str]]], set[tuple]]:
        valkey = valkey_client(infra.redis_url)
        store = RedisHoldStore(valkey)
        expected: set[tuple[str, int, int, str]] = set()
        try:
            for rid, states in zip(RESOURCES, grid, strict=True):
                for slot, state in enumerate(states):
                    if state == "free":
                        continue
                    nonce, start = new_nonce(), slot * SLOT_MS
                    claim = Claim(rid, start, start + SLOT_MS)
                    assert await store.acquire(tenant, nonce, [claim], timedelta(minutes=5)) is None
                    if state == "expired":
                        await valkey.call("DEL", f"{{sw:{tenant}}}:hold:{nonce}")
                    elif state == "kept":
                        assert await store.keep(tenant, nonce, [claim], timedelta(minutes=1))
                    elif start < hi and start + SLOT_MS > lo:
                        expected.add((rid, start, start + SLOT_MS, nonce))
            return await store.live_claims(tenant, RESOURCES, lo, hi), expected
        finally:
            await valkey.aclose()

    live, expected = asyncio.run(scenario())
    assert {(rid, s, e, n) for rid, claims in live.items() for s, e, n in claims} == expected
