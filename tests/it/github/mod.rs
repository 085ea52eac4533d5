//! GitHub webhooks: every octokit payload through signature check and normalization, and
//! through the webhook endpoint into the inbox.

mod fixtures;
mod webhooks;
