//! Direct messages with the assistant, end to end: every message in a DM with the bot is a
//! turn without a mention (`channel_type: im`), answered in its thread, with the thread as
//! history.

use infragpt::testkit::slack_sim::SimConfig;

use super::conversations::{ACME, ALICE, bot_replies, service, settle};
use crate::support::wait::GUARD;

const ALICE_DM: &str = "D0ALICEDM1";

#[actix_rt::test]
async fn a_direct_message_is_a_turn_without_a_mention() {
    let app = service(SimConfig::default()).with_dev_agent().start().await;
    let sim = app.sim();
    let root = sim
        .post_user_message(
            ACME,
            ALICE_DM,
            ALICE,
            "what is the status of production?",
            None,
        )
        .expect("dm");
    let wait = |thread: String, n: usize| async move {
        sim.wait_for(
            |s| {
                s.messages_in(ACME, ALICE_DM)
                    .iter()
                    .filter(|m| m.bot_id.is_some() && m.thread_ts.as_deref() == Some(&thread))
                    .count()
                    >= n
            },
            GUARD,
        )
        .await
        .expect("answered");
    };
    wait(root.clone(), 1).await;
    // A follow-up in the DM's thread is a turn too, with the first exchange as history.
    sim.post_user_message(ACME, ALICE_DM, ALICE, "and the database?", Some(&root))
        .expect("reply");
    wait(root.clone(), 2).await;
    settle(sim, &app.db).await;
    assert_eq!(bot_replies(sim, ACME, ALICE_DM, &root).len(), 2);
    let requests = app.agent().requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].current_message,
        "what is the status of production?"
    );
    assert_eq!(requests[1].current_message, "and the database?");
    assert_eq!(requests[1].past_messages.len(), 2);
    assert_eq!(requests[1].channel_id, ALICE_DM);
    app.stop().await;
}
