//! Every Slack fixture in `tests/data/slack/` parses into an event or a clear ignored
//! outcome, with the classification asserted per file; plus the request-signing vector.

use std::sync::Arc;

use infragpt::slack::signature::{SignatureError, SlackSignatureVerifier, sign};
use infragpt_actors::Secret;
use infragpt_actors::slack_alerts::{AlertSource, AlertSources};
use infragpt_actors::slack_events::{
    Author, BotId, ChannelId, DecideContext, Decision, DisconnectReason, IgnoreReason, Inbound,
    SlackEvent, SocketFrame, TeamId, Ts, UserId, decide, parse_body, parse_socket_frame,
    parse_value, turn_id,
};
use serde_json::Value;

use crate::support::fixtures;

fn slack_files(sub: &str) -> Vec<(String, Vec<u8>)> {
    fixtures::json_files(&format!("slack/{sub}"))
}

fn ctx(bot: Option<&str>, monitored: bool, in_thread: bool) -> DecideContext {
    DecideContext {
        bot_user_id: bot.map(|b| UserId::parse(b).expect("id")),
        channel_monitored: monitored,
        bot_in_thread: in_thread,
        ..DecideContext::default()
    }
}

/// [`ctx`] in a monitored channel whose alert sources are `sources`.
fn alert_ctx(sources: Vec<AlertSource>) -> DecideContext {
    DecideContext {
        channel_monitored: true,
        alert_sources: AlertSources::new(sources),
        ..DecideContext::default()
    }
}

fn by_bot(bot_id: &str) -> AlertSource {
    AlertSource {
        bot_id: Some(BotId::new(bot_id)),
        ..AlertSource::default()
    }
}

fn callback(body: &[u8]) -> infragpt_actors::slack_events::EventCallback {
    match parse_body(body).expect("parses") {
        Inbound::EventCallback(cb) => *cb,
        other => panic!("expected event_callback, got {other:?}"),
    }
}

fn expect_turn(d: Decision, text: &str, thread_ts: &str) -> infragpt_actors::slack_events::Turn {
    match d {
        Decision::Turn(t) => {
            assert_eq!(t.text, text);
            assert_eq!(t.thread.thread_ts, Ts::parse(thread_ts).expect("id"));
            t
        }
        other => panic!("expected a turn, got {other:?}"),
    }
}

fn expect_ignored(d: Decision, reason: IgnoreReason) {
    assert_eq!(d, Decision::Ignored(reason));
}

/// Asserts the classification of one Events API body. Panics on a file without an expectation,
/// so a new fixture cannot go unchecked.
fn check_events_api(name: &str, body: &[u8]) {
    let none = ctx(None, false, false);
    match name {
        "url_verification.json" => assert_eq!(
            parse_body(body).expect("parses"),
            Inbound::UrlVerification {
                challenge: "valid_challenge_token".into()
            }
        ),
        "url_verification.zulip.json" => assert_eq!(
            parse_body(body).expect("parses"),
            Inbound::UrlVerification {
                challenge: "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P".into()
            }
        ),
        "app_mention.json" => {
            let cb = callback(body);
            assert_eq!(cb.event_id.as_str(), "Ev111");
            assert_eq!(cb.team_id, TeamId::parse("T111").expect("id"));
            // No `authorizations` here (older body with `authed_users`): the bot id comes
            // from the installation. A mention is a turn even in an unmonitored channel.
            let t = expect_turn(
                decide(&cb, &ctx(Some("W111"), false, false)),
                "Hi there!",
                "1595926230.009600",
            );
            assert!(t.marks_channel_monitored);
            assert_eq!(t.author, Author::User(UserId::parse("W222").expect("id")));
            assert_eq!(t.raw_text, "<@W111> Hi there!");
        }
        "message.bot_id_no_subtype.json" => {
            // `user` is the authorized bot user: our own bot's post, even when someone lists
            // our bot as an alert source.
            expect_ignored(decide(&callback(body), &none), IgnoreReason::OwnBotMessage);
            expect_ignored(
                decide(&callback(body), &alert_ctx(vec![by_bot("B999")])),
                IgnoreReason::OwnBotMessage,
            );
            // Another app's bot (bot_id, no subtype) is ignored too, even in a monitored channel.
            expect_ignored(
                decide(&callback(body), &ctx(Some("U0OTHER"), true, true)),
                IgnoreReason::FromBot {
                    bot_id: "B999".into(),
                },
            );
        }
        "message.bot_message.classic.json"
        | "message.bot_message.json"
        | "message.bot_message.with_attachments.zulip.json" => {
            // Another bot's post: ignored unless it comes from an alert source.
            let cb = callback(body);
            let SlackEvent::Message(m) = &cb.event else {
                panic!("{name}: not a message");
            };
            let bot_id = m.bot_id.clone().expect("bot_id");
            expect_ignored(
                decide(&cb, &ctx(None, true, true)),
                IgnoreReason::FromBot {
                    bot_id: bot_id.clone(),
                },
            );
            // Listed (by bot id, or by app id and the post's name), it is a turn.
            let t = match decide(&cb, &alert_ctx(vec![by_bot(bot_id.as_str())])) {
                Decision::Turn(t) => t,
                other => panic!("{name}: expected a turn, got {other:?}"),
            };
            let Author::Alert(origin) = &t.author else {
                panic!("{name}: expected an alert author, got {:?}", t.author);
            };
            assert_eq!(origin.bot_id, bot_id);
            assert!(!t.marks_channel_monitored);
            if name == "message.bot_message.with_attachments.zulip.json" {
                // The ClickUp post's attachment (its blocks) is in the turn's text, without
                // the fallback.
                assert_eq!(
                    t.text,
                    "*Task status changed* from `complete` to `to do`\n\n\
                     *<https://app.clickup.com/t/25567147/86cw30wf2|asd>*\nin dds | To Do"
                );
                let by_app_and_name = AlertSource {
                    app_id: m.app_id.clone(),
                    name: m.username.clone(),
                    ..AlertSource::default()
                };
                assert!(matches!(
                    decide(&cb, &alert_ctx(vec![by_app_and_name])),
                    Decision::Turn(_)
                ));
            }
            // Not in a monitored channel nor a thread of ours: ignored like a person's.
            let unmonitored = DecideContext {
                channel_monitored: false,
                ..alert_ctx(vec![by_bot(bot_id.as_str())])
            };
            expect_ignored(decide(&cb, &unmonitored), IgnoreReason::NotMonitored);
        }
        "message.channel_join.json" => expect_ignored(
            decide(&callback(body), &ctx(None, true, false)),
            IgnoreReason::Subtype("channel_join".into()),
        ),
        "message.message_replied.docs.json" => expect_ignored(
            decide(&callback(body), &ctx(None, true, true)),
            IgnoreReason::Subtype("message_replied".into()),
        ),
        "message.message_changed.json" => match decide(&callback(body), &none) {
            Decision::Update {
                key,
                new_text,
                edited_by,
            } => {
                assert_eq!(key.channel, ChannelId::parse("C043YJGBY49").expect("id"));
                assert_eq!(key.ts, Ts::parse("1663969333.524439").expect("id"));
                assert!(new_text.starts_with("<https://jadeapptesting.slack.com/"));
                assert_eq!(edited_by, None);
            }
            other => panic!("expected update, got {other:?}"),
        },
        "message.message_changed.morphism.json"
        | "message.message_changed.by_bot.morphism.json" => match decide(&callback(body), &none) {
            Decision::Update {
                key,
                new_text,
                edited_by,
            } => {
                assert_eq!(key.team_id, TeamId::parse("TXXXXXXXXXX").expect("id"));
                assert_eq!(key.ts, Ts::parse("1701735043.989889").expect("id"));
                assert_eq!(new_text, "edited message");
                assert_eq!(edited_by, Some(UserId::parse("UXXXXXXXXXX").expect("id")));
            }
            other => panic!("expected update, got {other:?}"),
        },
        "message.message_deleted.json" => assert_eq!(
            decide(&callback(body), &none),
            Decision::Delete {
                key: infragpt_actors::slack_events::MessageKey {
                    team_id: "T043DB835ML".parse().expect("id"),
                    channel: "C043YJGBY49".parse().expect("id"),
                    ts: "1663966382.046509".parse().expect("id"),
                }
            }
        ),
        "message.message_deleted.bolt.json" => match decide(&callback(body), &none) {
            Decision::Delete { key } => {
                assert_eq!(key.ts, Ts::parse("1665368619.804829").expect("id"))
            }
            other => panic!("expected delete, got {other:?}"),
        },
        "message.plain.im.json" => {
            // A DM with the bot is always a conversation.
            let cb = callback(body);
            expect_turn(decide(&cb, &none), "test", "1664408649.009629");
        }
        "message.plain.json" => {
            let cb = callback(body);
            expect_ignored(decide(&cb, &none), IgnoreReason::NotMonitored);
            let t = expect_turn(
                decide(&cb, &ctx(None, true, false)),
                "dgsfklsdgf",
                "1663966382.046509",
            );
            assert!(!t.marks_channel_monitored);
            assert_eq!(t.event_id.as_str(), "Ev043T7CKN84");
        }
        "message.thread_broadcast.json" => {
            let cb = callback(body);
            expect_ignored(decide(&cb, &none), IgnoreReason::NotMonitored);
            // Counts as a reply in the thread.
            expect_turn(
                decide(&cb, &ctx(None, false, true)),
                "Hi there!",
                "1633663824.000500",
            );
        }
        "message.thread_reply.by_own_bot.json" => {
            // Our app (`app_id` = `api_app_id`) even without our user id.
            let ours = DecideContext {
                bot_user_id: Some(UserId::parse("U0SOMEONE").expect("id")),
                ..alert_ctx(vec![by_bot("B0439P161B9")])
            };
            expect_ignored(decide(&callback(body), &ours), IgnoreReason::OwnBotMessage);
            expect_ignored(
                decide(&callback(body), &ctx(Some("U0442US8QGH"), true, true)),
                IgnoreReason::OwnBotMessage,
            );
            expect_ignored(
                decide(&callback(body), &ctx(None, true, true)),
                IgnoreReason::OwnBotMessage,
            );
        }
        "message.thread_reply.json" => {
            let cb = callback(body);
            expect_ignored(decide(&cb, &none), IgnoreReason::NotMonitored);
            let t = expect_turn(
                decide(&cb, &ctx(None, false, true)),
                "When Slack was released?",
                "1726133698.626339",
            );
            assert_eq!(t.turn_id.ts, Ts::parse("1726133700.887259").expect("id"));
        }
        other => panic!("no expectation for events_api fixture {other}"),
    }
}

#[test]
fn every_events_api_fixture_is_classified() {
    let files = slack_files("events_api");
    for (name, body) in &files {
        check_events_api(name, body);
    }
    assert_eq!(files.len(), 19, "fixture count changed; add expectations");
}

#[test]
fn every_socket_mode_fixture_is_classified() {
    let mut payloads = Vec::new();
    for (name, body) in slack_files("socket_mode") {
        let text = std::str::from_utf8(&body).expect("utf8");
        let frame = parse_socket_frame(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        match name.as_str() {
            "hello.json" => assert_eq!(
                frame,
                SocketFrame::Hello {
                    num_connections: 2,
                    app_id: Some("A111".into()),
                    host: Some("applink-111-xxx".into()),
                }
            ),
            "disconnect.refresh_requested.json" => {
                // The minimal form without debug_info (slack-morphism cannot parse it; we can).
                assert_eq!(
                    frame,
                    SocketFrame::Disconnect {
                        reason: DisconnectReason::RefreshRequested,
                        host: None,
                    }
                );
            }
            "disconnect.too_many_websockets.json" => match frame {
                SocketFrame::Disconnect { reason, host } => {
                    assert_eq!(reason, DisconnectReason::TooManyWebsockets);
                    assert!(!reason.is_fatal());
                    assert_eq!(host.as_deref(), Some("applink-111-xxx"));
                }
                other => panic!("{name}: {other:?}"),
            },
            "events_api.app_mention.json" | "events_api.message.json" => match frame {
                SocketFrame::Envelope {
                    kind,
                    envelope_id,
                    payload,
                    accepts_response_payload,
                    retry_attempt,
                    retry_reason,
                } => {
                    assert_eq!(kind, "events_api");
                    assert!(!envelope_id.is_empty());
                    assert!(!accepts_response_payload);
                    assert_eq!((retry_attempt, retry_reason.as_str()), (0, ""));
                    payloads.push((name.clone(), payload));
                }
                other => panic!("{name}: {other:?}"),
            },
            other => panic!("no expectation for socket_mode fixture {other}"),
        }
    }
    assert_eq!(payloads.len(), 2);

    // The same human message as app_mention and as message: one turn, same turn id.
    let bot = ctx(Some("U111"), false, false);
    let mut ids = Vec::new();
    for (name, payload) in payloads {
        let Inbound::EventCallback(cb) = parse_value(payload).expect("payload parses") else {
            panic!("{name}: not an event_callback");
        };
        ids.push(turn_id(&cb).expect("message has a turn id"));
        match (name.as_str(), &cb.event) {
            ("events_api.app_mention.json", SlackEvent::AppMention(_)) => {
                expect_turn(decide(&cb, &bot), "", "1610241741.000200");
            }
            ("events_api.message.json", SlackEvent::Message(_)) => {
                // The twin is the same turn (same turn id), monitored channel or not; these
                // two real payloads come from different captures, so their texts differ.
                expect_turn(decide(&cb, &bot), "Hi here!", "1610241741.000200");
                expect_turn(
                    decide(&cb, &ctx(Some("U111"), true, true)),
                    "Hi here!",
                    "1610241741.000200",
                );
            }
            (n, e) => panic!("{n}: unexpected event {e:?}"),
        }
    }
    assert_eq!(ids[0], ids[1]);
}

#[test]
fn malformed_bodies_are_rejected_with_reasons() {
    assert!(parse_body(b"not json").is_err());
    let e = parse_body(br#"{"type":"event_callback","team_id":"T1","event_time":1,"event":{"type":"app_mention"}}"#)
        .expect_err("no event_id");
    assert!(e.to_string().contains("event_id"), "{e}");
    let e = parse_body(br#"{"type":"event_callback","event_id":"Ev1","team_id":"T1","event_time":1,"event":{"type":"app_mention","ts":"1.2","text":"x"}}"#)
        .expect_err("no channel");
    assert!(e.to_string().contains("channel"), "{e}");
    assert!(matches!(
        parse_body(br#"{"type":"app_rate_limited","team_id":"T1"}"#),
        Ok(Inbound::Other { .. })
    ));
    let reaction = parse_body(br#"{"type":"event_callback","event_id":"Ev1","team_id":"T1","event_time":1,"event":{"type":"reaction_added"}}"#).expect("parses");
    let Inbound::EventCallback(cb) = reaction else {
        panic!("event_callback")
    };
    expect_ignored(
        decide(&cb, &DecideContext::default()),
        IgnoreReason::UnsupportedEvent("reaction_added".into()),
    );
    assert!(parse_socket_frame(r#"{"reason":"x"}"#).is_err());
}

#[derive(serde::Deserialize)]
struct Vector {
    signing_secret: String,
    timestamp: String,
    body: String,
    expected_signature: String,
    headers: std::collections::BTreeMap<String, String>,
    invalid_examples: Vec<Value>,
}

fn vector() -> Vector {
    serde_json::from_value(fixtures::json("slack/signing-vector.json")).expect("vector parses")
}

#[test]
fn signing_vector_verifies_at_fixed_clock() {
    let v = vector();
    let ts: i64 = v.timestamp.parse().expect("ts");
    let secret = Secret::new(v.signing_secret.clone());
    let verifier = SlackSignatureVerifier::with_clock(&secret, Arc::new(move || ts + 60));
    assert_eq!(sign(&secret, ts, v.body.as_bytes()), v.expected_signature);
    verifier
        .verify(
            Some(&v.timestamp),
            Some(&v.expected_signature),
            v.body.as_bytes(),
        )
        .expect("valid vector verifies");

    let mut headers = http::HeaderMap::new();
    for (k, val) in &v.headers {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            val.parse().expect("value"),
        );
    }
    verifier
        .verify_headers(&headers, v.body.as_bytes())
        .expect("headers verify");

    assert!(!v.invalid_examples.is_empty());
    for example in &v.invalid_examples {
        let body = example["body"].as_str().expect("body");
        assert_eq!(
            verifier.verify(
                Some(&v.timestamp),
                Some(&v.expected_signature),
                body.as_bytes()
            ),
            Err(SignatureError::Mismatch)
        );
    }
    // Tampered signature of the right form.
    let mut tampered = v.expected_signature.clone();
    tampered.replace_range(tampered.len() - 1.., "0");
    assert_eq!(
        verifier.verify(Some(&v.timestamp), Some(&tampered), v.body.as_bytes()),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verifier.verify_headers(&http::HeaderMap::new(), v.body.as_bytes()),
        Err(SignatureError::MissingTimestamp)
    );
}

#[test]
fn signing_vector_is_stale_outside_the_window() {
    let v = vector();
    let ts: i64 = v.timestamp.parse().expect("ts");
    let secret = Secret::new(v.signing_secret.clone());
    for now in [ts + 301, ts - 301, chrono::Utc::now().timestamp()] {
        let verifier = SlackSignatureVerifier::with_clock(&secret, Arc::new(move || now));
        assert!(matches!(
            verifier.verify(
                Some(&v.timestamp),
                Some(&v.expected_signature),
                v.body.as_bytes()
            ),
            Err(SignatureError::Stale { .. })
        ));
    }
    // The real clock: the documented vector is years old.
    assert!(matches!(
        SlackSignatureVerifier::new(&secret).verify(
            Some(&v.timestamp),
            Some(&v.expected_signature),
            v.body.as_bytes()
        ),
        Err(SignatureError::Stale { .. })
    ));
}

/// The `message` event Slack sends for an alert fixture in `tests/data/slack/alerts/`: a
/// `*.message.json` is the message object itself (posted by the tool's own app); a
/// `*.webhook.json` is the body a tool POSTs to an incoming webhook, which Slack posts as a
/// `bot_message` with the webhook's bot id and the body's `username`, `text`, `attachments`
/// and `blocks`.
fn alert_event(name: &str, body: &Value) -> Value {
    let mut event = if name.ends_with(".webhook.json") {
        serde_json::json!({
            "type": "message", "subtype": "bot_message",
            "text": body["text"].as_str().unwrap_or(""),
            "username": body["username"], "bot_id": "B0HOOK0001", "app_id": "A0HOOK0001",
            "attachments": body["attachments"], "blocks": body["blocks"],
            "ts": "1764470000.000200",
        })
    } else {
        body.clone()
    };
    let ts = event["ts"].clone();
    let obj = event.as_object_mut().expect("an object");
    obj.insert("channel".into(), "C0ALERTS01".into());
    obj.insert("channel_type".into(), "channel".into());
    obj.insert("event_ts".into(), ts);
    event
}

#[test]
fn every_alert_fixture_is_a_turn_with_its_text_flattened() {
    let files = slack_files("alerts");
    for (name, bytes) in &files {
        let body: Value = serde_json::from_slice(bytes).expect("json");
        let envelope = serde_json::json!({
            "type": "event_callback", "team_id": "T0ALERTS01", "api_app_id": "A0INFRAGPT",
            "event_id": format!("Ev{name}"), "event_time": 1_764_470_000,
            "authorizations": [{"user_id": "U0INFRAGPT", "is_bot": true}],
            "event": alert_event(name, &body),
        });
        let cb = match parse_value(envelope).unwrap_or_else(|e| panic!("{name}: {e}")) {
            Inbound::EventCallback(cb) => *cb,
            other => panic!("{name}: {other:?}"),
        };
        let SlackEvent::Message(m) = &cb.event else {
            panic!("{name}: not a message");
        };
        let bot_id = m.bot_id.clone().expect("bot_id");
        // Without a source it is another bot's post.
        expect_ignored(
            decide(&cb, &ctx(None, true, true)),
            IgnoreReason::FromBot {
                bot_id: bot_id.clone(),
            },
        );
        let (source, must_contain, who): (AlertSource, &[&str], &str) = match name.as_str() {
            "alertmanager.webhook.json" => (
                AlertSource {
                    app_id: Some("A0HOOK0001".into()),
                    name: Some("alertmanager".into()),
                    ..AlertSource::default()
                },
                &[
                    "[FIRING:2] InstanceDown for api-server (env=\"prod\", severity=\"critical\") (https://alertmanager.local//#/alerts?receiver=default)",
                    "*Alert:* api-server down - `critical`",
                    "• *instance:* `1.2.3.4:8081`",
                ],
                "Alertmanager",
            ),
            "grafana.webhook.json" => (
                AlertSource {
                    bot_id: Some(BotId::new("B0HOOK0001")),
                    name: Some("Grafana".into()),
                    ..AlertSource::default()
                },
                &[
                    "[FIRING:1]  (val1) (http://localhost/alerting/list)",
                    "Labels:\n - alertname = alert1",
                    "Silence: http://localhost/alerting/silence/new?alertmanager=grafana",
                    "Grafana v11.0.0",
                ],
                "Grafana",
            ),
            "pagerduty.message.json" => (
                AlertSource {
                    bot_id: Some(BotId::new("B52HQJQEM")),
                    name: None,
                    ..AlertSource::default()
                },
                &[
                    "Incident Triggered\nAn incident has been triggered.\nProduction XDB Cluster - Laura Haley",
                ],
                "",
            ),
            "datadog.message.json" => (
                AlertSource {
                    app_id: Some("A0DATADOG1".into()),
                    name: Some("datadog".into()),
                    ..AlertSource::default()
                },
                &[
                    "[Triggered] High CPU usage on web-1\n\n",
                    "[Triggered on {host:web-1}] High CPU usage on web-1 (https://app.datadoghq.com/monitors/1234567?group=host%3Aweb-1)",
                    "Notified: @slack-ops",
                    "Tags: env:prod, host:web-1, service:api",
                    "Datadog Monitor Alert",
                ],
                "Datadog",
            ),
            other => panic!("no expectation for alert fixture {other}"),
        };
        let t = match decide(&cb, &alert_ctx(vec![source])) {
            Decision::Turn(t) => t,
            other => panic!("{name}: expected a turn, got {other:?}"),
        };
        for part in must_contain {
            assert!(
                t.text.contains(part),
                "{name}: {part:?} not in {:?}",
                t.text
            );
        }
        // The attachment's fallback repeats what is there; it is left out.
        assert!(
            !t.text.contains(" | https://alertmanager"),
            "{name}: {}",
            t.text
        );
        let Author::Alert(origin) = &t.author else {
            panic!("{name}: {:?}", t.author);
        };
        assert_eq!(origin.bot_id, bot_id);
        assert_eq!(origin.name.as_deref().unwrap_or(""), who, "{name}");
        assert_eq!(t.raw_text, m.text);
    }
    assert_eq!(files.len(), 4, "fixture count changed; add expectations");
}
