from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest

from engine.errors import AmbiguousLocalTime, NonexistentLocalTime, UnknownZone
from engine.timezones import (
    Disambiguation,
    day_bounds,
    is_utc,
    to_instant,
    to_local,
    transitions,
    zone,
)

C, E, L, R = (
    Disambiguation.COMPATIBLE,
    Disambiguation.EARLIER,
    Disambiguation.LATER,
    Disambiguation.RAISE,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# (zone, gap local time, instant under COMPATIBLE, instant under EARLIER)
GAPS = [
    (
        "America/New_York",
        datetime(2024, 3, 10, 2, 30),
        utc(2024, 3, 10, 7, 30),
        utc(2024, 3, 10, 6, 30),
    ),
    (
        "Europe/London",
        datetime(2024, 3, 31, 1, 30),
        utc(2024, 3, 31, 1, 30),
        utc(2024, 3, 31, 0, 30),
    ),
    # Lord Howe springs forward by 30 minutes: 02:00 -> 02:30 (+10:30 -> +11:00).
    (
        "Australia/Lord_Howe",
        datetime(2024, 10, 6, 2, 15),
        utc(2024, 10, 5, 15, 45),
        utc(2024, 10, 5, 15, 15),
    ),
    # Chatham: 02:45 +12:45 -> 03:45 +13:45.
    (
        "Pacific/Chatham",
        datetime(2024, 9, 29, 3, 0),
        utc(2024, 9, 28, 14, 15),
        utc(2024, 9, 28, 13, 15),
    ),
    # Samoa skipped the whole of 2011-12-30 (-10:00 -> +14:00).
    (
        "Pacific/Apia",
        datetime(2011, 12, 30, 9, 0),
        utc(2011, 12, 30, 19, 0),
        utc(2011, 12, 29, 19, 0),
    ),
]

# (zone, ambiguous local time, first occurrence, second occurrence)
FOLDS = [
    (
        "America/New_York",
        datetime(2024, 11, 3, 1, 30),
        utc(2024, 11, 3, 5, 30),
        utc(2024, 11, 3, 6, 30),
    ),
    (
        "Europe/London",
        datetime(2024, 10, 27, 1, 30),
        utc(2024, 10, 27, 0, 30),
        utc(2024, 10, 27, 1, 30),
    ),
    # Lord Howe falls back by 30 minutes: 02:00 -> 01:30.
    (
        "Australia/Lord_Howe",
        datetime(2024, 4, 7, 1, 45),
        utc(2024, 4, 6, 14, 45),
        utc(2024, 4, 6, 15, 15),
    ),
    (
        "Pacific/Chatham",
        datetime(2024, 4, 7, 3, 0),
        utc(2024, 4, 6, 13, 15),
        utc(2024, 4, 6, 14, 15),
    ),
]


@pytest.mark.parametrize(("zone_name", "local", "compatible", "earlier"), GAPS)
def test_gap_policies(
    zone_name: str, local: datetime, compatible: datetime, earlier: datetime
) -> None:
    assert to_instant(local, zone_name, C) == compatible
    assert to_instant(local, zone_name, L) == compatible  # later == offset before the gap
    assert to_instant(local, zone_name, E) == earlier
    with pytest.raises(NonexistentLocalTime):
        to_instant(local, zone_name, R)
    # RFC 5545: the wall time moves forward by the size of the gap.
    assert to_local(compatible, zone_name) > local


@pytest.mark.parametrize(("zone_name", "local", "first", "second"), FOLDS)
def test_fold_policies(zone_name: str, local: datetime, first: datetime, second: datetime) -> None:
    assert to_instant(local, zone_name, C) == first
    assert to_instant(local, zone_name, E) == first
    assert to_instant(local, zone_name, L) == second
    with pytest.raises(AmbiguousLocalTime):
        to_instant(local, zone_name, R)
    assert to_local(first, zone_name) == to_local(second, zone_name) == local


def test_phoenix_never_shifts() -> None:
    for month in range(1, 13):
        local = datetime(2024, month, 15, 9, 0)
        assert to_instant(local, "America/Phoenix", R) == utc(2024, month, 15, 16, 0)


def test_unambiguous_times_ignore_policy() -> None:
    local = datetime(2024, 7, 1, 12, 0)
    assert {to_instant(local, "America/New_York", p) for p in Disambiguation} == {
        utc(2024, 7, 1, 16, 0)
    }


@pytest.mark.parametrize("name", ["", "+05:00", "UTC+3", "Mars/Olympus", "../etc/passwd"])
def test_unknown_zones_are_refused(name: str) -> None:
    with pytest.raises(UnknownZone):
        zone(name)


def test_naive_and_aware_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="naive"):
        to_instant(utc(2024, 1, 1), "UTC")
    with pytest.raises(ValueError, match="aware"):
        to_local(datetime(2024, 1, 1), "UTC")


def test_day_lengths_across_transitions() -> None:
    def hours(day: date, zone_name: str) -> float:
        start, end = day_bounds(day, zone_name)
        return (end - start) / timedelta(hours=1)

    assert hours(date(2024, 3, 10), "America/New_York") == 23
    assert hours(date(2024, 11, 3), "America/New_York") == 25
    assert hours(date(2024, 10, 6), "Australia/Lord_Howe") == 23.5
    assert hours(date(2011, 12, 30), "Pacific/Apia") == 0
    assert hours(date(2024, 3, 10), "America/Phoenix") == 24


def test_transitions_found_to_the_minute() -> None:
    found = transitions("America/New_York", utc(2024, 1, 1), utc(2025, 1, 1))
    assert found == [utc(2024, 3, 10, 7, 0), utc(2024, 11, 3, 6, 0)]
    assert transitions("America/Phoenix", utc(2024, 1, 1), utc(2025, 1, 1)) == []
    lord_howe = transitions("Australia/Lord_Howe", utc(2024, 1, 1), utc(2025, 1, 1))
    assert lord_howe == [utc(2024, 4, 6, 15, 0), utc(2024, 10, 5, 15, 30)]


@pytest.mark.parametrize(
    ("zone_info", "expected"),
    [
        (UTC, True),
        (ZoneInfo("UTC"), True),
        (timezone(timedelta(0)), True),
        (ZoneInfo("Europe/London"), True),  # in January, its offset is zero
        (timezone(timedelta(hours=1)), False),
        (ZoneInfo("America/New_York"), False),
        (None, False),
    ],
)
def test_is_utc_is_about_the_offset_not_the_zone_object(
    zone_info: tzinfo | None, expected: bool
) -> None:
    assert is_utc(datetime(2027, 1, 4, 9, tzinfo=zone_info)) is expected
