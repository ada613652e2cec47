"""API keys resolved in a burst: requests that find a key's cached answer missing at the same
moment share one database lookup, a key in use is looked up again before its answer expires,
and the answer still expires on time (a revoked key stops working within the cache's
lifetime)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.app import Authenticator
from service.db import Database
from service.errors import Unauthorized, Unavailable
from tests.integration.conftest import Api, Infra
from tests.integration.tenancy import make_tenant

TTL_S = 0.2


class CountingDatabase(Database):
    """The real database, counting the transactions the authenticator opens and those that
    ended. While `gate` is set and not open, they wait for it; while `down`, they fail as the
    database's do when it is unavailable."""

    transactions = 0
    ended = 0
    gate: asyncio.Event | None = None
    down = False

    def transaction(self, tenant_id: str | None) -> Any:
        self.transactions += 1
        inner, gate = super().transaction(tenant_id), self.gate

        @contextlib.asynccontextmanager
        async def gated() -> AsyncIterator[Any]:
            try:
                if gate is not None:
                    await gate.wait()
                if self.down:
                    raise Unavailable("the database is unavailable; nothing was changed")
                async with inner as conn:
                    yield conn
            finally:
                self.ended += 1

        return gated()

    async def settled(self) -> None:
        """Until every transaction begun has ended (a lookup nobody waits for among them)."""
        await asyncio.sleep(0)  # a lookup started just now begins its transaction
        async with asyncio.timeout(10):
            while self.ended < self.transactions:
                await asyncio.sleep(0.005)


class Clock:
    """The authenticator's clock, moved by hand: what is cached when is exact, not timed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def counting_db(infra: Infra) -> AsyncIterator[CountingDatabase]:
    db = await CountingDatabase.open(infra.app_url, 1, 4)
    try:
        yield db  # type: ignore[misc]  # open() builds the subclass it is called on
    finally:
        await db.close()


def new_key(api: Api) -> tuple[str, str]:
    """(Authorization header, tenant id) of a new tenant's key."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), staff=0, rooms=0)
    return tenant.headers["Authorization"], tenant.id


def test_a_burst_with_one_key_costs_one_lookup_per_cache_lifetime(infra: Infra, api: Api) -> None:
    header, tenant_id = new_key(api)

    async def scenario() -> tuple[list[int], set[str | None]]:
        async with counting_db(infra) as db:
            auth = Authenticator(db, "admin-key-not-used-here", TTL_S)
            lookups = []
            tenants: set[str | None] = set()
            for _ in range(2):  # the second burst comes after the first answer expired
                callers = await asyncio.gather(*(auth(header) for _ in range(500)))
                tenants |= {c.tenant for c in callers}
                lookups.append(db.transactions)
                await asyncio.sleep(TTL_S * 1.5)
            return lookups, tenants

    lookups, tenants = asyncio.run(scenario())
    assert tenants == {tenant_id}
    assert lookups == [1, 2]


def test_a_key_in_use_is_looked_up_again_while_its_answer_still_serves(
    infra: Infra, api: Api
) -> None:
    """Past half its answer's lifetime, a key's requests are answered from the cache while one
    lookup refreshes it, and the refreshed answer serves past the first one's expiry."""
    header, tenant_id = new_key(api)
    clock = Clock()

    async def scenario() -> tuple[set[str | None], list[int]]:
        async with counting_db(infra) as db:
            auth = Authenticator(db, "admin-key-not-used-here", 1.0, clock)
            callers = [await auth(header)]
            lookups = [db.transactions]
            clock.now += 0.6  # past half the answer's lifetime, before its expiry
            db.gate = asyncio.Event()  # the refresh waits: no request may wait with it
            async with asyncio.timeout(10):
                callers += await asyncio.gather(*(auth(header) for _ in range(500)))
            await asyncio.sleep(0)  # the refresh starts (and waits at the gate)
            lookups.append(db.transactions)
            db.gate.set()
            await db.settled()
            clock.now += 0.7  # the first answer has expired; the refreshed one (read at +0.6) not
            db.gate = asyncio.Event()
            async with asyncio.timeout(10):
                callers.append(await auth(header))
            await asyncio.sleep(0)
            lookups.append(db.transactions)  # past half the refreshed answer's lifetime too
            db.gate.set()
            await db.settled()
            return {c.tenant for c in callers}, lookups

    tenants, lookups = asyncio.run(scenario())
    assert tenants == {tenant_id}
    assert lookups == [1, 2, 3]


def test_a_refresh_that_finds_the_key_revoked_refuses_it_before_the_answer_expires(
    infra: Infra, api: Api
) -> None:
    header, _ = new_key(api)
    key = only_key(api, header)
    clock = Clock()

    async def scenario() -> list[BaseException | Any]:
        async with counting_db(infra) as db:
            auth = Authenticator(db, "admin-key-not-used-here", 1.0, clock)
            await auth(header)
            revoke(api, header, key)
            clock.now += 0.6
            answers: list[BaseException | Any] = [await auth(header)]  # the cache; a refresh
            await db.settled()
            answers += await asyncio.gather(auth(header), return_exceptions=True)
            return answers

    served, refused = asyncio.run(scenario())
    assert not isinstance(served, BaseException)
    assert isinstance(refused, Unauthorized)


def test_a_refresh_under_way_when_keys_are_forgotten_is_neither_joined_nor_cached(
    infra: Infra, api: Api
) -> None:
    header, tenant_id = new_key(api)
    clock = Clock()

    async def scenario() -> tuple[list[int], str | None]:
        async with counting_db(infra) as db:
            auth = Authenticator(db, "admin-key-not-used-here", 1.0, clock)
            await auth(header)
            clock.now += 0.6
            db.gate = asyncio.Event()
            await auth(header)  # starts a refresh, held at the gate
            await asyncio.sleep(0)
            auth.forget()
            after = asyncio.ensure_future(auth(header))  # must look the key up again
            await asyncio.sleep(0.05)
            lookups = [db.transactions]
            db.gate.set()
            caller = await after
            await db.settled()
            db.gate = asyncio.Event()  # a lookup now would wait: what follows is the cache's
            async with asyncio.timeout(10):
                await auth(header)
            lookups.append(db.transactions)
            db.gate.set()
            await db.settled()
            return lookups, caller.tenant

    lookups, tenant = asyncio.run(scenario())
    assert tenant == tenant_id
    assert lookups == [3, 3]


def test_a_failed_refresh_leaves_the_answer_to_expire_then_fails_closed(
    infra: Infra, api: Api
) -> None:
    header, tenant_id = new_key(api)
    clock = Clock()

    async def scenario() -> list[BaseException | Any]:
        async with counting_db(infra) as db:
            auth = Authenticator(db, "admin-key-not-used-here", 1.0, clock)
            await auth(header)
            db.down = True
            answers: list[BaseException | Any] = []
            for at in (0.6, 0.9, 1.1):  # two within the answer's lifetime, one after it
                clock.now = 1000.0 + at
                answers += await asyncio.gather(auth(header), return_exceptions=True)
                await db.settled()
            return answers

    first, second, expired = asyncio.run(scenario())
    assert first.tenant == second.tenant == tenant_id
    assert isinstance(expired, Unavailable)


def test_an_unknown_key_is_refused_to_every_request_of_a_burst(infra: Infra, api: Api) -> None:
    header, _ = new_key(api)
    forged = header[:-4] + ("AAAA" if not header.endswith("AAAA") else "BBBB")

    async def scenario() -> tuple[list[BaseException | Any], int]:
        async with counting_db(infra) as db:
            auth = Authenticator(db, "admin-key-not-used-here", TTL_S)
            answers = await asyncio.gather(
                *(auth(forged) for _ in range(200)), return_exceptions=True
            )
            return answers, db.transactions

    answers, lookups = asyncio.run(scenario())
    assert all(isinstance(a, Unauthorized) for a in answers)
    assert lookups == 1


def only_key(api: Api, header: str) -> dict[str, Any]:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        keys = client.get("/v1/api-keys", headers={"Authorization": header})
        keys.raise_for_status()
        (key,) = keys.json()
    return key  # type: ignore[no-any-return]


def revoke(api: Api, header: str, key: dict[str, Any]) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        r = client.delete(f"/v1/api-keys/{key['id']}", headers={"Authorization": header})
        assert r.status_code in (200, 204), r.text


@pytest.mark.parametrize("burst", [1, 50])
def test_a_revoked_key_stops_working_once_its_answer_expires(
    infra: Infra, api: Api, burst: int
) -> None:
    header, _ = new_key(api)
    key = only_key(api, header)

    async def scenario() -> list[BaseException | Any]:
        async with counting_db(infra) as db:
            auth = Authenticator(db, "admin-key-not-used-here", TTL_S)
            await auth(header)
            revoke(api, header, key)
            await asyncio.sleep(TTL_S * 1.5)
            return await asyncio.gather(
                *(auth(header) for _ in range(burst)), return_exceptions=True
            )

    answers = asyncio.run(scenario())
    assert all(isinstance(a, Unauthorized) for a in answers)


def test_a_lookup_under_way_when_keys_are_forgotten_is_not_cached(infra: Infra, api: Api) -> None:
    """`forget` (called on revoking a key) must also cover a lookup that began before it: that
    lookup may have read the key while it was still valid."""
    header, _ = new_key(api)

    async def scenario() -> int:
        async with counting_db(infra) as db:
            auth = Authenticator(db, "admin-key-not-used-here", 60.0)
            under_way = asyncio.ensure_future(auth(header))
            await asyncio.sleep(0)  # the lookup has started
            auth.forget()
            await under_way
            before = db.transactions
            await auth(header)
            return db.transactions - before

    assert asyncio.run(scenario()) == 1  # looked up again, not answered from the cache
