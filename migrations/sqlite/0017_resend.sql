-- The highest version of each indicator sent to each partner, so a resend
-- after a policy change offers exactly the versions it never got (rows
-- recorded before this column read 0: any version may be offered again,
-- which the partner stores as a no-op).
ALTER TABLE sent_to ADD COLUMN max_version INTEGER NOT NULL DEFAULT 0;
-- Pending `peer resend` requests: the range of our log to re-decide for a
-- partner under its current policy. Carried out by the partner's
-- subscription (now, or when it next connects), then removed.
CREATE TABLE resend_requests (
    recipient     TEXT    PRIMARY KEY,
    from_seq      INTEGER NOT NULL,
    up_to_seq     INTEGER NOT NULL,
    requested_ms  INTEGER NOT NULL,
    requested_by  TEXT    NOT NULL
);
