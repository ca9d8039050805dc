-- Refusal records are counted and trimmed per partner (federation.refusals_kept_per_partner).
CREATE INDEX rejections_by_partner ON rejections (upstream_org, id);
