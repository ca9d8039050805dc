-- The same column as SQLite's (0021): release records are committed
-- durably on PostgreSQL, so nothing moves it here; the schemas stay alike.
ALTER TABLE audit_head ADD COLUMN syncs BIGINT NOT NULL DEFAULT 0;
