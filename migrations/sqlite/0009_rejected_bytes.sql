-- Bytes of refused envelopes kept per partner, so one partner's refusals
-- cannot fill the disk: beyond federation.rejected_bytes_kept_per_partner
-- the refusal is still recorded, without the envelope.
CREATE TABLE rejected_bytes (
    upstream_org   TEXT    PRIMARY KEY,
    kept_bytes     INTEGER NOT NULL
);
INSERT INTO rejected_bytes (upstream_org, kept_bytes)
    SELECT upstream_org, SUM(LENGTH(envelope)) FROM rejections GROUP BY upstream_org;
