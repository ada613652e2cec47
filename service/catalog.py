"""Tenants, API keys, resources (with working hours and exceptions) and services.

Input is validated by building the engine's own value types (zones, recurrence rules,
requirements), so what the database stores is exactly what the engine accepts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from engine.errors import InvalidModel, InvalidRecurrence, UnknownZone
from engine.intervals import Interval
from engine.model import Requirement, ResourceKind, Service
from engine.recurrence import Series
from engine.timezones import zone as check_zone
from service import repository as repo
from service.auth import ALL_SCOPES, SCOPES, Caller, new_key
from service.db import Database, Idempotency, acknowledge, audit, claim, remember
from service.errors import Forbidden, IdempotencyInFlight, InvalidInput, NotFound

_TENANT_NAMESPACE = uuid.UUID("6f1d8a52-3c1e-4f0e-9a55-5b0f0f5e7a11")
RULE_KEYS = {
    "min_lead_minutes": (0, 60 * 24 * 365),
    "max_advance_days": (1, 3650),
    "cancel_cutoff_minutes": (0, 60 * 24 * 365),
    "reschedule_cutoff_minutes": (0, 60 * 24 * 365),
}


def valid_zone(name: str, field: str = "zone") -> str:
    try:
        check_zone(name)
    except UnknownZone as exc:
        raise InvalidInput(str(exc), field=field) from exc
    return name


def valid_rules(raw: dict[str, Any], zone: str) -> dict[str, Any]:
    """Business rules: known keys, integer ranges, ISO blackout dates; checked by the engine."""
    rules: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "blackout_dates":
            if not isinstance(value, list) or len(value) > 1000:
                raise InvalidInput(
                    "blackout_dates must be a list of ISO dates", field="rules.blackout_dates"
                )
            try:
                rules[key] = sorted({date.fromisoformat(str(d)).isoformat() for d in value})
            except ValueError as exc:
                raise InvalidInput(
                    f"bad blackout date: {exc}", field="rules.blackout_dates"
                ) from exc
        elif key in RULE_KEYS:
            lo, hi = RULE_KEYS[key]
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise InvalidInput(
                    f"{key} must be an integer in [{lo}, {hi}]", field=f"rules.{key}"
                )
            rules[key] = value
        else:
            raise InvalidInput(
                f"unknown rule {key!r}; known: {', '.join(sorted([*RULE_KEYS, 'blackout_dates']))}",
                field=f"rules.{key}",
            )
    try:
        repo.rules_from(zone, rules)
    except (InvalidModel, ValueError) as exc:
        raise InvalidInput(str(exc), field="rules") from exc
    return rules


def valid_requirements(raw: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if not raw or len(raw) > 10:
        raise InvalidInput("a service needs 1 to 10 requirements", field="requirements")
    out = []
    for i, item in enumerate(raw):
        try:
            req = Requirement(
                ResourceKind(item["kind"]),
                frozenset(item.get("skills", [])),
                int(item.get("count", 1)),
            )
        except (KeyError, ValueError, TypeError, InvalidModel) as exc:
            raise InvalidInput(f"requirement {i}: {exc}", field=f"requirements[{i}]") from exc
        if req.count > 10:
            raise InvalidInput(
                f"requirement {i}: count must be <= 10", field=f"requirements[{i}].count"
            )
        out.append({"kind": req.kind.value, "skills": sorted(req.skills), "count": req.count})
    return out


# A booking calendar has nothing that recurs more often than daily; finer rules would make every
# calendar expansion explode (FREQ=SECONDLY is ~10^6 instances a fortnight).
ALLOWED_FREQUENCIES = ("DAILY", "WEEKLY", "MONTHLY", "YEARLY")


def valid_rrule(rrule: str, field: str = "rrule") -> str:
    """The service's policy on top of the engine's RFC 5545 checks: FREQ DAILY or coarser."""
    for part in rrule.strip().upper().removeprefix("RRULE:").split(";"):
        key, _, value = (s.strip() for s in part.partition("="))
        if key == "FREQ" and value not in ALLOWED_FREQUENCIES:
            raise InvalidInput(
                f"FREQ={value} is not supported; use one of {', '.join(ALLOWED_FREQUENCIES)}",
                field=field,
            )
    return rrule


def valid_hours(
    zone: str, starts_local: datetime, minutes: int, rrule: str | None, field: str
) -> None:
    if starts_local.tzinfo is not None:
        raise InvalidInput(
            "starts_local is a local wall time: no offset", field=f"{field}.starts_local"
        )
    if rrule is not None:
        valid_rrule(rrule, f"{field}.rrule")
    try:
        Series(zone, starts_local, timedelta(minutes=minutes), rrule)
    except (InvalidRecurrence, UnknownZone, ValueError) as exc:
        raise InvalidInput(str(exc), field=f"{field}.rrule") from exc


class CatalogService:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    # --- tenants and keys ----------------------------------------------------------------------
    async def create_tenant(
        self, caller: Caller, body: dict[str, Any], idem: Idempotency | None, request_id: str | None
    ) -> tuple[int, dict[str, Any]]:
        if caller.tenant_id is not None:
            raise Forbidden("creating tenants needs the admin key")
        zone = valid_zone(body["zone"])
        rules = valid_rules(body.get("rules") or {}, zone)
        # With an Idempotency-Key the tenant id is derived from it, so a retry meets the tenant
        # its first attempt created (and that attempt's stored answer) instead of a twin.
        tenant_id = (
            str(uuid.uuid5(_TENANT_NAMESPACE, idem.key)) if idem is not None else repo.new_id()
        )
        key = new_key()
        key_id = repo.new_id()
        async with self.db.transaction(tenant_id) as conn:
            if not await repo.insert_tenant(conn, tenant_id, body["name"], zone, rules):
                replay = await claim(conn, tenant_id, idem)
                if replay is None:
                    raise IdempotencyInFlight("retry: the first request with this key failed")
                status, first = replay
                # The token is a secret shown once; the replay names the key without it.
                return status, {**first, "api_key": {**first["api_key"], "token": None}}
            await claim(conn, tenant_id, idem)
            await repo.insert_api_key(
                conn, tenant_id, key_id, key.prefix, key.secret_hash, ALL_SCOPES, "initial"
            )
            await audit(
                conn, caller, "tenant.create", "tenant", tenant_id, request_id, tenant_id=tenant_id
            )
            tenant = await repo.get_tenant(conn, tenant_id)
            answer = {
                "tenant": _tenant_json(tenant),
                "api_key": {"id": key_id, "token": None, "scopes": list(ALL_SCOPES)},
            }
            await remember(conn, tenant_id, idem, 201, answer)
        answer["api_key"]["token"] = key.token
        return 201, answer

    async def get_tenant(self, caller: Caller, request_id: str | None) -> dict[str, Any]:
        caller.require("read")
        async with self.db.transaction(caller.tenant) as conn:
            tenant = await repo.get_tenant(conn, caller.tenant)
            await audit(conn, caller, "tenant.read", "tenant", caller.tenant, request_id)
        return _tenant_json(tenant)

    async def create_key(
        self,
        caller: Caller,
        name: str,
        scopes: Sequence[str],
        idem: Idempotency | None,
        request_id: str | None,
    ) -> tuple[int, dict[str, Any]]:
        caller.require("manage")
        unknown = set(scopes) - SCOPES
        if unknown or not scopes:
            raise InvalidInput(
                f"scopes must be a non-empty subset of {sorted(SCOPES)}", field="scopes"
            )
        key = new_key()
        key_id = repo.new_id()
        async with self.db.transaction(caller.tenant) as conn:
            replay = await claim(conn, caller.tenant, idem)
            if replay is not None:
                # The token is a secret shown once; a replay returns the key without it.
                status, body = replay
                return status, {**body, "token": None}
            await repo.insert_api_key(
                conn, caller.tenant, key_id, key.prefix, key.secret_hash, sorted(set(scopes)), name
            )
            body = {"id": key_id, "name": name, "scopes": sorted(set(scopes))}
            await acknowledge(
                conn, caller, idem, (201, body), "api_key.create", "api_key", key_id, request_id
            )
        return 201, {**body, "token": key.token}

    async def list_keys(self, caller: Caller, request_id: str | None) -> list[dict[str, Any]]:
        caller.require("manage")
        async with self.db.transaction(caller.tenant) as conn:
            keys = await repo.list_api_keys(conn)
            await audit(conn, caller, "api_key.list", "api_key", None, request_id)
        return keys

    async def revoke_key(self, caller: Caller, key_id: str, request_id: str | None) -> None:
        caller.require("manage")
        async with self.db.transaction(caller.tenant) as conn:
            if not await repo.revoke_api_key(conn, key_id):
                raise NotFound(f"no active API key {key_id}", api_key_id=key_id)
            await audit(conn, caller, "api_key.revoke", "api_key", key_id, request_id)

    # --- resources -----------------------------------------------------------------------------
    async def create_resource(
        self, caller: Caller, body: dict[str, Any], idem: Idempotency | None, request_id: str | None
    ) -> tuple[int, dict[str, Any]]:
        caller.require("manage")
        zone = valid_zone(body["zone"])
        for i, hours in enumerate(body.get("working_hours") or []):
            valid_hours(
                zone,
                hours["starts_local"],
                hours["duration_minutes"],
                hours.get("rrule"),
                f"working_hours[{i}]",
            )
        rid = repo.new_id()
        async with self.db.transaction(caller.tenant) as conn:
            replay = await claim(conn, caller.tenant, idem)
            if replay is not None:
                return replay
            await repo.insert_resource(conn, caller.tenant, rid, body)
            for hours in body.get("working_hours") or []:
                await repo.insert_working_hours(
                    conn,
                    caller.tenant,
                    rid,
                    hours["starts_local"],
                    hours["duration_minutes"],
                    hours.get("rrule"),
                )
            resource = _json_ready(await repo.get_resource(conn, rid))
            await acknowledge(
                conn,
                caller,
                idem,
                (201, resource),
                "resource.create",
                "resource",
                rid,
                request_id,
                {"kind": body["kind"]},
            )
        return 201, resource

    async def get_resource(
        self, caller: Caller, rid: str, request_id: str | None
    ) -> dict[str, Any]:
        caller.require("read")
        async with self.db.transaction(caller.tenant) as conn:
            resource = await repo.get_resource(conn, rid)
            await audit(conn, caller, "resource.read", "resource", rid, request_id)
        out: dict[str, Any] = _json_ready(resource)
        return out

    async def list_resources(self, caller: Caller, request_id: str | None) -> list[dict[str, Any]]:
        caller.require("read")
        async with self.db.transaction(caller.tenant) as conn:
            rows = await repo.list_resources(conn)
            await audit(conn, caller, "resource.list", "resource", None, request_id)
        return rows

    async def add_working_hours(
        self,
        caller: Caller,
        rid: str,
        body: dict[str, Any],
        idem: Idempotency | None,
        request_id: str | None,
    ) -> tuple[int, dict[str, Any]]:
        caller.require("manage")
        async with self.db.transaction(caller.tenant) as conn:
            replay = await claim(conn, caller.tenant, idem)
            if replay is not None:
                return replay
            resource = await repo.get_resource(conn, rid)
            valid_hours(
                resource["zone"],
                body["starts_local"],
                body["duration_minutes"],
                body.get("rrule"),
                "working_hours",
            )
            await repo.insert_working_hours(
                conn,
                caller.tenant,
                rid,
                body["starts_local"],
                body["duration_minutes"],
                body.get("rrule"),
            )
            out = _json_ready(await repo.get_resource(conn, rid))
            await acknowledge(
                conn, caller, idem, (201, out), "resource.hours.add", "resource", rid, request_id
            )
        return 201, out

    async def add_exception(
        self,
        caller: Caller,
        rid: str,
        kind: str,
        interval: Interval,
        note: str,
        idem: Idempotency | None,
        request_id: str | None,
    ) -> tuple[int, dict[str, Any]]:
        caller.require("manage")
        async with self.db.transaction(caller.tenant) as conn:
            replay = await claim(conn, caller.tenant, idem)
            if replay is not None:
                return replay
            await repo.get_resource(conn, rid)
            eid = await repo.insert_exception(conn, caller.tenant, rid, kind, interval, note)
            out = _json_ready(await repo.get_resource(conn, rid))
            await acknowledge(
                conn,
                caller,
                idem,
                (201, out),
                "resource.exception.add",
                "resource",
                rid,
                request_id,
                {"exception_id": eid},
            )
        return 201, out

    async def delete_exception(
        self, caller: Caller, rid: str, eid: str, request_id: str | None
    ) -> None:
        caller.require("manage")
        async with self.db.transaction(caller.tenant) as conn:
            if not await repo.delete_exception(conn, rid, eid):
                raise NotFound(f"no exception {eid} on resource {rid}", exception_id=eid)
            await audit(
                conn,
                caller,
                "resource.exception.delete",
                "resource",
                rid,
                request_id,
                {"exception_id": eid},
            )

    # --- services ------------------------------------------------------------------------------
    async def create_service(
        self, caller: Caller, body: dict[str, Any], idem: Idempotency | None, request_id: str | None
    ) -> tuple[int, dict[str, Any]]:
        caller.require("manage")
        requirements = valid_requirements(body["requirements"])
        try:
            Service(
                "check",
                timedelta(minutes=body["duration_minutes"]),
                repo.requirements_from(requirements),
                timedelta(minutes=body["buffer_before_minutes"]),
                timedelta(minutes=body["buffer_after_minutes"]),
                timedelta(minutes=body["step_minutes"]),
            )
        except InvalidModel as exc:
            raise InvalidInput(str(exc), field="service") from exc
        sid = repo.new_id()
        async with self.db.transaction(caller.tenant) as conn:
            replay = await claim(conn, caller.tenant, idem)
            if replay is not None:
                return replay
            tenant = await repo.get_tenant(conn, caller.tenant)
            rules = valid_rules(body.get("rules") or {}, tenant["zone"])
            await repo.insert_service(
                conn, caller.tenant, sid, {**body, "requirements": requirements, "rules": rules}
            )
            out = (await repo.get_service(conn, sid)).public()
            await acknowledge(
                conn, caller, idem, (201, out), "service.create", "service", sid, request_id
            )
        return 201, out

    async def get_service(self, caller: Caller, sid: str, request_id: str | None) -> dict[str, Any]:
        caller.require("read")
        async with self.db.transaction(caller.tenant) as conn:
            out = (await repo.get_service(conn, sid)).public()
            await audit(conn, caller, "service.read", "service", sid, request_id)
        return out

    async def list_services(self, caller: Caller, request_id: str | None) -> list[dict[str, Any]]:
        caller.require("read")
        async with self.db.transaction(caller.tenant) as conn:
            tenant = await repo.get_tenant(conn, caller.tenant)
            records = await repo.list_services(conn, tenant["zone"], tenant["rules"])
            await audit(conn, caller, "service.list", "service", None, request_id)
        return [r.public() for r in records]

    async def audit_feed(
        self,
        caller: Caller,
        after: str,
        limit: int,
        writes_only: bool,
        entity: str | None,
        request_id: str | None,
    ) -> dict[str, Any]:
        """Audit events oldest first, paged by the cursor ``after`` (``next_after`` of the
        previous page; "0.0" to start). ``writes_only`` gives the activity feed: bookings,
        staff and service changes, queue assignments — no reads."""
        caller.require("read")
        xact, event_id = (int(part) for part in after.split("."))
        if xact >= 2**64 or event_id >= 2**63:  # beyond xid8 and bigint
            raise InvalidInput("after is not a cursor this feed gave out", field="after")
        async with self.db.transaction(caller.tenant) as conn:
            events = await repo.audit_feed(conn, (xact, event_id), limit, writes_only, entity)
            await audit(conn, caller, "audit.read", "audit", None, request_id)
        cursor = f"{events[-1]['cursor_xact']}.{events[-1]['id']}" if events else after
        public = [_json_ready({k: v for k, v in e.items() if k != "cursor_xact"}) for e in events]
        return {"events": public, "next_after": cursor}


def _tenant_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "zone": row["zone"],
        "rules": row["rules"],
        "created_at": row["created_at"].isoformat(),
    }


def _json_ready(value: Any) -> Any:
    """Rows to JSON-safe values (datetimes as ISO text)."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value
