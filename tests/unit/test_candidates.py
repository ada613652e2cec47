"""Which resources a hold or booking considers (`booking.candidates`): the same as scanning the
whole catalog, checked by hypothesis against that scan; and, with every requirement pinned,
work that does not grow with the tenant's resources."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.model import Requirement, Resource, ResourceKind, Service
from service import repository as repo
from service.booking import candidates, fixed_assignment, fixed_assignment_of
from service.errors import InvalidInput

SKILLS = ("cut", "colour")


def catalog_of(resources: list[Resource], service: Service | None = None) -> repo.Catalog:
    """A catalog of ``resources`` and (as "s") ``service``."""
    services = {}
    if service is not None:
        services["s"] = repo.ServiceRecord("s", "S", service, repo.rules_from("UTC"), [], {}, True)
    return repo.Catalog("tenant", 1, services, {r.id: r for r in resources}, {})


def service_of(*requirements: Requirement) -> Service:
    return Service("s", timedelta(minutes=30), tuple(requirements))


def scanning_everything(
    catalog: repo.Catalog, service: Service, pins: list[str]
) -> tuple[Service, dict[str, Resource]]:
    """The reference: every resource the service admits, pinned, then filtered again."""
    fit = {
        rid: r
        for rid, r in catalog.resources.items()
        if any(req.admits(r) for req in service.requirements)
    }
    service = replace(service, requirements=repo.pin(service.requirements, fit.values(), pins))
    return service, {
        rid: r for rid, r in fit.items() if any(req.admits(r) for req in service.requirements)
    }


kinds = st.sampled_from(list(ResourceKind))
skill_sets = st.frozensets(st.sampled_from(SKILLS))


@given(
    resources=st.lists(st.tuples(kinds, skill_sets), min_size=1, max_size=12),
    requirements=st.lists(st.tuples(kinds, skill_sets), min_size=1, max_size=3),
    data=st.data(),
)
def test_the_candidates_are_those_a_scan_of_the_whole_catalog_finds(
    resources: list[tuple[ResourceKind, frozenset[str]]],
    requirements: list[tuple[ResourceKind, frozenset[str]]],
    data: Any,
) -> None:
    catalog = catalog_of(
        [Resource(f"r{i}", kind, "UTC", skills) for i, (kind, skills) in enumerate(resources)]
    )
    service = service_of(*(Requirement(kind, skills) for kind, skills in requirements))
    admitted = sorted(scanning_everything(catalog, service, [])[1])
    pins = data.draw(
        st.lists(st.sampled_from(admitted), min_size=1, unique=True) if admitted else st.just([])
    )
    assert candidates(catalog, service, pins) == scanning_everything(catalog, service, pins)


STAFF = [Resource(f"staff-{i}", ResourceKind.STAFF, "UTC", frozenset(SKILLS)) for i in range(2000)]
ROOMS = [Resource(f"room-{i}", ResourceKind.ROOM, "UTC") for i in range(50)]
CUT_IN_A_ROOM = service_of(
    Requirement(ResourceKind.STAFF, frozenset({"cut"})), Requirement(ResourceKind.ROOM)
)


def test_with_every_requirement_pinned_only_the_pins_are_looked_at(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2,000 staff and 50 rooms: a booking of one staff member and one room asks whether a
    requirement admits a resource a handful of times, not once per resource (it was 4,000+)."""
    asked = []
    admits = Requirement.admits

    def counted(req: Requirement, resource: Resource) -> bool:
        asked.append(resource.id)
        return admits(req, resource)

    monkeypatch.setattr(Requirement, "admits", counted)
    catalog = catalog_of(STAFF + ROOMS)
    _, chosen = candidates(catalog, CUT_IN_A_ROOM, ["staff-7", "room-3"])
    assert sorted(chosen) == ["room-3", "staff-7"]
    assert set(asked) == {"room-3", "staff-7"} and len(asked) <= 12
    # A requirement the pins leave open (the room) still has every room to choose from.
    _, chosen = candidates(catalog, CUT_IN_A_ROOM, ["staff-7"])
    assert sorted(chosen) == sorted(["staff-7"] + [r.id for r in ROOMS])


def test_a_pin_the_service_cannot_use_is_refused_naming_what_it_lacks() -> None:
    catalog = catalog_of([*STAFF[:3], Resource("novice", ResourceKind.STAFF, "UTC")])
    with pytest.raises(InvalidInput) as refused:
        candidates(catalog, CUT_IN_A_ROOM, ["staff-1", "novice"])
    assert refused.value.extra["missing_skills"] == {"novice": ["cut"]}


@given(
    resources=st.lists(st.tuples(kinds, skill_sets), min_size=1, max_size=8),
    requirements=st.lists(st.tuples(kinds, skill_sets), min_size=1, max_size=3),
    asked=st.lists(st.lists(st.integers(min_value=0, max_value=9), max_size=3), max_size=12),
)
def test_a_remembered_fixed_assignment_is_the_one_worked_out_afresh(
    resources: list[tuple[ResourceKind, frozenset[str]]],
    requirements: list[tuple[ResourceKind, frozenset[str]]],
    asked: list[list[int]],
) -> None:
    """`fixed_assignment_of` answers repeats from the catalog: pins asked in any order and
    again (some naming no resource at all) get what `fixed_assignment` works out for them."""
    service = service_of(*(Requirement(kind, skills) for kind, skills in requirements))
    catalog = catalog_of(
        [Resource(f"r{i}", kind, "UTC", skills) for i, (kind, skills) in enumerate(resources)],
        service,
    )
    for numbers in asked + asked:
        pins = [f"r{n}" for n in numbers]
        assert fixed_assignment_of(catalog, "s", pins) == fixed_assignment(service, catalog, pins)


def test_only_pins_naming_resources_are_remembered_and_not_without_bound() -> None:
    """The pins are the client's: ones naming no resource are not remembered, and however many
    real combinations come, the memory stays bounded."""
    service = service_of(
        Requirement(ResourceKind.STAFF, frozenset({"cut"})), Requirement(ResourceKind.ROOM)
    )
    catalog = catalog_of(STAFF[:100] + ROOMS, service)
    for i in range(1_000):
        assert fixed_assignment_of(catalog, "s", [f"unknown-{i}"]) is None
    assert catalog.fixed_assignments == {}
    for staff in STAFF[:100]:
        for room in ROOMS:
            fixed_assignment_of(catalog, "s", [staff.id, room.id])
    assert 0 < len(catalog.fixed_assignments) <= 4096
    assert fixed_assignment_of(catalog, "s", ["staff-1", "room-2"]) == (
        (0, "staff-1"),
        (1, "room-2"),
    )
