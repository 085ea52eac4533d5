//! The PostgreSQL adapter of the slash command's port ([`SlashStore`]): channels' watch
//! state (with its audit entry in the same transaction), the question posts of
//! `/infragpt <question>`, and the count of a workspace's conversations for `status`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use infragpt_actors::audit::AuditEntry;
use infragpt_actors::ids::{ChannelId, MessageTs, TeamId};
use infragpt_actors::slash::{
    ChannelWatch, QuestionPost, SlashCommand, SlashStore, SlashStoreError, TriggerId, WatchChange,
};

use super::audit::insert_entry;
use super::schema::{channels, conversations, slack_workspaces, slash_questions};
use super::{Pool, StoreError, conn};
use crate::db::committed::CommittedExt as _;

fn unavailable(e: impl Into<StoreError>) -> SlashStoreError {
    SlashStoreError::Unavailable(Box::new(e.into()))
}

/// [`SlashStore`] on PostgreSQL.
#[derive(Clone)]
pub struct PgSlashStore {
    pool: Pool,
}

impl std::fmt::Debug for PgSlashStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSlashStore").finish_non_exhaustive()
    }
}

impl PgSlashStore {
    /// The store on `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl SlashStore for PgSlashStore {
    async fn channel_watch(
        &self,
        team: &TeamId,
        channel: &ChannelId,
    ) -> Result<ChannelWatch, SlashStoreError> {
        let mut conn = conn(&self.pool).await.map_err(unavailable)?;
        let row: Option<(bool, bool)> = channels::table
            .find((team.as_str(), channel.as_str()))
            .select((channels::monitored, channels::watch_stopped))
            .first(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        Ok(
            row.map_or_else(ChannelWatch::default, |(monitored, stopped)| ChannelWatch {
                monitored,
                stopped,
            }),
        )
    }

    async fn set_channel_watch(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        watch: bool,
        audit: AuditEntry,
    ) -> Result<WatchChange, SlashStoreError> {
        let mut conn = conn(&self.pool).await.map_err(unavailable)?;
        let (team, channel) = (team.as_str().to_owned(), channel.as_str().to_owned());
        conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
            // The row is locked for the rest of the transaction: two replicas running `stop`
            // and `watch` of one channel at once apply one after the other.
            let before: Option<(bool, bool)> = channels::table
                .find((team.as_str(), channel.as_str()))
                .select((channels::monitored, channels::watch_stopped))
                .for_update()
                .first(conn)
                .await
                .optional()?;
            let wanted = (watch, !watch);
            if before == Some(wanted) {
                return Ok(WatchChange::Unchanged);
            }
            diesel::insert_into(channels::table)
                .values((
                    channels::team_id.eq(&team),
                    channels::channel_id.eq(&channel),
                    channels::monitored.eq(watch),
                    channels::watch_stopped.eq(!watch),
                ))
                .on_conflict((channels::team_id, channels::channel_id))
                .do_update()
                .set((
                    channels::monitored.eq(excluded(channels::monitored)),
                    channels::watch_stopped.eq(excluded(channels::watch_stopped)),
                    channels::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
            let organization: Option<Option<uuid::Uuid>> = slack_workspaces::table
                .find(team.as_str())
                .select(slack_workspaces::organization_id)
                .first(conn)
                .await
                .optional()?;
            let entry = AuditEntry {
                organization_id: organization.flatten(),
                details: {
                    let mut d = audit.details.clone();
                    d["previous"] = serde_json::json!(before.map(|(m, s)| serde_json::json!({
                        "monitored": m, "stopped": s
                    })));
                    d
                },
                ..audit
            };
            insert_entry(conn, &entry).await?;
            Ok(WatchChange::Changed)
        })
        .await
        .map_err(unavailable)
    }

    async fn conversations_since(
        &self,
        team: &TeamId,
        since: DateTime<Utc>,
    ) -> Result<i64, SlashStoreError> {
        let mut conn = conn(&self.pool).await.map_err(unavailable)?;
        conversations::table
            .filter(conversations::team_id.eq(team.as_str()))
            .filter(conversations::created_at.ge(since))
            .count()
            .get_committed(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn question_post(&self, cmd: &SlashCommand) -> Result<QuestionPost, SlashStoreError> {
        let mut conn = conn(&self.pool).await.map_err(unavailable)?;
        diesel::insert_into(slash_questions::table)
            .values((
                slash_questions::trigger_id.eq(cmd.trigger_id.as_str()),
                slash_questions::team_id.eq(cmd.team_id.as_str()),
                slash_questions::channel_id.eq(cmd.channel_id.as_str()),
                slash_questions::user_id.eq(cmd.user_id.as_str()),
                slash_questions::question.eq(cmd.text.trim()),
            ))
            .on_conflict_do_nothing()
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        let (posting_since, posted_ts): (Option<DateTime<Utc>>, Option<String>) =
            slash_questions::table
                .find(cmd.trigger_id.as_str())
                .select((slash_questions::posting_since, slash_questions::posted_ts))
                .first(&mut conn)
                .await
                .map_err(unavailable)?;
        let posted_ts = posted_ts
            .map(MessageTs::try_from)
            .transpose()
            .map_err(|e| {
                unavailable(StoreError::Corrupt {
                    what: format!("slash question {}", cmd.trigger_id),
                    source: Box::new(e),
                })
            })?;
        Ok(QuestionPost {
            posted_ts,
            posting_since,
        })
    }

    async fn question_posting(
        &self,
        trigger: &TriggerId,
        posting: bool,
    ) -> Result<(), SlashStoreError> {
        let mut conn = conn(&self.pool).await.map_err(unavailable)?;
        let since: Option<DateTime<Utc>> = posting.then(Utc::now);
        diesel::update(
            slash_questions::table
                .find(trigger.as_str())
                .filter(slash_questions::posted_ts.is_null()),
        )
        .set(slash_questions::posting_since.eq(since))
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn question_posted(
        &self,
        trigger: &TriggerId,
        ts: &MessageTs,
    ) -> Result<(), SlashStoreError> {
        let mut conn = conn(&self.pool).await.map_err(unavailable)?;
        diesel::update(slash_questions::table.find(trigger.as_str()))
            .set(slash_questions::posted_ts.eq(ts.as_str()))
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
