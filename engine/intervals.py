"""Half-open UTC intervals and a per-resource interval index with O(log n + k) overlap queries."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from intervaltree import IntervalTree

from engine.errors import InvalidInterval
from engine.timezones import is_utc

T = TypeVar("T")


@dataclass(frozen=True, slots=True, order=True)
class Interval:
    """The half-open span [start, end) between two UTC instants."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if not (is_utc(self.start) and is_utc(self.end)):
            raise InvalidInterval("interval bounds must be aware UTC datetimes")
        if self.end <= self.start:
            raise InvalidInterval(f"interval end {self.end} is not after start {self.start}")

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def overlaps(self, other: Interval) -> bool:
        return self.start < other.end and other.start < self.end

    def contains(self, other: Interval) -> bool:
        return self.start <= other.start and other.end <= self.end

    def padded(self, before: timedelta, after: timedelta) -> Interval:
        return Interval(self.start - before, self.end + after)


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, non-overlapping union of ``intervals`` (touching ones are joined)."""
    merged: list[Interval] = []
    for current in sorted(intervals):
        if merged and current.start <= merged[-1].end:
            last = merged[-1]
            if current.end > last.end:
                merged[-1] = Interval(last.start, current.end)
        else:
            merged.append(current)
    return merged


def subtract(base: Iterable[Interval], holes: Iterable[Interval]) -> list[Interval]:
    """The parts of ``base`` not covered by any of ``holes``, sorted and merged."""
    result: list[Interval] = []
    cuts = merge(holes)
    for piece in merge(base):
        cursor = piece.start
        for hole in cuts:
            if hole.end <= cursor or hole.start >= piece.end:
                continue
            if hole.start > cursor:
                result.append(Interval(cursor, hole.start))
            cursor = max(cursor, hole.end)
            if cursor >= piece.end:
                break
        if cursor < piece.end:
            result.append(Interval(cursor, piece.end))
    return result


def intersect(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    """Sorted intersection of two interval sets."""
    left, right = merge(a), merge(b)
    out: list[Interval] = []
    i = j = 0
    while i < len(left) and j < len(right):
        start = max(left[i].start, right[j].start)
        end = min(left[i].end, right[j].end)
        if start < end:
            out.append(Interval(start, end))
        if left[i].end <= right[j].end:
            i += 1
        else:
            j += 1
    return out


class IntervalIndex(Generic[T]):
    """Intervals with payloads, answering "what overlaps [start, end)?" in O(log n + k).

    Conflict checks (narrow windows) go to ``intervaltree`` over POSIX timestamps. Its
    ``overlap`` walks every interval boundary inside the query, which is slow for a window of
    weeks, so a start-sorted array beside it answers wide sweeps (``spans``) by bisection.
    """

    __slots__ = ("_by_start", "_longest", "_rows", "_tree_cache")

    def __init__(self, items: Iterable[tuple[Interval, T]] = ()) -> None:
        self._rows = [(iv.start.timestamp(), iv.end.timestamp(), (iv, p)) for iv, p in items]
        self._by_start: list[tuple[float, float]] = sorted((lo, hi) for lo, hi, _ in self._rows)
        self._longest = max((hi - lo for lo, hi, _ in self._rows), default=0.0)
        self._tree_cache: IntervalTree | None = None

    @property
    def _tree(self) -> IntervalTree:
        # Built on the first conflict query, in bulk: a sweep-only caller (availability over
        # weeks) never pays for it, and a balanced build beats n rebalancing inserts.
        if self._tree_cache is None:
            self._tree_cache = IntervalTree.from_tuples(self._rows)
        return self._tree_cache

    def add(self, interval: Interval, payload: T) -> None:
        lo, hi = interval.start.timestamp(), interval.end.timestamp()
        self._rows.append((lo, hi, (interval, payload)))
        if self._tree_cache is not None:
            self._tree_cache.addi(lo, hi, (interval, payload))
        insort(self._by_start, (lo, hi))
        self._longest = max(self._longest, hi - lo)

    def remove(self, interval: Interval, payload: T) -> None:
        lo, hi = interval.start.timestamp(), interval.end.timestamp()
        self._tree.removei(lo, hi, (interval, payload))
        self._rows.remove((lo, hi, (interval, payload)))
        del self._by_start[bisect_left(self._by_start, (lo, hi))]

    def __len__(self) -> int:
        return len(self._tree)

    def __iter__(self) -> Iterator[tuple[Interval, T]]:
        return (node.data for node in sorted(self._tree))

    def overlapping(self, interval: Interval) -> list[tuple[Interval, T]]:
        """Entries overlapping ``interval``, sorted by start."""
        hits = self._tree.overlap(interval.start.timestamp(), interval.end.timestamp())
        return sorted((node.data for node in hits), key=lambda entry: entry[0])

    def is_free(self, interval: Interval) -> bool:
        return not self._tree.overlaps(interval.start.timestamp(), interval.end.timestamp())

    def spans(self, lo: float, hi: float) -> list[tuple[float, float]]:
        """(start, end) timestamps of entries overlapping [lo, hi), for sweeps over long
        windows: entries starting before ``hi`` and no earlier than ``lo`` minus the longest."""
        first = bisect_left(self._by_start, (lo - self._longest,))
        last = bisect_left(self._by_start, (hi,))
        return [span for span in self._by_start[first:last] if span[1] > lo]
