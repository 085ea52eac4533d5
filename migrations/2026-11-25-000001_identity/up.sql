-- Users, organizations and memberships mirrored from Clerk. Clerk ids are the natural keys:
-- webhooks may arrive in any order, so memberships reference users and organizations by
-- Clerk id and are joined when both exist (no foreign keys that would force an order).

CREATE TABLE users (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    clerk_id    TEXT NOT NULL UNIQUE,
    email       TEXT,
    first_name  TEXT,
    last_name   TEXT,
    username    TEXT,
    image_url   TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at  TIMESTAMPTZ
);
CREATE INDEX users_email_idx ON users (lower(email));

CREATE TABLE organizations (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    clerk_id            TEXT NOT NULL UNIQUE,
    name                TEXT NOT NULL,
    slug                TEXT,
    image_url           TEXT,
    created_by_clerk_id TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at          TIMESTAMPTZ
);
CREATE UNIQUE INDEX organizations_slug_idx ON organizations (slug) WHERE deleted_at IS NULL;

CREATE TABLE organization_members (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    clerk_membership_id TEXT UNIQUE,
    organization_clerk_id TEXT NOT NULL,
    user_clerk_id       TEXT NOT NULL,
    role                TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at          TIMESTAMPTZ,
    UNIQUE (organization_clerk_id, user_clerk_id)
);
CREATE INDEX organization_members_user_idx ON organization_members (user_clerk_id);

CREATE TABLE organization_metadata (
    organization_id       UUID PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    company_size          TEXT,
    team_size             TEXT,
    use_cases             TEXT[] NOT NULL DEFAULT '{}',
    observability_stack   TEXT[] NOT NULL DEFAULT '{}',
    onboarding_completed_at TIMESTAMPTZ,
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
