-- The booking schema. Every tenant table carries tenant_id and a Row Level Security policy on
-- app_tenant(), which the service sets per transaction (SET LOCAL app.tenant_id). Foreign keys
-- are composite (tenant_id, id): FK checks bypass RLS, so a single-column FK would let one
-- tenant point at another tenant's row.

CREATE FUNCTION app_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    zone        text NOT NULL,
    rules       jsonb NOT NULL DEFAULT '{}',
    -- Bumped by every change to the tenant's resources, working hours or services, so the
    -- service may cache that catalog in memory and still read it fresh (one tiny query).
    catalog_version  bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    prefix       text NOT NULL UNIQUE,
    secret_hash  bytea NOT NULL,
    scopes       text[] NOT NULL,
    name         text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    UNIQUE (tenant_id, id)
);

CREATE TABLE resources (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    kind            text NOT NULL CHECK (kind IN ('staff', 'room', 'equipment')),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    zone            text NOT NULL,
    skills          text[] NOT NULL DEFAULT '{}',
    daily_capacity  integer CHECK (daily_capacity >= 0),
    daily_minutes   integer CHECK (daily_minutes >= 0),
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);

-- Working hours: a recurring local-time rule in the resource's zone.
CREATE TABLE working_hours (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL,
    resource_id       uuid NOT NULL,
    starts_local      timestamp NOT NULL,
    duration_minutes  integer NOT NULL CHECK (duration_minutes BETWEEN 1 AND 1440),
    rrule             text,
    FOREIGN KEY (tenant_id, resource_id) REFERENCES resources (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX working_hours_resource ON working_hours (tenant_id, resource_id);

-- Time off and external busy time.
CREATE TABLE resource_exceptions (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    resource_id  uuid NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('time_off', 'external')),
    during       tstzrange NOT NULL CHECK (NOT isempty(during) AND lower_inc(during)
                                           AND NOT upper_inc(during)),
    note         text NOT NULL DEFAULT '',
    FOREIGN KEY (tenant_id, resource_id) REFERENCES resources (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX resource_exceptions_during ON resource_exceptions USING gist (resource_id, during);

CREATE TABLE services (
    id                     uuid PRIMARY KEY,
    tenant_id              uuid NOT NULL REFERENCES tenants (id),
    name                   text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    duration_minutes       integer NOT NULL CHECK (duration_minutes BETWEEN 1 AND 1440),
    buffer_before_minutes  integer NOT NULL DEFAULT 0 CHECK (buffer_before_minutes BETWEEN 0 AND 720),
    buffer_after_minutes   integer NOT NULL DEFAULT 0 CHECK (buffer_after_minutes BETWEEN 0 AND 720),
    step_minutes           integer NOT NULL DEFAULT 15 CHECK (step_minutes BETWEEN 1 AND 1440),
    -- [{"kind": "staff", "skills": ["colour"], "count": 1}, {"kind": "room", "count": 1}]
    requirements           jsonb NOT NULL CHECK (jsonb_typeof(requirements) = 'array'
                                                 AND jsonb_array_length(requirements) > 0),
    rules                  jsonb NOT NULL DEFAULT '{}',
    active                 boolean NOT NULL DEFAULT true,
    created_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);

CREATE TABLE booking_series (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL,
    service_id     uuid NOT NULL,
    zone           text NOT NULL,
    starts_local   timestamp NOT NULL,
    rrule          text NOT NULL,
    horizon_until  timestamptz NOT NULL,
    status         text NOT NULL DEFAULT 'confirmed' CHECK (status IN ('confirmed', 'cancelled')),
    customer       text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, service_id) REFERENCES services (tenant_id, id)
);

CREATE TABLE bookings (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL,
    service_id        uuid NOT NULL,
    status            text NOT NULL CHECK (status IN ('confirmed', 'cancelled')),
    starts_at         timestamptz NOT NULL,
    ends_at           timestamptz NOT NULL CHECK (ends_at > starts_at),
    series_id         uuid,
    recurrence_id     timestamp,
    customer          text NOT NULL DEFAULT '',
    created_by        uuid,
    created_at        timestamptz NOT NULL DEFAULT now(),
    cancelled_at      timestamptz,
    rescheduled_from  uuid,
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, service_id) REFERENCES services (tenant_id, id),
    FOREIGN KEY (tenant_id, series_id) REFERENCES booking_series (tenant_id, id)
);
CREATE INDEX bookings_starts ON bookings (tenant_id, starts_at);
CREATE INDEX bookings_series ON bookings (series_id) WHERE series_id IS NOT NULL;

-- One row per resource a booking occupies. `during` is the buffered footprint; the exclusion
-- constraint is the final net under the hold and the advisory lock.
CREATE TABLE booking_resources (
    tenant_id          uuid NOT NULL,
    booking_id         uuid NOT NULL,
    resource_id        uuid NOT NULL,
    requirement_index  integer NOT NULL CHECK (requirement_index >= 0),
    service_id         uuid NOT NULL,
    during             tstzrange NOT NULL CHECK (NOT isempty(during)),
    local_day          date NOT NULL,      -- capacity day, in the resource's zone
    minutes            integer NOT NULL CHECK (minutes > 0),
    active             boolean NOT NULL DEFAULT true,
    PRIMARY KEY (booking_id, resource_id),
    FOREIGN KEY (tenant_id, booking_id) REFERENCES bookings (tenant_id, id),
    FOREIGN KEY (tenant_id, resource_id) REFERENCES resources (tenant_id, id),
    FOREIGN KEY (tenant_id, service_id) REFERENCES services (tenant_id, id),
    CONSTRAINT no_double_booking EXCLUDE USING gist (resource_id WITH =, during WITH &&)
        WHERE (active)
);
CREATE INDEX booking_resources_day ON booking_resources (resource_id, local_day) WHERE active;

-- Strict specialization, in the database so no code path can bypass it: the resource must be
-- of the requirement's kind and hold every skill the requirement names.
CREATE FUNCTION check_specialization() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    requirement jsonb;
    resource    resources%ROWTYPE;
    missing     text[];
BEGIN
    SELECT s.requirements -> NEW.requirement_index INTO requirement
      FROM services s WHERE s.id = NEW.service_id AND s.tenant_id = NEW.tenant_id;
    SELECT * INTO resource FROM resources r
     WHERE r.id = NEW.resource_id AND r.tenant_id = NEW.tenant_id;
    IF requirement IS NULL OR resource.id IS NULL THEN
        RAISE EXCEPTION 'booking resource % matches no requirement % of service %',
            NEW.resource_id, NEW.requirement_index, NEW.service_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'specialization';
    END IF;
    IF resource.kind <> requirement ->> 'kind' THEN
        RAISE EXCEPTION 'resource % is a %, requirement % needs a %', resource.id,
            resource.kind, NEW.requirement_index, requirement ->> 'kind'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'specialization';
    END IF;
    SELECT coalesce(array_agg(skill), '{}') INTO missing
      FROM jsonb_array_elements_text(coalesce(requirement -> 'skills', '[]')) AS skill
     WHERE NOT skill = ANY (resource.skills);
    IF cardinality(missing) > 0 THEN
        RAISE EXCEPTION 'resource % lacks skills: %', resource.id, array_to_string(missing, ', ')
            USING ERRCODE = 'check_violation', CONSTRAINT = 'specialization';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER booking_resources_specialization
    BEFORE INSERT OR UPDATE OF resource_id, requirement_index, service_id ON booking_resources
    FOR EACH ROW EXECUTE FUNCTION check_specialization();

CREATE FUNCTION bump_catalog_version() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tenants SET catalog_version = catalog_version + 1 WHERE id = app_tenant();
    RETURN NULL;
END
$$;
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['resources', 'working_hours', 'services'] LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION bump_catalog_version()',
                       t || '_catalog_version', t);
    END LOOP;
END
$$;

-- A retried POST with the same Idempotency-Key returns the stored first answer.
CREATE TABLE idempotency_keys (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    request_hash  bytea NOT NULL,
    status        integer NOT NULL,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);

-- Append-only audit trail of every read and write of tenant data.
CREATE TABLE audit_events (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,
    action      text NOT NULL,
    entity      text NOT NULL,
    entity_id   text,
    request_id  text,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, id);
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM slotwise_app;

-- Row Level Security: the service role sees only the tenant named by app.tenant_id.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['api_keys', 'resources', 'working_hours', 'resource_exceptions',
                             'services', 'booking_series', 'bookings', 'booking_resources',
                             'idempotency_keys']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I FOR ALL TO slotwise_app '
                       'USING (tenant_id = app_tenant()) WITH CHECK (tenant_id = app_tenant())', t);
    END LOOP;
END
$$;
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants FOR ALL TO slotwise_app
    USING (id = app_tenant()) WITH CHECK (id = app_tenant());
ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_read ON audit_events FOR SELECT TO slotwise_app
    USING (tenant_id = app_tenant());
CREATE POLICY audit_append ON audit_events FOR INSERT TO slotwise_app
    WITH CHECK (tenant_id = app_tenant());

-- API keys are looked up before the tenant is known; this owner-run function sees past RLS
-- but only ever returns the row matching both the public prefix and the secret's hash.
CREATE FUNCTION authenticate_api_key(p_prefix text, p_hash bytea)
    RETURNS TABLE (key_id uuid, tenant_id uuid, scopes text[])
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
        SELECT k.id, k.tenant_id, k.scopes FROM api_keys k
         WHERE k.prefix = p_prefix AND k.secret_hash = p_hash AND k.revoked_at IS NULL
    $$;
REVOKE ALL ON FUNCTION authenticate_api_key(text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authenticate_api_key(text, bytea) TO slotwise_app;
