-- The PostgreSQL store: the schema the SQLite migrations 0001-0017 arrive
-- at, in PostgreSQL's types (BIGINT for every count, time and sequence
-- number, BYTEA for bytes, BOOLEAN for flags). Later changes come as
-- numbered migrations here and under migrations/sqlite alike.

-- SQLite built-ins the store's queries use, so one query text serves both.
CREATE FUNCTION instr(haystack TEXT, needle TEXT) RETURNS INTEGER
    LANGUAGE sql IMMUTABLE STRICT AS 'SELECT strpos(haystack, needle)';
-- SQLite's two-argument (scalar) MAX and MIN; the one-argument aggregates
-- are PostgreSQL's own.
CREATE FUNCTION max(a BIGINT, b BIGINT) RETURNS BIGINT
    LANGUAGE sql IMMUTABLE STRICT AS 'SELECT GREATEST(a, b)';
CREATE FUNCTION min(a BIGINT, b BIGINT) RETURNS BIGINT
    LANGUAGE sql IMMUTABLE STRICT AS 'SELECT LEAST(a, b)';

-- The local log. Sequence numbers are taken under the store's write lock
-- (an advisory lock every write transaction holds), so they become visible
-- in order; a rolled-back or duplicate insert leaves a gap, never a reuse.
CREATE TABLE indicators (
    seq            BIGSERIAL PRIMARY KEY,
    origin_org     TEXT    NOT NULL,
    indicator_id   TEXT    NOT NULL,
    version        BIGINT  NOT NULL,
    received_from  TEXT    NOT NULL,
    envelope       BYTEA   NOT NULL,
    kind           INTEGER NOT NULL,
    value          TEXT    NOT NULL,
    tlp            INTEGER NOT NULL,
    confidence     BIGINT  NOT NULL,
    created_ms     BIGINT  NOT NULL,
    modified_ms    BIGINT  NOT NULL,
    revoked        BOOLEAN NOT NULL,
    stored_ms      BIGINT  NOT NULL,
    path           TEXT    NOT NULL DEFAULT '',
    UNIQUE (origin_org, indicator_id, version)
);
CREATE INDEX indicators_by_value ON indicators (value, kind);
CREATE INDEX indicators_by_stored ON indicators (stored_ms);
CREATE INDEX indicators_by_id ON indicators (indicator_id);

CREATE TABLE peers (
    org_id         TEXT    PRIMARY KEY,
    display_name   TEXT    NOT NULL,
    endpoint       TEXT    NOT NULL,
    card           BYTEA   NOT NULL,
    card_version   BIGINT  NOT NULL,
    ca_bundle_pem  TEXT    NOT NULL,
    added_ms       BIGINT  NOT NULL,
    updated_ms     BIGINT  NOT NULL,
    policy         TEXT    NOT NULL DEFAULT '',
    state          TEXT    NOT NULL DEFAULT 'active',
    introducer     BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE signing_keys (
    key_id         TEXT    PRIMARY KEY,
    org_id         TEXT    NOT NULL,
    public_key     BYTEA   NOT NULL,
    not_before_ms  BIGINT  NOT NULL,
    not_after_ms   BIGINT  NOT NULL,
    revoked        BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX signing_keys_org ON signing_keys (org_id);

CREATE TABLE own_signing_keys (
    key_id         TEXT    PRIMARY KEY,
    public_key     BYTEA   NOT NULL,
    not_before_ms  BIGINT  NOT NULL,
    not_after_ms   BIGINT  NOT NULL,
    revoked_ms     BIGINT  NOT NULL DEFAULT 0,
    rotation       BYTEA   NOT NULL DEFAULT ''::bytea
);

CREATE TABLE cursors (
    upstream_org   TEXT    PRIMARY KEY,
    cursor         BIGINT  NOT NULL,
    updated_ms     BIGINT  NOT NULL,
    log_id         TEXT    NOT NULL DEFAULT ''
);

CREATE TABLE rejections (
    id             BIGSERIAL PRIMARY KEY,
    upstream_org   TEXT    NOT NULL,
    upstream_seq   BIGINT  NOT NULL,
    code           TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    envelope       BYTEA   NOT NULL,
    rejected_ms    BIGINT  NOT NULL
);

CREATE TABLE rejected_bytes (
    upstream_org   TEXT    PRIMARY KEY,
    kept_bytes     BIGINT  NOT NULL
);

CREATE TABLE policies (
    name         TEXT    NOT NULL,
    version      BIGINT  NOT NULL,
    document     TEXT    NOT NULL,
    applied_ms   BIGINT  NOT NULL,
    applied_by   TEXT    NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE audit (
    seq          BIGINT  PRIMARY KEY,
    at_ms        BIGINT  NOT NULL,
    event        TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    partner      TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    rule         TEXT    NOT NULL,
    detail       TEXT    NOT NULL,
    prev_hash    BYTEA   NOT NULL,
    hash         BYTEA   NOT NULL
);
CREATE INDEX audit_by_partner ON audit (partner, seq);

CREATE TABLE audit_head (
    id           BIGINT  PRIMARY KEY CHECK (id = 1),
    seq          BIGINT  NOT NULL,
    hash         BYTEA   NOT NULL
);

CREATE TABLE revoked_certs (
    serial       TEXT    PRIMARY KEY,
    spiffe_id    TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    revoked_ms   BIGINT  NOT NULL,
    revoked_by   TEXT    NOT NULL
);

CREATE TABLE certificates (
    serial         TEXT    PRIMARY KEY,
    spiffe_id      TEXT    NOT NULL,
    not_before_ms  BIGINT  NOT NULL,
    not_after_ms   BIGINT  NOT NULL,
    issued_ms      BIGINT  NOT NULL,
    issued_by      TEXT    NOT NULL,
    pem            TEXT    NOT NULL
);

CREATE TABLE partner_crls (
    org_id          TEXT    PRIMARY KEY,
    der             BYTEA   NOT NULL,
    this_update_ms  BIGINT  NOT NULL,
    imported_ms     BIGINT  NOT NULL,
    imported_by     TEXT    NOT NULL
);

CREATE TABLE crl_counter (
    id      BIGINT  PRIMARY KEY CHECK (id = 1),
    number  BIGINT  NOT NULL
);

CREATE TABLE sent_to (
    origin_org     TEXT    NOT NULL,
    indicator_id   TEXT    NOT NULL,
    recipient      TEXT    NOT NULL,
    first_sent_ms  BIGINT  NOT NULL,
    max_version    BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (origin_org, indicator_id, recipient)
);

CREATE TABLE quarantine (
    id            BIGSERIAL PRIMARY KEY,
    upstream_org  TEXT    NOT NULL,
    upstream_seq  BIGINT  NOT NULL,
    key_id        TEXT    NOT NULL,
    envelope      BYTEA   NOT NULL,
    path          TEXT    NOT NULL,
    received_ms   BIGINT  NOT NULL,
    due_ms        BIGINT  NOT NULL DEFAULT 0,
    UNIQUE (upstream_org, upstream_seq)
);
CREATE INDEX quarantine_key ON quarantine (key_id);

CREATE TABLE org_cards (
    org_id        TEXT    PRIMARY KEY,
    card          BYTEA   NOT NULL,
    card_version  BIGINT  NOT NULL,
    state         TEXT    NOT NULL,
    via           TEXT    NOT NULL,
    updated_ms    BIGINT  NOT NULL
);

CREATE TABLE witnessed_heads (
    org_id         TEXT    NOT NULL,
    rows           BIGINT  NOT NULL,
    head_hash      BYTEA   NOT NULL,
    signed_ms      BIGINT  NOT NULL,
    received_ms    BIGINT  NOT NULL,
    envelope       BYTEA   NOT NULL,
    PRIMARY KEY (org_id, rows)
);

CREATE TABLE log_identity (
    id             BIGINT  PRIMARY KEY CHECK (id = 1),
    log_id         TEXT    NOT NULL
);
INSERT INTO log_identity (id, log_id) VALUES (1, replace(gen_random_uuid()::text, '-', ''));

CREATE TABLE publish_keys (
    key_hash        BIGINT,
    publisher       TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    request_digest  BYTEA   NOT NULL,
    indicator_id    TEXT    NOT NULL,
    version         BIGINT  NOT NULL,
    seq             BIGINT  NOT NULL,
    created_ms      BIGINT  NOT NULL
);
CREATE INDEX publish_keys_by_hash ON publish_keys (key_hash);
CREATE INDEX publish_keys_created ON publish_keys (created_ms);

CREATE TABLE resend_requests (
    recipient     TEXT    PRIMARY KEY,
    from_seq      BIGINT  NOT NULL,
    up_to_seq     BIGINT  NOT NULL,
    requested_ms  BIGINT  NOT NULL,
    requested_by  TEXT    NOT NULL
);
