"""A plain migration runner: numbered SQL files applied in order, once each.

`service/migrations/NNNN_name.sql` files run in version order, each in its own transaction, and
are recorded in `schema_migrations` with a checksum (editing an applied file is an error, not a
silent skip). A session advisory lock serialises runners, so two processes migrating the same
database at once apply each file exactly once.

Every file runs under `SET LOCAL ROLE slotwise_owner`, so the tables it creates are owned by that
role and the service's login role (which owns nothing) stays subject to Row Level Security. A
file whose first line is `-- migrate:run-as-admin` runs as the connecting admin instead: only the
bootstrap migration that creates the roles needs that.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from service.settings import APP_ROLE, OWNER_ROLE, url_password, url_user

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works as long as every runner uses the same one; this is "slotwise" in ASCII.
LOCK_KEY = 0x736C6F7477697365
RUN_AS_ADMIN_MARKER = "-- migrate:run-as-admin"
_Connection = psycopg.Connection[TupleRow]
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """Migrations cannot be applied as they stand."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path
    checksum: str
    run_as_admin: bool
    body: bytes = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def discover(migrations_dir: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in `migrations_dir` by version; misnamed or duplicate files are errors."""
    found: dict[int, Migration] = {}
    for path in sorted(migrations_dir.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        version = int(match["version"])
        if version in found:
            raise MigrationError(
                f"{path.name}: version {version:04d} is already {found[version].path.name}"
            )
        body = path.read_bytes()
        found[version] = Migration(
            version=version,
            name=match["name"],
            path=path,
            checksum=hashlib.sha256(body).hexdigest(),
            run_as_admin=body.lstrip().startswith(RUN_AS_ADMIN_MARKER.encode()),
            body=body,
        )
    return [found[v] for v in sorted(found)]


def migrate(
    admin_url: str,
    *,
    app_url: str | None = None,
    migrations_dir: Path = MIGRATIONS_DIR,
    lock_timeout_s: float = 300.0,
) -> list[Migration]:
    """Apply pending migrations to the database of `admin_url`; return those applied.

    With `app_url` whose user is the app role, that role's password is set to the URL's, so the
    service can log in with it (done on every run: cheap, and it repairs a reset password).
    """
    migrations = discover(migrations_dir)
    applied: list[Migration] = []
    # Autocommit: each migration opens its own explicit transaction; the advisory lock is held by
    # the session and released when the connection closes, whatever happened before.
    with psycopg.connect(admin_url, autocommit=True, application_name="slotwise-migrate") as conn:
        _acquire_lock(conn, lock_timeout_s)
        _ensure_history_table(conn)
        rows = conn.execute("SELECT version, checksum FROM public.schema_migrations")
        done: dict[int, str] = dict(rows.fetchall())
        for migration in migrations:
            recorded = done.get(migration.version)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(
                        f"{migration.path.name} changed after it was applied; add a new "
                        "migration instead of editing an applied one"
                    )
                continue
            _apply(conn, migration)
            applied.append(migration)
        if app_url is not None and url_user(app_url) == APP_ROLE:
            password = url_password(app_url)
            if password:
                _set_password(conn, APP_ROLE, password)
    return applied


def applied_versions(admin_url: str) -> list[int]:
    """Versions recorded as applied (empty if the database was never migrated)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
        row = exists.fetchone()
        if row is None or not row[0]:
            return []
        rows = conn.execute("SELECT version FROM public.schema_migrations ORDER BY version")
        return [version for (version,) in rows.fetchall()]


def _acquire_lock(conn: _Connection, timeout_s: float) -> None:
    # lock_timeout bounds the wait with a clear error instead of hanging behind a stuck runner.
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(timeout_s * 1000)}ms",))
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    except psycopg.errors.LockNotAvailable:
        raise MigrationError(
            f"another migration run held the lock for over {timeout_s:g}s; is one stuck?"
        ) from None
    conn.execute("RESET lock_timeout")


def _ensure_history_table(conn: _Connection) -> None:
    # Owned by the admin, outside the default privileges: the service role cannot see it.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS public.schema_migrations (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            checksum   text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def _apply(conn: _Connection, migration: Migration) -> None:
    try:
        with conn.transaction():
            if not migration.run_as_admin:
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(OWNER_ROLE)))
            # No parameters: psycopg sends the file as one simple query, so it may hold many
            # statements, dollar-quoted bodies and literal % signs.
            conn.execute(migration.body)
            conn.execute("RESET ROLE")  # the history table belongs to the admin
            conn.execute(
                "INSERT INTO public.schema_migrations (version, name, checksum)"
                " VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
    except psycopg.Error as exc:
        raise MigrationError(f"{migration.path.name} failed: {exc}") from exc


def _set_password(conn: _Connection, role: str, password: str) -> None:
    # Hash on the client: only the SCRAM verifier reaches the server (and any statement log).
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    conn.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(verifier.decode())
        )
    )
