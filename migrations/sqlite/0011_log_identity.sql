-- The identity of this store's log, made when the store is created and
-- changed by `threatmesh store restore`: subscribers keep (identity, seq)
-- as their cursor and re-read from the start when it changes, so a
-- restored or re-created log that reuses sequence numbers loses nothing.
CREATE TABLE log_identity (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    log_id         TEXT    NOT NULL
);
INSERT INTO log_identity (id, log_id) VALUES (1, lower(hex(randomblob(16))));

-- The identity of the upstream log a cursor counts in ('' = not known yet:
-- cursors from before identities, adopted at the next subscription).
ALTER TABLE cursors ADD COLUMN log_id TEXT NOT NULL DEFAULT '';
