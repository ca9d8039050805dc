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
-- A signing key revoked by its org: nothing newly received under it is
-- accepted, whatever time it claims.
ALTER TABLE signing_keys ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0;
-- Our own signing keys, current and retired, published in our card.
CREATE TABLE own_signing_keys (
    key_id         TEXT    PRIMARY KEY,
    public_key     BLOB    NOT NULL,
    not_before_ms  INTEGER NOT NULL,
    not_after_ms   INTEGER NOT NULL,
    revoked_ms     INTEGER NOT NULL DEFAULT 0
);
