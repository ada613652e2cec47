"""Synthetic demand: reproducible by seed, heavy-tailed, seasonal, on the tenants' own clocks."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from simulation.demand import (
    DAILY,
    FLASH_HOURS,
    HORIZON_DAYS,
    ZONES,
    Customers,
    customers,
    period,
    tenant,
)

START = date(2027, 3, 1)


def _same(a: Customers, b: Customers) -> bool:
    return all(
        np.array_equal(getattr(a, f), getattr(b, f), equal_nan=getattr(a, f).dtype.kind == "f")
        for f in Customers.__dataclass_fields__
    )


def test_same_seed_same_demand_and_another_seed_another() -> None:
    p = period(7, START, 5)
    spec = tenant(7, 3, p)
    assert tenant(7, 3, p) == spec
    assert _same(customers(7, spec, p), customers(7, spec, p))
    other = period(8, START, 5)
    assert not _same(customers(8, tenant(8, 3, other), other), customers(7, spec, p))


def test_a_tenant_does_not_depend_on_how_many_are_drawn_or_who_draws_first() -> None:
    p = period(1, START, 3)
    first = [tenant(1, i, p) for i in range(5)]
    assert [tenant(1, i, p) for i in reversed(range(5))][::-1] == first


def test_population_is_heavy_tailed_and_spans_zones() -> None:
    p = period(1, START, 7)
    specs = [tenant(1, i, p) for i in range(300)]
    staff = np.array([s.staff for s in specs])
    assert np.median(staff) <= 4 and staff.max() >= 8 * np.median(staff)
    zones = {s.zone for s in specs}
    assert zones == set(ZONES)
    # Several continents, both hemispheres, zones with and without DST.
    assert {z.split("/")[0] for z in zones} >= {"America", "Europe", "Africa", "Asia", "Australia"}
    assert {"Australia/Sydney", "America/Sao_Paulo", "Asia/Kolkata", "America/Phoenix"} <= zones


def test_every_service_has_qualified_staff() -> None:
    p = period(3, START, 7)
    for spec in (tenant(3, i, p) for i in range(100)):
        for service in spec.services:
            for req in service.requirements:
                fit = [
                    r
                    for r in spec.resources
                    if r.kind == req.kind and set(req.skills) <= set(r.skills)
                ]
                assert len(fit) >= req.count, (spec.name, service.key)


def _local(posix: np.ndarray, zone: str) -> list[datetime]:
    tz = ZoneInfo(zone)
    return [datetime.fromtimestamp(int(t), tz) for t in posix]


def test_arrivals_follow_the_daily_and_weekly_profile_on_local_clocks() -> None:
    p = period(5, START, 28)
    spec = next(s for s in (tenant(5, i, p) for i in range(200)) if s.staff >= 15)
    c = customers(5, spec, p)
    local = _local(c.arrival, spec.zone)
    assert local[0].date() >= START and local[-1].date() < START + timedelta(days=28)
    assert np.all(np.diff(c.arrival) >= 0)
    hours = np.bincount([t.hour for t in local], minlength=24).astype(float)
    # Observed per-hour shares against the intensity profile (many thousands of arrivals).
    expected = DAILY / DAILY.sum()
    assert np.corrcoef(hours / hours.sum(), expected)[0, 1] > 0.95
    assert hours[3] < hours[19] / 10
    flash_day = START + timedelta(days=p.flash_day)
    burst = [t for t in local if t.date() == flash_day and t.hour in FLASH_HOURS]
    same_hours_other_days = [t for t in local if t.date() != flash_day and t.hour in FLASH_HOURS]
    assert len(burst) > 3 * len(same_hours_other_days) / 27
    assert c.flash.sum() == len(burst)


def test_wishes_are_quarter_hours_within_the_horizon() -> None:
    p = period(2, START, 10)
    spec = tenant(2, 2, p)
    c = customers(2, spec, p)
    arrivals = _local(c.arrival, spec.zone)
    wishes = _local(c.requested, spec.zone)
    for arrived, wish in zip(arrivals, wishes, strict=True):
        days = (wish.date() - arrived.date()).days
        assert 0 <= days <= HORIZON_DAYS
        assert wish.minute % 15 == 0 and wish.second == 0
        assert 7 <= wish.hour <= 21
    assert 0.3 < c.browses.mean() < 0.4
    assert 0.1 < c.abandons.mean() < 0.2
