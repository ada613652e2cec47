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
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
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

MONDAY_10_NY = datetime(2027, 3, 1, 15, tzinfo=UTC)


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
    """One of each booking request, on `day` weeks after MONDAY_10_NY."""
    start = MONDAY_10_NY + timedelta(weeks=day)
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
        )
    )

    async def scenario() -> int:
        async with AsyncTestClient(app):  # runs the app's start-up and shutdown
            await book_and_refuse(app, tenant, day=0)  # first calls fill caches
            gc.collect()
            for day in range(1, 4):
                await book_and_refuse(app, tenant, day)
            return gc.collect()

    with collector_off():
        assert asyncio.run(scenario()) == 0


def test_memory_growth_starts_a_collection_and_nothing_else_does() -> None:
    """A cycle holding 64 MB is collected within a few checks once it is garbage; one holding a
    few bytes, all the while before, is left to the thresholds."""

    class Node:
        def __init__(self, payload: bytes) -> None:
            self.payload = payload
            self.me = self  # the cycle: only the collector frees it

    async def watch(small: weakref.ref[Node], big_mb: int) -> tuple[bool, bool]:
        collector = asyncio.create_task(heap.collect_on_growth(32 * 1024 * 1024, every_s=0.01))
        await asyncio.sleep(0.1)
        small_survived = small() is not None
        big = Node(b"x" * (big_mb * 1024 * 1024))
        gone = weakref.ref(big)
        del big
        for _ in range(100):
            await asyncio.sleep(0.01)
            if gone() is None:
                break
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
        return small_survived, gone() is None

    with collector_off():
        tiny = Node(b"tiny")
        small = weakref.ref(tiny)
        del tiny
        small_survived, big_collected = asyncio.run(watch(small, big_mb=64))
    assert small_survived
    assert big_collected
