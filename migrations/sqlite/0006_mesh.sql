-- The path an indicator travelled before reaching this node (org ids,
-- origin first, the partner it came from last; empty = published here).
ALTER TABLE indicators ADD COLUMN path TEXT NOT NULL DEFAULT '';
-- Which partner was ever sent which indicator, so a later revocation reaches
-- every past recipient whatever the current policy says.
CREATE TABLE sent_to (
    origin_org     TEXT    NOT NULL,
    indicator_id   TEXT    NOT NULL,
    recipient      TEXT    NOT NULL,
    first_sent_ms  INTEGER NOT NULL,
    PRIMARY KEY (origin_org, indicator_id, recipient)
);
-- Envelopes signed by a key this node does not know yet; verified and
-- released when the key arrives, dropped (with a ledger row) after
-- federation.quarantine_ttl_ms.
CREATE TABLE quarantine (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    upstream_org  TEXT    NOT NULL,
    upstream_seq  INTEGER NOT NULL,
    key_id        TEXT    NOT NULL,
    envelope      BLOB    NOT NULL,
    path          TEXT    NOT NULL,
    received_ms   INTEGER NOT NULL,
    UNIQUE (upstream_org, upstream_seq)
);
CREATE INDEX quarantine_key ON quarantine (key_id);
-- Cards of organisations that are not our partners, received through the
-- mesh: 'accepted' (from an introducer, or approved by an admin) or
-- 'pending' (waiting for `threatmesh peer approve-card`).
CREATE TABLE org_cards (
    org_id        TEXT    PRIMARY KEY,
    card          BLOB    NOT NULL,
    card_version  INTEGER NOT NULL,
    state         TEXT    NOT NULL,
    via           TEXT    NOT NULL,
    updated_ms    INTEGER NOT NULL
);
-- Signing keys of partners and of accepted directory orgs (so no longer tied
-- to the peers table), with revocation: nothing newly received under a
-- revoked key is accepted, whatever time it claims.
CREATE TABLE signing_keys_v2 (
    key_id         TEXT    PRIMARY KEY,
    org_id         TEXT    NOT NULL,
    public_key     BLOB    NOT NULL,
    not_before_ms  INTEGER NOT NULL,
    not_after_ms   INTEGER NOT NULL,
    revoked        INTEGER NOT NULL DEFAULT 0
);
INSERT INTO signing_keys_v2 (key_id, org_id, public_key, not_before_ms, not_after_ms)
    SELECT key_id, org_id, public_key, not_before_ms, not_after_ms FROM signing_keys;
DROP TABLE signing_keys;
ALTER TABLE signing_keys_v2 RENAME TO signing_keys;
CREATE INDEX signing_keys_org ON signing_keys (org_id);
-- Our own signing keys, current and retired, published in our card.
CREATE TABLE own_signing_keys (
    key_id         TEXT    PRIMARY KEY,
    public_key     BLOB    NOT NULL,
    not_before_ms  INTEGER NOT NULL,
    not_after_ms   INTEGER NOT NULL,
    revoked_ms     INTEGER NOT NULL DEFAULT 0
);
