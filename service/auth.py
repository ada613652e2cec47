"""API keys: `sw_<prefix>_<secret>`, stored as prefix + SHA-256 of the secret, scoped, revocable.

A fast hash is right here: the secret is 32 random bytes, so there is nothing to brute-force,
and authentication runs on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from service.errors import Forbidden, Unauthorized

SCOPES = frozenset({"read", "book", "manage"})
ALL_SCOPES = ("read", "book", "manage")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a tenant API key (or the operator's admin key, with no tenant)."""

    key_id: str
    tenant_id: str | None
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this API key lacks the {scope!r} scope", scope=scope)

    @property
    def tenant(self) -> str:
        if self.tenant_id is None:
            raise Forbidden("this endpoint needs a tenant API key, not the admin key")
        return self.tenant_id


@dataclass(frozen=True, slots=True)
class NewKey:
    prefix: str
    secret_hash: bytes
    token: str  # shown once, never stored


def new_key() -> NewKey:
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewKey(prefix, hash_secret(secret), f"sw_{prefix}_{secret}")


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_token(token: str) -> tuple[str, bytes]:
    """(prefix, secret hash) of a presented key; Unauthorized if it is not shaped like one."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "sw" or not parts[1] or not parts[2]:
        raise Unauthorized("malformed API key")
    return parts[1], hash_secret(parts[2])


def bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized("send `Authorization: Bearer <api key>`")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send `Authorization: Bearer <api key>`")
    return token.strip()


def is_admin(token: str, admin_key: str) -> bool:
    return hmac.compare_digest(token.encode(), admin_key.encode())
