"""API keys resolved in a burst: requests that find a key's cached answer missing at the same
moment share one database lookup, and the answer still expires on time (a revoked key stops
working within the cache's lifetime)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.app import Authenticator
from service.db import Database
from service.errors import Unauthorized
from tests.integration.conftest import Api, Infra
from tests.integration.tenancy import make_tenant

TTL_S = 0.2


class CountingDatabase(Database):
    """The real database, counting the transactions the authenticator opens."""

    transactions = 0

    def transaction(self, tenant_id: str | None) -> Any:
        self.transactions += 1
        return super().transaction(tenant_id)


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


@pytest.mark.parametrize("burst", [1, 50])
def test_a_revoked_key_stops_working_once_its_answer_expires(
    infra: Infra, api: Api, burst: int
) -> None:
    header, _ = new_key(api)
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        keys = client.get("/v1/api-keys", headers={"Authorization": header})
        keys.raise_for_status()
        (key,) = keys.json()

    async def scenario() -> list[BaseException | Any]:
        async with counting_db(infra) as db:
            auth = Authenticator(db, "admin-key-not-used-here", TTL_S)
            await auth(header)
            with httpx.Client(base_url=api.base_url, timeout=30) as client:
                r = client.delete(f"/v1/api-keys/{key['id']}", headers={"Authorization": header})
                assert r.status_code in (200, 204), r.text
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
