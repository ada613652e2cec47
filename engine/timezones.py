"""Local wall time <-> UTC instants, with an explicit policy for DST gaps and folds.

RFC 5545 (section 3.3.5) fixes the calendar policy: a nonexistent local time is read with the
UTC offset in force *before* the gap (02:30 on a spring-forward day becomes 03:30), and an
ambiguous one takes its first occurrence. That is ``Disambiguation.COMPATIBLE``, the default
wherever the engine converts a wall time.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from enum import Enum
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.errors import AmbiguousLocalTime, NonexistentLocalTime, UnknownZone


class Disambiguation(Enum):
    """How to read a local wall time that a zone skips (gap) or repeats (fold)."""

    COMPATIBLE = "compatible"  # RFC 5545: gap -> offset before the gap; fold -> first occurrence
    EARLIER = "earlier"  # the earlier of the two candidate instants
    LATER = "later"  # the later of the two candidate instants
    RAISE = "raise"  # refuse: NonexistentLocalTime / AmbiguousLocalTime


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The ``ZoneInfo`` for an IANA name; rejects fixed offsets and unknown names."""
    if not name or name.startswith(("+", "-")) or name.upper().startswith(("UTC+", "UTC-")):
        raise UnknownZone(name)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: "../etc" names
        raise UnknownZone(name) from exc


def is_utc(instant: datetime) -> bool:
    """True for an aware datetime whose offset is zero. Every `Interval` asks this twice, so
    `datetime.UTC` itself (what PostgreSQL's rows and our own arithmetic carry) is answered
    without computing an offset: 70 ns instead of 400."""
    tz = instant.tzinfo
    return tz is UTC or (tz is not None and instant.utcoffset() == _ZERO)


_ZERO = timedelta(0)


def to_instant(
    local: datetime, zone_name: str, policy: Disambiguation = Disambiguation.COMPATIBLE
) -> datetime:
    """The UTC instant of a naive local wall time in ``zone_name`` under ``policy``."""
    if local.tzinfo is not None:
        raise ValueError("to_instant takes a naive local wall time")
    tz = zone(zone_name)
    first = local.replace(tzinfo=tz, fold=0)
    second = local.replace(tzinfo=tz, fold=1)
    offset_first, offset_second = first.utcoffset(), second.utcoffset()
    if offset_first == offset_second:
        return first.astimezone(UTC)
    # fold=0 carries the offset before the transition, fold=1 the offset after it.
    a, b = first.astimezone(UTC), second.astimezone(UTC)
    in_gap = a.astimezone(tz).replace(tzinfo=None) != local
    if policy is Disambiguation.RAISE:
        kind = NonexistentLocalTime if in_gap else AmbiguousLocalTime
        raise kind(f"{local.isoformat()} is {'skipped' if in_gap else 'repeated'} in {zone_name}")
    if policy is Disambiguation.COMPATIBLE:
        return a  # gap: offset before the gap; fold: first occurrence — both are fold=0
    early, late = (a, b) if a <= b else (b, a)
    return early if policy is Disambiguation.EARLIER else late


def to_local(instant: datetime, zone_name: str) -> datetime:
    """The naive local wall time of an aware instant in ``zone_name``."""
    if instant.tzinfo is None:
        raise ValueError("to_local takes an aware instant")
    return instant.astimezone(zone(zone_name)).replace(tzinfo=None)


def local_date(instant: datetime, zone_name: str) -> date:
    """The calendar date of ``instant`` on the wall clocks of ``zone_name``."""
    return to_local(instant, zone_name).date()


def day_bounds(day: date, zone_name: str) -> tuple[datetime, datetime]:
    """UTC start and end of a local calendar day (23, 24, 25 hours — or 0 for Apia 2011-12-30).

    Midnight itself can fall in a gap (e.g. America/Santiago), so each bound is the first
    instant whose local date is that day, read by the COMPATIBLE policy.
    """
    start = to_instant(datetime.combine(day, time()), zone_name)
    end = to_instant(datetime.combine(day + timedelta(days=1), time()), zone_name)
    return start, max(start, end)


def transitions(zone_name: str, start: datetime, end: datetime) -> list[datetime]:
    """UTC instants in [start, end) at which ``zone_name``'s UTC offset changes.

    Found by hourly probing and bisection to the minute, so it needs nothing beyond zoneinfo.
    """
    tz = zone(zone_name)
    found: list[datetime] = []
    probe = start.replace(minute=0, second=0, microsecond=0)
    step = timedelta(hours=1)
    previous = probe.astimezone(tz).utcoffset()
    while probe < end:
        nxt = probe + step
        offset = nxt.astimezone(tz).utcoffset()
        if offset != previous:
            lo, hi = probe, nxt
            while hi - lo > timedelta(minutes=1):
                mid = lo + (hi - lo) / 2
                mid = mid.replace(second=0, microsecond=0)
                if mid.astimezone(tz).utcoffset() == previous:
                    lo = mid
                else:
                    hi = mid
            if start <= hi < end:
                found.append(hi)
            previous = offset
        probe = nxt
    return found
