"""Request bodies. msgspec validates them (types, ranges, unknown fields) before any handler
runs; a violation is a 400 problem response naming the field."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

Name = Annotated[str, Meta(min_length=1, max_length=200)]
Zone = Annotated[str, Meta(min_length=1, max_length=64)]
Instant = Annotated[datetime, Meta(tz=True)]  # an offset is required: instants are unambiguous
Minutes = Annotated[int, Meta(ge=1, le=1440)]
BufferMinutes = Annotated[int, Meta(ge=0, le=720)]
Id = Annotated[str, Meta(pattern=r"^[0-9a-fA-F-]{36}$")]
Customer = Annotated[str, Meta(max_length=200)]
Rrule = Annotated[str, Meta(min_length=6, max_length=500)]


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class TenantIn(Strict):
    name: Name
    zone: Zone
    rules: dict[str, Any] = msgspec.field(default_factory=dict)


class ApiKeyIn(Strict):
    name: Annotated[str, Meta(max_length=200)] = ""
    scopes: list[Literal["read", "book", "manage"]] = msgspec.field(
        default_factory=lambda: ["read", "book"]
    )


class WorkingHoursIn(Strict):
    starts_local: datetime  # a naive local wall time in the resource's zone
    duration_minutes: Minutes
    rrule: Rrule | None = None


class ResourceIn(Strict):
    kind: Literal["staff", "room", "equipment"]
    name: Name
    zone: Zone
    skills: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=50)
    ] = msgspec.field(default_factory=list)
    daily_capacity: Annotated[int, Meta(ge=0, le=1000)] | None = None
    daily_minutes: Annotated[int, Meta(ge=0, le=1440)] | None = None
    working_hours: Annotated[list[WorkingHoursIn], Meta(max_length=50)] = msgspec.field(
        default_factory=list
    )


class ExceptionIn(Strict):
    kind: Literal["time_off", "external"]
    start: Instant
    end: Instant
    note: Annotated[str, Meta(max_length=500)] = ""


class RequirementIn(Strict):
    kind: Literal["staff", "room", "equipment"]
    skills: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=20)
    ] = msgspec.field(default_factory=list)
    count: Annotated[int, Meta(ge=1, le=10)] = 1


class ServiceIn(Strict):
    name: Name
    duration_minutes: Minutes
    requirements: Annotated[list[RequirementIn], Meta(min_length=1, max_length=10)]
    buffer_before_minutes: BufferMinutes = 0
    buffer_after_minutes: BufferMinutes = 0
    step_minutes: Minutes = 15
    rules: dict[str, Any] = msgspec.field(default_factory=dict)


class HoldIn(Strict):
    service_id: Id
    start: Instant
    resource_ids: Annotated[list[Id], Meta(max_length=20)] = msgspec.field(default_factory=list)
    ttl_seconds: Annotated[int, Meta(ge=1, le=86400)] | None = None


class HoldExtendIn(Strict):
    ttl_seconds: Annotated[int, Meta(ge=1, le=86400)] | None = None


class BookingIn(Strict):
    hold_id: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None
    service_id: Id | None = None
    start: Instant | None = None
    resource_ids: Annotated[list[Id], Meta(max_length=20)] = msgspec.field(default_factory=list)
    customer: Customer = ""


class RescheduleIn(Strict):
    start: Instant
    resource_ids: Annotated[list[Id], Meta(max_length=20)] = msgspec.field(default_factory=list)


class SeriesIn(Strict):
    service_id: Id
    starts_local: datetime
    rrule: Rrule
    zone: Zone | None = None
    resource_ids: Annotated[list[Id], Meta(max_length=20)] = msgspec.field(default_factory=list)
    customer: Customer = ""
    horizon_days: Annotated[int, Meta(ge=1, le=730)] | None = None


class QueueIn(Strict):
    service_id: Id
    earliest: Instant
    latest: Instant
    priority: Annotated[int, Meta(ge=-1000, le=1000)] = 0
    customer: Customer = ""


class QueueAssignIn(Strict):
    start: Instant
    resource_ids: Annotated[list[Id], Meta(max_length=20)] = msgspec.field(default_factory=list)


class AutoAssignIn(Strict):
    start: Instant | None = msgspec.field(default=None, name="from")
    end: Instant | None = msgspec.field(default=None, name="to")
    service_id: Id | None = None
    time_limit_seconds: Annotated[float, Meta(ge=0.5, le=60)] = 8.0
