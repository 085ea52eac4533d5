DROP INDEX IF EXISTS organization_members_pair_idx;
-- Keep the newest row per pair so the unique constraint can come back.
DELETE FROM organization_members m
    USING organization_members n
    WHERE m.organization_clerk_id = n.organization_clerk_id
      AND m.user_clerk_id = n.user_clerk_id
      AND (m.deleted_at IS NOT NULL AND n.deleted_at IS NULL
           OR (m.deleted_at IS NULL) = (n.deleted_at IS NULL) AND m.updated_at < n.updated_at
           OR (m.deleted_at IS NULL) = (n.deleted_at IS NULL) AND m.updated_at = n.updated_at AND m.id < n.id);
ALTER TABLE organization_members
    ADD CONSTRAINT organization_members_organization_clerk_id_user_clerk_id_key
    UNIQUE (organization_clerk_id, user_clerk_id);
ALTER TABLE organization_members DROP COLUMN clerk_updated_at;
ALTER TABLE organizations DROP COLUMN clerk_updated_at;
ALTER TABLE users DROP COLUMN clerk_updated_at;
