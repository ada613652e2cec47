"""A resource's calendar: working hours (recurring local-time rules) minus busy time.

Busy time lives in an ``IntervalIndex`` so every conflict check is an O(log n + k) query.
Internally spans are POSIX seconds (ints), which keeps the slot search free of datetime
arithmetic on its hot path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

from engine.intervals import Interval, IntervalIndex
from engine.model import Busy, BusyKind, Resource
from engine.recurrence import Series
from engine.timezones import day_bounds, local_date

Span = tuple[int, int]  # [start, end) in POSIX seconds
# Per-calendar memos of free time by span; a long-lived calendar (a simulation, a queue
# solve) asks about many spans, so the memo is cleared only when it grows past this.
_MEMO_LIMIT = 2048


def seconds(instant: datetime) -> int:
    return int(instant.timestamp())


def instant(posix: int) -> datetime:
    return datetime.fromtimestamp(posix, UTC)


_ONE_DAY = timedelta(days=1)
_CHUNK = 7 * 86_400  # working hours are expanded (and memoised) a UTC week at a time


@lru_cache(maxsize=16_384)
def _expand_chunk(series: Series, chunk: int) -> tuple[Span, ...]:
    """Occurrences of ``series`` overlapping one aligned week. Series are immutable values, so
    the memo is shared by every calendar built from equal rules — across requests too."""
    window = Interval(instant(chunk * _CHUNK), instant((chunk + 1) * _CHUNK))
    return tuple((seconds(o.start), seconds(o.end)) for o in series.expand(window))


@lru_cache(maxsize=4096)  # a 30-day answer is ~3 KB: at most ~12 MB per process
def _working_in(working: tuple[Series, ...], span: Span) -> list[Span]:
    """Working time of the rules ``working`` inside ``span``, merged and sorted. Memoised by
    value, like `_expand_chunk`: the staff of a team mostly share their rules, and a team's
    availability computed this once per resource (30% of it with 2,000 staff on one rule).
    Callers must not mutate the list."""
    raw = {
        occurrence
        for series in working
        for chunk in range(span[0] // _CHUNK, (span[1] - 1) // _CHUNK + 1)
        for occurrence in _expand_chunk(series, chunk)
    }
    return _merge_spans(
        sorted((max(a, span[0]), min(b, span[1])) for a, b in raw if a < span[1] and b > span[0])
    )


@lru_cache(maxsize=65_536)
def day_span(day: date, zone_name: str) -> Span:
    """A local calendar day as POSIX seconds (memoised: pure, and hot in capacity checks)."""
    start, end = day_bounds(day, zone_name)
    return seconds(start), seconds(end)


class ResourceCalendar:
    """Everything the engine knows about one resource's time."""

    __slots__ = (
        "_busy",
        "_free_memo",
        "_full_memo",
        "_load",
        "_working",
        "masks",
        "resource",
    )

    def __init__(
        self,
        resource: Resource,
        working_hours: Iterable[Series],
        busy: Iterable[Busy] = (),
        loads: Mapping[date, tuple[int, int]] | None = None,
    ) -> None:
        """``loads`` gives (appointments, minutes) per local day when the caller counted them
        elsewhere (a database aggregate over whole days); then the initial ``busy`` entries
        are not counted again. Entries added later always count."""
        self.resource = resource
        self._working = tuple(working_hours)
        for series in self._working:
            if series.zone != resource.zone:
                raise ValueError(f"working hours of {resource.id} must be in {resource.zone}")
        # Valid until busy time changes (`add` / `remove` clear them).
        self._free_memo: dict[Span, list[Span]] = {}
        self._full_memo: dict[tuple[Span, int], list[Span]] = {}
        # The slot solver's start masks (`engine.slots.resource_mask`), cleared with the others.
        self.masks: dict[tuple[object, ...], int] = {}
        entries = list(busy)
        self._busy: IntervalIndex[Busy] = IntervalIndex(
            (entry.interval, entry) for entry in entries
        )
        self._load: dict[date, tuple[int, int]] = dict(loads or {})
        if loads is None:
            for entry in entries:
                if entry.kind is BusyKind.BOOKING:
                    self._count(entry, +1)

    @property
    def working_hours(self) -> tuple[Series, ...]:
        return self._working

    # --- busy time -------------------------------------------------------------------------
    def add(self, entry: Busy) -> None:
        self._forget()
        self._busy.add(entry.interval, entry)
        if entry.kind is BusyKind.BOOKING:
            self._count(entry, +1)

    def remove(self, entry: Busy) -> None:
        self._forget()
        self._busy.remove(entry.interval, entry)
        if entry.kind is BusyKind.BOOKING:
            self._count(entry, -1)

    def _forget(self) -> None:
        self._free_memo.clear()
        self._full_memo.clear()
        self.masks.clear()

    def _count(self, entry: Busy, sign: int) -> None:
        day = local_date(entry.counted_start, self.resource.zone)
        count, minutes = self._load.get(day, (0, 0))
        self._load[day] = (count + sign, minutes + sign * entry.counted_minutes)

    def conflicts(self, interval: Interval) -> list[Busy]:
        """Busy entries overlapping ``interval``."""
        return [busy for _, busy in self._busy.overlapping(interval)]

    def busy_entries(self) -> list[Busy]:
        return [busy for _, busy in self._busy]

    # --- daily capacity --------------------------------------------------------------------
    def load(self, day: date) -> tuple[int, int]:
        """(appointments, minutes) booked on a local day of the resource's zone."""
        return self._load.get(day, (0, 0))

    def has_capacity(self, day: date, minutes: int) -> bool:
        """Whether one more appointment of ``minutes`` fits the day's limits."""
        count, booked = self.load(day)
        cap, cap_minutes = self.resource.daily_capacity, self.resource.daily_minutes
        return (cap is None or count + 1 <= cap) and (
            cap_minutes is None or booked + minutes <= cap_minutes
        )

    def full_days(self, span: Span, minutes: int) -> list[Span]:
        """Local days overlapping ``span`` on which an appointment of ``minutes`` won't fit
        (memoised until busy time changes; callers must not mutate the list)."""
        limits = self.resource.daily_capacity, self.resource.daily_minutes
        if limits == (None, None):
            return []
        memo = self._full_memo.get((span, minutes))
        if memo is None:
            memo = self._full_days(span, minutes)
            if len(self._full_memo) >= _MEMO_LIMIT:
                self._full_memo.clear()
            self._full_memo[span, minutes] = memo
        return memo

    def _full_days(self, span: Span, minutes: int) -> list[Span]:
        zone_name = self.resource.zone
        first = local_date(instant(span[0]), zone_name)
        last = local_date(instant(span[1]), zone_name)
        full: list[Span] = []
        if self.resource.daily_capacity == 0 or (
            self.resource.daily_minutes is not None and self.resource.daily_minutes < minutes
        ):
            return [span]  # no day can take this appointment at all
        day = first
        while day <= last:  # the span's days, not every day with bookings: spans are short
            if day in self._load and not self.has_capacity(day, minutes):
                full.append(day_span(day, zone_name))
            day += _ONE_DAY
        return full

    # --- working hours and free time ---------------------------------------------------------
    def working_spans(self, span: Span) -> list[Span]:
        """Working time inside ``span``, merged and sorted (callers must not mutate it)."""
        return _working_in(self._working, span)

    def free_spans(self, span: Span) -> list[Span]:
        """Working time inside ``span`` not covered by any busy entry (memoised per span until
        busy time changes; callers must not mutate the list)."""
        memo = self._free_memo.get(span)
        if memo is None:
            working = self.working_spans(span)
            holes = [(int(a), int(b)) for a, b in self._busy.spans(span[0], span[1])]
            memo = subtract_spans(working, holes) if working else []
            if len(self._free_memo) >= _MEMO_LIMIT:
                self._free_memo.clear()
            self._free_memo[span] = memo
        return memo

    def free(self, window: Interval) -> list[Interval]:
        """Free intervals inside ``window``."""
        return [
            Interval(instant(a), instant(b))
            for a, b in self.free_spans((seconds(window.start), seconds(window.end)))
        ]

    def works_through(self, interval: Interval) -> bool:
        """Whether one stretch of working time covers all of ``interval``."""
        lo, hi = seconds(interval.start), seconds(interval.end)
        return any(a <= lo and hi <= b for a, b in self.working_spans((lo, hi)))


def _merge_spans(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for a, b in spans:
        if a >= b:
            continue
        if merged and a <= merged[-1][1]:
            if b > merged[-1][1]:
                merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def subtract_spans(base: list[Span], holes: list[Span]) -> list[Span]:
    """``base`` (sorted, disjoint) minus ``holes`` (any order)."""
    cuts = _merge_spans(sorted(holes))
    out: list[Span] = []
    j = 0
    for a, b in base:
        cursor = a
        while j < len(cuts) and cuts[j][1] <= cursor:
            j += 1
        k = j
        while k < len(cuts) and cuts[k][0] < b:
            if cuts[k][0] > cursor:
                out.append((cursor, cuts[k][0]))
            cursor = max(cursor, cuts[k][1])
            k += 1
        if cursor < b:
            out.append((cursor, b))
    return out
