-- Our own certificates that must no longer be accepted, by serial number.
CREATE TABLE revoked_certs (
    serial       TEXT    PRIMARY KEY,
    spiffe_id    TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    revoked_ms   INTEGER NOT NULL,
    revoked_by   TEXT    NOT NULL
);
