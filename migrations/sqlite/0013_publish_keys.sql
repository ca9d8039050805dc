-- Idempotency keys of local publishes: a publisher that retries a Publish
-- (its deadline passed, the connection dropped) with the same key gets the
-- original id and version instead of a second indicator. Written in the
-- transaction that stores the indicator; forgotten after
-- store.publish_keys_kept_ms.
CREATE TABLE publish_keys (
    publisher       TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    request_digest  BLOB    NOT NULL,
    indicator_id    TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    created_ms      INTEGER NOT NULL,
    PRIMARY KEY (publisher, key)
);
CREATE INDEX publish_keys_created ON publish_keys (created_ms);
