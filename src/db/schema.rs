// Hand-written to match `migrations/` exactly (what `diesel print-schema` would produce; the
// diesel CLI is not installed here). Keep it in sync with every new migration.

// `approvals` (migration 2026-12-03-000014) has 23 columns, more than diesel's default
// 16-column tables support: `approvals::store` reads and writes it with SQL and typed rows
// (`QueryableByName` with explicit SQL types) instead of enabling `32-column-tables`, which
// would rebuild diesel for one table.

diesel::table! {
    /// Append-only record of who changed what, written in the transaction of the change
    /// (`db::audit::insert_entry`).
    audit_log (id) {
        id -> Int8,
        organization_id -> Nullable<Uuid>,
        actor -> Text,
        action -> Text,
        target -> Nullable<Text>,
        details -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    /// Slack channels the bot knows about, keyed by workspace and channel.
    channels (team_id, channel_id) {
        team_id -> Text,
        channel_id -> Text,
        name -> Nullable<Text>,
        monitored -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        watch_stopped -> Bool,
    }
}

diesel::table! {
    /// One conversation per Slack thread `(team_id, channel_id, thread_ts)`.
    conversations (id) {
        id -> Uuid,
        team_id -> Text,
        channel_id -> Text,
        thread_ts -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        last_message_at -> Timestamptz,
        current_turn_ts -> Nullable<Text>,
        history_seq -> Int8,
    }
}

diesel::table! {
    /// Summaries of received GitHub webhook deliveries.
    github_events (id) {
        id -> Int8,
        delivery_id -> Text,
        installation_id -> Nullable<Int8>,
        event -> Text,
        action -> Nullable<Text>,
        repository -> Nullable<Text>,
        actor -> Nullable<Text>,
        git_ref -> Nullable<Text>,
        number -> Nullable<Int8>,
        title -> Nullable<Text>,
        state -> Nullable<Text>,
        conclusion -> Nullable<Text>,
        summary -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    /// Repositories a GitHub App installation can see.
    github_repositories (installation_id, repository_id) {
        installation_id -> Int8,
        repository_id -> Int8,
        full_name -> Text,
        private -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    /// The durable inbox (`InboundEvents` port).
    inbound_events (id) {
        id -> Int8,
        source -> Text,
        source_id -> Text,
        routing_key -> Text,
        kind -> Text,
        payload -> Jsonb,
        received_at -> Timestamptz,
        status -> Text,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        processed_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
        raw_body -> Nullable<Text>,
        partition -> Int2,
    }
}

diesel::table! {
    /// One row per replica process, with its heartbeat.
    cluster_replicas (replica_id) {
        replica_id -> Text,
        host -> Text,
        pid -> Int4,
        version -> Text,
        started_at -> Timestamptz,
        heartbeat_at -> Timestamptz,
        status -> Text,
    }
}

diesel::table! {
    /// Partition leases: owner, fencing epoch, lease end.
    cluster_partitions (partition) {
        partition -> Int2,
        owner -> Nullable<Text>,
        epoch -> Int8,
        lease_until -> Nullable<Timestamptz>,
        acquired_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    /// Encrypted (AES-256-GCM) credentials of an integration.
    integration_credentials (id) {
        id -> Uuid,
        integration_id -> Uuid,
        credential_type -> Text,
        nonce -> Bytea,
        ciphertext -> Bytea,
        key_id -> Text,
        expires_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    /// Connectors an organization installed.
    integrations (id) {
        id -> Uuid,
        organization_id -> Uuid,
        connector_type -> Text,
        status -> Text,
        external_id -> Nullable<Text>,
        metadata -> Jsonb,
        created_by -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    /// Messages of a conversation, unique per `(conversation_id, slack_ts)`.
    messages (id) {
        id -> Uuid,
        conversation_id -> Uuid,
        slack_ts -> Text,
        sender_kind -> Text,
        sender_id -> Text,
        sender_name -> Nullable<Text>,
        sender_email -> Nullable<Text>,
        text -> Text,
        deleted -> Bool,
        edited_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        source_event_id -> Nullable<Int8>,
        in_reply_to -> Nullable<Text>,
        kind -> Text,
    }
}

diesel::table! {
    /// Used OAuth/installation state nonces (single use).
    oauth_nonces (nonce) {
        nonce -> Text,
        expires_at -> Timestamptz,
        used_at -> Timestamptz,
    }
}

diesel::table! {
    /// Clerk organization memberships, joined to users and organizations by Clerk id.
    organization_members (id) {
        id -> Uuid,
        clerk_membership_id -> Nullable<Text>,
        organization_clerk_id -> Text,
        user_clerk_id -> Text,
        role -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
        clerk_updated_at -> Nullable<Int8>,
    }
}

diesel::table! {
    /// Onboarding answers of an organization.
    organization_metadata (organization_id) {
        organization_id -> Uuid,
        company_size -> Nullable<Text>,
        team_size -> Nullable<Text>,
        use_cases -> Array<Text>,
        observability_stack -> Array<Text>,
        onboarding_completed_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    /// Organizations mirrored from Clerk.
    organizations (id) {
        id -> Uuid,
        clerk_id -> Text,
        name -> Text,
        slug -> Nullable<Text>,
        image_url -> Nullable<Text>,
        created_by_clerk_id -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
        clerk_updated_at -> Nullable<Int8>,
    }
}

diesel::table! {
    /// Answers and notices to post into a thread exactly once (migration 2026-11-30-000010).
    reply_intents (id) {
        id -> Uuid,
        conversation_id -> Uuid,
        turn_ts -> Text,
        digest -> Text,
        kind -> Text,
        posting -> Jsonb,
        parts -> Int4,
        parts_done -> Int4,
        posting_part -> Nullable<Int4>,
        file_id -> Nullable<Text>,
        file_done -> Bool,
        claims -> Int4,
        claimed_by -> Nullable<Text>,
        claimed_until -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        posted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    /// Slack workspaces the bot is installed in.
    slack_workspaces (team_id) {
        team_id -> Text,
        team_name -> Nullable<Text>,
        bot_user_id -> Nullable<Text>,
        bot_id -> Nullable<Text>,
        app_id -> Nullable<Text>,
        organization_id -> Nullable<Uuid>,
        token_ref -> Nullable<Text>,
        status -> Text,
        status_reason -> Nullable<Text>,
        installed_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    /// The progress indicator of a turn (assistant status or placeholder message).
    turn_progress (conversation_id, turn_ts) {
        conversation_id -> Uuid,
        turn_ts -> Text,
        placeholder_ts -> Nullable<Text>,
        pending_text -> Nullable<Text>,
        shown_text -> Nullable<Text>,
        shown_at -> Nullable<Timestamptz>,
        lock_id -> Nullable<Uuid>,
        locked_until -> Nullable<Timestamptz>,
        answer_intent -> Nullable<Uuid>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    /// Users mirrored from Clerk.
    users (id) {
        id -> Uuid,
        clerk_id -> Text,
        email -> Nullable<Text>,
        first_name -> Nullable<Text>,
        last_name -> Nullable<Text>,
        username -> Nullable<Text>,
        image_url -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
        clerk_updated_at -> Nullable<Int8>,
    }
}

diesel::table! {
    /// An organization's Alertmanager and PagerDuty webhook sources (secrets sealed).
    event_sources (id) {
        id -> Uuid,
        organization_id -> Uuid,
        kind -> Text,
        name -> Text,
        auth -> Text,
        secret_nonce -> Bytea,
        secret_ciphertext -> Bytea,
        secret_key_id -> Text,
        created_by -> Nullable<Text>,
        created_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    /// Routing rules: which events go to which Slack channel.
    event_rules (id) {
        id -> Uuid,
        organization_id -> Uuid,
        source_kind -> Text,
        enabled -> Bool,
        spec -> Jsonb,
        created_by -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    /// The Slack message of each event thing (one per thing and channel), with its claim.
    event_messages (id) {
        id -> Uuid,
        organization_id -> Uuid,
        team_id -> Text,
        channel_id -> Text,
        thing_key -> Text,
        slack_ts -> Nullable<Text>,
        rendered -> Jsonb,
        version -> Int8,
        shown_version -> Int8,
        shown_at -> Nullable<Timestamptz>,
        claims -> Int4,
        claimed_by -> Nullable<Text>,
        claimed_until -> Nullable<Timestamptz>,
        posting -> Bool,
        triage -> Nullable<Jsonb>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    /// Things reaching a rule per one-minute window (storm detection).
    event_rule_hits (id) {
        id -> Int8,
        rule_id -> Uuid,
        window_start -> Timestamptz,
        thing_key -> Text,
        title -> Text,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(integration_credentials -> integrations (integration_id));
diesel::joinable!(integrations -> organizations (organization_id));
diesel::joinable!(messages -> conversations (conversation_id));
diesel::joinable!(organization_metadata -> organizations (organization_id));
diesel::joinable!(reply_intents -> conversations (conversation_id));
diesel::joinable!(slack_workspaces -> organizations (organization_id));
diesel::joinable!(turn_progress -> conversations (conversation_id));

diesel::allow_tables_to_appear_in_same_query!(
    audit_log,
    channels,
    conversations,
    event_messages,
    event_rule_hits,
    event_rules,
    event_sources,
    github_events,
    github_repositories,
    cluster_partitions,
    cluster_replicas,
    inbound_events,
    integration_credentials,
    integrations,
    messages,
    oauth_nonces,
    organization_members,
    organization_metadata,
    organizations,
    reply_intents,
    slack_workspaces,
    slash_questions,
    turn_progress,
    users,
);

diesel::table! {
    /// The question each `/infragpt <question>` posts, posted once (migration 2026-12-03-000013).
    slash_questions (trigger_id) {
        trigger_id -> Text,
        team_id -> Text,
        channel_id -> Text,
        user_id -> Text,
        question -> Text,
        posting_since -> Nullable<Timestamptz>,
        posted_ts -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}
