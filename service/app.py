"""The HTTP edge: Litestar routes, authentication, and the one place errors become responses.

`create_app(config)` wires everything (no globals, nothing at import time); `app_from_env()`
is the factory `slotwise serve` hands to uvicorn for each worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request, Response, Router, delete, get, post
from litestar.datastructures import State
from litestar.exceptions import (
    HTTPException,
    ImproperlyConfiguredException,
    ValidationException,
)
from litestar.openapi import OpenAPIConfig
from litestar.params import (
    FromPath,
    FromQuery,
    HeaderParameter,
    JSONBody,
    Parameter,
    QueryParameter,
)
from litestar.routes import HTTPRoute
from litestar.serialization import default_serializer
from litestar.types import HTTPResponseStartEvent, Message, Receive, Scope, Send

from engine.errors import InvalidInterval, InvalidModel, InvalidRecurrence, UnknownZone
from engine.intervals import Interval
from service import heap
from service import repository as repo
from service.audit_batch import BatchedAudit
from service.auth import Caller, bearer, is_admin, parse_token
from service.booking import STRATEGIES, BookingService, BookingStrategy, strategy_from
from service.catalog import CatalogService, valid_rrule, valid_zone
from service.db import Database, Idempotency
from service.errors import PROBLEM_BASE, InvalidInput, ServiceError, Unauthorized
from service.holds import HoldTokens, RedisHoldStore, valkey_client
from service.queue import QueueService
from service.schemas import (
    ApiKeyIn,
    AutoAssignIn,
    BookingIn,
    ExceptionIn,
    HoldExtendIn,
    HoldIn,
    QueueAssignIn,
    QueueIn,
    RescheduleIn,
    ResourceIn,
    SeriesIn,
    ServiceIn,
    TenantIn,
    WorkingHoursIn,
)
from service.settings import DEFAULT_AUTH_CACHE_SECONDS
from service.singleflight import SingleFlight

log = logging.getLogger("slotwise.service")
PROBLEM = "application/problem+json"
MAX_BODY = 256 * 1024


_ANSWER_ENCODER = msgspec.json.Encoder(enc_hook=default_serializer)


class Answer(Response[Any]):
    """A JSON object the service answers with itself (a status of its own choosing, a problem):
    the bytes, status and headers Litestar's `Response` sends, rendered once. Litestar's builds
    a header object twice over and resolves its serializer again on the way to ASGI: ~80k
    instructions of a refused hold's ~750k (callgrind). It sends only what it was given:
    `answers_fit` refuses, when the app is built, a route that would add to it."""

    __slots__ = ("_body", "_headers", "_status")

    def __init__(
        self,
        content: dict[str, Any],
        *,
        status_code: int = 200,
        media_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        if status_code < 200 or status_code in (204, 304):
            raise ValueError(f"an Answer carries a body, which a {status_code} must not")
        # Not Response.__init__: it builds the header object this class exists to avoid.
        self.status_code = self._status = status_code
        # With Litestar's serializer hook, as its `Response` would encode the content.
        self._body = _ANSWER_ENCODER.encode(content)
        self._headers = [
            *(
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in (headers or {}).items()
            ),
            (b"content-type", media_type.encode()),
            (b"content-length", str(len(self._body)).encode()),
        ]

    def to_asgi_response(  # type: ignore[override]  # the answer is its own ASGI app
        self, app: Any, request: Any, **_: Any
    ) -> Answer:
        # What a route would add is empty (`answers_fit`); its status and media type yield to
        # the answer's own, as with `Response`; its type encoders are Litestar's for Pydantic
        # types, which no answer of the service holds.
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A new start message each time: `before_send` hooks rewrite its headers.
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": self._status,
            "headers": self._headers,
        }
        await send(start)
        await send({"type": "http.response.body", "body": self._body, "more_body": False})


def answers_fit(app: Litestar) -> Litestar:
    """``app``, once it is checked that no route adds to what it answers (headers, cookies, a
    background task, an after-request hook) or answers HEAD: `Answer` would not send it."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if (
                handler.resolve_response_headers()
                or handler.resolve_response_cookies()
                or handler.background is not None
                or any(layer.after_request for layer in handler.ownership_layers)
                or "HEAD" in handler.http_methods
            ):
                raise ImproperlyConfiguredException(
                    f"{handler.handler_name} adds to its answers, which an Answer would not send"
                )
    return app


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class AppConfig:
    app_database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    admin_key: str = field(repr=False)
    hold_secret: bytes = field(repr=False)
    clock: Callable[[], datetime] = utc_now
    pool_min: int = 2
    pool_max: int = 16
    auth_cache_seconds: float = DEFAULT_AUTH_CACHE_SECONDS
    booking_strategy: BookingStrategy = "holds"  # other values: the contention study only

    def __post_init__(self) -> None:
        if len(self.admin_key) < 24 or self.admin_key in {"changeme", "admin", "secret"}:
            raise ValueError("the admin key must be a real secret of at least 24 characters")
        if self.booking_strategy not in STRATEGIES:
            raise ValueError(f"booking_strategy must be one of {', '.join(STRATEGIES)}")


# --- the caller, and the services handlers call -----------------------------------------------
class Authenticator:
    """Resolves `Authorization: Bearer` to a Caller. Keys are looked up through the database's
    security-definer function; answers are cached for ``ttl`` seconds from the lookup's read
    (`Settings.auth_cache_seconds`), which bounds how long a revoked key keeps working on
    another worker. Requests that find a key's answer missing or expired at the same moment
    share one lookup: a burst of thousands with one key would otherwise send thousands of
    identical lookups, each a transaction.

    A key in use is looked up again ahead of its answer's expiry: the first request past half
    the answer's lifetime starts the lookup and, like those after it, is answered from the
    cache meanwhile. Without that, every request of the key waited each second for a lookup
    that queued for a pooled connection behind the requests in flight (in the 10,000-attempt
    burst, thousands at a time). A refusal is not refreshed: a forged key's next request
    after its expiry waits for one lookup, as before."""

    def __init__(
        self, db: Database, admin_key: str, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.db = db
        self.admin_key = admin_key
        self.ttl = ttl
        self.clock = clock
        # By the Authorization header as sent: a repeat is answered without parsing it again.
        # (refresh after, expiry, answer), in `clock` seconds.
        self._cache: dict[str, tuple[float, float, Caller | None]] = {}
        # By (generation, header): a lookup asked for before `forget` is neither joined nor
        # cached after it, yet stays referenced here until it ends.
        self._lookups: SingleFlight[tuple[int, str], Caller | None] = SingleFlight()
        self._generation = 0  # bumped by `forget`

    async def __call__(self, header: str | None) -> Caller:
        now = self.clock()
        if header and (hit := self._cache.get(header)) and hit[1] > now:
            refresh_after, _, caller = hit
            if caller is not None and now >= refresh_after:
                # Nobody waits for it: if it fails, the answer still expires on time, and the
                # requests after that wait for a lookup of their own, which reports the failure.
                generation = self._generation
                self._lookups.start((generation, header), lambda: self._look_up(header, generation))
        else:
            token = bearer(header)
            if is_admin(token, self.admin_key):
                return Caller("admin", None, frozenset({"admin"}))
            assert header is not None, "bearer refuses a missing header"
            generation = self._generation
            caller = await self._lookups.call(
                (generation, header), lambda: self._look_up(header, generation)
            )
        if caller is None:
            raise Unauthorized("unknown or revoked API key")
        return caller

    async def _look_up(self, header: str, generation: int) -> Caller | None:
        prefix, digest = parse_token(bearer(header))
        async with self.db.transaction(None) as conn:
            read_at = self.clock()  # the answer's lifetime counts from here, not its arrival
            row = await repo.authenticate(conn, prefix, digest)
        caller = Caller(row["key_id"], row["tenant_id"], frozenset(row["scopes"])) if row else None
        if generation == self._generation:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[header] = (read_at + self.ttl / 2, read_at + self.ttl, caller)
        return caller

    def forget(self) -> None:
        """Drop every cached answer, and let no lookup already under way cache its own: it
        may have read a key this worker has just revoked."""
        self._generation += 1
        self._cache.clear()


async def authenticate(request: Request[Any, Any, State]) -> None:
    """Every /v1 route's first step (its router's `before_request`): the request id (the
    client's `X-Request-Id`, else a new one) and the caller, into the request's state, before
    its parameters and body are read, so a request without a valid key is refused as such
    whatever else is wrong with it. A hook rather than two injected dependencies: Litestar's
    injection cost a refused hold ~8% of its CPU."""
    state = request.scope["state"]
    # A new id need only be unique, not secret: Python's own generator (seeded per process from
    # the OS) rather than `secrets`, whose system call was ~1% of a refused hold's CPU.
    client_id = request.headers.get("x-request-id")
    state["request_id"] = (client_id or f"{random.getrandbits(128):032x}")[:100]
    if request.method == "OPTIONS":  # Litestar's own answer (the Allow header) needs no key
        return
    authenticator: Authenticator = request.app.state.authenticator
    state["caller"] = await authenticator(request.headers.get("authorization"))


def identity(request: Request[Any, Any, State]) -> tuple[Caller, str]:
    """The caller and request id `authenticate` put in the request's state."""
    state = request.scope["state"]
    return state["caller"], state["request_id"]


def booking(request: Request[Any, Any, State]) -> BookingService:
    service: BookingService = request.app.state.booking
    return service


def queue(request: Request[Any, Any, State]) -> QueueService:
    service: QueueService = request.app.state.queue
    return service


def catalog(request: Request[Any, Any, State]) -> CatalogService:
    service: CatalogService = request.app.state.catalog
    return service


IdemKey = Annotated[
    str | None,
    HeaderParameter(name="Idempotency-Key", required=False, max_length=200, min_length=1),
]


# A feed position: "<transaction>.<event id>", as a page's `next_after` gives it.
FeedCursor = Annotated[str, QueryParameter(pattern=r"^[0-9]{1,20}\.[0-9]{1,19}$")]


def refuse_retired_cursor(request: Request[Any, Any, State]) -> None:
    """The feeds paged by `after_id` once. Ignored, it would hand an old client the first
    page again and again; refused, it says what replaced it."""
    if "after_id" in request.query_params:
        raise InvalidInput(
            "after_id is retired: pass the previous page's next_after as after",
            field="after_id",
        )


def idem(key: str | None, request: Request[Any, Any, State], body: Any) -> Idempotency | None:
    if key is None:  # most requests: no fingerprint to compute
        return None
    return Idempotency.of(key, request.method, request.url.path, msgspec.to_builtins(body))


def respond(result: tuple[int, Any]) -> Response[Any]:
    status, body = result
    return Answer(body, status_code=status)


def window_of(start: datetime, end: datetime, field_name: str = "to") -> Interval:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidInput("from and to need a UTC offset", field=field_name)
    try:
        return Interval(start.astimezone(UTC), end.astimezone(UTC))
    except InvalidInterval as exc:
        raise InvalidInput(str(exc), field=field_name) from exc


def instant(value: datetime, field_name: str) -> datetime:
    if value.tzinfo is None:
        raise InvalidInput(f"{field_name} needs a UTC offset", field=field_name)
    return value.astimezone(UTC)


# --- routes -----------------------------------------------------------------------------------
@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@get("/openapi.json", sync_to_thread=False, include_in_schema=False)
def openapi_json(request: Request[Any, Any, State]) -> dict[str, Any]:
    schema: dict[str, Any] = request.app.openapi_schema.to_schema()
    return schema


@post("/v1/tenants", status_code=201)
async def create_tenant(
    data: JSONBody[TenantIn],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Create a tenant and its first API key (admin key only). The key's token is shown once:
    a retry with the same Idempotency-Key returns the same tenant and key id, without it."""
    caller, request_id = identity(request)
    return respond(
        await catalog(request).create_tenant(
            caller, msgspec.to_builtins(data), idem(idempotency_key, request, data), request_id
        )
    )


@get("/v1/tenant")
async def get_tenant(request: Request[Any, Any, State]) -> dict[str, Any]:
    """The calling key's tenant."""
    caller, request_id = identity(request)
    return await catalog(request).get_tenant(caller, request_id)


@post("/v1/api-keys", status_code=201)
async def create_api_key(
    data: JSONBody[ApiKeyIn],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Create a scoped API key (scope `manage`). The token is shown once."""
    caller, request_id = identity(request)
    return respond(
        await catalog(request).create_key(
            caller, data.name, data.scopes, idem(idempotency_key, request, data), request_id
        )
    )


@get("/v1/api-keys")
async def list_api_keys(request: Request[Any, Any, State]) -> list[dict[str, Any]]:
    """The tenant's API keys (never their secrets)."""
    caller, request_id = identity(request)
    return await catalog(request).list_keys(caller, request_id)


@delete("/v1/api-keys/{key_id:uuid}", status_code=204)
async def revoke_api_key(
    key_id: FromPath[uuid.UUID],
    request: Request[Any, Any, State],
) -> None:
    """Revoke a key; it stops working within the auth cache's lifetime
    (SLOTWISE_AUTH_CACHE_SECONDS, 1 s unless set)."""
    caller, request_id = identity(request)
    await catalog(request).revoke_key(caller, str(key_id), request_id)
    request.app.state.authenticator.forget()


@post("/v1/resources", status_code=201)
async def create_resource(
    data: JSONBody[ResourceIn],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Create a staff member, room or equipment, with working hours in its own zone."""
    caller, request_id = identity(request)
    body = msgspec.to_builtins(data)
    body["working_hours"] = [
        {"starts_local": h.starts_local, "duration_minutes": h.duration_minutes, "rrule": h.rrule}
        for h in data.working_hours
    ]
    return respond(
        await catalog(request).create_resource(
            caller, body, idem(idempotency_key, request, data), request_id
        )
    )


@get("/v1/resources")
async def list_resources(request: Request[Any, Any, State]) -> list[dict[str, Any]]:
    """The tenant's resources."""
    caller, request_id = identity(request)
    return await catalog(request).list_resources(caller, request_id)


@get("/v1/resources/{resource_id:uuid}")
async def get_resource(
    resource_id: FromPath[uuid.UUID],
    request: Request[Any, Any, State],
) -> dict[str, Any]:
    """One resource with its working hours and exceptions."""
    caller, request_id = identity(request)
    return await catalog(request).get_resource(caller, str(resource_id), request_id)


@post("/v1/resources/{resource_id:uuid}/working-hours", status_code=201)
async def add_working_hours(
    resource_id: FromPath[uuid.UUID],
    data: JSONBody[WorkingHoursIn],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Add a recurring working-hours rule (local wall time in the resource's zone)."""
    caller, request_id = identity(request)
    body = {
        "starts_local": data.starts_local,
        "duration_minutes": data.duration_minutes,
        "rrule": data.rrule,
    }
    return respond(
        await catalog(request).add_working_hours(
            caller, str(resource_id), body, idem(idempotency_key, request, data), request_id
        )
    )


@post("/v1/resources/{resource_id:uuid}/exceptions", status_code=201)
async def add_exception(
    resource_id: FromPath[uuid.UUID],
    data: JSONBody[ExceptionIn],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Add time off or external busy time."""
    caller, request_id = identity(request)
    interval = window_of(data.start, data.end, "end")
    return respond(
        await catalog(request).add_exception(
            caller,
            str(resource_id),
            data.kind,
            interval,
            data.note,
            idem(idempotency_key, request, data),
            request_id,
        )
    )


@delete("/v1/resources/{resource_id:uuid}/exceptions/{exception_id:uuid}", status_code=204)
async def delete_exception(
    resource_id: FromPath[uuid.UUID],
    exception_id: FromPath[uuid.UUID],
    request: Request[Any, Any, State],
) -> None:
    """Remove an exception."""
    caller, request_id = identity(request)
    await catalog(request).delete_exception(caller, str(resource_id), str(exception_id), request_id)


@post("/v1/services", status_code=201)
async def create_service(
    data: JSONBody[ServiceIn],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Create a service: duration, buffers, slot step, requirements and rules."""
    caller, request_id = identity(request)
    return respond(
        await catalog(request).create_service(
            caller, msgspec.to_builtins(data), idem(idempotency_key, request, data), request_id
        )
    )


@get("/v1/services")
async def list_services(request: Request[Any, Any, State]) -> list[dict[str, Any]]:
    """The tenant's services."""
    caller, request_id = identity(request)
    return await catalog(request).list_services(caller, request_id)


@get("/v1/services/{service_id:uuid}")
async def get_service(
    service_id: FromPath[uuid.UUID],
    request: Request[Any, Any, State],
) -> dict[str, Any]:
    """One service."""
    caller, request_id = identity(request)
    return await catalog(request).get_service(caller, str(service_id), request_id)


@get("/v1/services/{service_id:uuid}/availability")
async def get_availability(
    service_id: FromPath[uuid.UUID],
    request: Request[Any, Any, State],
    start: Annotated[datetime, QueryParameter(name="from")],
    end: Annotated[datetime, QueryParameter(name="to")],
    zone: FromQuery[str | None] = None,
    resource_ids: Annotated[list[uuid.UUID] | None, QueryParameter(name="resource_id")] = None,
) -> dict[str, Any]:
    """Bookable starts in [from, to); `local_start` is shown in `zone` (default: the tenant's).
    Live holds of other callers hide their time."""
    caller, request_id = identity(request)
    if zone is not None:
        valid_zone(zone)
    pins = [str(r) for r in resource_ids or []]
    return await booking(request).availability(
        caller, str(service_id), window_of(start, end), zone, pins, request_id
    )


@get("/v1/services/{service_id:uuid}/why-not")
async def why_not(
    service_id: FromPath[uuid.UUID],
    request: Request[Any, Any, State],
    start: FromQuery[datetime],
    resource_ids: Annotated[list[uuid.UUID] | None, QueryParameter(name="resource_id")] = None,
) -> dict[str, Any]:
    """Why one start is (not) bookable: `reason` is available, outside_hours, conflict,
    capacity_reached, lead_time, max_advance, blackout, off_grid, no_qualified_resource, or
    no_joint_assignment."""
    caller, request_id = identity(request)
    pins = [str(r) for r in resource_ids or []]
    return await booking(request).why_not(
        caller, str(service_id), instant(start, "start"), pins, request_id
    )


@post("/v1/holds", status_code=201)
async def create_hold(
    data: JSONBody[HoldIn],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Hold a slot on every resource it needs, atomically, for `ttl_seconds` (default 300).
    `degraded: true` means the hold store was down: confirmation still works and stays safe."""
    caller, request_id = identity(request)
    ttl = timedelta(seconds=data.ttl_seconds) if data.ttl_seconds else None
    body = await booking(request).create_hold(
        caller,
        data.service_id,
        instant(data.start, "start"),
        data.resource_ids,
        ttl,
        idem(idempotency_key, request, data),
        request_id,
    )
    return Answer(body, status_code=201)


@post("/v1/holds/{hold_id:str}/extend", status_code=200)
async def extend_hold(
    hold_id: FromPath[str],
    data: JSONBody[HoldExtendIn],
    request: Request[Any, Any, State],
) -> dict[str, Any]:
    """Extend a live hold; returns the hold with its new id and expiry."""
    caller, request_id = identity(request)
    ttl = timedelta(seconds=data.ttl_seconds) if data.ttl_seconds else None
    return await booking(request).extend_hold(caller, hold_id, ttl, request_id)


@delete("/v1/holds/{hold_id:str}", status_code=204)
async def release_hold(
    hold_id: FromPath[str],
    request: Request[Any, Any, State],
) -> None:
    """Release a hold early."""
    caller, request_id = identity(request)
    await booking(request).release_hold(caller, hold_id, request_id)


@post("/v1/bookings", status_code=201)
async def create_booking(
    data: JSONBody[BookingIn],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Confirm a hold (`hold_id`) or book directly (`service_id` + `start`). 409 with the
    conflicting resource and interval when the slot is taken."""
    caller, request_id = identity(request)
    return respond(
        await booking(request).confirm(
            caller,
            hold_id=data.hold_id,
            service_id=data.service_id,
            start=instant(data.start, "start") if data.start else None,
            pins=data.resource_ids,
            customer=data.customer,
            idem=idem(idempotency_key, request, data),
            request_id=request_id,
        )
    )


@get("/v1/bookings")
async def list_bookings(
    request: Request[Any, Any, State],
    start: Annotated[datetime, QueryParameter(name="from")],
    end: Annotated[datetime, QueryParameter(name="to")],
    status: FromQuery[str | None] = None,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """Bookings overlapping [from, to)."""
    caller, request_id = identity(request)
    if status not in (None, "confirmed", "cancelled"):
        raise InvalidInput("status is confirmed or cancelled", field="status")
    return await booking(request).list_bookings(
        caller, window_of(start, end), status, limit, request_id
    )


@get("/v1/bookings/{booking_id:uuid}")
async def get_booking(
    booking_id: FromPath[uuid.UUID],
    request: Request[Any, Any, State],
) -> dict[str, Any]:
    """One booking."""
    caller, request_id = identity(request)
    return await booking(request).get_booking(caller, str(booking_id), request_id)


@post("/v1/bookings/{booking_id:uuid}/cancel", status_code=200)
async def cancel_booking(
    booking_id: FromPath[uuid.UUID],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Cancel a booking (subject to the cancellation cut-off); cancelling twice is a no-op.
    `queue_offers` lists the waiting queue entries that now fit the freed time, best first;
    the best one's slot is held for the queue for 15 minutes."""
    caller, request_id = identity(request)
    status, body = await booking(request).cancel(
        caller, str(booking_id), idem(idempotency_key, request, {}), request_id
    )
    offers = await queue(request).offer_freed(caller, body, request_id)
    return Answer({**body, "queue_offers": offers}, status_code=status)


@post("/v1/bookings/{booking_id:uuid}/reschedule", status_code=201)
async def reschedule_booking(
    booking_id: FromPath[uuid.UUID],
    data: JSONBody[RescheduleIn],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Move a booking atomically: the old slot is kept unless the new one is booked."""
    caller, request_id = identity(request)
    return respond(
        await booking(request).reschedule(
            caller,
            str(booking_id),
            instant(data.start, "start"),
            data.resource_ids,
            idem(idempotency_key, request, data),
            request_id,
        )
    )


@post("/v1/series", status_code=201)
async def create_series(
    data: JSONBody[SeriesIn],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Book a recurring series (RRULE in the series' zone): every occurrence in the horizon is
    checked and booked on the same resources, or none is."""
    caller, request_id = identity(request)
    if data.starts_local.tzinfo is not None:
        raise InvalidInput("starts_local is a local wall time: no offset", field="starts_local")
    if data.zone is not None:
        valid_zone(data.zone)
    valid_rrule(data.rrule)  # COUNT/INTERVAL <= 0 would book one occurrence or crash (a 500)
    horizon = timedelta(days=data.horizon_days) if data.horizon_days else None
    return respond(
        await booking(request).create_series(
            caller,
            service_id=data.service_id,
            starts_local=data.starts_local,
            zone=data.zone,
            rrule=data.rrule,
            pins=data.resource_ids,
            customer=data.customer,
            horizon=horizon,
            idem=idem(idempotency_key, request, data),
            request_id=request_id,
        )
    )


@get("/v1/series/{series_id:uuid}")
async def get_series(
    series_id: FromPath[uuid.UUID],
    request: Request[Any, Any, State],
) -> dict[str, Any]:
    """A series with its occurrences."""
    caller, request_id = identity(request)
    return await booking(request).get_series(caller, str(series_id), request_id)


@post("/v1/series/{series_id:uuid}/cancel", status_code=200)
async def cancel_series(
    series_id: FromPath[uuid.UUID],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Cancel a series and its occurrences that have not started."""
    caller, request_id = identity(request)
    return respond(
        await booking(request).cancel_series(
            caller, str(series_id), idem(idempotency_key, request, {}), request_id
        )
    )


@get("/v1/audit")
async def audit_feed(
    request: Request[Any, Any, State],
    after: FeedCursor = "0.0",
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The tenant's audit trail (every read and write), oldest first: pass each page's
    `next_after` as `after` for the next. An event shows once the transactions older than
    its own have all ended, so a client paging along never skips one."""
    caller, request_id = identity(request)
    refuse_retired_cursor(request)
    return await catalog(request).audit_feed(caller, after, limit, False, None, request_id)


@get("/v1/activity")
async def activity_feed(
    request: Request[Any, Any, State],
    after: FeedCursor = "0.0",
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    entity: Annotated[str | None, Parameter(max_length=40)] = None,
) -> dict[str, Any]:
    """What happened: appointments, staff and service changes, queue assignments (no reads),
    oldest first, paged like `/v1/audit`; `entity` narrows it (booking, resource,
    queue_entry...)."""
    caller, request_id = identity(request)
    refuse_retired_cursor(request)
    return await catalog(request).audit_feed(caller, after, limit, True, entity, request_id)


@get("/v1/capacity")
async def get_capacity(
    request: Request[Any, Any, State],
    first: Annotated[date, QueryParameter(name="from")],
    last: Annotated[date, QueryParameter(name="to")],
    resource_ids: Annotated[list[uuid.UUID] | None, QueryParameter(name="resource_id")] = None,
) -> list[dict[str, Any]]:
    """Booked and remaining daily capacity per resource (default: all staff) and local day."""
    caller, request_id = identity(request)
    ids = [str(r) for r in resource_ids or []]
    return await booking(request).capacity(caller, first, last, ids, request_id)


# --- the waiting queue ------------------------------------------------------------------------
@post("/v1/queue", status_code=201)
async def enqueue(
    data: JSONBody[QueueIn],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Accept an appointment without a time or resources: a window of acceptable starts and a
    priority. It waits until assigned by hand or by auto-assign."""
    caller, request_id = identity(request)
    body = {
        "service_id": data.service_id,
        "earliest": instant(data.earliest, "earliest"),
        "latest": instant(data.latest, "latest"),
        "priority": data.priority,
        "customer": data.customer,
    }
    return respond(
        await queue(request).enqueue(caller, body, idem(idempotency_key, request, data), request_id)
    )


@get("/v1/queue")
async def list_queue(
    request: Request[Any, Any, State],
    status: Annotated[str, Parameter(pattern="^(waiting|assigned|withdrawn)$")] = "waiting",
    service_id: FromQuery[uuid.UUID | None] = None,
    order: Annotated[str, Parameter(pattern="^(priority|age)$")] = "priority",
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    offset: Annotated[int, Parameter(ge=0)] = 0,
) -> dict[str, Any]:
    """The queue, by priority (highest, then oldest) or by age; paged by `offset`."""
    caller, request_id = identity(request)
    sid = str(service_id) if service_id else None
    return await queue(request).list_entries(caller, status, sid, order, limit, offset, request_id)


@get("/v1/queue/{entry_id:uuid}")
async def get_queue_entry(
    entry_id: FromPath[uuid.UUID],
    request: Request[Any, Any, State],
) -> dict[str, Any]:
    """One queue entry, with why the last auto-assign left it waiting."""
    caller, request_id = identity(request)
    return await queue(request).get(caller, str(entry_id), request_id)


@post("/v1/queue/{entry_id:uuid}/assign", status_code=201)
async def assign_queue_entry(
    entry_id: FromPath[uuid.UUID],
    data: JSONBody[QueueAssignIn],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Assign one entry by hand: a start in its window, optionally the resources; validated
    and booked like any booking (409 if taken, 422 naming a missing skill)."""
    caller, request_id = identity(request)
    return respond(
        await queue(request).assign_one(
            caller,
            str(entry_id),
            instant(data.start, "start"),
            data.resource_ids,
            idem(idempotency_key, request, data),
            request_id,
        )
    )


@post("/v1/queue/{entry_id:uuid}/withdraw", status_code=200)
async def withdraw_queue_entry(
    entry_id: FromPath[uuid.UUID],
    request: Request[Any, Any, State],
    idempotency_key: IdemKey = None,
) -> Response[Any]:
    """Take an entry off the queue."""
    caller, request_id = identity(request)
    return respond(
        await queue(request).withdraw(
            caller, str(entry_id), idem(idempotency_key, request, {}), request_id
        )
    )


@post("/v1/queue/auto-assign", status_code=200)
async def auto_assign_queue(
    data: JSONBody[AutoAssignIn],
    request: Request[Any, Any, State],
) -> dict[str, Any]:
    """Assign the waiting queue (or the entries overlapping [from, to), or one service's) with
    the CP-SAT model — most entries first, then priority, then balanced load — and book each
    placement through the locked path. Entries left waiting come with a reason."""
    caller, request_id = identity(request)
    window = None
    if data.start is not None or data.end is not None:
        if data.start is None or data.end is None:
            raise InvalidInput("send both from and to, or neither", field="to")
        window = window_of(data.start, data.end)
    return await queue(request).auto_assign(
        caller, window, data.service_id, data.time_limit_seconds, request_id
    )


# --- errors: the one place they become HTTP -------------------------------------------------
def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[Any]:
    body = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Answer(body, status_code=status, media_type=PROBLEM, headers=headers)


def on_service_error(_: Request[Any, Any, State], exc: ServiceError) -> Response[Any]:
    headers = None if exc.retry_after_s is None else {"Retry-After": str(exc.retry_after_s)}
    return Answer(exc.problem(), status_code=exc.status, media_type=PROBLEM, headers=headers)


def on_engine_error(_: Request[Any, Any, State], exc: ValueError) -> Response[Any]:
    return problem(422, "invalid-input", "Invalid input", str(exc))


def on_http_error(_: Request[Any, Any, State], exc: HTTPException) -> Response[Any]:
    slugs = {400: "bad-request", 404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and exc.extra:
        extra["errors"] = exc.extra
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    # The exception's headers too: a 405 names the methods the path allows (`Allow`).
    slug = slugs.get(exc.status_code, "http-error")
    return problem(exc.status_code, slug, detail, detail, exc.headers, **extra)


def on_unexpected(_: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    log.exception("unhandled error", exc_info=exc)
    return problem(
        500, "internal", "Internal error", "an unexpected error occurred; nothing was acknowledged"
    )


async def add_request_id(message: Message, scope: Scope) -> None:
    if message["type"] == "http.response.start":
        rid = scope.get("state", {}).get("request_id")
        if rid:
            message.setdefault("headers", [])
            headers = list(message["headers"])
            headers.append((b"x-request-id", rid.encode()))
            message["headers"] = headers


# Every route behind an API key: `authenticate` runs before each of them.
API_ROUTES = [
    create_tenant,
    get_tenant,
    create_api_key,
    list_api_keys,
    revoke_api_key,
    create_resource,
    list_resources,
    get_resource,
    add_working_hours,
    add_exception,
    delete_exception,
    create_service,
    list_services,
    get_service,
    get_availability,
    why_not,
    create_hold,
    extend_hold,
    release_hold,
    create_booking,
    list_bookings,
    get_booking,
    cancel_booking,
    reschedule_booking,
    create_series,
    get_series,
    cancel_series,
    audit_feed,
    activity_feed,
    get_capacity,
    enqueue,
    list_queue,
    get_queue_entry,
    assign_queue_entry,
    withdraw_queue_entry,
    auto_assign_queue,
]


# --- wiring -----------------------------------------------------------------------------------
def create_app(config: AppConfig) -> Litestar:
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        db = await Database.open(config.app_database_url, config.pool_min, config.pool_max)
        # The batched audit writer's own connection: in a rush, thousands of requests queue
        # for the pool, and a batch queued behind them kept every request it answers waiting.
        audit_db = await Database.open(config.app_database_url, 1, 1)
        valkey = valkey_client(config.redis_url)
        holds = RedisHoldStore(valkey)
        app.state.authenticator = Authenticator(db, config.admin_key, config.auth_cache_seconds)
        app.state.booking = BookingService(
            db,
            holds,
            HoldTokens(config.hold_secret),
            config.clock,
            BatchedAudit(audit_db),
            strategy=config.booking_strategy,
        )
        app.state.catalog = CatalogService(db, config.clock)
        app.state.queue = QueueService(app.state.booking)
        heap.settle()
        collector = asyncio.create_task(heap.collect_on_growth())
        try:
            yield
        finally:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)  # whatever ended it
            await valkey.aclose()
            await audit_db.close()
            await db.close()

    app = Litestar(
        route_handlers=[
            healthz,
            openapi_json,
            Router("/", route_handlers=API_ROUTES, before_request=authenticate),
        ],
        exception_handlers={
            ServiceError: on_service_error,
            UnknownZone: on_engine_error,
            InvalidRecurrence: on_engine_error,
            InvalidInterval: on_engine_error,
            InvalidModel: on_engine_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
        openapi_config=OpenAPIConfig(title="Slotwise booking API", version="1.0.0", path="/docs"),
        lifespan=[lifespan],
        before_send=[add_request_id],
        request_max_body_size=MAX_BODY,
        debug=False,
    )
    return answers_fit(app)


def app_from_env() -> Litestar:
    """The app for `slotwise serve` workers, configured from the environment it sets."""
    env = os.environ
    pool_size = int(env["SLOTWISE_POOL_SIZE"])
    return create_app(
        AppConfig(
            app_database_url=env["SLOTWISE_APP_DATABASE_URL"],
            redis_url=env["SLOTWISE_REDIS_URL"],
            admin_key=env["SLOTWISE_ADMIN_KEY"],
            hold_secret=bytes.fromhex(env["SLOTWISE_HOLD_SECRET"]),
            # A served worker opens its whole pool at start: one that grows during a rush
            # connects (a backend started, a SCRAM exchange) while requests wait for it.
            pool_min=pool_size,
            pool_max=pool_size,
            booking_strategy=strategy_from(env.get("SLOTWISE_BOOKING_STRATEGY", "holds")),
            auth_cache_seconds=float(env["SLOTWISE_AUTH_CACHE_SECONDS"]),
        )
    )


def new_secret() -> str:
    return secrets.token_hex(32)
