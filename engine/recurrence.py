"""RFC 5545 recurrence (RRULE, RDATE, EXDATE, overridden instances), expanded at query time.

A series lives in its own zone: the rule generates *local wall times* (floating, as dateutil
produces them from a naive DTSTART), and each is turned into an instant only then, by the
series' disambiguation policy. A weekly 09:00 in Phoenix therefore stays 09:00 in Phoenix
all year, and one in New York stays 09:00 in New York across DST.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dateutil.rrule import DAILY, WEEKLY, rrulestr
from dateutil.rrule import rrule as RRule

from engine.errors import InvalidRecurrence
from engine.intervals import Interval
from engine.timezones import Disambiguation, to_instant, to_local, zone

# Widest local-vs-UTC slack a window needs: offsets span -12..+14 h and Apia skipped a day.
_WINDOW_SLACK = timedelta(days=2)
DEFAULT_LIMIT = 20_000


@dataclass(frozen=True, slots=True)
class Override:
    """A changed occurrence (RFC 5545 RECURRENCE-ID): moved, resized, or cancelled."""

    start: datetime | None  # new naive local start; None cancels the occurrence
    duration: timedelta | None = None  # None keeps the series' duration


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One instance of a series."""

    recurrence_id: datetime  # the naive local time the rule generated (stable identity)
    start: datetime  # UTC instant
    end: datetime  # UTC instant
    local_start: datetime  # naive wall time actually shown on the series' clocks

    @property
    def interval(self) -> Interval:
        return Interval(self.start, self.end)

    @property
    def shifted(self) -> bool:
        """True when DST moved the wall time (the rule asked for a time in a gap)."""
        return self.local_start != self.recurrence_id


@dataclass(frozen=True, slots=True)
class Series:
    """A recurring (or single) local-time event: DTSTART + DURATION + RRULE/RDATE/EXDATE.

    ``start``, ``rdates``, ``exdates`` and override keys are naive local wall times in
    ``zone``. ``duration`` is exact elapsed time (RFC 5545 DURATION in hours/minutes).
    """

    zone: str
    start: datetime
    duration: timedelta
    rrule: str | None = None
    rdates: tuple[datetime, ...] = ()
    exdates: tuple[datetime, ...] = ()
    overrides: tuple[tuple[datetime, Override], ...] = ()
    policy: Disambiguation = Disambiguation.COMPATIBLE
    _rule: RRule | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        zone(self.zone)  # raises UnknownZone
        for value in (self.start, *self.rdates, *self.exdates, *(k for k, _ in self.overrides)):
            if value.tzinfo is not None:
                raise InvalidRecurrence("series times are naive local wall times in the zone")
        if self.duration <= timedelta(0):
            raise InvalidRecurrence("duration must be positive")
        if self.rrule is not None:
            object.__setattr__(self, "_rule", parse_rrule(self.rrule, self.start, self.zone))

    def expand(self, window: Interval, limit: int = DEFAULT_LIMIT) -> list[Occurrence]:
        """Occurrences overlapping ``window``, sorted by start.

        Two rule instances that land on the same instant (Apia skipped 2011-12-30: its gap
        instance reads as 2011-12-31) are one occurrence; the one whose wall time exists wins.
        """
        lo = to_local(window.start, self.zone) - _WINDOW_SLACK - self.duration
        hi = to_local(window.end, self.zone) + _WINDOW_SLACK
        overrides = dict(self.overrides)
        longest = max(
            [self.duration, *(o.duration for o in overrides.values() if o.duration)],
        )
        excluded = set(self.exdates)
        by_instant: dict[datetime, Occurrence] = {}
        produced = 0
        for rid in self._local_starts(lo - longest, hi):
            produced += 1
            if produced > limit:
                raise InvalidRecurrence(f"more than {limit} occurrences in the window")
            if rid in excluded:
                continue
            local, duration = rid, self.duration
            if rid in overrides:
                change = overrides[rid]
                if change.start is None:
                    continue
                local, duration = change.start, change.duration or self.duration
            start = to_instant(local, self.zone, self.policy)
            occurrence = Occurrence(rid, start, start + duration, to_local(start, self.zone))
            if not (occurrence.start < window.end and window.start < occurrence.end):
                continue
            kept = by_instant.get(start)
            if kept is None or (kept.shifted and not occurrence.shifted):
                by_instant[start] = occurrence
        return sorted(by_instant.values(), key=lambda o: (o.start, o.recurrence_id))

    def _local_starts(self, lo: datetime, hi: datetime) -> Iterator[datetime]:
        """Local recurrence ids in [lo, hi]: DTSTART, the rule's instances and RDATEs."""
        seen: set[datetime] = set()
        candidates: list[datetime] = [self.start, *self.rdates]
        if self._rule is not None:
            candidates.extend(_fast_forward(self._rule, lo).between(lo, hi, inc=True))
        for value in sorted(candidates):
            if lo <= value <= hi and value not in seen:
                seen.add(value)
                yield value


def parse_rrule(text: str, dtstart: datetime, zone_name: str) -> RRule:
    """Parse one RRULE (with or without the ``RRULE:`` prefix) against a local DTSTART.

    A UTC ``UNTIL`` (``...Z``) is rewritten to the series' local wall time, because the rule
    runs on the floating local clock.
    """
    body = text.strip()
    if body.upper().startswith("RRULE:"):
        body = body[6:]
    if not body or "\n" in body or "FREQ=" not in body.upper():
        raise InvalidRecurrence(f"not an RRULE: {text!r}")
    parts = []
    for part in body.split(";"):
        key, _, value = part.partition("=")
        _check_part(key.upper(), value)
        if key.upper() == "UNTIL" and value.upper().endswith("Z"):
            try:
                until_utc = datetime.strptime(value.upper() + "+0000", "%Y%m%dT%H%M%SZ%z")
            except ValueError as exc:
                raise InvalidRecurrence(f"bad UNTIL {value!r}") from exc
            local_until = to_local(until_utc, zone_name)
            value = local_until.strftime("%Y%m%dT%H%M%S")
        parts.append(f"{key}={value}")
    try:
        rule = rrulestr(";".join(parts), dtstart=dtstart, cache=False)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise InvalidRecurrence(f"malformed RRULE {text!r}: {exc}") from exc
    if not isinstance(rule, RRule):
        raise InvalidRecurrence(f"expected one RRULE, got {text!r}")
    return rule


# dateutil accepts these and then misbehaves (COUNT=0 yields one instance, INTERVAL=0 divides by
# zero at expansion, BYMONTHDAY=0 means every day), so the RFC 5545 ranges are checked here.
_POSITIVE = ("COUNT", "INTERVAL")
_NONZERO = ("BYMONTHDAY", "BYYEARDAY", "BYWEEKNO", "BYSETPOS")


def _check_part(key: str, value: str) -> None:
    if key in _POSITIVE and not (value.isdigit() and int(value) >= 1):
        raise InvalidRecurrence(f"{key} must be a positive integer, not {value!r}")
    if key in _NONZERO:
        for item in value.split(","):
            number = item.strip().lstrip("+-")
            if not number.isdigit() or int(number) == 0:
                raise InvalidRecurrence(f"{key} values are non-zero integers, not {item!r}")


def _fast_forward(rule: RRule, lo: datetime) -> RRule:
    """An equivalent rule whose DTSTART is moved, by whole periods, close to ``lo``.

    dateutil iterates from DTSTART, so a daily series begun years ago would cost thousands of
    steps per query. For DAILY and WEEKLY rules without COUNT, moving DTSTART forward by a
    whole number of INTERVAL periods keeps the period grid (same weekday, same WKST weeks),
    hence exactly the same instances from the new DTSTART on.
    """
    # dateutil exposes no public accessors for these; they have been stable for a decade.
    freq: int = getattr(rule, "_freq")  # noqa: B009
    interval: int = getattr(rule, "_interval")  # noqa: B009
    count: int | None = getattr(rule, "_count")  # noqa: B009
    dtstart: datetime = getattr(rule, "_dtstart")  # noqa: B009
    if count is not None or freq not in (DAILY, WEEKLY):
        return rule
    period = timedelta(days=interval * (7 if freq == WEEKLY else 1))
    periods = (lo - dtstart) // period - 1  # one period of slack before lo
    if periods <= 0:
        return rule
    return rule.replace(dtstart=dtstart + periods * period)
