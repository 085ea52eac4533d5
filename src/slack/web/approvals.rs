//! The Block Kit calls of approvals (issue 14) on the same client, tokens and retry
//! policy as the rest of the adapter: `chat.postMessage` with blocks (posted once: no blind
//! repeat after a failure that may have taken effect), `chat.update` (idempotent),
//! `chat.postEphemeral` and `views.open`.

use async_trait::async_trait;
use infragpt_actors::approvals::ApprovalSlack;
use infragpt_actors::conversation::{MessageMetadata, SlackApiError};
use infragpt_actors::ids::{ChannelId, MessageTs, SlackUserId, TeamId};
use serde_json::{Value, json};
use slack_morphism::prelude::SLACK_TIER4_METHOD_CONFIG;

use super::{Empty, Repeat, SlackWeb};

#[async_trait]
impl ApprovalSlack for SlackWeb {
    async fn post_blocks(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: &MessageTs,
        text: &str,
        blocks: &Value,
        metadata: &MessageMetadata,
    ) -> Result<MessageTs, SlackApiError> {
        let body = super::blocks_message(channel, Some(thread_ts), text, blocks, metadata);
        self.chat_post(team, &body).await
    }

    async fn update_blocks(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
        text: &str,
        blocks: &Value,
    ) -> Result<(), SlackApiError> {
        // The same call as an event message's update.
        infragpt_actors::events::EventSlack::update_event(self, team, channel, ts, text, blocks)
            .await
    }

    async fn post_ephemeral(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        user: &SlackUserId,
        thread_ts: Option<&MessageTs>,
        text: &str,
    ) -> Result<(), SlackApiError> {
        let mut body = json!({
            "channel": channel.as_str(),
            "user": user.as_str(),
            "text": text,
        });
        if let (Some(ts), Some(obj)) = (thread_ts, body.as_object_mut()) {
            obj.insert("thread_ts".into(), json!(ts.as_str()));
        }
        // An ephemeral message twice is harmless; one lost is a user left wondering.
        match self
            .post::<Empty>(
                team,
                "chat.postEphemeral",
                &body,
                &SLACK_TIER4_METHOD_CONFIG,
                Repeat::Always,
            )
            .await?
        {
            Ok(_) => Ok(()),
            Err(code) => Err(self.code_error(team, "chat.postEphemeral", code).await),
        }
    }

    async fn open_view(
        &self,
        team: &TeamId,
        trigger_id: &str,
        view: &Value,
    ) -> Result<(), SlackApiError> {
        let body = json!({ "trigger_id": trigger_id, "view": view });
        match self
            .post::<Empty>(
                team,
                "views.open",
                &body,
                &SLACK_TIER4_METHOD_CONFIG,
                Repeat::IfNothingHappened,
            )
            .await?
        {
            Ok(_) => Ok(()),
            Err(code) => Err(self.code_error(team, "views.open", code).await),
        }
    }
}
