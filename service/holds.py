"""Tentative holds in Valkey/Redis: atomic across every resource a slot needs, TTL-bound.

Layer 1 of the booking protocol. One Lua script checks every resource's live holds and takes
them all, or none. Keys carry the tenant as a Redis Cluster hash tag, so one tenant's holds
always live in one slot and the script stays single-shard.

A hold's public id is a signed token that describes the hold (tenant, owner, service, start,
resources, expiry). Confirmation reads the token, not Redis: if Redis is down, holds degrade
(not exclusive any more) but confirmation still works through PostgreSQL's locks and
constraint, which never trusted the hold anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from service.db import to_json
from service.errors import Forbidden, HoldExpired, InvalidInput
from service.valkey import Script, Valkey, ValkeyError

# No footprint (service + buffers) is longer than this; the scan window for overlap relies on it.
MAX_FOOTPRINT = timedelta(days=3)


class HoldStoreDown(ConnectionError):
    """Redis/Valkey could not be reached; callers degrade to the database layers."""


def valkey_client(url: str) -> Valkey:
    """One worker's Valkey client: one pipelined connection (`service.valkey`). A wait of more
    than 2 s for an answer counts as Valkey being down; it is measured by an event loop that
    thousands of requests in flight keep busy, and at 0.5 s a 10,000-request burst timed out
    on a healthy Valkey. Callers inside a transaction set a tighter deadline of their own
    (`BookingService.plan`)."""
    return Valkey.from_url(url, timeout_s=2.0, connect_timeout_s=2.0)


@dataclass(frozen=True, slots=True)
class Claim:
    """One resource's buffered footprint, in epoch milliseconds."""

    resource_id: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class HoldConflict:
    resource_id: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class Hold:
    """What a hold token says. `nonce` names the hold in Redis."""

    tenant_id: str
    owner: str
    nonce: str
    service_id: str
    start: datetime
    resources: tuple[tuple[int, str], ...]  # (requirement index, resource id)
    expires_at: datetime
    degraded: bool = False  # taken while Redis was down: not exclusive


class HoldStore(Protocol):
    async def acquire(
        self, tenant_id: str, nonce: str, claims: Sequence[Claim], ttl: timedelta
    ) -> HoldConflict | None: ...

    async def extend(
        self, tenant_id: str, nonce: str, claims: Sequence[Claim], ttl: timedelta
    ) -> bool: ...

    async def release(self, tenant_id: str, nonce: str, claims: Sequence[Claim]) -> bool: ...

    async def keep(
        self, tenant_id: str, nonce: str, claims: Sequence[Claim], ttl: timedelta
    ) -> bool: ...

    async def live_claims(
        self, tenant_id: str, resource_ids: Sequence[str], start_ms: int, end_ms: int
    ) -> dict[str, list[tuple[int, int, str]]]: ...


# KEYS: hold key, then one sorted set per resource. ARGV: ttl_ms, scan_back_ms, key prefix,
# nonce, then (start_ms, end_ms) per resource. Members are "<nonce>:<start>:<end>", scored by
# start; a member whose hold key is gone belongs to an expired hold and is swept on sight.
# The first clash with another live hold is returned as {resource index, start, end}.
_FIND_CLASH = """
local ttl, back, prefix, nonce = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
for i = 2, #KEYS do
  local lo, hi = tonumber(ARGV[3 + 2 * (i - 1)]), tonumber(ARGV[4 + 2 * (i - 1)])
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[i], lo - back, '(' .. hi)) do
    local other, mlo, mhi = string.match(m, '^([^:]+):(%d+):(%d+)')
    if tonumber(mhi) > lo and other ~= nonce then
      if redis.call('EXISTS', prefix .. other) == 1 then
        return {i - 1, tonumber(mlo), tonumber(mhi)}
      end
      redis.call('ZREM', KEYS[i], m)
    end
  end
end
"""
_ACQUIRE = Script(
    _FIND_CLASH
    + """
redis.call('SET', KEYS[1], '1', 'PX', ttl)
for i = 2, #KEYS do
  local lo, hi = ARGV[3 + 2 * (i - 1)], ARGV[4 + 2 * (i - 1)]
  redis.call('ZADD', KEYS[i], lo, nonce .. ':' .. lo .. ':' .. hi)
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 0
"""
)

# KEYS: hold key, resource sets. ARGV: ttl_ms. Only a live hold can be extended.
_EXTEND = Script("""
local ttl = tonumber(ARGV[1])
if redis.call('PEXPIRE', KEYS[1], ttl) == 0 then return 0 end
for i = 2, #KEYS do
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
""")

# KEYS: hold key, resource sets. ARGV: members to remove, one per resource set (as held, or
# as kept after its booking: see _KEEP).
_RELEASE = Script("""
local BOOKED = ':b'
local existed = redis.call('DEL', KEYS[1])
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[i - 1], ARGV[i - 1] .. BOOKED) end
return existed
""")

# KEYS: hold key, resource sets. ARGV: ttl_ms, then the members, one per resource set. A hold
# kept after its booking still refuses overlapping holds (the acquire script reads every
# member), but its members are marked, so `live_claims` (availability) can skip them unread:
# that time is booked, and PostgreSQL already says so.
_KEEP = Script("""
local BOOKED = ':b'
if redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1])) == 0 then return 0 end
for i = 2, #KEYS do
  local m = ARGV[i]
  if redis.call('ZREM', KEYS[i], m) == 1 then
    redis.call('ZADD', KEYS[i], string.match(m, ':(%d+):'), m .. BOOKED)
  end
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[1]) then
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1]))
  end
end
return 1
""")


# KEYS: resource sets. ARGV: scan from (ms), window start (ms), window end (ms, exclusive), hold
# key prefix. The live holds overlapping the window, flat: resource index, start, end, nonce.
# Kept holds of confirmed bookings ("...:b", see _KEEP) are left out unread: their time is
# booked, and PostgreSQL says so. Right after a rush most members are those, and sending them
# all back to be parsed and dropped cost an availability request more than the rest of it.
_LIVE = Script("""
local from, lo, hi, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local out = {}
for i = 1, #KEYS do
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[i], from, '(' .. hi)) do
    local nonce, mlo, mhi = string.match(m, '^([^:]+):(%d+):(%d+)$')
    if nonce and tonumber(mhi) > lo and redis.call('EXISTS', prefix .. nonce) == 1 then
      table.insert(out, i - 1)
      table.insert(out, tonumber(mlo))
      table.insert(out, tonumber(mhi))
      table.insert(out, nonce)
    end
  end
end
return out
""")


class RedisHoldStore:
    """The `HoldStore` on Valkey/Redis."""

    def __init__(self, client: Valkey) -> None:
        self._valkey = client

    @staticmethod
    def _prefix(tenant_id: str) -> str:
        return f"{{sw:{tenant_id}}}:"

    def _keys(self, tenant_id: str, nonce: str, claims: Sequence[Claim]) -> list[str]:
        prefix = self._prefix(tenant_id)
        return [prefix + "hold:" + nonce, *(prefix + "res:" + c.resource_id for c in claims)]

    async def acquire(
        self, tenant_id: str, nonce: str, claims: Sequence[Claim], ttl: timedelta
    ) -> HoldConflict | None:
        args: list[Any] = [_ms(ttl), _ms(MAX_FOOTPRINT), self._prefix(tenant_id) + "hold:", nonce]
        for claim in claims:
            args += [claim.start_ms, claim.end_ms]
        result = await self._call(_ACQUIRE, self._keys(tenant_id, nonce, claims), args)
        if result == 0:
            return None
        index, lo, hi = result
        return HoldConflict(claims[int(index) - 1].resource_id, int(lo), int(hi))

    async def extend(
        self, tenant_id: str, nonce: str, claims: Sequence[Claim], ttl: timedelta
    ) -> bool:
        return bool(await self._call(_EXTEND, self._keys(tenant_id, nonce, claims), [_ms(ttl)]))

    async def release(self, tenant_id: str, nonce: str, claims: Sequence[Claim]) -> bool:
        members = [f"{nonce}:{c.start_ms}:{c.end_ms}" for c in claims]
        return bool(await self._call(_RELEASE, self._keys(tenant_id, nonce, claims), members))

    async def keep(
        self, tenant_id: str, nonce: str, claims: Sequence[Claim], ttl: timedelta
    ) -> bool:
        """Keep a confirmed hold for ``ttl`` more, as time that is booked (see `_KEEP`)."""
        members = [f"{nonce}:{c.start_ms}:{c.end_ms}" for c in claims]
        keys = self._keys(tenant_id, nonce, claims)
        return bool(await self._call(_KEEP, keys, [_ms(ttl), *members]))

    async def live_claims(
        self, tenant_id: str, resource_ids: Sequence[str], start_ms: int, end_ms: int
    ) -> dict[str, list[tuple[int, int, str]]]:
        """Per resource, (start_ms, end_ms, nonce) of live holds overlapping the window."""
        prefix = self._prefix(tenant_id)
        keys = [prefix + "res:" + rid for rid in resource_ids]
        args = [start_ms - _ms(MAX_FOOTPRINT), start_ms, end_ms, prefix + "hold:"]
        found = await self._call(_LIVE, keys, args)
        live: dict[str, list[tuple[int, int, str]]] = {}
        for at in range(0, len(found), 4):
            index, lo, hi, nonce = found[at : at + 4]
            live.setdefault(resource_ids[index], []).append((lo, hi, nonce.decode()))
        return live

    async def _call(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._valkey.run(script, keys, args)
        except ValkeyError as exc:  # any failure: degrade, never 500
            raise HoldStoreDown(str(exc)) from exc


def _ms(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)


# --- hold tokens --------------------------------------------------------------------------------
class HoldTokens:
    """Signs and verifies hold ids (HMAC-SHA256 over a compact JSON body)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the hold-token secret must be at least 16 bytes")
        self._secret = secret

    def issue(self, hold: Hold) -> str:
        # `to_json` writes what json.dumps(separators=(",", ":")) did, for these ASCII values.
        body = to_json(
            {
                "t": hold.tenant_id,
                "o": hold.owner,
                "n": hold.nonce,
                "s": hold.service_id,
                "at": hold.start.isoformat(),
                "r": hold.resources,
                "x": hold.expires_at.isoformat(),
                "d": hold.degraded,
            }
        ).encode()
        payload = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
        return f"h1.{payload}.{self._sign(payload)}"

    def read(self, token: str, tenant_id: str, owner: str, now: datetime) -> Hold:
        """The hold a token describes, if it is genuine, this caller's, and unexpired."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "h1" or len(token) > 4096:
            raise InvalidInput("malformed hold id", field="hold_id")
        if not hmac.compare_digest(self._sign(parts[1]), parts[2]):
            raise InvalidInput("hold id signature does not verify", field="hold_id")
        data = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        hold = Hold(
            tenant_id=data["t"],
            owner=data["o"],
            nonce=data["n"],
            service_id=data["s"],
            start=datetime.fromisoformat(data["at"]),
            resources=tuple((int(i), str(r)) for i, r in data["r"]),
            expires_at=datetime.fromisoformat(data["x"]),
            degraded=bool(data["d"]),
        )
        if hold.tenant_id != tenant_id or hold.owner != owner:
            raise Forbidden("this hold belongs to another caller")
        if hold.expires_at <= now:
            raise HoldExpired(f"hold expired at {hold.expires_at.isoformat()}")
        return hold

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_nonce() -> str:
    return secrets.token_hex(8)


def expiry(now: datetime, ttl: timedelta) -> datetime:
    return (now + ttl).astimezone(UTC)
