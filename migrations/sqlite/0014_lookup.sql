-- `threatmesh lookup VALUE`: every version of every indicator with that
-- (normalised) value, whatever its origin.
CREATE INDEX indicators_by_value ON indicators (value, kind);
