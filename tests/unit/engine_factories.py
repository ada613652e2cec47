"""Small builders shared by the engine tests."""

from datetime import UTC, datetime, timedelta

from engine.calendar import ResourceCalendar
from engine.intervals import Interval
from engine.model import Busy, BusyKind, Resource, ResourceKind
from engine.recurrence import Series

WEEKDAYS = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def staff(rid: str, zone: str = "America/New_York", skills: str = "", **limits: int) -> Resource:
    return Resource(rid, ResourceKind.STAFF, zone, frozenset(skills.split()), **limits)


def room(rid: str, zone: str = "America/New_York") -> Resource:
    return Resource(rid, ResourceKind.ROOM, zone)


def nine_to_five(zone: str, rule: str = WEEKDAYS) -> Series:
    return Series(zone, datetime(2024, 1, 1, 9), timedelta(hours=8), rule)


def calendars(*resources: Resource, rule: str = WEEKDAYS) -> dict[str, ResourceCalendar]:
    return {r.id: ResourceCalendar(r, [nine_to_five(r.zone, rule)]) for r in resources}


def booking(
    start: datetime, minutes: int, ref: str = "b", kind: BusyKind = BusyKind.BOOKING
) -> Busy:
    return Busy(Interval(start, start + timedelta(minutes=minutes)), ref, kind)
