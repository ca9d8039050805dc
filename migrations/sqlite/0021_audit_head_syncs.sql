-- A counter a durable commit moves when it exists only to put release
-- records committed without a sync of their own on disk (SQLite writes
-- nothing, and so syncs nothing, for an update that changes no byte).
ALTER TABLE audit_head ADD COLUMN syncs INTEGER NOT NULL DEFAULT 0;
