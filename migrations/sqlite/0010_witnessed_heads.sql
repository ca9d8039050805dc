-- Ledger heads partners signed and gave us: we witness their ledgers, so a
-- ledger later cut or rewritten disagrees with what we hold.
CREATE TABLE witnessed_heads (
    org_id         TEXT    NOT NULL,
    rows           INTEGER NOT NULL,
    head_hash      BLOB    NOT NULL,
    signed_ms      INTEGER NOT NULL,
    received_ms    INTEGER NOT NULL,
    envelope       BLOB    NOT NULL,
    PRIMARY KEY (org_id, rows)
);
