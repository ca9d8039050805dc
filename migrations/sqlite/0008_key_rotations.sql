-- The signed statement by which each of our signing keys took over from
-- the one before (empty for the first key); every card we seal carries
-- them, so partners that missed a rotation's card can still link our later
-- cards to the key they trust.
ALTER TABLE own_signing_keys ADD COLUMN rotation BLOB NOT NULL DEFAULT X'';
