//! The simulator's slash commands and assistant methods check their arguments as Slack does.

use infragpt::testkit::slack_sim::{SimConfig, SlackSim};
use serde_json::{Value, json};

const ACME: &str = "T0SIMACME1";
const GENERAL: &str = "C0GENERAL1";
const DM: &str = "D0ALICEDM1";
const ALICE: &str = "U0ALICE001";

fn bot_token(sim: &SlackSim) -> String {
    sim.config().teams[0].bot_token.expose().to_owned()
}

async fn call(sim: &SlackSim, method: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{}{method}", sim.base_url()))
        .bearer_auth(bot_token(sim))
        .json(&body)
        .send()
        .await
        .expect("http")
        .json()
        .await
        .expect("json")
}

fn error(v: &Value) -> &str {
    assert_eq!(v["ok"], false, "{v}");
    v["error"].as_str().expect("error")
}

#[tokio::test]
async fn assistant_methods_and_post_ephemeral_check_their_arguments() {
    let sim = SlackSim::start(SimConfig::default()).expect("sim");
    let prompt = json!({"title": "Failing?", "message": "What's failing?"});
    let ok = call(
        &sim,
        "assistant.threads.setSuggestedPrompts",
        json!({"channel_id": DM, "thread_ts": "1700000000.000100", "prompts": [prompt]}),
    )
    .await;
    assert_eq!(ok["ok"], true, "{ok}");
    for (body, expected) in [
        (
            json!({"thread_ts": "1.2", "prompts": [prompt]}),
            "invalid_arguments",
        ),
        (
            json!({"channel_id": DM, "prompts": [prompt]}),
            "invalid_arguments",
        ),
        (
            json!({"channel_id": DM, "thread_ts": "1.2"}),
            "invalid_arguments",
        ),
        (
            json!({"channel_id": DM, "thread_ts": "1.2", "prompts": []}),
            "invalid_arguments",
        ),
        (
            json!({"channel_id": DM, "thread_ts": "1.2", "prompts": [prompt, prompt, prompt, prompt, prompt]}),
            "invalid_arguments",
        ),
        (
            json!({"channel_id": DM, "thread_ts": "1.2", "prompts": [{"title": "no message"}]}),
            "invalid_arguments",
        ),
        (
            json!({"channel_id": DM, "thread_ts": "1.2", "prompts": "not json"}),
            "invalid_arguments",
        ),
        (
            json!({"channel_id": "D0NOSUCH01", "thread_ts": "1.2", "prompts": [prompt]}),
            "channel_not_found",
        ),
    ] {
        let v = call(&sim, "assistant.threads.setSuggestedPrompts", body.clone()).await;
        assert_eq!(error(&v), expected, "{body}");
    }
    let title = call(
        &sim,
        "assistant.threads.setTitle",
        json!({"channel_id": DM, "thread_ts": "1.2", "title": "Checkout"}),
    )
    .await;
    assert_eq!(title["ok"], true, "{title}");
    let v = call(
        &sim,
        "assistant.threads.setTitle",
        json!({"channel_id": DM, "thread_ts": "1.2"}),
    )
    .await;
    assert_eq!(error(&v), "invalid_arguments");

    let v = call(
        &sim,
        "chat.postEphemeral",
        json!({"channel": GENERAL, "user": ALICE, "text": "psst"}),
    )
    .await;
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["message_ts"].is_string());
    assert_eq!(sim.ephemerals().len(), 1);
    for (body, expected) in [
        (json!({"user": ALICE, "text": "x"}), "channel_not_found"),
        (
            json!({"channel": "C0NOSUCH01", "user": ALICE, "text": "x"}),
            "channel_not_found",
        ),
        (
            json!({"channel": GENERAL, "text": "x"}),
            "user_not_in_channel",
        ),
        (json!({"channel": GENERAL, "user": ALICE}), "no_text"),
    ] {
        let v = call(&sim, "chat.postEphemeral", body.clone()).await;
        assert_eq!(error(&v), expected, "{body}");
    }
    assert_eq!(sim.ephemerals().len(), 1);

    // An app without the assistant feature.
    sim.set_assistant_enabled(ACME, false);
    let v = call(
        &sim,
        "assistant.threads.setTitle",
        json!({"channel_id": DM, "thread_ts": "1.2", "title": "x"}),
    )
    .await;
    assert_eq!(error(&v), "missing_scope");
    assert_eq!(v["needed"], "assistant:write");
}

#[tokio::test]
async fn response_urls_take_five_messages_and_refuse_the_rest() {
    let sim = SlackSim::start(SimConfig::default()).expect("sim");
    let (cmd, signed) = sim
        .signed_slash_command(ACME, GENERAL, ALICE, "/infragpt", "status")
        .expect("command");
    // The form is what the payload says, signed with the app's secret.
    let form: Vec<(String, String)> = url::form_urlencoded::parse(signed.body.as_bytes())
        .into_owned()
        .collect();
    assert!(form.contains(&("trigger_id".into(), cmd.trigger_id.clone())));
    assert!(form.contains(&("text".into(), "status".into())));
    let secret = sim.config().apps[0].signing_secret.clone();
    assert_eq!(
        infragpt::slack::signature::sign(
            &secret,
            signed.timestamp.parse().expect("ts"),
            signed.body.as_bytes()
        ),
        signed.signature
    );
    let http = reqwest::Client::new();
    let post = |body: Value| {
        let (http, url) = (http.clone(), cmd.response_url.clone());
        async move {
            http.post(url)
                .json(&body)
                .send()
                .await
                .expect("http")
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        post(json!({"response_type": "loud", "text": "x"})).await,
        400
    );
    assert_eq!(post(json!({"response_type": "ephemeral"})).await, 400);
    for i in 0..5 {
        assert_eq!(post(json!({"text": format!("answer {i}")})).await, 200);
    }
    assert_eq!(post(json!({"text": "sixth"})).await, 404, "used up");
    let responses = sim.command_responses();
    assert_eq!(responses.len(), 5);
    assert_eq!(responses[0].response_type, "ephemeral", "Slack's default");
    assert_eq!(
        (
            responses[0].user_id.as_str(),
            responses[0].channel_id.as_str()
        ),
        (ALICE, GENERAL)
    );
    let unknown = format!(
        "http://127.0.0.1:{}/commands/T0SIMACME1/999/nope",
        sim.port()
    );
    let status = http
        .post(unknown)
        .json(&json!({"text": "x"}))
        .send()
        .await
        .expect("http")
        .status();
    assert_eq!(status.as_u16(), 404);
    // Without an open Socket Mode connection a command cannot be delivered.
    assert!(
        sim.slash_command(ACME, GENERAL, ALICE, "/infragpt", "status")
            .is_err()
    );
}
