-- Quarantine also holds envelopes dated ahead of our clock (the origin's
-- clock is ahead, or ours behind): their key is known, and they are
-- checked again once our clock reaches due_ms. 0 = waiting for the key.
ALTER TABLE quarantine ADD COLUMN due_ms INTEGER NOT NULL DEFAULT 0;
