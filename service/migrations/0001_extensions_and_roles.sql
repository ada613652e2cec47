-- migrate:run-as-admin
-- The bootstrap migration, the only one run as the connecting admin (every later file runs under
-- SET ROLE slotwise_owner, so what it creates is owned by that role). Roles are cluster-wide and
-- another database on the same server may have made them already, so each step is idempotent.

-- The owner of every table. NOLOGIN: only reachable through SET ROLE by the admin.
DO $$
BEGIN
    CREATE ROLE slotwise_owner NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
EXCEPTION
    -- duplicate_object: it exists; unique_violation: another database's migration is making it
    -- in a concurrent transaction (the advisory lock is per database, so it does not serialise us).
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- The role the service logs in as. Its password is set by the migration runner, never here.
DO $$
BEGIN
    CREATE ROLE slotwise_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- Row Level Security is only as good as these attributes: a superuser, a BYPASSRLS role or a
-- member of the table owner would see every tenant. Enforce them even on a role found existing.
DO $$
BEGIN
    IF EXISTS (
        SELECT FROM pg_roles
        WHERE rolname = 'slotwise_app'
          AND (rolsuper OR rolbypassrls OR rolcreaterole OR rolcreatedb OR rolreplication
               OR NOT rolcanlogin)
    ) THEN
        ALTER ROLE slotwise_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION;
    END IF;
    IF pg_has_role('slotwise_app', 'slotwise_owner', 'MEMBER') THEN
        REVOKE slotwise_owner FROM slotwise_app;
    END IF;
    -- A superuser may SET ROLE to anything; anyone else running migrations needs membership.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'slotwise_owner', 'MEMBER') THEN
        EXECUTE format('GRANT slotwise_owner TO %I', current_user);
    END IF;
END
$$;

DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I OWNER TO slotwise_owner', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO slotwise_app', current_database());
END
$$;

-- btree_gist gives GiST the scalar "=" operators, so one exclusion constraint can say
-- "same resource (=) and overlapping time (&&)".
CREATE EXTENSION IF NOT EXISTS btree_gist;

REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO slotwise_owner;
GRANT USAGE ON SCHEMA public TO slotwise_app;

-- Tables and sequences the owner creates later are usable by the app without per-table grants;
-- a migration narrows them where needed (e.g. the audit trail revokes UPDATE and DELETE).
ALTER DEFAULT PRIVILEGES FOR ROLE slotwise_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO slotwise_app;
ALTER DEFAULT PRIVILEGES FOR ROLE slotwise_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO slotwise_app;
