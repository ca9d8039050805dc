-- Sightings: signed reports that an org saw an indicator (count, first and
-- last seen) on one UTC day, ours and those partners send us on their way
-- to the origin. One row per sighter, indicator and day; a later report of
-- the day replaces the earlier one.
CREATE TABLE sightings (
    sighter            TEXT    NOT NULL,
    origin_org         TEXT    NOT NULL,
    indicator_id       TEXT    NOT NULL,
    window_ms          BIGINT  NOT NULL,
    indicator_version  BIGINT  NOT NULL,
    seen_count         BIGINT  NOT NULL,
    first_seen_ms      BIGINT  NOT NULL,
    last_seen_ms       BIGINT  NOT NULL,
    reported_ms        BIGINT  NOT NULL,
    sector             TEXT    NOT NULL,
    country            TEXT    NOT NULL,
    received_from      TEXT    NOT NULL,
    path               TEXT    NOT NULL,
    envelope           BYTEA   NOT NULL,
    stored_ms          BIGINT  NOT NULL,
    PRIMARY KEY (sighter, origin_org, indicator_id, window_ms)
);
CREATE INDEX sightings_by_indicator ON sightings (origin_org, indicator_id);
CREATE INDEX sightings_by_partner ON sightings (received_from);

-- Sightings waiting to go to the partner that delivered us the indicator;
-- the policy decides when they are sent, and a row goes once the partner
-- answered for it.
CREATE TABLE sighting_outbox (
    partner        TEXT    NOT NULL,
    sighter        TEXT    NOT NULL,
    origin_org     TEXT    NOT NULL,
    indicator_id   TEXT    NOT NULL,
    window_ms      BIGINT  NOT NULL,
    queued_ms      BIGINT  NOT NULL,
    PRIMARY KEY (partner, sighter, origin_org, indicator_id, window_ms)
);

-- Idempotency keys of our publishers' sightings: a retried Sight with the
-- same key adds nothing again. Forgotten with publish keys
-- (store.publish_keys_kept_ms).
CREATE TABLE sight_keys (
    publisher       TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    request_digest  BYTEA   NOT NULL,
    origin_org      TEXT    NOT NULL,
    indicator_id    TEXT    NOT NULL,
    window_ms       BIGINT  NOT NULL,
    created_ms      BIGINT  NOT NULL,
    PRIMARY KEY (publisher, key)
);
CREATE INDEX sight_keys_created ON sight_keys (created_ms);
