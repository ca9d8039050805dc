-- Sharing policies, partner bindings and the hash-chained audit ledger.

-- Every applied version of every named policy (the TOML text as applied).
CREATE TABLE policies (
    name         TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    document     TEXT    NOT NULL,
    applied_ms   INTEGER NOT NULL,
    applied_by   TEXT    NOT NULL,
    PRIMARY KEY (name, version)
);

-- The policy a partner is bound to ('' = none: the partner receives nothing).
ALTER TABLE peers ADD COLUMN policy TEXT NOT NULL DEFAULT '';

-- Append-only ledger; each row commits to the previous row's hash.
CREATE TABLE audit (
    seq          INTEGER PRIMARY KEY,
    at_ms        INTEGER NOT NULL,
    event        TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    partner      TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    rule         TEXT    NOT NULL,
    detail       TEXT    NOT NULL,
    prev_hash    BLOB    NOT NULL,
    hash         BLOB    NOT NULL
);
CREATE INDEX audit_by_partner ON audit (partner, seq);

-- The chain head, so that rows removed from the end are detected.
CREATE TABLE audit_head (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    seq          INTEGER NOT NULL,
    hash         BLOB    NOT NULL
);
