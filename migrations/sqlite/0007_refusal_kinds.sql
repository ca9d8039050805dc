-- Rejections record the domain refusal kind (refusal.rs), not a gRPC code
-- name. Rows written before keep their meaning under the new names.
UPDATE rejections SET code = CASE code
    WHEN 'Unauthenticated' THEN 'unauthentic'
    WHEN 'InvalidArgument' THEN 'malformed'
    WHEN 'PermissionDenied' THEN 'denied-by-rule'
    WHEN 'FailedPrecondition' THEN CASE
        WHEN reason LIKE 'rollback:%' THEN 'rollback'
        WHEN reason LIKE '%jumps more than%' THEN 'too-far-ahead'
        ELSE 'unknown-key'
    END
    ELSE code
END;
