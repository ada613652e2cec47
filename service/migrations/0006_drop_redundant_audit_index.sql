-- audit_events_tenant (tenant_id, id) is served by audit_events_feed (tenant_id, xact, id)
-- for every query left: since 0005 the feeds page by (xact, id), and nothing else orders
-- audit events by id alone. One index fewer to update on every audit insert, and there is
-- one of those for nearly every request.
DROP INDEX audit_events_tenant;
