-- Partner lifecycle: 'active', 'suspended' (nothing sent, connections refused,
-- resumable) or 'removed' (hard stop; cursor and history kept for the audit).
ALTER TABLE peers ADD COLUMN state TEXT NOT NULL DEFAULT 'active';
