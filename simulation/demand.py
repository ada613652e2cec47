"""Synthetic multi-tenant demand, drawn from one seed.

A tenant is a small business (salon, clinic, spa, studio) in one IANA zone, with staff (skills,
shifts in local time, a daily capacity), rooms, and a menu of services. Tenant sizes are
heavy-tailed (Pareto staff counts), zones span every inhabited continent, both hemispheres and
zones without DST. Customers arrive as a non-homogeneous Poisson process whose intensity is
piecewise constant per local hour (daily x weekly seasonality, plus one flash crowd on the
"busiest day of the year"); each one wants a service at a preferred local time some lead time
ahead, and carries pre-drawn behaviour: how long they browse and think, whether they abandon
their hold, how patient they are after a conflict, and whether they later cancel, reschedule or
fail to show up.

Every draw comes from a generator seeded by ``(seed, purpose, tenant index)``, so tenant ``i``
is the same whatever the tenant count, and a worker process can draw its tenants alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import numpy as np

from engine.calendar import day_span, instant
from engine.timezones import local_date, to_instant

# Interleaved so that the first few tenants already span continents, hemispheres and DST rules.
ZONES = (
    "America/New_York",
    "Europe/Berlin",
    "Australia/Sydney",  # southern hemisphere, DST
    "Asia/Kolkata",  # +05:30, no DST
    "America/Sao_Paulo",  # southern hemisphere, no DST since 2019
    "Africa/Johannesburg",  # no DST
    "Pacific/Auckland",  # southern hemisphere, DST
    "America/Phoenix",  # no DST beside DST neighbours
    "Asia/Tokyo",
    "Europe/London",
    "America/Santiago",  # DST whose transitions happen at local midnight
    "Australia/Lord_Howe",  # 30-minute DST
    "America/Los_Angeles",
    "Africa/Lagos",
    "Asia/Kathmandu",  # +05:45
    "America/St_Johns",  # -03:30 with DST
    "Europe/Madrid",
    "Australia/Brisbane",  # no DST
    "America/Mexico_City",  # no DST since 2022
    "Pacific/Chatham",  # +12:45 with DST
    "Asia/Singapore",
    "Africa/Cairo",  # DST again since 2023
    "America/Chicago",
    "Asia/Dubai",
)

HOLD_TTL_S = 300  # the service's default hold lifetime
HORIZON_DAYS = 28  # the furthest ahead a customer books


@dataclass(frozen=True, slots=True)
class Shift:
    """A recurring stretch of working time on the local clock."""

    rrule: str
    start: time
    minutes: int


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    key: str  # unique within the tenant, e.g. "staff-03"
    name: str
    kind: str  # staff | room
    skills: tuple[str, ...]
    daily_capacity: int | None
    shifts: tuple[Shift, ...]


@dataclass(frozen=True, slots=True)
class RequirementSpec:
    kind: str
    skills: tuple[str, ...] = ()
    count: int = 1


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    key: str
    name: str
    duration: int  # minutes
    requirements: tuple[RequirementSpec, ...]
    weight: float  # how often customers pick it
    buffer_before: int = 0
    buffer_after: int = 0
    step: int = 15


@dataclass(frozen=True, slots=True)
class TenantSpec:
    index: int
    name: str
    business: str
    zone: str
    resources: tuple[ResourceSpec, ...]
    services: tuple[ServiceSpec, ...]
    min_lead_minutes: int
    cancel_cutoff_minutes: int
    reschedule_cutoff_minutes: int
    blackout_dates: tuple[date, ...]
    customers_per_day: float  # mean arrivals per day before seasonality

    @property
    def staff(self) -> int:
        return sum(r.kind == "staff" for r in self.resources)


@dataclass(frozen=True, slots=True)
class Period:
    """The arrival window: ``days`` local days from ``start`` in each tenant's own zone."""

    start: date
    days: int
    flash_day: int  # index of the busiest day of the year within the period


@dataclass(frozen=True, slots=True)
class Customers:
    """One tenant's customers, column-wise, sorted by arrival (POSIX seconds)."""

    arrival: np.ndarray  # int64
    service: np.ndarray  # index into TenantSpec.services
    requested: np.ndarray  # int64: preferred start instant
    flash: np.ndarray  # bool: arrived in the flash crowd
    browse_s: np.ndarray  # seconds from looking at availability to asking for a hold
    think_s: np.ndarray  # seconds from the hold to confirming (or leaving)
    browses: np.ndarray  # bool: only looks at availability, never holds
    abandons: np.ndarray  # bool: leaves without confirming
    flex_days: np.ndarray  # further days looked at when the preferred day is full
    patience: np.ndarray  # retries after a refused hold
    cancel_at: np.ndarray  # float: fraction of the way from booking to start; nan = never
    reschedule_at: np.ndarray  # float, as cancel_at
    reschedule_days: np.ndarray  # int: days the new preferred start moves
    no_show: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.arrival)


# --- tenants ---------------------------------------------------------------------------------
_WEEKDAYS = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR"
_SHIFT_PATTERNS = (
    (Shift(_WEEKDAYS, time(9), 480),),
    (Shift("FREQ=WEEKLY;BYDAY=TU,WE,TH,FR,SA", time(10), 480),),
    (Shift(_WEEKDAYS, time(8), 240), Shift(_WEEKDAYS, time(13), 300)),  # split shift
    (Shift("FREQ=WEEKLY;BYDAY=MO,WE,FR,SA", time(12), 480),),  # late shift
    (Shift("FREQ=WEEKLY;BYDAY=MO,TU,WE,TH", time(7), 600),),  # four long days
)
_ROOM_HOURS = (Shift("FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA", time(7), 14 * 60),)


def _req(kind: str, *skills: str, count: int = 1) -> RequirementSpec:
    return RequirementSpec(kind, skills, count)


# business -> (staff skills with how common each is, room skills, services)
_BUSINESSES: dict[str, tuple[dict[str, float], tuple[str, ...], tuple[ServiceSpec, ...]]] = {
    "salon": (
        {"cut": 0.85, "colour": 0.45, "nails": 0.3},
        ("sink",),
        (
            ServiceSpec("cut", "Cut", 30, (_req("staff", "cut"),), 6, buffer_after=5),
            ServiceSpec(
                "colour",
                "Colour",
                90,
                (_req("staff", "colour"), _req("room", "sink")),
                3,
                buffer_after=10,
            ),
            ServiceSpec("nails", "Nails", 45, (_req("staff", "nails"),), 2),
        ),
    ),
    "clinic": (
        {"gp": 0.7, "physio": 0.35, "vaccines": 0.5},
        ("exam",),
        (
            ServiceSpec("consult", "Consultation", 15, (_req("staff", "gp"), _req("room")), 6),
            ServiceSpec(
                "physio",
                "Physiotherapy",
                45,
                (_req("staff", "physio"), _req("room", "exam")),
                3,
                buffer_after=15,
            ),
            ServiceSpec("vaccine", "Vaccination", 15, (_req("staff", "vaccines"),), 2),
        ),
    ),
    "spa": (
        {"massage": 0.8, "facial": 0.4},
        ("quiet",),
        (
            ServiceSpec(
                "massage",
                "Massage",
                60,
                (_req("staff", "massage"), _req("room", "quiet")),
                5,
                buffer_before=10,
                buffer_after=10,
                step=30,
            ),
            ServiceSpec("facial", "Facial", 60, (_req("staff", "facial"), _req("room")), 3),
            ServiceSpec(
                "duo",
                "Duo massage",
                60,
                (_req("staff", "massage", count=2), _req("room", "quiet")),
                1,
                buffer_after=15,
                step=30,
            ),
        ),
    ),
    "studio": (
        {"training": 0.9, "yoga": 0.4},
        ("mats",),
        (
            ServiceSpec("pt", "Personal training", 60, (_req("staff", "training"),), 5, step=30),
            ServiceSpec(
                "yoga", "Private yoga", 60, (_req("staff", "yoga"), _req("room", "mats")), 2
            ),
        ),
    ),
}
BUSINESSES = tuple(_BUSINESSES)


def tenant(seed: int, index: int, period: Period) -> TenantSpec:
    """Tenant ``index`` of the population drawn from ``seed`` (independent of the count)."""
    rng = np.random.default_rng([seed, 0, index])
    business = BUSINESSES[int(rng.integers(len(BUSINESSES)))]
    staff_skills, room_skills, services = _BUSINESSES[business]
    zone = ZONES[(index + seed) % len(ZONES)]
    # Pareto staff counts: most tenants have 2-5 staff, a few have dozens.
    staff = int(min(60, 2 + np.floor(rng.pareto(1.4) * 2.5)))
    rooms = max(1, round(staff * rng.uniform(0.3, 0.8)))
    resources: list[ResourceSpec] = []
    skill_names = list(staff_skills)
    for n in range(staff):
        skills = [s for s in skill_names if rng.random() < staff_skills[s]]
        if not skills:
            skills = [skill_names[0]]
        pattern = _SHIFT_PATTERNS[int(rng.integers(len(_SHIFT_PATTERNS)))]
        capacity = (None, 6, 8, 10)[int(rng.integers(4))]
        resources.append(
            ResourceSpec(
                f"staff-{n:02d}", f"Staff {n + 1}", "staff", tuple(skills), capacity, pattern
            )
        )
    # Every skill a service needs is held by someone (a menu item nobody can serve is a bug).
    for skill in skill_names:
        if not any(skill in r.skills for r in resources):
            lucky = int(rng.integers(staff))
            r = resources[lucky]
            resources[lucky] = ResourceSpec(
                r.key, r.name, r.kind, (*r.skills, skill), r.daily_capacity, r.shifts
            )
    for n in range(rooms):
        features = room_skills if n == 0 or rng.random() < 0.6 else ()
        resources.append(
            ResourceSpec(f"room-{n:02d}", f"Room {n + 1}", "room", features, None, _ROOM_HOURS)
        )
    if staff < 2:  # a duo service needs two qualified staff: drop it for tiny spas
        services = tuple(s for s in services if all(r.count <= staff for r in s.requirements))
    blackout: tuple[date, ...] = ()
    if rng.random() < 0.25:  # a local holiday closure inside the period
        blackout = (period.start + timedelta(days=int(rng.integers(period.days))),)
    popularity = float(rng.lognormal(0.0, 0.35))
    return TenantSpec(
        index=index,
        name=f"t{index:03d}-{business}",
        business=business,
        zone=zone,
        resources=tuple(resources),
        services=services,
        min_lead_minutes=int((0, 60, 120)[int(rng.integers(3))]),
        cancel_cutoff_minutes=int((0, 120, 1440)[int(rng.integers(3))]),
        reschedule_cutoff_minutes=int((0, 240, 1440)[int(rng.integers(3))]),
        blackout_dates=blackout,
        # ~27 visitors per staff member and day, a third of them only looking: the rest ask
        # for somewhat more than a staff member's 6-10 appointments, so popular days fill up.
        customers_per_day=27.0 * staff * popularity,
    )


def period(seed: int, start: date, days: int) -> Period:
    """The arrival window, with its flash-crowd day drawn from ``seed``."""
    rng = np.random.default_rng([seed, 2])
    return Period(start, days, int(rng.integers(days)))


# --- customers -------------------------------------------------------------------------------
# Relative arrival intensity per local hour (people book online at lunch and in the evening)
# and per local weekday (Monday first).
DAILY = np.array(
    [0.1, 0.05, 0.03, 0.03, 0.05, 0.15, 0.4, 0.8, 1.2, 1.5, 1.6, 1.6,
     1.9, 1.7, 1.4, 1.3, 1.3, 1.5, 1.8, 2.0, 1.9, 1.4, 0.8, 0.3]
)  # fmt: skip
DAILY = DAILY / DAILY.mean()
WEEKLY = np.array([1.25, 1.1, 1.0, 1.0, 0.95, 0.75, 0.95])
WEEKLY = WEEKLY / WEEKLY.mean()
FLASH_HOURS = range(11, 15)  # local hours of the flash crowd on its day
FLASH_FACTOR = 8.0


def customers(seed: int, spec: TenantSpec, period: Period) -> Customers:
    """Tenant ``spec``'s customers over ``period``: arrivals, wishes and behaviour."""
    rng = np.random.default_rng([seed, 1, spec.index])
    hours, rates, flash_hours = _intensity(spec, period)
    counts = rng.poisson(rates)
    n = int(counts.sum())
    # Within an hour of constant intensity, Poisson arrivals are uniform.
    starts = np.repeat(hours[:-1], counts)
    widths = np.repeat(np.diff(hours), counts)
    arrival = starts + np.floor(rng.random(n) * widths).astype(np.int64)
    flash = np.repeat(flash_hours, counts)
    order = np.argsort(arrival, kind="stable")
    arrival, flash = arrival[order], flash[order]

    weights = np.array([s.weight for s in spec.services])
    service = rng.choice(len(spec.services), size=n, p=weights / weights.sum())
    # Lead time in days: some want today or tomorrow, most a few days ahead (log-normal);
    # the flash crowd wants the next day or two.
    same_day = rng.random(n) < 0.15
    lead = np.where(same_day, 0, np.ceil(rng.lognormal(np.log(3.0), 0.8, n))).astype(np.int64)
    lead = np.where(flash, rng.integers(0, 3, n), np.minimum(lead, HORIZON_DAYS))
    # Preferred local time: morning, lunch or after-work peaks, on a quarter-hour.
    peak = rng.choice(3, size=n, p=[0.35, 0.3, 0.35])
    minutes = rng.normal(np.array([600, 780, 1050])[peak], 60)
    minutes = (np.clip(minutes, 420, 1260) // 15 * 15).astype(np.int64)
    requested = _local_instants(arrival, lead, minutes, spec.zone)

    think = rng.lognormal(np.log(75), 0.7, n)
    return Customers(
        arrival=arrival,
        service=service.astype(np.int64),
        requested=requested,
        flash=flash,
        browse_s=np.ceil(rng.lognormal(np.log(40), 0.6, n)).astype(np.int64),
        think_s=np.ceil(think).astype(np.int64),
        browses=rng.random(n) < 0.35,
        abandons=rng.random(n) < 0.15,
        flex_days=rng.choice(3, size=n, p=[0.5, 0.3, 0.2]),
        patience=rng.choice(3, size=n, p=[0.3, 0.4, 0.3]),
        cancel_at=np.where(rng.random(n) < 0.08, rng.random(n), np.nan),
        reschedule_at=np.where(rng.random(n) < 0.05, rng.random(n), np.nan),
        reschedule_days=rng.choice([-2, -1, 1, 2, 3], size=n),
        no_show=rng.random(n) < 0.05,
    )


def _intensity(spec: TenantSpec, period: Period) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hour boundaries (POSIX seconds, local hours of the tenant's zone), expected arrivals
    per hour, and which hours belong to the flash crowd."""
    bounds: list[int] = []
    rates: list[float] = []
    flash: list[bool] = []
    per_hour = spec.customers_per_day / 24.0
    for d in range(period.days):
        day = period.start + timedelta(days=d)
        lo, hi = day_span(day, spec.zone)
        # A local day has 23, 24 or 25 hours: split it evenly in 24 "clock hours".
        width = (hi - lo) / 24
        for h in range(24):
            bounds.append(lo + round(h * width))
            hot = d == period.flash_day and h in FLASH_HOURS
            rates.append(
                per_hour * DAILY[h] * WEEKLY[day.weekday()] * (FLASH_FACTOR if hot else 1.0)
            )
            flash.append(hot)
    bounds.append(day_span(period.start + timedelta(days=period.days - 1), spec.zone)[1])
    return np.array(bounds, dtype=np.int64), np.array(rates), np.array(flash)


def _local_instants(
    arrival: np.ndarray, lead_days: np.ndarray, minutes: np.ndarray, zone: str
) -> np.ndarray:
    """The instant of ``minutes`` past local midnight, ``lead_days`` after each arrival's
    local date (RFC 5545 policy for times a DST gap skips)."""
    out = np.empty(len(arrival), dtype=np.int64)
    cache: dict[tuple[date, int], int] = {}
    for i, (t, lead, minute) in enumerate(
        zip(arrival.tolist(), lead_days.tolist(), minutes.tolist(), strict=True)
    ):
        day = _local_date(t, zone) + timedelta(days=lead)
        key = (day, minute)
        value = cache.get(key)
        if value is None:
            local = datetime.combine(day, time()) + timedelta(minutes=minute)
            value = int(to_instant(local, zone).timestamp())
            cache[key] = value
        out[i] = value
    return out


def _local_date(posix: int, zone: str) -> date:
    return local_date(instant(posix), zone)
