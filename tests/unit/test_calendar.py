from datetime import date, timedelta

from engine.intervals import Interval
from engine.model import Busy, BusyKind
from tests.unit.engine_factories import booking, calendars, staff, utc

NY = "America/New_York"


def test_free_time_is_working_hours_minus_busy() -> None:
    cal = calendars(staff("a"))["a"]
    cal.add(booking(utc(2024, 5, 6, 15), 60))  # 11:00-12:00 EDT
    cal.add(booking(utc(2024, 5, 6, 20), 120, kind=BusyKind.TIME_OFF))  # 16:00-18:00 EDT
    free = cal.free(Interval(utc(2024, 5, 6), utc(2024, 5, 7)))
    assert free == [
        Interval(utc(2024, 5, 6, 13), utc(2024, 5, 6, 15)),
        Interval(utc(2024, 5, 6, 16), utc(2024, 5, 6, 20)),
    ]
    assert cal.free(Interval(utc(2024, 5, 4), utc(2024, 5, 6))) == []  # weekend


def test_capacity_counts_bookings_by_local_day_of_the_resource() -> None:
    cal = calendars(staff("a", "Pacific/Auckland", daily_capacity=1, daily_minutes=90))["a"]
    # 2024-05-06 22:00 UTC is 10:00 on 2024-05-07 in Auckland.
    entry = Busy(
        Interval(utc(2024, 5, 6, 21, 45), utc(2024, 5, 6, 23, 15)),
        "b1",
        appointment_start=utc(2024, 5, 6, 22),
        minutes=60,
    )
    cal.add(entry)
    cal.add(booking(utc(2024, 5, 6, 23, 30), 30, "hold", BusyKind.HOLD))  # holds don't count
    assert cal.load(date(2024, 5, 7)) == (1, 60)
    assert cal.load(date(2024, 5, 6)) == (0, 0)
    assert not cal.has_capacity(date(2024, 5, 7), 15)
    cal.remove(entry)
    assert cal.has_capacity(date(2024, 5, 7), 90)
    assert not cal.has_capacity(date(2024, 5, 7), 91)  # the minutes limit


def test_works_through_needs_one_stretch() -> None:
    cal = calendars(staff("a"))["a"]
    assert cal.works_through(Interval(utc(2024, 5, 6, 13), utc(2024, 5, 6, 21)))
    assert not cal.works_through(Interval(utc(2024, 5, 6, 12, 45), utc(2024, 5, 6, 14)))
    assert not cal.works_through(Interval(utc(2024, 5, 6, 20), utc(2024, 5, 7, 14)))
    assert cal.working_hours[0].duration == timedelta(hours=8)
