from datetime import UTC, datetime, timedelta

import pytest
from dateutil.rrule import rrulestr
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidRecurrence, UnknownZone
from engine.intervals import Interval
from engine.recurrence import Override, Series

NY = "America/New_York"
HOUR = timedelta(hours=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local_starts(series: Series, start: datetime, end: datetime) -> list[datetime]:
    return [o.local_start for o in series.expand(Interval(start, end))]


def days(*items: tuple[int, int, int]) -> list[datetime]:
    return [datetime(y, m, d, 9, 0) for y, m, d in items]


# RFC 5545 section 3.8.5.3 examples, DTSTART;TZID=America/New_York.
def test_rfc_daily_for_10_occurrences() -> None:
    s = Series(NY, datetime(1997, 9, 2, 9), HOUR, "RRULE:FREQ=DAILY;COUNT=10")
    assert local_starts(s, utc(1997, 1, 1), utc(1998, 1, 1)) == [
        datetime(1997, 9, d, 9) for d in range(2, 12)
    ]


def test_rfc_daily_until_keeps_wall_time_across_dst() -> None:
    s = Series(NY, datetime(1997, 9, 2, 9), HOUR, "FREQ=DAILY;UNTIL=19971224T000000Z")
    occurrences = s.expand(Interval(utc(1997, 1, 1), utc(1998, 1, 1)))
    assert len(occurrences) == 113
    assert occurrences[-1].local_start == datetime(1997, 12, 23, 9)
    assert {o.local_start.time() for o in occurrences} == {datetime(1997, 1, 1, 9).time()}
    # 09:00 EDT is 13:00 UTC; 09:00 EST (after 1997-10-26) is 14:00 UTC.
    assert occurrences[0].start == utc(1997, 9, 2, 13)
    assert occurrences[-1].start == utc(1997, 12, 23, 14)


def test_rfc_every_10_days_5_occurrences() -> None:
    s = Series(NY, datetime(1997, 9, 2, 9), HOUR, "FREQ=DAILY;INTERVAL=10;COUNT=5")
    assert local_starts(s, utc(1997, 1, 1), utc(1998, 1, 1)) == days(
        (1997, 9, 2), (1997, 9, 12), (1997, 9, 22), (1997, 10, 2), (1997, 10, 12)
    )


def test_rfc_weekly_for_10_occurrences() -> None:
    s = Series(NY, datetime(1997, 9, 2, 9), HOUR, "FREQ=WEEKLY;COUNT=10")
    assert local_starts(s, utc(1997, 1, 1), utc(1998, 1, 1)) == days(
        (1997, 9, 2),
        (1997, 9, 9),
        (1997, 9, 16),
        (1997, 9, 23),
        (1997, 9, 30),
        (1997, 10, 7),
        (1997, 10, 14),
        (1997, 10, 21),
        (1997, 10, 28),
        (1997, 11, 4),
    )


def test_rfc_every_other_week_mo_we_fr_until() -> None:
    s = Series(
        NY,
        datetime(1997, 9, 1, 9),
        HOUR,
        "FREQ=WEEKLY;INTERVAL=2;UNTIL=19971224T000000Z;WKST=SU;BYDAY=MO,WE,FR",
    )
    assert local_starts(s, utc(1997, 1, 1), utc(1998, 1, 1)) == days(
        (1997, 9, 1),
        (1997, 9, 3),
        (1997, 9, 5),
        (1997, 9, 15),
        (1997, 9, 17),
        (1997, 9, 19),
        (1997, 9, 29),
        (1997, 10, 1),
        (1997, 10, 3),
        (1997, 10, 13),
        (1997, 10, 15),
        (1997, 10, 17),
        (1997, 10, 27),
        (1997, 10, 29),
        (1997, 10, 31),
        (1997, 11, 10),
        (1997, 11, 12),
        (1997, 11, 14),
        (1997, 11, 24),
        (1997, 11, 26),
        (1997, 11, 28),
        (1997, 12, 8),
        (1997, 12, 10),
        (1997, 12, 12),
        (1997, 12, 22),
    )


def test_rfc_monthly_first_friday() -> None:
    s = Series(NY, datetime(1997, 9, 5, 9), HOUR, "FREQ=MONTHLY;COUNT=10;BYDAY=1FR")
    assert local_starts(s, utc(1997, 1, 1), utc(1999, 1, 1)) == days(
        (1997, 9, 5),
        (1997, 10, 3),
        (1997, 11, 7),
        (1997, 12, 5),
        (1998, 1, 2),
        (1998, 2, 6),
        (1998, 3, 6),
        (1998, 4, 3),
        (1998, 5, 1),
        (1998, 6, 5),
    )


def test_rfc_friday_13th_with_exdate() -> None:
    s = Series(
        NY,
        datetime(1997, 9, 2, 9),
        HOUR,
        "FREQ=MONTHLY;BYDAY=FR;BYMONTHDAY=13",
        exdates=(datetime(1997, 9, 2, 9),),
    )
    assert local_starts(s, utc(1997, 1, 1), utc(2000, 12, 31)) == days(
        (1998, 2, 13), (1998, 3, 13), (1998, 11, 13), (1999, 8, 13), (2000, 10, 13)
    )


def test_rfc_last_work_day_of_month() -> None:
    s = Series(NY, datetime(1997, 9, 29, 9), HOUR, "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1")
    assert local_starts(s, utc(1997, 9, 1), utc(1998, 3, 1))[1:] == days(
        (1997, 9, 30),
        (1997, 10, 31),
        (1997, 11, 28),
        (1997, 12, 31),
        (1998, 1, 30),
        (1998, 2, 27),
    )


def test_phoenix_and_new_york_keep_their_own_wall_clocks() -> None:
    rule = "FREQ=WEEKLY;BYDAY=MO"
    window = Interval(utc(2024, 1, 1), utc(2025, 1, 1))
    phoenix = Series("America/Phoenix", datetime(2024, 1, 1, 9), HOUR, rule).expand(window)
    new_york = Series(NY, datetime(2024, 1, 1, 9), HOUR, rule).expand(window)
    assert len(phoenix) == len(new_york) == 53
    assert {o.start.hour for o in phoenix} == {16}
    assert {o.start.hour for o in new_york} == {13, 14}  # EDT and EST
    assert {o.local_start.hour for o in phoenix + new_york} == {9}


def test_gap_instance_moves_forward_and_keeps_its_identity() -> None:
    s = Series(NY, datetime(2024, 3, 8, 2, 30), HOUR, "FREQ=DAILY;COUNT=4")
    occurrences = s.expand(Interval(utc(2024, 3, 1), utc(2024, 4, 1)))
    gap = occurrences[2]
    assert gap.recurrence_id == datetime(2024, 3, 10, 2, 30)
    assert gap.local_start == datetime(2024, 3, 10, 3, 30) and gap.shifted
    assert gap.end - gap.start == HOUR  # exact duration, not wall-clock
    assert [o.shifted for o in occurrences] == [False, False, True, False]


def test_fold_instance_takes_the_first_occurrence() -> None:
    s = Series(NY, datetime(2024, 11, 2, 1, 30), HOUR, "FREQ=DAILY;COUNT=2")
    occurrences = s.expand(Interval(utc(2024, 11, 1), utc(2024, 11, 5)))
    assert occurrences[1].start == utc(2024, 11, 3, 5, 30)  # 01:30 EDT, not 01:30 EST


def test_apia_skipped_day_is_neither_lost_twice_nor_duplicated() -> None:
    s = Series("Pacific/Apia", datetime(2011, 12, 28, 9), HOUR, "FREQ=DAILY;COUNT=5")
    occurrences = s.expand(Interval(utc(2011, 12, 1), utc(2012, 2, 1)))
    starts = [o.start for o in occurrences]
    assert len(starts) == len(set(starts)) == 4
    assert [o.local_start.day for o in occurrences] == [28, 29, 31, 1]
    # The surviving 31st is the real one, not the shifted 30th.
    assert not any(o.shifted for o in occurrences)


def test_overrides_move_resize_and_cancel() -> None:
    s = Series(
        NY,
        datetime(2024, 5, 6, 9),
        HOUR,
        "FREQ=DAILY;COUNT=3",
        overrides=(
            (datetime(2024, 5, 7, 9), Override(datetime(2024, 5, 7, 15), 2 * HOUR)),
            (datetime(2024, 5, 8, 9), Override(None)),
        ),
    )
    occurrences = s.expand(Interval(utc(2024, 5, 1), utc(2024, 6, 1)))
    assert [(o.recurrence_id.day, o.local_start.hour, o.end - o.start) for o in occurrences] == [
        (6, 9, HOUR),
        (7, 15, 2 * HOUR),
    ]


def test_rdates_add_occurrences_and_duplicates_collapse() -> None:
    s = Series(
        NY,
        datetime(2024, 5, 6, 9),
        HOUR,
        "FREQ=DAILY;COUNT=2",
        rdates=(datetime(2024, 5, 7, 9), datetime(2024, 5, 20, 11)),
    )
    assert local_starts(s, utc(2024, 5, 1), utc(2024, 6, 1)) == [
        datetime(2024, 5, 6, 9),
        datetime(2024, 5, 7, 9),
        datetime(2024, 5, 20, 11),
    ]


def test_window_is_overlap_based() -> None:
    s = Series(NY, datetime(2024, 5, 6, 9), 2 * HOUR, "FREQ=DAILY;COUNT=1")
    # 09:00-11:00 EDT = 13:00-15:00 UTC; a window ending mid-occurrence still sees it.
    assert len(s.expand(Interval(utc(2024, 5, 6, 14), utc(2024, 5, 6, 14, 30)))) == 1
    assert s.expand(Interval(utc(2024, 5, 6, 15), utc(2024, 5, 6, 16))) == []


@pytest.mark.parametrize(
    "rule",
    [
        "",
        "FREQ=SOMETIMES",
        "BYDAY=MO",
        "FREQ=WEEKLY;BYDAY=XX",
        "FREQ=DAILY;UNTIL=notadate",
        "FREQ=DAILY;COUNT=x",
        "FREQ=DAILY\nFREQ=WEEKLY",
    ],
)
def test_malformed_rules_are_refused(rule: str) -> None:
    with pytest.raises(InvalidRecurrence):
        Series(NY, datetime(2024, 1, 1, 9), HOUR, rule)


def test_bad_zone_duration_and_aware_times_are_refused() -> None:
    with pytest.raises(UnknownZone):
        Series("Nowhere/City", datetime(2024, 1, 1, 9), HOUR)
    with pytest.raises(InvalidRecurrence):
        Series(NY, datetime(2024, 1, 1, 9), timedelta(0))
    with pytest.raises(InvalidRecurrence):
        Series(NY, utc(2024, 1, 1, 9), HOUR)


def test_runaway_rules_hit_the_limit() -> None:
    s = Series(NY, datetime(2024, 1, 1), HOUR, "FREQ=MINUTELY")
    with pytest.raises(InvalidRecurrence, match="occurrences"):
        s.expand(Interval(utc(2024, 1, 1), utc(2024, 3, 1)), limit=1000)


@settings(max_examples=150, deadline=None)
@given(
    freq=st.sampled_from(["DAILY", "WEEKLY"]),
    interval=st.integers(1, 4),
    bydays=st.sets(st.sampled_from(["MO", "TU", "WE", "TH", "FR", "SA", "SU"]), max_size=3),
    wkst=st.sampled_from(["MO", "SU"]),
    start_offset=st.integers(0, 3000),
    hour=st.integers(0, 23),
    window_offset=st.integers(0, 4000),
    window_days=st.integers(1, 40),
)
def test_fast_forward_matches_full_iteration(
    freq: str,
    interval: int,
    bydays: set[str],
    wkst: str,
    start_offset: int,
    hour: int,
    window_offset: int,
    window_days: int,
) -> None:
    """Skipping whole periods from an old DTSTART finds exactly what full iteration finds."""
    rule = f"FREQ={freq};INTERVAL={interval};WKST={wkst}"
    if bydays:
        rule += ";BYDAY=" + ",".join(sorted(bydays))
    dtstart = datetime(2010, 1, 1, hour) + timedelta(days=start_offset)
    series = Series(NY, dtstart, HOUR, rule)
    lo = datetime(2010, 1, 1) + timedelta(days=window_offset)
    window = Interval(
        lo.replace(tzinfo=UTC), (lo + timedelta(days=window_days)).replace(tzinfo=UTC)
    )
    reference = rrulestr(rule, dtstart=dtstart)
    expected = {
        o
        for o in [
            dtstart,
            *reference.between(
                lo - timedelta(days=3), lo + timedelta(days=window_days + 3), inc=True
            ),
        ]
    }
    got = {o.recurrence_id for o in series.expand(window)}
    # Every expanded id is a true instance, and every true instance overlapping the window is there.
    assert got <= expected
    for rid in expected:
        occurrence = Series(NY, rid, HOUR).expand(window)
        assert (rid in got) == bool(occurrence)


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=DAILY;COUNT=0",
        "FREQ=DAILY;COUNT=-3",
        "FREQ=WEEKLY;INTERVAL=0",
        "FREQ=WEEKLY;INTERVAL=-1",
        "FREQ=MONTHLY;BYMONTHDAY=0",
        "FREQ=YEARLY;BYYEARDAY=1,0",
        "FREQ=YEARLY;BYWEEKNO=0",
        "FREQ=MONTHLY;BYDAY=MO;BYSETPOS=0",
    ],
)
def test_out_of_range_rule_parts_are_refused(rule: str) -> None:
    """dateutil would accept these and misbehave at expansion time."""
    with pytest.raises(InvalidRecurrence):
        Series(NY, datetime(2024, 1, 1, 9), HOUR, rule)


def test_negative_month_days_remain_valid() -> None:
    s = Series(NY, datetime(2024, 1, 31, 9), HOUR, "FREQ=MONTHLY;BYMONTHDAY=-1;COUNT=3")
    assert [o.local_start.day for o in s.expand(Interval(utc(2024, 1, 1), utc(2024, 6, 1)))] == [
        31,
        29,
        31,
    ]
