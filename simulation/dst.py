"""`slotwise dst`: recurring appointments around every DST transition of every IANA zone.

For each zone of the tz database with an offset change in the year range, daily series are laid
over each transition at wall times that land before, inside, at the edge of and after the gap or
fold, and expanded by the engine (`engine.recurrence.Series`, policy COMPATIBLE = RFC 5545).
Each expansion is checked against an independent computation that uses no engine code: the
zone's offset history, found here by probing `zoneinfo` and bisecting to the second, and the
RFC 5545 rule applied by plain arithmetic on that history:

- wall_time   every instance shows the series' wall time (or, in a gap, that time pushed forward
              by the gap's length);
- policy      a wall time in a gap takes the offset before the gap, one in a fold its first
              occurrence;
- lost / duplicated  every local date of the rule yields exactly one instance (two that land on
              the same instant — Apia skipped 2011-12-30 — are one);
- duration    every instance lasts exactly the series' duration in UTC.

Violations become rows of `dst_anomalies`; zones and transitions are written too.
"""

from __future__ import annotations

import multiprocessing
import time
import zoneinfo
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

DAY_S = 86_400
SERIES_DAYS = 8  # each series: 4 days before the transition's local date, 4 from it on
DURATIONS = (timedelta(minutes=30), timedelta(minutes=150))  # short, and one spanning the change


@dataclass(frozen=True, slots=True)
class Transition:
    at: int  # POSIX seconds: the first second of the new offset
    before: int  # UTC offset in seconds before
    after: int  # ...and from ``at`` on

    @property
    def kind(self) -> str:
        if self.after > self.before:
            return "gap"
        if self.after < self.before:
            return "fold"
        return "offset"


@dataclass(frozen=True, slots=True)
class History:
    """A zone's UTC offsets over a span: ``initial`` until the first transition."""

    zone: str
    initial: int
    transitions: tuple[Transition, ...]
    starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", tuple(t.at for t in self.transitions))

    def offset_at(self, posix: int) -> int:
        i = bisect_right(self.starts, posix)
        return self.initial if i == 0 else self.transitions[i - 1].after


def history(zone: str, lo: int, hi: int) -> History:
    """Offset (and DST flag / abbreviation) changes of ``zone`` in [lo, hi), from zoneinfo:
    probed daily, each change bisected to the second. Changes of DST flag or abbreviation with
    an unchanged offset are kept as kind "offset" transitions."""
    tz = zoneinfo.ZoneInfo(zone)

    def state(t: int) -> tuple[int, Any, Any]:
        local = datetime.fromtimestamp(t, tz)
        offset = local.utcoffset()
        assert offset is not None
        return int(offset.total_seconds()), local.dst(), local.tzname()

    found: list[Transition] = []
    previous = state(lo)
    initial = previous[0]
    t = lo
    while t < hi:
        nxt = min(t + DAY_S, hi)
        current = state(nxt)
        if current != previous:
            a, b = t, nxt  # state(a) == previous, state(b) != previous
            while b - a > 1:
                mid = (a + b) // 2
                if state(mid) == previous:
                    a = mid
                else:
                    b = mid
            found.append(Transition(b, previous[0], state(b)[0]))
            # Several changes inside one probe step: walk on from the one just found.
            previous = state(b)
            t = b
            continue
        previous = current
        t = nxt
    return History(zone, initial, tuple(found))


# --- the independent reference -----------------------------------------------------------------
def expected_instant(h: History, local: datetime) -> tuple[int, bool]:
    """RFC 5545 reading of a naive wall time from the offset history alone: (instant, in_gap).

    Candidates are ``local - offset`` for each offset the zone had nearby, kept if that offset
    really was in force at the candidate instant; the earliest wins (a fold's first occurrence).
    No candidate means a gap: the offset before it applies.
    """
    wall = int(local.replace(tzinfo=UTC).timestamp())
    offsets = {h.offset_at(wall - 2 * DAY_S), h.offset_at(wall + 2 * DAY_S)}
    lo = bisect_right(h.starts, wall - 2 * DAY_S)
    hi = bisect_right(h.starts, wall + 2 * DAY_S)
    for tr in h.transitions[lo:hi]:
        offsets.update((tr.before, tr.after))
    valid = sorted(wall - off for off in offsets if h.offset_at(wall - off) == off)
    if valid:
        return valid[0], False
    # In a gap: the transition whose skipped wall range holds ``local``.
    for tr in h.transitions[max(lo - 1, 0) : hi + 1]:
        if tr.at + tr.before <= wall < tr.at + tr.after:
            return wall - tr.before, True
    raise AssertionError(f"{local} in {h.zone}: neither a valid time nor in a gap")


@dataclass(frozen=True, slots=True)
class Instance:
    """What an expansion produced, engine-independent: ids and times in plain numbers."""

    recurrence_id: datetime  # naive local wall time the rule generated
    start: int  # POSIX seconds
    end: int
    local_start: datetime  # naive wall time shown


@dataclass(frozen=True, slots=True)
class Probe:
    """One daily series: ``SERIES_DAYS`` instances at ``first`` + n days, lasting ``duration``."""

    zone: str
    first: datetime
    duration: timedelta

    def local_starts(self) -> list[datetime]:
        return [self.first + timedelta(days=n) for n in range(SERIES_DAYS)]


@dataclass(frozen=True, slots=True)
class Anomaly:
    check: str  # wall_time | policy | lost | duplicated | duration
    detail: str


def check(h: History, probe: Probe, produced: Sequence[Instance]) -> tuple[int, list[Anomaly]]:
    """Compare an expansion with the reference: (instances expected, anomalies)."""
    by_instant: dict[int, tuple[datetime, datetime, bool]] = {}
    for rid in probe.local_starts():
        at, gap = expected_instant(h, rid)
        shown = _wall(h, at)
        kept = by_instant.get(at)
        # Two rule dates on one instant are one occurrence; the one whose wall time exists wins.
        if kept is None or (kept[2] and not gap):
            by_instant[at] = (rid, shown, gap)
    expected = {rid: (at, shown, gap) for at, (rid, shown, gap) in by_instant.items()}
    anomalies: list[Anomaly] = []
    seen: dict[datetime, int] = {}
    instants: dict[int, int] = {}
    for inst in produced:
        seen[inst.recurrence_id] = seen.get(inst.recurrence_id, 0) + 1
        instants[inst.start] = instants.get(inst.start, 0) + 1
        want = expected.get(inst.recurrence_id)
        if want is None:
            anomalies.append(Anomaly("duplicated", f"unexpected instance {inst.recurrence_id}"))
            continue
        at, shown, gap = want
        if inst.start != at:
            name = "policy" if gap or _ambiguous(h, inst.recurrence_id) else "wall_time"
            anomalies.append(
                Anomaly(
                    name, f"{inst.recurrence_id}: starts {_iso(inst.start)}, expected {_iso(at)}"
                )
            )
        if inst.local_start != shown:
            anomalies.append(
                Anomaly(
                    "wall_time", f"{inst.recurrence_id}: shows {inst.local_start}, expected {shown}"
                )
            )
        lasts, wanted = inst.end - inst.start, int(probe.duration.total_seconds())
        if lasts != wanted:
            anomalies.append(
                Anomaly("duration", f"{inst.recurrence_id}: lasts {lasts} s, expected {wanted} s")
            )
    for rid in expected:
        if rid not in seen:
            anomalies.append(Anomaly("lost", f"{rid}: no instance"))
        elif seen[rid] > 1:
            anomalies.append(Anomaly("duplicated", f"{rid}: {seen[rid]} instances"))
    for at, count in instants.items():
        if count > 1:
            anomalies.append(Anomaly("duplicated", f"{count} instances at {_iso(at)}"))
    return len(expected), anomalies


def _wall(h: History, posix: int) -> datetime:
    return datetime.fromtimestamp(posix + h.offset_at(posix), UTC).replace(tzinfo=None)


def _ambiguous(h: History, local: datetime) -> bool:
    wall = int(local.replace(tzinfo=UTC).timestamp())
    return any(tr.at + tr.after <= wall < tr.at + tr.before for tr in h.transitions)


def _iso(posix: int) -> str:
    return datetime.fromtimestamp(posix, UTC).isoformat()


# --- probes around a transition, and the engine's expansion ------------------------------------
def probes(h: History, tr: Transition) -> list[Probe]:
    """Daily series at wall times around ``tr``: 30 minutes before the change, its first
    affected minute, the middle of the gap or fold, its last minute and its end."""
    edge = datetime.fromtimestamp(tr.at + tr.before, UTC).replace(
        tzinfo=None
    )  # wall time at the change
    width = timedelta(seconds=abs(tr.after - tr.before))
    lo = edge if tr.after >= tr.before else edge - width  # start of the affected wall range
    times = [
        lo - timedelta(minutes=30),
        lo,
        lo + width / 2,
        lo + width,
        lo + width - timedelta(minutes=1),
    ]
    day = (lo - timedelta(days=SERIES_DAYS // 2)).date()
    out = []
    for n, wall in enumerate(times):
        wall = wall.replace(second=0, microsecond=0)
        first = datetime.combine(day, wall.time())
        out.append(Probe(h.zone, first, DURATIONS[n % len(DURATIONS)]))
    return list(dict.fromkeys(out))  # a zero-width change repeats times


Expander = Callable[[Probe], list[Instance]]


def engine_expand(probe: Probe) -> list[Instance]:
    """The code under test: the engine's RFC 5545 expansion of ``probe``."""
    from engine.intervals import Interval
    from engine.recurrence import Series

    series = Series(probe.zone, probe.first, probe.duration, f"FREQ=DAILY;COUNT={SERIES_DAYS}")
    # A window comfortably wider than the series in any zone.
    lo = probe.first.replace(tzinfo=UTC) - timedelta(days=2)
    hi = probe.first.replace(tzinfo=UTC) + timedelta(days=SERIES_DAYS + 2)
    return [
        Instance(o.recurrence_id, int(o.start.timestamp()), int(o.end.timestamp()), o.local_start)
        for o in series.expand(Interval(lo, hi))
    ]


# --- the sweep ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ZoneResult:
    zone: str
    transitions: list[Transition]
    instances: int
    anomalies: list[tuple[int, str, Anomaly]]  # (transition instant, series local start, anomaly)


def sweep_zone(
    zone: str, first_year: int, last_year: int, expand: Expander = engine_expand
) -> ZoneResult:
    """Every transition of ``zone`` in the years, each probed and checked."""
    lo = int(datetime(first_year, 1, 1, tzinfo=UTC).timestamp())
    hi = int(datetime(last_year + 1, 1, 1, tzinfo=UTC).timestamp())
    # The history reaches past the range, so series near its ends see every nearby change.
    h = history(zone, lo - 30 * DAY_S, hi + 30 * DAY_S)
    inside = [tr for tr in h.transitions if lo <= tr.at < hi]
    instances = 0
    anomalies: list[tuple[int, str, Anomaly]] = []
    for tr in inside:
        for probe in probes(h, tr):
            count, found = check(h, probe, expand(probe))
            instances += count
            anomalies.extend((tr.at, probe.first.isoformat(), a) for a in found)
    return ZoneResult(zone, inside, instances, anomalies)


def zones() -> list[str]:
    """Every name in the tz database (tzdata package), aliases included."""
    return sorted(zoneinfo.available_timezones())


def sweep(
    first_year: int,
    last_year: int,
    *,
    names: Sequence[str] | None = None,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Iterator[ZoneResult]:
    """Results of every zone (``names`` or all), in name order; zones without a transition in
    the range are left out."""
    names = list(names) if names is not None else zones()
    if workers <= 1:
        results = (sweep_zone(z, first_year, last_year) for z in names)
        for result in results:
            if progress:
                progress(1)
            if result.transitions:
                yield result
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(sweep_zone, z, first_year, last_year) for z in names]
        for future in futures:
            result = future.result()
            if progress:
                progress(1)
            if result.transitions:
                yield result


def run(
    first_year: int,
    last_year: int,
    *,
    data_dir: Any,
    workers: int = 1,
    names: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The sweep, written to the event store as run ``dst-<from>-<to>``."""
    import polars as pl

    from simulation.events import EventStore, frame
    from simulation.tables import dumps

    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    results = list(sweep(first_year, last_year, names=names, workers=workers, progress=progress))
    seconds = time.perf_counter() - clock
    run_id = f"dst-{first_year}-{last_year}"
    utc = pl.Datetime("us", "UTC")

    def ts(posix: int) -> datetime:
        return datetime.fromtimestamp(posix, UTC)

    zones_df = frame(
        "dst_zones",
        pl.DataFrame(
            {
                "run_id": [run_id] * len(results),
                "zone": [r.zone for r in results],
                "transitions": [len(r.transitions) for r in results],
                "instances": [r.instances for r in results],
                "violations": [len(r.anomalies) for r in results],
            }
        ),
    )
    transitions_df = frame(
        "dst_transitions",
        pl.DataFrame(
            [
                (run_id, r.zone, ts(t.at), t.before, t.after, t.kind)
                for r in results
                for t in r.transitions
            ],
            schema={
                "run_id": pl.String,
                "zone": pl.String,
                "at": utc,
                "offset_before_s": pl.Int64,
                "offset_after_s": pl.Int64,
                "kind": pl.String,
            },
            orient="row",
        ),
    )
    anomalies_df = frame(
        "dst_anomalies",
        pl.DataFrame(
            [
                (run_id, r.zone, ts(at), local, a.check, a.detail)
                for r in results
                for at, local, a in r.anomalies
            ],
            schema={
                "run_id": pl.String,
                "zone": pl.String,
                "transition_at": utc,
                "series_local_start": pl.String,
                "check": pl.String,
                "detail": pl.String,
            },
            orient="row",
        ),
    )
    record = {
        "bench": "dst",
        "zones": len(results),
        "instances": int(zones_df["instances"].sum()),
        "violations": anomalies_df.height,
        "seconds": round(seconds, 2),
        "transitions": transitions_df.height,
        "zones_examined": len(names) if names is not None else len(zones()),
        "run_id": run_id,
    }
    params = {"from": first_year, "to": last_year, "workers": workers}
    summary = {k: record[k] for k in ("zones", "instances", "violations", "transitions")}
    runs_df = frame(
        "runs",
        [
            {
                "run_id": run_id,
                "kind": "dst",
                "seed": 0,
                "started_at": started_at,
                "params": dumps(params),
                "summary": dumps(summary),
            }
        ],
    )
    store = EventStore(data_dir)
    store.write(
        run_id,
        {
            "runs": runs_df,
            "dst_zones": zones_df,
            "dst_transitions": transitions_df,
            "dst_anomalies": anomalies_df,
        },
    )
    record["database"] = str(store.database)
    return record
