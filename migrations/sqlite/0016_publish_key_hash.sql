-- Idempotency keys are found through an 8-byte hash of (publisher, key)
-- instead of a primary key on the two strings: the strings (a SPIFFE id and
-- a key such as a STIX id with its modified time) made an index entry of
-- about 110 bytes with random order, the largest index written per
-- published indicator. The hash (the first 8 bytes of SHA-256 over the
-- length-prefixed pair, see store/publish_keys.rs) is computed by the store:
-- rows kept from before get theirs when the store is next opened, before
-- anything is served. Several pairs may share a hash; look-ups compare the
-- strings, and the one store writer keeps each pair once.
CREATE TABLE publish_keys_hashed (
    key_hash        INTEGER,
    publisher       TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    request_digest  BLOB    NOT NULL,
    indicator_id    TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    created_ms      INTEGER NOT NULL
);
INSERT INTO publish_keys_hashed
    (publisher, key, request_digest, indicator_id, version, seq, created_ms)
    SELECT publisher, key, request_digest, indicator_id, version, seq, created_ms
    FROM publish_keys;
DROP TABLE publish_keys;
ALTER TABLE publish_keys_hashed RENAME TO publish_keys;
CREATE INDEX publish_keys_by_hash ON publish_keys (key_hash);
CREATE INDEX publish_keys_created ON publish_keys (created_ms);
