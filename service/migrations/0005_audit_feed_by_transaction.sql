-- The audit and activity feeds page by the inserting transaction's id, then the event's.
-- Paging by the event's serial id alone skipped events: a transaction that drew a smaller id
-- but committed after a later one was never shown to a client already paging past it. The
-- feeds now show only events of transactions older than every transaction still running
-- (pg_snapshot_xmin), so nothing can later appear before a cursor a client holds.
-- Rows already stored count as one old transaction (0): a constant default adds the column
-- without rewriting the table; new rows take their own transaction's id.
ALTER TABLE audit_events ADD COLUMN xact xid8 NOT NULL DEFAULT '0';
ALTER TABLE audit_events ALTER COLUMN xact SET DEFAULT pg_current_xact_id();
CREATE INDEX audit_events_feed ON audit_events (tenant_id, xact, id);
-- Only the database sets the column: the service role may insert the event's own fields, not
-- its id, time or transaction (an event given a far-off xact would hide from every feed).
REVOKE INSERT ON audit_events FROM slotwise_app;
GRANT INSERT (tenant_id, actor, action, entity, entity_id, request_id, detail)
    ON audit_events TO slotwise_app;
