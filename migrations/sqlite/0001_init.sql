-- ThreatMesh SQLite schema, version 1.

-- Append-only log of accepted indicator versions. `seq` is this node's local
-- sequence number, the cursor partners subscribe from.
CREATE TABLE indicators (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    origin_org     TEXT    NOT NULL,
    indicator_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    -- Partner org the envelope arrived from; '' when published here.
    received_from  TEXT    NOT NULL,
    -- The serialised Envelope exactly as signed by the origin.
    envelope       BLOB    NOT NULL,
    kind           INTEGER NOT NULL,
    value          TEXT    NOT NULL,
    tlp            INTEGER NOT NULL,
    confidence     INTEGER NOT NULL,
    created_ms     INTEGER NOT NULL,
    modified_ms    INTEGER NOT NULL,
    revoked        INTEGER NOT NULL,
    stored_ms      INTEGER NOT NULL,
    UNIQUE (origin_org, indicator_id, version)
);
CREATE INDEX indicators_by_id ON indicators (origin_org, indicator_id, version DESC);

-- Registered partner organisations, from their verified org cards.
CREATE TABLE peers (
    org_id         TEXT    PRIMARY KEY,
    display_name   TEXT    NOT NULL,
    -- host:port we dial; '' = we do not subscribe to this partner.
    endpoint       TEXT    NOT NULL,
    card           BLOB    NOT NULL,
    card_version   INTEGER NOT NULL,
    ca_bundle_pem  TEXT    NOT NULL,
    added_ms       INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL
);

-- Partners' Ed25519 signing keys, from their cards. A key belongs to one org.
CREATE TABLE signing_keys (
    key_id         TEXT    PRIMARY KEY,
    org_id         TEXT    NOT NULL REFERENCES peers (org_id) ON DELETE CASCADE,
    public_key     BLOB    NOT NULL,
    not_before_ms  INTEGER NOT NULL,
    not_after_ms   INTEGER NOT NULL
);

-- Per-upstream subscription cursor, committed with the rows it covers.
CREATE TABLE cursors (
    upstream_org   TEXT    PRIMARY KEY,
    cursor         INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL
);

-- Envelopes refused on ingest (poison messages), kept for the operator.
CREATE TABLE rejections (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    upstream_org   TEXT    NOT NULL,
    upstream_seq   INTEGER NOT NULL,
    code           TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    envelope       BLOB    NOT NULL,
    rejected_ms    INTEGER NOT NULL
);
