"""Where the booking service finds PostgreSQL and Redis, and how long it trusts an API key lookup.

Read once, by an explicit `load_settings()` call (never at import time), into a frozen value.
When `DATABASE_URL` / `REDIS_URL` are set, that part is external and nothing embedded is started
for it; otherwise `service.infra` runs an embedded server under the data folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from service.valkey import Address

DEFAULT_PG_PORT = 25432
DEFAULT_REDIS_PORT = 26379
# Ports at or above 32768 fall in Linux's ephemeral range, where the kernel hands out client
# ports; a server there can find its port taken by some outgoing connection.
MAX_PORT = 32767
# How long a worker trusts what it looked up about an API key: a key revoked through another
# worker still works there that long.
DEFAULT_AUTH_CACHE_SECONDS = 1.0
MAX_AUTH_CACHE_SECONDS = 3600.0

DATABASE_NAME = "slotwise"
# Owns every table (NOLOGIN: migrations reach it with SET ROLE); the service logs in as the app
# role, which owns nothing and is not superuser, so Row Level Security applies to it.
OWNER_ROLE = "slotwise_owner"
APP_ROLE = "slotwise_app"

N = TypeVar("N", int, float)

_PG_SCHEMES = frozenset({"postgresql", "postgres"})
_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


class SettingsError(ValueError):
    """The environment holds a value that cannot be used."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Connection settings; URLs are kept out of `repr` because they carry passwords."""

    data_dir: Path
    database_url: str | None = field(default=None, repr=False)
    app_database_url: str | None = field(default=None, repr=False)
    redis_url: str | None = field(default=None, repr=False)
    pg_port: int = DEFAULT_PG_PORT
    redis_port: int = DEFAULT_REDIS_PORT
    auth_cache_seconds: float = DEFAULT_AUTH_CACHE_SECONDS


def project_root() -> Path:
    """The checkout this package lives in (its `pyproject.toml`), else the working directory."""
    candidate = Path(__file__).resolve().parents[1]
    if (candidate / "pyproject.toml").is_file():
        return candidate
    return Path.cwd()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `environ` (default: the process environment)."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None  # an empty variable means "not set", as in most shells' habits

    database_url = get("DATABASE_URL")
    app_database_url = get("APP_DATABASE_URL")
    redis_url = get("REDIS_URL")
    for name, url, schemes in (
        ("DATABASE_URL", database_url, _PG_SCHEMES),
        ("APP_DATABASE_URL", app_database_url, _PG_SCHEMES),
        ("REDIS_URL", redis_url, _REDIS_SCHEMES),
    ):
        if url is not None:
            _check_scheme(name, url, schemes)
    if redis_url is not None:
        try:  # as the service will read it: a bad port or database fails here, not at start-up
            Address.parse(redis_url)
        except ValueError as exc:
            raise SettingsError(f"REDIS_URL is not a usable Valkey URL: {exc}") from exc
    if app_database_url is not None and database_url is None:
        raise SettingsError(
            "APP_DATABASE_URL is set but DATABASE_URL is not: the embedded database makes its "
            "own app role, so set both or neither"
        )

    raw_dir = get("SLOTWISE_DATA_DIR")
    data_dir = Path(raw_dir).expanduser() if raw_dir else project_root() / "var"
    return Settings(
        data_dir=data_dir.absolute(),
        database_url=database_url,
        app_database_url=app_database_url,
        redis_url=redis_url,
        pg_port=_port(get("SLOTWISE_PG_PORT"), "SLOTWISE_PG_PORT", DEFAULT_PG_PORT),
        redis_port=_port(get("SLOTWISE_REDIS_PORT"), "SLOTWISE_REDIS_PORT", DEFAULT_REDIS_PORT),
        auth_cache_seconds=_auth_cache_seconds(get("SLOTWISE_AUTH_CACHE_SECONDS")),
    )


def _check_scheme(name: str, url: str, schemes: frozenset[str]) -> None:
    scheme = urlsplit(url).scheme
    if scheme not in schemes:
        expected = ", ".join(f"{s}://" for s in sorted(schemes))
        raise SettingsError(
            f"{name} must start with one of {expected}; got {scheme or 'no'} scheme"
        )


def _port(raw: str | None, name: str, default: int) -> int:
    return _number(
        raw,
        name,
        default,
        int,
        "a port number",
        f"between 1024 and {MAX_PORT}",
        lambda port: 1024 <= port <= MAX_PORT,
    )


def _auth_cache_seconds(raw: str | None) -> float:
    return _number(
        raw,
        "SLOTWISE_AUTH_CACHE_SECONDS",
        DEFAULT_AUTH_CACHE_SECONDS,
        float,
        "a number of seconds",
        f"over 0 and at most {MAX_AUTH_CACHE_SECONDS:g}",
        lambda seconds: 0 < seconds <= MAX_AUTH_CACHE_SECONDS,  # also refuses nan
    )


def _number(
    raw: str | None,
    name: str,
    default: N,
    parse: Callable[[str], N],
    what: str,
    bounds: str,
    within: Callable[[N], bool],
) -> N:
    """`raw` (None: `default`) parsed, or a SettingsError naming the variable and the value."""
    if raw is None:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {what}, got {raw!r}") from None
    if not within(value):
        raise SettingsError(f"{name} must be {bounds}, got {raw!r}")
    return value


# --- URL helpers ---------------------------------------------------------------------------------


def postgres_url(user: str, password: str, host: str, port: int, dbname: str) -> str:
    """A libpq URL; every part is percent-encoded, so any password is safe in it."""
    user, password, dbname = (quote(part, safe="") for part in (user, password, dbname))
    return f"postgresql://{user}:{password}@{host}:{port}/{dbname}"


def with_credentials(url: str, user: str, password: str) -> str:
    """`url` with its user and password replaced (host, port, database and query kept)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(url: str, dbname: str) -> str:
    """`url` pointing at another database on the same server."""
    return urlsplit(url)._replace(path="/" + quote(dbname, safe="")).geturl()


def url_user(url: str) -> str | None:
    username = urlsplit(url).username
    return unquote(username) if username is not None else None


def url_password(url: str) -> str | None:
    password = urlsplit(url).password
    return unquote(password) if password is not None else None


def redact(url: str) -> str:
    """`url` with any password replaced by `***`, for logs and terminals."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def app_database_url(admin_url: str, app_password: str, app_role: str = APP_ROLE) -> str:
    """The service's URL derived from the admin one: same server and database, the app role.

    Used when `APP_DATABASE_URL` is not given; the migration runner sets the role's password
    to `app_password`, so the two always agree.
    """
    return with_credentials(admin_url, app_role, app_password)
