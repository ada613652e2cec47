"""The embedded servers, the roles and the migration runner, against real servers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from service import infra as infra_mod
from service.migrate import (
    LOCK_KEY,
    MIGRATIONS_DIR,
    MigrationError,
    applied_versions,
    discover,
    migrate,
)
from service.settings import (
    APP_ROLE,
    OWNER_ROLE,
    Settings,
    app_database_url,
    url_user,
    with_database,
)
from tests.integration.conftest import Infra

ALL_VERSIONS = [m.version for m in discover()]

# A later migration as others will write them: plain DDL, no SET ROLE of its own.
PROBE_MIGRATION = """
CREATE TABLE probe_booking (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    resource_id integer NOT NULL,
    during      tstzrange NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    EXCLUDE USING gist (resource_id WITH =, during WITH &&) WHERE (active)
);
ALTER TABLE probe_booking ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON probe_booking
    USING (tenant_id = current_setting('app.tenant_id'))
    WITH CHECK (tenant_id = current_setting('app.tenant_id'));
"""


def _migrations_with(tmp_path: Path, *extra: str) -> tuple[Path, list[int]]:
    """A copy of the real migrations plus `extra` bodies numbered after them.

    Returns the folder and the versions given to `extra`.
    """
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    versions = [ALL_VERSIONS[-1] + i for i in range(1, len(extra) + 1)]
    for version, body in zip(versions, extra, strict=True):
        (folder / f"{version:04d}_extra.sql").write_text(body)
    return folder, versions


def _port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


# --- roles ---------------------------------------------------------------------------------------


def test_app_role_is_not_superuser_owner_or_rls_exempt(infra: Infra) -> None:
    assert url_user(infra.app_url) == APP_ROLE
    with psycopg.connect(infra.app_url) as conn:
        row = conn.execute(
            "SELECT current_user, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb,"
            " pg_has_role(current_user, %s, 'MEMBER')"
            " FROM pg_roles WHERE rolname = current_user",
            (OWNER_ROLE,),
        ).fetchone()
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    assert row == (APP_ROLE, False, False, False, False, False)
    assert owner == (OWNER_ROLE,)


def test_later_migrations_create_tables_the_owner_owns_and_rls_binds_the_app(
    infra: Infra, scratch_db: str, tmp_path: Path
) -> None:
    folder, _ = _migrations_with(tmp_path, PROBE_MIGRATION)
    migrate(scratch_db, migrations_dir=folder)
    app_url = with_database(infra.app_url, urlsplit(scratch_db).path.lstrip("/"))
    with psycopg.connect(app_url) as conn:
        owner = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'probe_booking'"
        ).fetchone()
        assert owner == (OWNER_ROLE,)
        # Default privileges: the app may write rows (and use the serial) without a grant...
        for tenant, resource in (("acme", 1), ("acme", 2), ("globex", 3)):
            with conn.transaction():
                conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant,))
                conn.execute(
                    "INSERT INTO probe_booking (tenant_id, resource_id, during)"
                    " VALUES (%s, %s, tstzrange(%s, %s))",
                    (
                        tenant,
                        resource,
                        f"2030-01-0{resource} 09:00Z",
                        f"2030-01-0{resource} 10:00Z",
                    ),
                )
        # ...but sees only its tenant's rows, with no WHERE clause at all.
        with conn.transaction():
            conn.execute("SELECT set_config('app.tenant_id', 'acme', true)")
            rows = conn.execute("SELECT tenant_id FROM probe_booking").fetchall()
        assert rows == [("acme",), ("acme",)]
        # Writing another tenant's row is refused by the policy.
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("SELECT set_config('app.tenant_id', 'acme', true)")
            conn.execute(
                "INSERT INTO probe_booking (tenant_id, resource_id, during)"
                " VALUES ('globex', 9, tstzrange('2030-02-01', '2030-02-02'))"
            )
        # Not the owner: no DDL on the table, no new tables.
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("ALTER TABLE probe_booking DISABLE ROW LEVEL SECURITY")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("CREATE TABLE intruder (id int)")
        # btree_gist works: the exclusion constraint stops a double booking of resource 1.
        with pytest.raises(psycopg.errors.ExclusionViolation), conn.transaction():
            conn.execute("SELECT set_config('app.tenant_id', 'acme', true)")
            conn.execute(
                "INSERT INTO probe_booking (tenant_id, resource_id, during)"
                " VALUES ('acme', 1, tstzrange('2030-01-01 09:30Z', '2030-01-01 09:45Z'))"
            )


def test_app_role_cannot_read_migration_history(infra: Infra) -> None:
    with (
        psycopg.connect(infra.app_url) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT * FROM schema_migrations")


# --- migration runner ----------------------------------------------------------------------------


def test_migrating_again_applies_nothing(infra: Infra) -> None:
    before = applied_versions(infra.admin_url)
    assert migrate(infra.admin_url, app_url=infra.app_url) == []
    assert applied_versions(infra.admin_url) == before == ALL_VERSIONS


def test_concurrent_migrations_apply_each_file_exactly_once(
    scratch_db: str, tmp_path: Path
) -> None:
    folder, extra = _migrations_with(
        tmp_path,
        "CREATE TABLE first_t (id int); SELECT pg_sleep(0.2);",
        "CREATE TABLE second_t ();",
    )
    start = threading.Barrier(4)

    def run() -> list[int]:
        start.wait()
        return [m.version for m in migrate(scratch_db, migrations_dir=folder)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = [f.result() for f in [pool.submit(run) for _ in range(4)]]

    applied = sorted(v for result in results for v in result)
    assert applied == ALL_VERSIONS + extra  # each once, across all four runners
    assert applied_versions(scratch_db) == ALL_VERSIONS + extra


def test_a_runner_waits_for_the_lock(scratch_db: str) -> None:
    with psycopg.connect(scratch_db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(migrate, scratch_db)
            time.sleep(0.5)
            assert not pending.done()
            holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            assert [m.version for m in pending.result(timeout=30)] == ALL_VERSIONS


def test_a_failing_migration_leaves_nothing_behind(scratch_db: str, tmp_path: Path) -> None:
    folder, [broken] = _migrations_with(tmp_path, "CREATE TABLE half_done (id int); SELECT 1/0;")
    with pytest.raises(MigrationError, match=f"{broken:04d}_extra.sql failed"):
        migrate(scratch_db, migrations_dir=folder)
    assert applied_versions(scratch_db) == ALL_VERSIONS
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)


def test_editing_an_applied_migration_is_refused(scratch_db: str, tmp_path: Path) -> None:
    folder, [version] = _migrations_with(tmp_path, "CREATE TABLE t2 (id int);")
    migrate(scratch_db, migrations_dir=folder)
    (folder / f"{version:04d}_extra.sql").write_text("CREATE TABLE t2 (id bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(scratch_db, migrations_dir=folder)


def test_misnamed_migration_file_is_refused(scratch_db: str, tmp_path: Path) -> None:
    folder, _ = _migrations_with(tmp_path)
    (folder / "2_oops.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"2_oops\.sql"):
        migrate(scratch_db, migrations_dir=folder)


def test_window_bounds_migrate_the_rows_older_schemas_allowed(
    scratch_db: str, tmp_path: Path
) -> None:
    """Migration 0007 stores each range's bounds: over a booking, and over an exception left
    open-ended by hand (0002's check allows one; the API takes none), which ends at infinity
    rather than failing the migration."""
    folder = tmp_path / "before_0007"
    folder.mkdir()
    for migration in discover():
        if migration.version < 7:
            shutil.copy(migration.path, folder)
    migrate(scratch_db, migrations_dir=folder)
    ids = {key: str(uuid.uuid4()) for key in ("t", "r", "s", "b", "e")}
    params = {**ids, "lo": "2027-01-04 09:00Z", "hi": "2027-01-04 09:30Z"}
    with psycopg.connect(scratch_db) as conn:
        for statement in (
            "INSERT INTO tenants (id, name, zone) VALUES (%(t)s, 'T', 'UTC')",
            "INSERT INTO resources (id, tenant_id, kind, name, zone)"
            " VALUES (%(r)s, %(t)s, 'staff', 'S', 'UTC')",
            "INSERT INTO services (id, tenant_id, name, duration_minutes, requirements)"
            " VALUES (%(s)s, %(t)s, 'Cut', 30, '[{\"kind\": \"staff\"}]')",
            "INSERT INTO bookings (id, tenant_id, service_id, status, starts_at, ends_at)"
            " VALUES (%(b)s, %(t)s, %(s)s, 'confirmed', %(lo)s, %(hi)s)",
            "INSERT INTO booking_resources (tenant_id, booking_id, resource_id,"
            " requirement_index, service_id, during, local_day, minutes)"
            " VALUES (%(t)s, %(b)s, %(r)s, 0, %(s)s, tstzrange(%(lo)s, %(hi)s), '2027-01-04', 30)",
            "INSERT INTO resource_exceptions (id, tenant_id, resource_id, kind, during)"
            " VALUES (%(e)s, %(t)s, %(r)s, 'time_off', tstzrange(%(lo)s, NULL))",
        ):
            conn.execute(statement, params)
    migrate(scratch_db)
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute(
            "SELECT starts_at::text, ends_at::text FROM booking_resources"
            " UNION ALL SELECT starts_at::text, ends_at::text FROM resource_exceptions"
        ).fetchall() == [
            ("2027-01-04 09:00:00+00", "2027-01-04 09:30:00+00"),
            ("2027-01-04 09:00:00+00", "infinity"),
        ]


# --- valkey --------------------------------------------------------------------------------------


def test_valkey_answers_ping_and_expires_keys(infra: Infra) -> None:
    with redis.Redis.from_url(infra.redis_url) as client:
        assert client.ping() is True
        assert client.set("hold:probe", "caller-1", px=300) is True
        assert 0 < client.pttl("hold:probe") <= 300
        assert client.get("hold:probe") == b"caller-1"
        time.sleep(0.5)
        assert client.get("hold:probe") is None


def test_valkey_refuses_clients_without_the_password(infra: Infra) -> None:
    url = urlsplit(infra.redis_url)
    # A raw socket: client libraries retry a refused AUTH, which would only slow this down.
    with socket.create_connection((url.hostname or "", url.port or 0), timeout=5) as conn:
        conn.sendall(b"PING\r\n")
        assert conn.recv(100).startswith(b"-NOAUTH")


# --- persistent instance: up / down / status -----------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    # Under a 0700 folder, like a checkout in /root: as root, the postgres server user cannot
    # reach it, so this exercises the relocation of the instance folder.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    folder = locked / "var"
    try:
        yield folder
    finally:
        infra_mod.destroy(folder)


def test_up_is_idempotent_and_data_survives_down_and_up(data_dir: Path) -> None:
    pg_port, redis_port = infra_mod.free_port(), infra_mod.free_port()
    first = infra_mod.up(data_dir, pg_port=pg_port, redis_port=redis_port)
    running = infra_mod.status(data_dir)
    assert running.postgres.running and running.valkey.running
    if os.geteuid() == 0:
        assert (data_dir / "postgres").is_symlink()  # relocated where the server user can reach
    assert (running.postgres.port, running.valkey.port) == (pg_port, redis_port)
    assert running.endpoints == first

    with psycopg.connect(first.admin_url) as conn:
        conn.execute("CREATE TABLE survivor (note text)")
        conn.execute("INSERT INTO survivor VALUES ('still here')")
    with redis.Redis.from_url(first.redis_url) as client:
        client.set("survivor", "still here")

    again = infra_mod.up(data_dir, pg_port=pg_port, redis_port=redis_port)
    assert again == first
    reused = infra_mod.status(data_dir)
    assert (reused.postgres.pid, reused.valkey.pid) == (running.postgres.pid, running.valkey.pid)

    assert infra_mod.down(data_dir) == ["postgresql", "valkey"]
    stopped = infra_mod.status(data_dir)
    assert not stopped.postgres.running and not stopped.valkey.running
    assert not _listening(pg_port) and not _listening(redis_port)
    assert infra_mod.down(data_dir) == []

    revived = infra_mod.up(data_dir, pg_port=pg_port, redis_port=redis_port)
    with psycopg.connect(revived.admin_url) as conn:
        assert conn.execute("SELECT note FROM survivor").fetchall() == [("still here",)]
    with redis.Redis.from_url(revived.redis_url) as client:
        assert client.get("survivor") == b"still here"


def test_secrets_are_private_and_the_cluster_is_not_run_by_root(data_dir: Path) -> None:
    infra_mod.up(data_dir, pg_port=infra_mod.free_port(), redis_port=infra_mod.free_port())
    pg_dir = (data_dir / "postgres").resolve()
    for secret in (pg_dir / "admin.password", pg_dir / "app.password"):
        assert secret.stat().st_mode & 0o777 == 0o600
    assert (data_dir / "valkey" / "valkey.password").stat().st_mode & 0o777 == 0o600
    pid = infra_mod.status(data_dir).postgres.pid
    assert pid is not None
    assert os.stat(f"/proc/{pid}").st_uid != 0
    hba = (pg_dir / "pgdata" / "pg_hba.conf").read_text()
    rules = [line for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert rules and all(line.split()[-1] == "scram-sha-256" for line in rules)


def test_up_reports_a_port_taken_by_another_program(data_dir: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", infra_mod.free_port()))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(infra_mod.PortInUse, match=f"port {taken} .* SLOTWISE_REDIS_PORT"):
            infra_mod.up(data_dir, pg_port=infra_mod.free_port(), redis_port=taken)
    # Both ports are checked before anything starts: a clash leaves nothing half-made.
    after = infra_mod.status(data_dir)
    assert not after.postgres.initialised and not after.valkey.initialised


def test_external_urls_start_nothing_embedded(infra: Infra, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "var", database_url=infra.admin_url, redis_url=infra.redis_url
    )
    endpoints = infra_mod.endpoints_for(settings)
    assert (endpoints.admin_url, endpoints.redis_url) == (infra.admin_url, infra.redis_url)
    # The app URL is derived: same server and database, the app role, a password kept aside.
    assert endpoints.app_url == app_database_url(
        infra.admin_url, (tmp_path / "var" / "external-app.password").read_text().strip()
    )
    assert not (tmp_path / "var" / "postgres").exists()
    assert not (tmp_path / "var" / "valkey").exists()


def test_throwaway_is_cleaned_up_even_on_ctrl_c() -> None:
    folders_before = set(Path(tempfile.gettempdir()).glob("slotwise-infra-*"))
    with pytest.raises(KeyboardInterrupt), infra_mod.throwaway() as endpoints:
        ports = (_port_of(endpoints.admin_url), _port_of(endpoints.redis_url))
        assert all(_listening(port) for port in ports)
        assert set(Path(tempfile.gettempdir()).glob("slotwise-infra-*")) != folders_before
        raise KeyboardInterrupt
    assert not any(_listening(port) for port in ports)
    assert set(Path(tempfile.gettempdir()).glob("slotwise-infra-*")) == folders_before


_HOLD_THROWAWAY = """
import time
from service.infra import throwaway
with throwaway() as endpoints:
    print(endpoints.admin_url, endpoints.redis_url, flush=True)
    time.sleep(600)
"""


def test_throwaway_is_cleaned_up_when_the_process_gets_sigterm() -> None:
    """`kill`, `timeout` and CI runners stop a process with SIGTERM, whose default action
    skips every `finally`: the servers of a throwaway pair must not outlive it."""
    folders_before = set(Path(tempfile.gettempdir()).glob("slotwise-infra-*"))
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD_THROWAWAY], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            admin_url, redis_url = child.stdout.readline().split()  # once both are up
            ports = (_port_of(admin_url), _port_of(redis_url))
            assert all(_listening(port) for port in ports)
            child.terminate()
            child.wait(timeout=60)
            left = set(Path(tempfile.gettempdir()).glob("slotwise-infra-*")) - folders_before
            still_up = [port for port in ports if _listening(port)]
        finally:
            child.kill()
            # What a failing run would leave: not for the next test to trip over.
            tmp = Path(tempfile.gettempdir())
            for folder in set(tmp.glob("slotwise-infra-*")) - folders_before:
                infra_mod.destroy(folder)
    assert still_up == []
    assert left == set()


_SIGNALS_DURING_CLEANUP = """
import os, signal
from service.infra import _interrupts_deferred
try:
    with _interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        print("cleanup ran to its end", flush=True)
except KeyboardInterrupt:
    print("then interrupted", flush=True)
"""


def test_signals_during_a_cleanup_wait_for_its_end() -> None:
    """CI runners send SIGINT, then SIGTERM: neither may cut the servers' cleanup short."""
    done = subprocess.run(
        [sys.executable, "-c", _SIGNALS_DURING_CLEANUP], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.splitlines() == ["cleanup ran to its end", "then interrupted"], done.stderr
