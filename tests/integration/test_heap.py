"""The collector's schedule (`service.heap`) rests on two things: the booking paths leave no
reference cycles, so a worker in a rush has nothing for the collector to find; and where
cycles do pile up, the memory they hold starts a collection. Run in-process on the real
servers, with the automatic collector off, so that any cycle a request leaves is still there
to be counted."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service import heap
from service.app import AppConfig, create_app
from tests.integration.conftest import Api, Infra
from tests.integration.tenancy import Tenant, make_tenant
from tests.integration.test_queue import monday_ahead

MONDAY_15_UTC = datetime.combine(monday_ahead(), time(15), UTC)  # 10:00 or 11:00 in New York


@pytest.fixture
def tenant(api: Api) -> Iterator[Tenant]:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        yield make_tenant(client, api.admin_headers(), staff=2, rooms=2)


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    """The automatic collector off; the process's collector as it was afterwards (the app's
    start-up tunes it and freezes the heap of the process it runs in: this one)."""
    thresholds = gc.get_threshold()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        gc.enable()


async def call(
    app: Litestar,
    method: str,
    path: str,
    headers: dict[str, str],
    json_body: Any = None,
    query: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request straight through the ASGI interface: an HTTP client would leave cycles of
    its own (httpx's requests and responses do)."""
    body = b"" if json_body is None else json.dumps(json_body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": urlencode(query or {}).encode(),
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-length", str(len(body)).encode())]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)  # type: ignore[arg-type]  # a minimal scope, built here
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(answer) if answer else None


async def book_and_refuse(app: Litestar, tenant: Tenant, day: int) -> None:
    """One of each booking request, on `day` weeks after MONDAY_15_UTC."""
    start = MONDAY_15_UTC + timedelta(weeks=day)
    at = start.isoformat()
    staff, rooms = tenant.staff, tenant.rooms

    async def answer(status: int, method: str, path: str, **kw: Any) -> Any:
        headers = {**tenant.headers, **kw.pop("headers", {})}
        got, body = await call(app, method, path, headers, kw.get("json"), kw.get("params"))
        assert got == status, body
        return body

    service = f"/v1/services/{tenant.service_id}"
    day_after = (start + timedelta(days=1)).isoformat()
    await answer(200, "GET", f"{service}/availability", params={"from": at, "to": day_after})
    await answer(200, "GET", f"{service}/why-not", params={"start": at})
    pinned = {"service_id": tenant.service_id, "start": at, "resource_ids": [staff[0], rooms[0]]}
    hold = await answer(201, "POST", "/v1/holds", json=pinned)
    await answer(409, "POST", "/v1/holds", json=pinned)  # refused in Valkey: held
    key = {"Idempotency-Key": f"heap-{tenant.id}-{day}"}
    booked = await answer(201, "POST", "/v1/bookings", json={"hold_id": hold["id"]}, headers=key)
    direct = {**pinned, "resource_ids": [staff[1], rooms[1]]}
    other = await answer(201, "POST", "/v1/bookings", json=direct)
    await answer(409, "POST", "/v1/bookings", json=direct)  # refused: booked
    await answer(200, "POST", f"/v1/bookings/{other['id']}/cancel", json={})
    later = (start + timedelta(hours=2)).isoformat()
    await answer(201, "POST", "/v1/holds", json={"service_id": tenant.service_id, "start": later})
    moved = {"start": (start + timedelta(hours=4)).isoformat()}
    await answer(201, "POST", f"/v1/bookings/{booked['id']}/reschedule", json=moved)


def test_the_booking_paths_leave_no_reference_cycles(infra: Infra, tenant: Tenant) -> None:
    """Holds (taken, refused in Valkey), confirmation, direct booking (taken, refused as
    booked), cancellation, rescheduling, availability and why-not. Every `explain` left a
    cycle while the engine's matching was a closure calling itself."""
    app = create_app(
        AppConfig(
            app_database_url=infra.app_url,
            redis_url=infra.redis_url,
            admin_key="admin-" + "k" * 40,
            hold_secret=b"h" * 32,
            auth_cache_seconds=3600,  # the key is looked up once: its refreshes are not measured
        )
    )

    async def scenario() -> list[str]:
        async with AsyncTestClient(app):  # runs the app's start-up and shutdown
            await book_and_refuse(app, tenant, day=0)  # first calls fill caches
            gc.collect()
            for day in range(1, 4):
                await book_and_refuse(app, tenant, day)
            gc.set_debug(gc.DEBUG_SAVEALL)  # what a failure names: the types left in cycles
            gc.collect()
            gc.set_debug(0)
            left = sorted({type(o).__qualname__ for o in gc.garbage})
            gc.garbage.clear()
            return left

    with collector_off():
        assert asyncio.run(scenario()) == []


class Node:
    def __init__(self, payload: object) -> None:
        self.payload = payload
        self.me = self  # the cycle: only the collector frees it


async def watch(make: Callable[[], Node], growth_bytes: int, growth_blocks: int) -> list[bool]:
    """[a small cycle made before the watch survived it, the cycle ``make`` returns was
    collected within a second of becoming garbage]."""
    tiny = Node(b"tiny")
    small = weakref.ref(tiny)
    del tiny
    collector = asyncio.create_task(
        heap.collect_on_growth(growth_bytes, growth_blocks, every_s=0.01)
    )
    await asyncio.sleep(0.1)
    survived = small() is not None
    garbage = make()
    gone = weakref.ref(garbage)
    del garbage
    for _ in range(100):
        await asyncio.sleep(0.01)
        if gone() is None:
            break
    collector.cancel()
    await asyncio.gather(collector, return_exceptions=True)
    return [survived, gone() is None]


def test_growth_starts_a_collection_and_nothing_else_does() -> None:
    """A cycle holding 64 MB in one object is collected once it is garbage, by the growth of
    resident memory; one holding 300,000 small strings, by the count of the small-object
    allocator's blocks (their freed memory may stay resident, so resident memory alone would
    let garbage ratchet up). A cycle holding a few bytes is left to the thresholds."""
    mb = 1024 * 1024
    with collector_off():
        big = asyncio.run(watch(lambda: Node(b"x" * (64 * mb)), 32 * mb, 10**9))
        many = asyncio.run(watch(lambda: Node([str(i) for i in range(300_000)]), 10**12, 200_000))
    assert big == [True, True]
    assert many == [True, True]
