-- Statistics reports: signed aggregate counts per reporter and period, ours
-- (made on demand, not stored) and those partners shared with us. One row
-- per reporter, period and start; a later report replaces the earlier one.
CREATE TABLE statistics_reports (
    reporter       TEXT    NOT NULL,
    period         TEXT    NOT NULL,
    period_start   INTEGER NOT NULL,
    made_ms        INTEGER NOT NULL,
    received_from  TEXT    NOT NULL,
    path           TEXT    NOT NULL,
    envelope       BLOB    NOT NULL,
    stored_ms      INTEGER NOT NULL,
    PRIMARY KEY (reporter, period, period_start)
);
CREATE INDEX statistics_by_partner ON statistics_reports (received_from);

-- Secrets the node keeps for itself: the key of the noise in its
-- statistics reports (the same noise each time a report is made again).
CREATE TABLE node_secrets (
    name           TEXT    PRIMARY KEY,
    secret         BLOB    NOT NULL
);
