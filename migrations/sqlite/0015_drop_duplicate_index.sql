-- indicators_by_id repeated the columns of the UNIQUE (origin_org,
-- indicator_id, version) constraint, whose own index answers the same
-- look-ups (SQLite walks it backwards for the newest version). Every insert
-- paid for both: with random ids, one more page written per row.
DROP INDEX IF EXISTS indicators_by_id;
