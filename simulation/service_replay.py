"""Replay of synthetic demand through the live booking service, over HTTP, concurrently.

The same tenants and customers as the engine replay (`simulation.replay`), the same journey
rules (`simulation.journey`), but every step is a real request: availability, holds (Valkey),
confirmations under advisory locks with the exclusion constraint behind them, releases,
cancellations, reschedules. Steps are dispatched in virtual-time order with at most
``concurrency`` requests in flight; a customer's next step is queued when the previous answer
arrives. Virtual time is compressed to "as fast as the service answers", so `at` and
`latency_ms` are wall-clock, and the customer who waits longer than a hold's lifetime gets a
5-second hold and really waits for it to lapse (the service answers 410).

What is reproducible: for a seed, the demand (who wants what, when, and how they behave) is
identical, and requests leave in the same virtual-time order. The decisions are not guaranteed:
which of two racing customers wins a slot depends on the interleaving (even with one request in
flight, a customer who waits out a hold's real 5 seconds lets later steps go first), and rules
that read the service's real clock (lead time, cut-offs) see the simulated period from today.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import polars as pl
import psycopg

from engine.calendar import day_span, instant
from engine.timezones import local_date
from simulation.demand import HOLD_TTL_S, Customers, Period, TenantSpec, customers, period, tenant
from simulation.events import TABLES, EventStore, frame
from simulation.journey import (
    ACTIONS,
    Booked,
    Step,
    after_booking,
    after_hold,
    after_view,
    nearest,
    shift_days,
)
from simulation.replay import engine_calendars, shift_anchor
from simulation.tables import (
    Row,
    attempts_frame,
    double_bookings,
    merge_attempts,
    period_bounds,
    resources_frame,
    summarize,
    working_frame,
)

STRATEGY = "holds"  # the service as shipped: hold, then advisory lock, then the constraint
SHORT_TTL_S = 5  # the hold of a customer who will take longer than a hold lives

OVERLAPS_SQL = """
SELECT count(*) FROM booking_resources a JOIN booking_resources b
  ON a.resource_id = b.resource_id AND a.booking_id < b.booking_id AND a.during && b.during
 WHERE a.active AND b.active AND a.tenant_id = ANY(%s::uuid[])
"""
BOOKINGS_SQL = """
SELECT b.tenant_id::text, b.id::text, r.resource_id::text, b.starts_at, b.ends_at, b.status
  FROM bookings b JOIN booking_resources r ON r.booking_id = b.id
 WHERE b.tenant_id = ANY(%s::uuid[])
 ORDER BY b.starts_at, b.id, r.resource_id
"""


def default_start(today: date) -> date:
    """The service reads the real clock, so the simulated week must lie ahead: 2027-03-01
    (as in engine runs) while that is a week away, else the first Monday a week from today."""
    from simulation.simulate import DEFAULT_START

    earliest = today + timedelta(days=7)
    if earliest <= DEFAULT_START:
        return DEFAULT_START
    return earliest + timedelta(days=(7 - earliest.weekday()) % 7)


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send the demand: a live API and a superuser URL for the final SQL checks."""

    base_url: str
    admin_key: str = field(repr=False)
    admin_url: str = field(repr=False)


@dataclass(slots=True)
class Tenant:
    spec: TenantSpec
    demand: Customers
    tenant_id: str
    headers: dict[str, str]
    service_ids: list[str]
    ids: dict[str, str]  # resource key -> uuid
    rows: list[Row] = field(default_factory=list)


def setup_tenant(
    client: httpx.Client, admin_key: str, spec: TenantSpec, period: Period, tag: str
) -> dict[str, Any]:
    """Create the tenant, its resources and services through the API; returns ids and key."""
    rules: dict[str, Any] = {
        "min_lead_minutes": spec.min_lead_minutes,
        "cancel_cutoff_minutes": spec.cancel_cutoff_minutes,
        "reschedule_cutoff_minutes": spec.reschedule_cutoff_minutes,
    }
    if spec.blackout_dates:
        rules["blackout_dates"] = [d.isoformat() for d in spec.blackout_dates]
    r = client.post(
        "/v1/tenants",
        json={"name": f"{spec.name} ({tag})", "zone": spec.zone, "rules": rules},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    r.raise_for_status()
    body = r.json()
    headers = {"Authorization": f"Bearer {body['api_key']['token']}"}
    anchor = shift_anchor(period)
    ids: dict[str, str] = {}
    for res in spec.resources:
        payload: dict[str, Any] = {
            "kind": res.kind,
            "name": res.name,
            "zone": spec.zone,
            "skills": list(res.skills),
            "working_hours": [
                {
                    "starts_local": anchor.replace(
                        hour=s.start.hour, minute=s.start.minute
                    ).isoformat(),
                    "duration_minutes": s.minutes,
                    "rrule": s.rrule,
                }
                for s in res.shifts
            ],
        }
        if res.daily_capacity is not None:
            payload["daily_capacity"] = res.daily_capacity
        r = client.post("/v1/resources", json=payload, headers=headers)
        r.raise_for_status()
        ids[res.key] = r.json()["id"]
    service_ids = []
    for svc in spec.services:
        r = client.post(
            "/v1/services",
            json={
                "name": svc.name,
                "duration_minutes": svc.duration,
                "buffer_before_minutes": svc.buffer_before,
                "buffer_after_minutes": svc.buffer_after,
                "step_minutes": svc.step,
                "requirements": [
                    {"kind": q.kind, "skills": list(q.skills), "count": q.count}
                    for q in svc.requirements
                ],
            },
            headers=headers,
        )
        r.raise_for_status()
        service_ids.append(r.json()["id"])
    return {
        "tenant_id": body["tenant"]["id"],
        "headers": headers,
        "ids": ids,
        "service_ids": service_ids,
    }


def _iso(posix: int) -> str:
    return datetime.fromtimestamp(posix, UTC).isoformat().replace("+00:00", "Z")


def _posix(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


class Replayer:
    """Drives every tenant's customers through the API, in virtual-time order."""

    def __init__(
        self, session: aiohttp.ClientSession, tenants: list[Tenant], concurrency: int, tag: str
    ) -> None:
        self.session = session
        self.tenants = tenants
        self.slots = asyncio.Semaphore(concurrency)
        self.tag = tag
        self.heap: list[tuple[int, int, int, Step, int, Any]] = []
        self.order = 0
        self.wake = asyncio.Event()
        self.in_flight = 0
        self.waiting = 0  # steps queued for later (see _later)
        self.arrived: Callable[[int], None] | None = None

    def push(self, at: int, tenant: int, step: Step, i: int, payload: Any) -> None:
        heapq.heappush(self.heap, (at, self.order, tenant, step, i, payload))
        self.order += 1
        self.wake.set()

    def _later(self, delay: float, at: int, tenant: int, step: Step, i: int, payload: Any) -> None:
        """Queue a step only after ``delay`` real seconds (without taking a request slot)."""

        def due() -> None:
            self.waiting -= 1
            self.push(at, tenant, step, i, payload)

        self.waiting += 1
        asyncio.get_running_loop().call_later(delay, due)

    async def run(self) -> None:
        for k, t in enumerate(self.tenants):
            for i, arrival in enumerate(t.demand.arrival.tolist()):
                self.push(arrival, k, Step.VIEW, i, (0, int(t.demand.patience[i]), True))
        tasks: set[asyncio.Task[None]] = set()
        while self.heap or self.in_flight or self.waiting:
            if not self.heap:
                self.wake.clear()
                await self.wake.wait()
                continue
            await self.slots.acquire()
            if not self.heap:  # the last in-flight step queued nothing
                self.slots.release()
                continue
            at, _, k, step, i, payload = heapq.heappop(self.heap)
            self.in_flight += 1
            task = asyncio.create_task(self._step(at, k, step, i, payload))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    async def _step(self, at: int, k: int, step: Step, i: int, payload: Any) -> None:
        try:
            await self._do(at, k, step, i, payload)
        finally:
            self.in_flight -= 1
            self.slots.release()
            self.wake.set()

    async def _call(
        self, t: Tenant, method: str, path: str, **kwargs: Any
    ) -> tuple[int, Any, float]:
        started = time.perf_counter()
        try:
            async with self.session.request(
                method, path, headers=t.headers | kwargs.pop("headers", {}), **kwargs
            ) as r:
                body = await r.json(content_type=None) if r.status != 204 else None
                return r.status, body, (time.perf_counter() - started) * 1000
        except (TimeoutError, aiohttp.ClientError):
            return 0, None, (time.perf_counter() - started) * 1000

    def _row(
        self,
        t: Tenant,
        i: int,
        step: Step,
        cells: tuple[Any, ...],
        status: int | None,
        latency: float | None,
    ) -> None:
        at_us = time.time_ns() // 1000
        t.rows.append(
            (
                at_us,
                len(t.rows),
                i,
                int(t.demand.service[i]),
                ACTIONS[step],
                *cells,
                status,
                latency,
            )
        )

    async def _do(self, at: int, k: int, step: Step, i: int, payload: Any) -> None:
        t = self.tenants[k]
        c = t.demand
        sid = t.service_ids[int(c.service[i])]
        duration = t.spec.services[int(c.service[i])].duration * 60
        if step in (Step.VIEW, Step.RESCHEDULE_VIEW):
            if step == Step.VIEW:
                offset, retries, first = payload
                req = int(c.requested[i])
                wish = req if offset == 0 else shift_days(req, offset, t.spec.zone)
            else:
                booked, first = payload, False
                wish = shift_days(booked.start, int(c.reschedule_days[i]), t.spec.zone)
            status, body, ms = await self._availability(t, sid, wish)
            starts = [_posix(s["start"]) for s in body["slots"]] if status == 200 else []
            outcome = ("ok" if starts else "no_slot") if status == 200 else _outcome(status, body)
            reason = None if starts else ("no_slot" if status == 200 else _reason(body))
            self._row(
                t, i, step, (wish, None, None, None, None, None, outcome, None, reason), status, ms
            )
            if first and self.arrived:
                self.arrived(1)
            if step == Step.RESCHEDULE_VIEW:
                if starts:
                    self.push(
                        at + int(c.browse_s[i]),
                        k,
                        Step.RESCHEDULE,
                        i,
                        (payload, nearest(starts, wish), wish),
                    )
                return
            nxt = after_view(c, i, at, bool(starts), offset, retries)
            if nxt is not None and nxt[1] == Step.HOLD:
                self.push(nxt[0], k, Step.HOLD, i, (nearest(starts, wish), wish, offset, retries))
            elif nxt is not None:
                self.push(nxt[0], k, Step.VIEW, i, (nxt[2], nxt[3], False))
        elif step == Step.HOLD:
            start, wish, offset, retries = payload
            slow = int(c.think_s[i]) > HOLD_TTL_S
            body_in: dict[str, Any] = {"service_id": sid, "start": _iso(start)}
            if slow:
                body_in["ttl_seconds"] = SHORT_TTL_S
            status, body, ms = await self._call(t, "POST", "/v1/holds", json=body_in)
            held = status == 201
            rids = tuple(r["resource_id"] for r in body["resources"]) if held else None
            hold_id = body["id"] if held else None
            outcome = "ok" if held else _outcome(status, body)
            layer = "hold" if outcome == "conflict" else None
            self._row(
                t,
                i,
                step,
                (
                    wish,
                    start,
                    start + duration,
                    rids,
                    hold_id,
                    None,
                    outcome,
                    layer,
                    None if held else _reason(body),
                ),
                status,
                ms,
            )
            nxt = after_hold(c, i, at, held, outcome in ("conflict", "capacity"), offset, retries)
            if nxt is not None and held:
                hold = (hold_id, start, rids)
                if slow and nxt[1] == Step.CONFIRM:
                    self._later(SHORT_TTL_S + 1, nxt[0], k, nxt[1], i, hold)  # outlive the hold
                else:
                    self.push(nxt[0], k, nxt[1], i, hold)
            elif nxt is not None:
                self.push(nxt[0], k, Step.VIEW, i, (nxt[2], nxt[3], False))
        elif step == Step.CONFIRM:
            hold_id, start, rids = payload
            status, body, ms = await self._call(
                t,
                "POST",
                "/v1/bookings",
                json={"hold_id": hold_id, "customer": f"{t.spec.name}-c{i}"},
                headers={"Idempotency-Key": f"{self.tag}-{k}-{i}-{secrets.token_hex(4)}"},
            )
            ok = status == 201
            outcome = "ok" if ok else _outcome(status, body)
            layer = _confirm_layer(body) if outcome == "conflict" else None
            booking_id = body["id"] if ok else None
            self._row(
                t,
                i,
                step,
                (
                    None,
                    start,
                    start + duration,
                    rids,
                    hold_id,
                    booking_id,
                    outcome,
                    layer,
                    None if ok else _reason(body),
                ),
                status,
                ms,
            )
            if booking_id is not None:
                booked = Booked(booking_id, start, start + duration, rids or ())
                for when, s in after_booking(c, i, at, start, False):
                    self.push(when, k, s, i, booked)
        elif step == Step.ABANDON:
            hold_id, start, rids = payload
            status, body, ms = await self._call(t, "DELETE", f"/v1/holds/{hold_id}")
            outcome = "ok" if status == 204 else _outcome(status, body)
            self._row(
                t,
                i,
                step,
                (None, start, start + duration, rids, hold_id, None, outcome, None, "abandoned"),
                status,
                ms,
            )
        elif step == Step.CANCEL:
            booked = payload
            status, body, ms = await self._call(
                t,
                "POST",
                f"/v1/bookings/{booked.booking_id}/cancel",
                headers={"Idempotency-Key": f"{self.tag}-cancel-{booked.booking_id}"},
            )
            outcome = "ok" if status == 200 else _outcome(status, body)
            if status == 200:
                booked.active = False
            self._row(
                t,
                i,
                step,
                (
                    None,
                    booked.start,
                    booked.end,
                    booked.resource_ids,
                    None,
                    booked.booking_id,
                    outcome,
                    None,
                    None if status == 200 else _reason(body),
                ),
                status,
                ms,
            )
        elif step == Step.RESCHEDULE:
            booked, start, wish = payload
            status, body, ms = await self._call(
                t,
                "POST",
                f"/v1/bookings/{booked.booking_id}/reschedule",
                json={"start": _iso(start)},
                headers={"Idempotency-Key": f"{self.tag}-move-{booked.booking_id}"},
            )
            ok = status == 201
            outcome = "ok" if ok else _outcome(status, body)
            layer = "lock" if outcome == "conflict" else None
            rids = tuple(r["resource_id"] for r in body["resources"]) if ok else None
            new_id = body["id"] if ok else booked.booking_id
            self._row(
                t,
                i,
                step,
                (
                    wish,
                    start,
                    start + duration,
                    rids,
                    None,
                    new_id,
                    outcome,
                    layer,
                    None if ok else _reason(body),
                ),
                status,
                ms,
            )
            if ok:
                booked.active = False
                moved = Booked(new_id, start, start + duration, rids or ())
                for when, s in after_booking(c, i, at, start, True):
                    self.push(when, k, s, i, moved)
        elif step == Step.NO_SHOW:
            booked = payload
            if booked.active:
                self._row(
                    t,
                    i,
                    step,
                    (
                        None,
                        booked.start,
                        booked.end,
                        booked.resource_ids,
                        None,
                        booked.booking_id,
                        "ok",
                        None,
                        "no_show",
                    ),
                    None,
                    None,
                )

    async def _availability(self, t: Tenant, sid: str, wish: int) -> tuple[int, Any, float]:
        lo, hi = day_span(local_date(instant(wish), t.spec.zone), t.spec.zone)
        params = {"from": _iso(lo), "to": _iso(max(hi, lo + 60))}
        return await self._call(t, "GET", f"/v1/services/{sid}/availability", params=params)


def _outcome(status: int, body: Any = None) -> str:
    if status == 409:
        slug = str(body.get("type", "")) if isinstance(body, dict) else ""
        return "capacity" if slug.endswith("capacity-exceeded") else "conflict"
    if status == 410:
        return "expired"
    if 400 <= status < 500:
        return "rejected"
    return "error"


def _reason(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    why = body.get("why")
    if isinstance(why, dict) and why.get("reason"):
        return str(why["reason"])
    slug = str(body.get("type", "")).rsplit("/", 1)[-1]
    return slug.replace("-", "_") or None


def _confirm_layer(body: Any) -> str:
    """Which layer refused a confirmation: the constraint names itself, else the lock."""
    why = body.get("why") if isinstance(body, dict) else None
    return "constraint" if isinstance(why, dict) and why.get("layer") == "constraint" else "lock"


@contextlib.contextmanager
def embedded_service(workers: int = 2) -> Iterator[Target]:
    """The booking service on the embedded default servers (started if needed, migrated), as a
    child process. Servers this call started are stopped again afterwards (data kept)."""
    from service.infra import down, endpoints_for, status
    from service.migrate import migrate
    from service.server import load_secrets, running_server
    from service.settings import load_settings

    settings = load_settings()
    before = status(settings.data_dir)
    endpoints = endpoints_for(settings)
    started = [
        name
        for name, server, external in (
            ("postgres", before.postgres, settings.database_url),
            ("valkey", before.valkey, settings.redis_url),
        )
        if external is None and not server.running
    ]
    try:
        migrate(endpoints.admin_url, app_url=endpoints.app_url)
        keys = load_secrets(settings.data_dir)
        with running_server(endpoints, keys, workers=workers) as base_url:
            yield Target(base_url, keys.admin_key, endpoints.admin_url)
    finally:
        if started:
            down(settings.data_dir)


def run_service(
    seed: int,
    tenants: int,
    days: int,
    *,
    data_dir: Path,
    start: date | None = None,
    concurrency: int = 16,
    target: Target | None = None,
    run_id: str | None = None,
    kind: str = "simulate-service",
    quiet: bool = False,
) -> dict[str, Any]:
    """Replay the demand through the live service (``target``, else the embedded default)."""
    if target is None:
        with embedded_service() as embedded:
            return run_service(
                seed, tenants, days, data_dir=data_dir, start=start, concurrency=concurrency,
                target=embedded, run_id=run_id, kind=kind, quiet=quiet,
            )  # fmt: skip
    from simulation.progress import bar
    from simulation.simulate import run_id_for, runs_row

    run_id = run_id or run_id_for(kind, seed, tenants, days)
    started_at = datetime.now(UTC)
    first = start or default_start(started_at.date())
    p = period(seed, first, days)
    tag = f"{run_id} {started_at:%Y%m%dT%H%M%S}"
    specs = [tenant(seed, i, p) for i in range(tenants)]
    built: list[Tenant] = []
    with (
        httpx.Client(base_url=target.base_url, timeout=60) as client,
        bar("creating tenants", tenants, quiet=quiet) as advance,
    ):
        for spec in specs:
            made = setup_tenant(client, target.admin_key, spec, p, tag)
            built.append(
                Tenant(
                    spec,
                    customers(seed, spec, p),
                    made["tenant_id"],
                    made["headers"],
                    made["service_ids"],
                    made["ids"],
                )
            )
            advance(1)
    total = sum(len(t.demand) for t in built)
    clock = time.perf_counter()
    with bar("customers arriving", total, quiet=quiet) as advance:
        asyncio.run(_replay(target.base_url, built, concurrency, tag, advance))
    replay_s = time.perf_counter() - clock
    attempts = merge_attempts([attempts_frame(t.rows, t.spec, STRATEGY) for t in built], run_id)
    tenant_ids = [t.tenant_id for t in built]
    with psycopg.connect(target.admin_url) as conn:
        overlaps = conn.execute(OVERLAPS_SQL, (tenant_ids,)).fetchone()
        stored = conn.execute(BOOKINGS_SQL, (tenant_ids,)).fetchall()
    names = {t.tenant_id: t.spec for t in built}
    bookings = frame(
        "bookings",
        pl.DataFrame(
            [
                {
                    "run_id": run_id,
                    "tenant": names[tid].name,
                    "booking_id": bid,
                    "resource_id": rid,
                    "zone": names[tid].zone,
                    "start": s,
                    "end": e,
                    "status": "active" if status == "confirmed" else "cancelled",
                }
                for tid, bid, rid, s, e, status in stored
            ],
            schema=TABLES["bookings"],
        ),
    )
    resources = frame(
        "resources", pl.concat([resources_frame(t.spec, t.ids, run_id) for t in built])
    )
    working = frame(
        "working",
        pl.concat(
            [
                working_frame(t.spec, engine_calendars(t.spec, p, t.ids), t.ids, p, run_id)
                for t in built
            ]
        ),
    )
    summary = summarize(attempts, bookings, working, period_bounds(specs, p))
    summary["double_bookings_postgres"] = int(overlaps[0]) if overlaps else -1
    latency = attempts.filter(pl.col("latency_ms").is_not_null())["latency_ms"]
    summary["latency_p50_ms"] = round(float(latency.quantile(0.5) or 0), 2)
    summary["latency_p99_ms"] = round(float(latency.quantile(0.99) or 0), 2)
    summary["requests_per_s"] = round(latency.len() / replay_s, 1)
    params = {
        "tenants": tenants,
        "days": days,
        "start": first.isoformat(),
        "mode": "service",
        "concurrency": concurrency,
        "flash_day": (p.start + timedelta(days=p.flash_day)).isoformat(),
    }
    store = EventStore(data_dir)
    store.write(
        run_id,
        {"attempts": attempts, "bookings": bookings, "resources": resources, "working": working},
    )
    summary["double_bookings"] = double_bookings(str(store.database), run_id)
    store.write(run_id, {"runs": runs_row(run_id, kind, seed, started_at, params, summary)})
    return {
        "bench": "simulate",
        "attempts": attempts.height,
        "attempts_per_s": round(attempts.height / replay_s, 1),
        "replay_s": round(replay_s, 2),
        "mode": "service",
        "concurrency": concurrency,
        "run_id": run_id,
        "database": str(store.database),
        "summary": summary,
    }


async def _replay(
    base_url: str, tenants: list[Tenant], concurrency: int, tag: str, arrived: Callable[[int], None]
) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:
        replayer = Replayer(session, tenants, concurrency, tag)
        replayer.arrived = arrived
        await replayer.run()
