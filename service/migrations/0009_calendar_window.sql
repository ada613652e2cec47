-- A booking's reads of a window in one statement: the tenant, the advisory locks, the catalog
-- version and the resources' busy time and daily loads. They were four to six statements of
-- their own, and each statement costs the service ~75 us of CPU in its driver and PostgreSQL
-- ~35 us more, whatever it does: most of a hold's cost. A hold's check needs no transaction
-- around the call, nor a confirmation its own statements for the locks and the version.
--
-- VOLATILE, not STABLE: each query inside then takes a new snapshot, so what is read after the
-- locks includes every booking committed by their previous holder. (A STABLE function reads
-- with the calling statement's snapshot, taken before the lock wait: layer 2 would miss the
-- booking it waited for, and only layer 3 would catch the overlap.)
--
-- The rows are told apart by `entry`: 'version' (in `n`), then busy time ('booking',
-- 'time_off', 'external'; merged per resource and kind, without ids, when `p_merged`), then
-- 'load' (per resource and local day, for the resources in `p_limited`). The window is read by
-- the stored bounds (0007): no range operator is leakproof, so none could search an index.
CREATE FUNCTION calendar_window(
    p_tenant uuid,
    p_ids uuid[],
    p_lo timestamptz,
    p_hi timestamptz,
    p_exclude uuid[],
    p_merged boolean,
    p_limited uuid[],
    p_first_day date,
    p_last_day date,
    p_lock_keys bigint[]
) RETURNS TABLE (entry text, rid text, lo timestamptz, hi timestamptz, ref text,
                 minutes integer, n bigint, day date)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- A NULL array would read as "no bookings" (NOT x = ANY(NULL) is NULL): a free slot.
    IF p_ids IS NULL OR p_exclude IS NULL OR p_limited IS NULL OR p_lock_keys IS NULL THEN
        RAISE EXCEPTION 'calendar_window: an array argument is NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- Transaction-local, as `Database.transaction` sets it: for the rest of the caller's
    -- transaction, or of this statement's own outside one.
    PERFORM set_config('app.tenant_id', p_tenant::text, true);
    -- Keys in one global order (the caller sorts them): the select list runs in array order.
    PERFORM pg_advisory_xact_lock(k) FROM unnest(p_lock_keys) AS k;
    RETURN QUERY
        SELECT 'version', NULL::text, NULL::timestamptz, NULL::timestamptz, NULL::text,
               NULL::integer, t.catalog_version, NULL::date
          FROM tenants t WHERE t.id = p_tenant;
    IF p_merged THEN
        RETURN QUERY
            SELECT m.kind, m.rid, lower(m.span), upper(m.span), '', NULL::integer, NULL::bigint,
                   NULL::date
              FROM (SELECT e.resource_id::text AS rid, e.kind, unnest(range_agg(e.during)) AS span
                      FROM resource_exceptions e
                     WHERE e.resource_id = ANY(p_ids) AND e.ends_at > p_lo AND e.starts_at < p_hi
                     GROUP BY 1, 2
                    UNION ALL
                    SELECT b.resource_id::text, 'booking', unnest(range_agg(b.during))
                      FROM booking_resources b
                     WHERE b.active AND b.resource_id = ANY(p_ids)
                       AND b.starts_at > p_lo - interval '48 hours' AND b.starts_at < p_hi
                       AND b.ends_at > p_lo AND NOT b.booking_id = ANY(p_exclude)
                     GROUP BY 1) AS m;
    ELSE
        RETURN QUERY
            SELECT e.kind, e.resource_id::text, e.starts_at, e.ends_at, e.id::text,
                   NULL::integer, NULL::bigint, NULL::date
              FROM resource_exceptions e
             WHERE e.resource_id = ANY(p_ids) AND e.ends_at > p_lo AND e.starts_at < p_hi
            UNION ALL
            -- A booking's footprint lasts at most 48 hours (0007): its start bounds the search.
            SELECT 'booking', b.resource_id::text, b.starts_at, b.ends_at, b.booking_id::text,
                   b.minutes, NULL::bigint, NULL::date
              FROM booking_resources b
             WHERE b.active AND b.resource_id = ANY(p_ids)
               AND b.starts_at > p_lo - interval '48 hours' AND b.starts_at < p_hi
               AND b.ends_at > p_lo AND NOT b.booking_id = ANY(p_exclude);
    END IF;
    IF cardinality(p_limited) > 0 THEN
        RETURN QUERY
            SELECT 'load', l.resource_id::text, NULL::timestamptz, NULL::timestamptz, NULL::text,
                   sum(l.minutes)::integer, count(*), l.local_day
              FROM booking_resources l
             WHERE l.active AND l.resource_id = ANY(p_limited)
               AND l.local_day BETWEEN p_first_day AND p_last_day
               AND NOT l.booking_id = ANY(p_exclude)
             GROUP BY l.resource_id, l.local_day;
    END IF;
END
$$;

-- The batched audit writer's batch, for the same reason: one statement outside any transaction
-- (it commits by itself) where it took five. Returns the tenant's catalog version, read after
-- the insert in the same transaction (see `audit_batch`); NULL for an unknown tenant.
CREATE FUNCTION append_audit(p_tenant uuid, p_events jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM set_config('app.tenant_id', p_tenant::text, true);
    INSERT INTO audit_events (tenant_id, actor, action, entity, entity_id, request_id, detail)
    SELECT p_tenant, e.actor, e.action, e.entity, e.entity_id, e.request_id, e.detail
      FROM jsonb_to_recordset(p_events) AS e(actor text, action text, entity text,
                                             entity_id text, request_id text, detail jsonb);
    RETURN (SELECT t.catalog_version FROM tenants t WHERE t.id = p_tenant);
END
$$;
