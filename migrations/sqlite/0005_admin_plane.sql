-- Certificates of our own org known to this node: issued through the Admin
-- API, or found in the node's configuration at start.
CREATE TABLE certificates (
    serial         TEXT    PRIMARY KEY,
    spiffe_id      TEXT    NOT NULL,
    not_before_ms  INTEGER NOT NULL,
    not_after_ms   INTEGER NOT NULL,
    issued_ms      INTEGER NOT NULL,
    issued_by      TEXT    NOT NULL,
    pem            TEXT    NOT NULL
);
-- The latest CRL imported for each partner, as received (DER); its signature
-- is checked against the partner's CA bundle at import and at every load.
CREATE TABLE partner_crls (
    org_id          TEXT    PRIMARY KEY,
    der             BLOB    NOT NULL,
    this_update_ms  INTEGER NOT NULL,
    imported_ms     INTEGER NOT NULL,
    imported_by     TEXT    NOT NULL
);
-- Partners whose relayed cards of other orgs we accept.
ALTER TABLE peers ADD COLUMN introducer INTEGER NOT NULL DEFAULT 0;
-- Number of our own CRLs signed, so each is numbered above the last.
CREATE TABLE crl_counter (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    number  INTEGER NOT NULL
);
