"""Scheduling value types: resources, services and their requirements, rules, busy time."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum

from engine.errors import InvalidModel
from engine.intervals import Interval
from engine.timezones import zone


class ResourceKind(StrEnum):
    STAFF = "staff"
    ROOM = "room"
    EQUIPMENT = "equipment"


@dataclass(frozen=True, slots=True)
class Resource:
    """A bookable thing with its own zone, skills and daily limits."""

    id: str
    kind: ResourceKind
    zone: str
    skills: frozenset[str] = frozenset()
    daily_capacity: int | None = None  # appointments per local day in `zone`
    daily_minutes: int | None = None  # booked minutes per local day in `zone`

    def __post_init__(self) -> None:
        zone(self.zone)
        if self.daily_capacity is not None and self.daily_capacity < 0:
            raise InvalidModel("daily_capacity must be >= 0")
        if self.daily_minutes is not None and self.daily_minutes < 0:
            raise InvalidModel("daily_minutes must be >= 0")


@dataclass(frozen=True, slots=True)
class Requirement:
    """``count`` distinct resources of ``kind`` holding every skill in ``skills``."""

    kind: ResourceKind
    skills: frozenset[str] = frozenset()
    count: int = 1
    resource_ids: frozenset[str] | None = None  # the client asked for these resources only

    def __post_init__(self) -> None:
        if self.count < 1:
            raise InvalidModel("a requirement needs count >= 1")

    def admits(self, resource: Resource) -> bool:
        """Specialization: right kind, every required skill, and (if pinned) the right id."""
        return (
            resource.kind == self.kind
            and self.skills <= resource.skills
            and (self.resource_ids is None or resource.id in self.resource_ids)
        )

    def missing_skills(self, resource: Resource) -> frozenset[str]:
        return self.skills - resource.skills


@dataclass(frozen=True, slots=True)
class Service:
    """What a customer books: how long, with which buffers, on which grid, needing what."""

    id: str
    duration: timedelta
    requirements: tuple[Requirement, ...]
    buffer_before: timedelta = timedelta(0)
    buffer_after: timedelta = timedelta(0)
    step: timedelta = timedelta(minutes=15)

    def __post_init__(self) -> None:
        if self.duration <= timedelta(0):
            raise InvalidModel("service duration must be positive")
        if self.step <= timedelta(0):
            raise InvalidModel("slot step must be positive")
        if self.buffer_before < timedelta(0) or self.buffer_after < timedelta(0):
            raise InvalidModel("buffers must be >= 0")
        if not self.requirements:
            raise InvalidModel("a service needs at least one requirement")

    def footprint(self, start: datetime) -> Interval:
        """The interval a booking at ``start`` occupies on each resource (buffers included)."""
        return Interval(start - self.buffer_before, start + self.duration + self.buffer_after)


@dataclass(frozen=True, slots=True)
class Rules:
    """Business rules of a tenant or service. ``zone`` is where dates (blackouts, the slot
    grid's local midnights) are read."""

    zone: str = "UTC"
    min_lead: timedelta = timedelta(0)
    max_advance: timedelta | None = None
    blackout_dates: frozenset[date] = frozenset()
    cancel_cutoff: timedelta = timedelta(0)
    reschedule_cutoff: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        zone(self.zone)
        if self.min_lead < timedelta(0) or self.cancel_cutoff < timedelta(0):
            raise InvalidModel("lead time and cut-offs must be >= 0")
        if self.reschedule_cutoff < timedelta(0):
            raise InvalidModel("reschedule cut-off must be >= 0")
        if self.max_advance is not None and self.max_advance <= self.min_lead:
            raise InvalidModel("max_advance must exceed min_lead")


class BusyKind(StrEnum):
    BOOKING = "booking"
    HOLD = "hold"
    EXTERNAL = "external"
    TIME_OFF = "time_off"


@dataclass(frozen=True, slots=True)
class Busy:
    """Time a resource cannot give: a booking (buffers included), a hold, time off..."""

    interval: Interval
    ref: str
    kind: BusyKind = BusyKind.BOOKING
    # Daily capacity counts bookings by their appointment start and unbuffered minutes.
    appointment_start: datetime | None = field(default=None, compare=False)
    minutes: int | None = field(default=None, compare=False)

    @property
    def counted_start(self) -> datetime:
        return self.appointment_start or self.interval.start

    @property
    def counted_minutes(self) -> int:
        if self.minutes is not None:
            return self.minutes
        return int(self.interval.duration.total_seconds() // 60)
