//! Conversations: one per Slack thread. The handler that turns Slack events into turns for
//! the agent, the SendReply logic, and the ports they need.

pub mod mrkdwn;
pub mod once;
pub mod ports;
pub mod progress;
mod recent;
pub mod replied;
pub mod reply;
pub mod turn;

pub use once::{
    Alone, BUSY_WAIT, BeforePost, FenceError, INTENT_LEASE, NoFence, PostError, PostOutcome,
    REPLY_EVENT_TYPE, Standing, fenced_write, intent_metadata, write_gate,
};
pub use ports::{
    Agent, AgentAnswer, AgentError, AgentTurn, AgentTurnStart, BotIdentity, ChannelRecord,
    ClaimToken, ClaimedIntent, Conversation, ConversationStore, ConversationStoreError,
    HistorySender, InsertOutcome, IntentClaim, IntentStep, MessageKind, MessageMetadata, NewIntent,
    NewMessage, PastMessage, Posting, Sender, SlackApi, SlackApiError, StartIfNew, StartedTurn,
    StoredMessage, TRANSIENT_SLACK_ERRORS, ThreadMessage, TurnStart, TurnState, UserProfile,
};
pub use progress::{
    AnswerSlot, DEFAULT_PROGRESS_DELAY, Progress, ProgressClaim, ProgressError, ProgressLock,
    ProgressMode, ProgressOutcome, ProgressStore,
};
pub use replied::RepliesHere;
pub use reply::{
    AnswerFormat, AnswerStyle, DEFAULT_FILE_THRESHOLD, ReplyError, ReplyMode, ReplyOutcome,
    ReplyService, split_message,
};
pub use turn::{
    ConversationHandler, DEFAULT_FAILURE_NOTICE, DEFAULT_HISTORY_LIMIT, SEEN_REACTION,
    UNAVAILABLE_REPLY, routing_key,
};

#[cfg(test)]
mod approval_tests;
#[cfg(test)]
mod handler_tests;
