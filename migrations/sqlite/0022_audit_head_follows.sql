-- The ledger head moves with the ledger: a row appended moves it in the
-- same statement (no statement of its own per append), and a row that does
-- not follow the stored head (a writer whose idea of the head is stale) is
-- refused, so the writer reads the head and chains from it. With no head
-- yet (a new store, or a copy before its head is copied) neither applies:
-- the first append writes the head itself.
CREATE TRIGGER audit_follows_head BEFORE INSERT ON audit
WHEN EXISTS (SELECT 1 FROM audit_head WHERE id = 1)
 AND (NEW.seq IS NOT (SELECT seq + 1 FROM audit_head WHERE id = 1)
      OR NEW.prev_hash IS NOT (SELECT hash FROM audit_head WHERE id = 1))
BEGIN
    SELECT RAISE(ABORT, 'audit row does not follow the ledger head');
END;

CREATE TRIGGER audit_moves_head AFTER INSERT ON audit
BEGIN
    UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1;
END;
