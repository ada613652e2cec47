-- Confirming a hold in one statement outside any transaction, where it took seven (BEGIN, the
-- tenant, the Idempotency-Key claim, the locked read, the insert, the answer and audit row,
-- COMMIT): each statement costs the service ~75 us of CPU and PostgreSQL ~35 us (see 0009).
-- The service has the hold's window as read without locks (`calendar_window`: by the hold's
-- own check, or again), asks the engine, and then calls `book_window`, which takes the locks,
-- re-reads the window under them and books only if it reads exactly as the service saw it:
-- the catalog version, every busy entry and every daily load. Otherwise it writes nothing
-- and says 'changed', and the service reads again or decides in a transaction that reads
-- under the locks before asking the engine.

-- An instant as the service writes one in JSON (`booking.iso`): UTC, microseconds only when
-- there are some, and 'Z'. A booking's answer stored here must read as the service's own.
CREATE FUNCTION format_instant(t timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN date_part('microseconds', t AT TIME ZONE 'UTC')::bigint % 1000000 = 0 THEN ''
                ELSE to_char(t AT TIME ZONE 'UTC', '.US') END
        || 'Z'
$$;

-- Bookings and their resource rows, from JSON (one document each: far cheaper to send than
-- arrays per column). Returns their `created_at`, the transaction's start. The service's only
-- way of inserting bookings, in a transaction of its own or inside `book_window`.
CREATE FUNCTION insert_bookings(p_tenant uuid, p_bookings jsonb, p_resources jsonb)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_created timestamptz;
BEGIN
    WITH booked AS (
        INSERT INTO bookings (id, tenant_id, service_id, status, starts_at, ends_at, customer,
                              created_by, series_id, recurrence_id, rescheduled_from,
                              hold_nonce)
        SELECT b.id, p_tenant, b.service_id, 'confirmed', b.starts_at, b.ends_at, b.customer,
               b.created_by, b.series_id, b.recurrence_id, b.rescheduled_from, b.hold_nonce
          FROM jsonb_to_recordset(p_bookings) AS b(id uuid, service_id uuid,
               starts_at timestamptz, ends_at timestamptz, customer text, created_by uuid,
               series_id uuid, recurrence_id timestamp, rescheduled_from uuid, hold_nonce text)
        RETURNING created_at
    ), linked AS (
        INSERT INTO booking_resources (tenant_id, booking_id, resource_id, requirement_index,
                                       service_id, during, local_day, minutes)
        SELECT p_tenant, r.booking_id, r.resource_id, r.requirement_index, r.service_id,
               tstzrange(r.lo, r.hi), r.local_day, r.minutes
          FROM jsonb_to_recordset(p_resources) AS r(booking_id uuid, resource_id uuid,
               requirement_index integer, service_id uuid, lo timestamptz, hi timestamptz,
               local_day date, minutes integer)
    )
    SELECT created_at INTO v_created FROM booked LIMIT 1;
    IF v_created IS NULL THEN
        RAISE EXCEPTION 'insert_bookings: no booking to insert'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RETURN v_created;
END
$$;

-- The window's arguments are `calendar_window`'s. `p_seen`: the rows it returned to the
-- service's read, as JSON objects.
-- `p_key`/`p_request_hash`: the Idempotency-Key and its request's fingerprint, or NULLs.
-- `p_answer`: the 201 body, its `created_at` set here; `p_event`: the audit event (`append_audit`).
-- Returns one row: 'booked' with the answer as stored; 'replay' with the key's stored status,
-- answer and fingerprint (the key was taken first; no lock is taken); 'changed' (nothing
-- written).
CREATE FUNCTION book_window(
    p_tenant uuid,
    p_ids uuid[],
    p_lo timestamptz,
    p_hi timestamptz,
    p_exclude uuid[],
    p_merged boolean,
    p_limited uuid[],
    p_first_day date,
    p_last_day date,
    p_lock_keys bigint[],
    p_seen jsonb,
    p_key text,
    p_request_hash bytea,
    p_bookings jsonb,
    p_resources jsonb,
    p_answer jsonb,
    p_event jsonb
) RETURNS TABLE (outcome text, status integer, response jsonb, request_hash bytea)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_answer jsonb;
BEGIN
    IF p_seen IS NULL THEN  -- NULL would compare as "nothing seen": any window would differ
        RAISE EXCEPTION 'book_window: p_seen is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM set_config('app.tenant_id', p_tenant::text, true);
    -- The key before the locks, as every booking's transaction claims it: in the other order
    -- a retry taking this path and its first attempt in a transaction could deadlock.
    IF p_key IS NOT NULL THEN
        -- Waits for a concurrent claim of the key to commit (then replays) or roll back.
        INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, response)
        VALUES (p_tenant, p_key, p_request_hash, 0, 'null')
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RETURN QUERY
                SELECT 'replay', k.status, k.response, k.request_hash
                  FROM idempotency_keys k WHERE k.tenant_id = p_tenant AND k.key = p_key;
            RETURN;
        END IF;
    END IF;
    -- The locks, then the window under them (a CTE calling a volatile function runs it once).
    IF EXISTS (
        WITH now_read AS MATERIALIZED (
            SELECT * FROM calendar_window(p_tenant, p_ids, p_lo, p_hi, p_exclude, p_merged,
                                          p_limited, p_first_day, p_last_day, p_lock_keys)
        ), seen AS (
            SELECT * FROM jsonb_to_recordset(p_seen) AS s(entry text, rid text, lo timestamptz,
                 hi timestamptz, ref text, minutes integer, n bigint, day date)
        )
        (SELECT * FROM now_read EXCEPT ALL SELECT * FROM seen)
        UNION ALL
        (SELECT * FROM seen EXCEPT ALL SELECT * FROM now_read)
    ) THEN
        IF p_key IS NOT NULL THEN  -- nothing written: the claim too is gone at the commit
            DELETE FROM idempotency_keys k WHERE k.tenant_id = p_tenant AND k.key = p_key;
        END IF;
        RETURN QUERY SELECT 'changed', NULL::integer, NULL::jsonb, NULL::bytea;
        RETURN;
    END IF;
    v_answer := p_answer || jsonb_build_object(
        'created_at', format_instant(insert_bookings(p_tenant, p_bookings, p_resources)));
    IF p_key IS NOT NULL THEN
        UPDATE idempotency_keys k SET status = 201, response = v_answer
         WHERE k.tenant_id = p_tenant AND k.key = p_key;
    END IF;
    PERFORM append_audit(p_tenant, jsonb_build_array(p_event));
    RETURN QUERY SELECT 'booked', 201, v_answer, NULL::bytea;
END
$$;
