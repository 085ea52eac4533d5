-- Out-of-order Clerk webhooks: each mirrored row remembers the `updated_at` (ms) of the Clerk
-- object it was last written from, so an older event never overwrites a newer one.
ALTER TABLE users ADD COLUMN clerk_updated_at BIGINT;
ALTER TABLE organizations ADD COLUMN clerk_updated_at BIGINT;
ALTER TABLE organization_members ADD COLUMN clerk_updated_at BIGINT;

-- One row per Clerk membership id (plus implicit creator rows without one). A user removed
-- from an organization and added again gets a new membership id; both rows are kept (the old
-- one soft-deleted), so deletes are remembered whatever order the events arrive in. The
-- current membership of a (organization, user) pair is its row with deleted_at IS NULL.
ALTER TABLE organization_members
    DROP CONSTRAINT organization_members_organization_clerk_id_user_clerk_id_key;
CREATE INDEX organization_members_pair_idx
    ON organization_members (organization_clerk_id, user_clerk_id);
