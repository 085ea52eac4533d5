//! GitHub webhooks: signature verification, and normalization of every payload in
//! `tests/data/github-webhooks/` (event name = directory name).

use std::collections::BTreeMap;

use infragpt::github::normalize::{
    InstallationChange, NormalizeError, Normalized, NormalizedEvent, RepoRef, SUPPORTED_EVENTS,
    installation_change, normalize, normalize_bytes, repositories_change,
};
use infragpt::github::signature::{GithubSignatureError, GithubSignatureVerifier, sign};
use infragpt_actors::Secret;
use serde_json::{Value, json};

use crate::support::fixtures;

fn raw(event: &str, file: &str) -> Vec<u8> {
    fixtures::read(&format!("github-webhooks/{event}/{file}"))
}

fn payload(event: &str, file: &str) -> Value {
    serde_json::from_slice(&raw(event, file)).expect("fixture is JSON")
}

fn event(event_name: &str, file: &str) -> NormalizedEvent {
    match normalize(event_name, &payload(event_name, file)) {
        Ok(Normalized::Event(e)) => *e,
        other => panic!("{event_name}/{file}: {other:?}"),
    }
}

// ---------------------------------------------------------------- signatures

#[test]
fn signature_round_trip_and_rejections() {
    let secret = Secret::new("It's a Secret to Everybody");
    let body = b"Hello, World!";
    // GitHub's documented example for this secret and body.
    let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(sign(&secret, body), expected);

    let verifier = GithubSignatureVerifier::new(&secret).expect("secret configured");
    assert_eq!(verifier.verify(Some(expected), body), Ok(()));
    assert_eq!(
        verifier.verify(
            Some(&expected.to_uppercase().replace("SHA256=", "sha256=")),
            body
        ),
        Ok(())
    );
    assert_eq!(
        verifier.verify(Some(expected), b"Hello, World?"),
        Err(GithubSignatureError::Mismatch)
    );
    assert_eq!(
        verifier.verify(None, body),
        Err(GithubSignatureError::MissingHeader)
    );
    assert_eq!(
        verifier.verify(Some(""), body),
        Err(GithubSignatureError::MissingHeader)
    );
    assert_eq!(
        verifier.verify(Some(&expected.replace("sha256=", "sha1=")), body),
        Err(GithubSignatureError::Malformed)
    );
    assert_eq!(
        verifier.verify(Some("sha256=zz"), body),
        Err(GithubSignatureError::Malformed)
    );
    assert_eq!(
        verifier.verify(Some(&expected[..expected.len() - 2]), body),
        Err(GithubSignatureError::Malformed)
    );
    let other = GithubSignatureVerifier::new(&Secret::new("another secret")).expect("configured");
    assert_eq!(
        other.verify(Some(expected), body),
        Err(GithubSignatureError::Mismatch)
    );
}

#[test]
fn verifier_cannot_be_built_without_a_secret() {
    assert_eq!(
        GithubSignatureVerifier::new(&Secret::new("")).unwrap_err(),
        GithubSignatureError::SecretNotConfigured
    );
}

#[test]
fn every_fixture_verifies_with_its_signature() {
    let secret = Secret::new("fixture-secret");
    let verifier = GithubSignatureVerifier::new(&secret).expect("configured");
    for (event, file, bytes) in fixtures::github_webhooks() {
        let header = sign(&secret, &bytes);
        assert_eq!(
            verifier.verify(Some(&header), &bytes),
            Ok(()),
            "{event}/{file}"
        );
    }
}

// ---------------------------------------------------------------- normalization

#[test]
fn every_fixture_normalizes() {
    let fixtures = fixtures::github_webhooks();
    assert_eq!(fixtures.len(), 147, "fixture count changed");
    let mut events_seen = std::collections::BTreeSet::new();
    for (event, file, bytes) in &fixtures {
        let normalized =
            normalize_bytes(event, bytes).unwrap_or_else(|e| panic!("{event}/{file}: {e}"));
        let Normalized::Event(n) = normalized else {
            panic!("{event}/{file}: ignored");
        };
        assert_eq!(&n.event, event);
        assert!(
            n.summary.is_object(),
            "{event}/{file}: summary not an object"
        );
        assert!(n.actor.is_some(), "{event}/{file}: no actor");
        let p: Value = serde_json::from_slice(bytes).expect("json");
        assert_eq!(n.action.as_deref(), p["action"].as_str(), "{event}/{file}");
        assert_eq!(
            n.installation_id,
            p["installation"]["id"].as_i64(),
            "{event}/{file}"
        );
        assert_eq!(
            n.repository.as_deref(),
            p["repository"]["full_name"].as_str(),
            "{event}/{file}"
        );
        events_seen.insert(event.clone());
    }
    let supported: std::collections::BTreeSet<String> =
        SUPPORTED_EVENTS.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(events_seen, supported, "every supported event has fixtures");
}

#[test]
fn pull_request_opened() {
    let n = event("pull_request", "opened.json");
    assert_eq!(n.action.as_deref(), Some("opened"));
    assert_eq!(n.number, Some(2));
    assert_eq!(
        n.title.as_deref(),
        Some("Update the README with new information.")
    );
    assert_eq!(n.state.as_deref(), Some("open"));
    assert_eq!(n.git_ref.as_deref(), Some("changes"));
    assert_eq!(n.installation_id, Some(1));
    assert_eq!(n.repository.as_deref(), Some("Codertocat/Hello-World"));
    assert_eq!(n.actor.as_deref(), Some("Codertocat"));
    assert_eq!(n.summary["base_ref"], "master");
    assert_eq!(
        n.summary["head_sha"],
        "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
    );
    assert_eq!(n.summary["draft"], false);

    let draft = event("pull_request", "converted_to_draft.json");
    assert_eq!(draft.summary["draft"], true);
    assert_eq!(draft.installation_id, None);
    assert_eq!(
        event("pull_request", "closed.json").state.as_deref(),
        Some("closed")
    );
}

#[test]
fn push_refs() {
    let tag = event("push", "payload.json");
    assert_eq!(tag.git_ref.as_deref(), Some("refs/tags/simple-tag"));
    assert_eq!(tag.summary["deleted"], true);
    assert_eq!(tag.summary["commit_count"], 0);
    assert_eq!(tag.action, None);

    let branch = event("push", "with-new-branch.json");
    assert_eq!(branch.git_ref.as_deref(), Some("refs/heads/master"));
    assert_eq!(branch.summary["created"], true);
    assert_eq!(branch.summary["head_commit_message"], "Initial commit");
    assert_eq!(
        branch.summary["after"],
        "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    );
    assert_eq!(branch.installation_id, Some(1));
}

#[test]
fn workflow_run_and_job() {
    let run = event("workflow_run", "completed.json");
    assert_eq!(run.state.as_deref(), Some("completed"));
    assert_eq!(run.conclusion.as_deref(), Some("success"));
    assert_eq!(run.git_ref.as_deref(), Some("master"));
    assert_eq!(run.number, Some(163));
    assert_eq!(
        run.title.as_deref(),
        Some("ci(action): update actions/setup-node digest to 8c91899")
    );
    assert_eq!(run.summary["run_id"], 289_782_451);
    assert_eq!(run.repository.as_deref(), Some("octo-org/octo-repo"));

    let requested = event("workflow_run", "requested.json");
    assert_eq!(requested.state.as_deref(), Some("queued"));
    assert_eq!(requested.conclusion, None);
    assert_eq!(
        event("workflow_run", "requested.with-conclusion.json")
            .conclusion
            .as_deref(),
        Some("action_required")
    );

    let failed = event("workflow_job", "completed.failure.with-organization.json");
    assert_eq!(failed.conclusion.as_deref(), Some("failure"));
    assert_eq!(failed.title.as_deref(), Some("linters"));
    assert_eq!(failed.git_ref.as_deref(), Some("main"));
    assert_eq!(failed.summary["workflow_name"], "CodeQL");
    let waiting = event("workflow_job", "waiting.json");
    assert_eq!(waiting.state.as_deref(), Some("waiting"));
    assert_eq!(waiting.installation_id, Some(23_154_469));
}

#[test]
fn checks() {
    let run = event("check_run", "completed.1.json");
    assert_eq!(run.title.as_deref(), Some("Octocoders-linter"));
    assert_eq!(run.conclusion.as_deref(), Some("failure"));
    assert_eq!(run.git_ref.as_deref(), Some("changes"));
    let action = event("check_run", "requested_action.json");
    assert_eq!(action.repository.as_deref(), Some("electron/electron"));
    assert_eq!(action.installation_id, Some(690_857));
    assert_eq!(action.actor.as_deref(), Some("codebytere"));

    let suite = event("check_suite", "requested.json");
    assert_eq!(suite.state.as_deref(), Some("queued"));
    assert_eq!(suite.conclusion, None);
    assert_eq!(suite.git_ref.as_deref(), Some("master"));
    assert_eq!(suite.installation_id, Some(957_387));
    assert_eq!(
        event("check_suite", "rerequested.json").actor.as_deref(),
        Some("octocoders-linter[bot]")
    );
}

#[test]
fn issues_and_comments() {
    let opened = event("issues", "opened.json");
    assert_eq!(opened.number, Some(1));
    assert_eq!(
        opened.title.as_deref(),
        Some("Spelling error in the README file")
    );
    assert_eq!(opened.state.as_deref(), Some("open"));
    assert_eq!(opened.summary["is_pull_request"], false);
    assert_eq!(
        event("issues", "deleted.json").state.as_deref(),
        Some("closed")
    );
    assert_eq!(
        event("issues", "milestoned.json").summary["is_pull_request"],
        true
    );
    assert_eq!(
        event("issues", "transferred.json").repository.as_deref(),
        Some("octo-org/octo-repo")
    );

    let comment = event("issue_comment", "created.json");
    assert_eq!(comment.number, Some(1));
    assert_eq!(comment.summary["comment_id"], 492_700_400);
    assert_eq!(
        comment.summary["comment_url"],
        "https://github.com/Codertocat/Hello-World/issues/1#issuecomment-492700400"
    );
}

#[test]
fn release_ref_create_delete_deploy_star_ping_repository() {
    let release = event("release", "prereleased.json");
    assert_eq!(release.git_ref.as_deref(), Some("0.0.1"));
    // The release has an empty name, so the title falls back to the tag.
    assert_eq!(release.title.as_deref(), Some("0.0.1"));
    assert_eq!(release.summary["prerelease"], true);

    let create = event("create", "with-installation.json");
    assert_eq!(create.git_ref.as_deref(), Some("simple-tag"));
    assert_eq!(create.summary["ref_type"], "tag");
    assert_eq!(create.installation_id, Some(1));
    assert_eq!(
        event("delete", "payload.json").git_ref.as_deref(),
        Some("simple-tag")
    );

    let deployment = event("deployment", "gh-pages.json");
    assert_eq!(deployment.git_ref.as_deref(), Some("gh-pages"));
    assert_eq!(deployment.title.as_deref(), Some("github-pages"));
    let status = event("deployment_status", "payload.json");
    assert_eq!(status.state.as_deref(), Some("success"));
    assert_eq!(status.git_ref.as_deref(), Some("master"));
    assert_eq!(status.title.as_deref(), Some("production"));

    assert_eq!(
        event("star", "created.json").summary["starred_at"],
        "2019-05-15T15:20:40Z"
    );
    assert_eq!(
        event("star", "deleted.json").summary["starred_at"],
        Value::Null
    );

    let ping = event("ping", "with-organization.json");
    assert_eq!(ping.repository, None);
    assert_eq!(ping.summary["hook_id"], 109_948_940);
    assert_eq!(
        ping.summary["zen"],
        "Anything added dilutes everything else."
    );

    let repo = event("repository", "privatized.json");
    assert_eq!(repo.action.as_deref(), Some("privatized"));
    assert_eq!(repo.summary["private"], true);
    assert_eq!(
        event("repository", "renamed.json").repository.as_deref(),
        Some("Octocoders/Hello-World")
    );
}

// ---------------------------------------------------------------- lifecycle

fn codertocat_permissions() -> BTreeMap<String, String> {
    [
        ("administration", "write"),
        ("checks", "write"),
        ("contents", "write"),
        ("deployments", "write"),
        ("issues", "write"),
        ("pages", "write"),
        ("pull_requests", "write"),
        ("repository_hooks", "write"),
        ("repository_projects", "write"),
        ("statuses", "write"),
        ("metadata", "read"),
        ("vulnerability_alerts", "read"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[test]
fn installation_lifecycle() {
    let created = installation_change("installation", &payload("installation", "created.json"))
        .expect("created");
    assert_eq!(
        created,
        InstallationChange::Created {
            installation_id: 957_387,
            account_login: "Codertocat".into(),
            account_type: "User".into(),
            permissions: codertocat_permissions(),
            repositories: vec![RepoRef {
                id: 186_853_002,
                full_name: "Codertocat/Hello-World".into(),
                private: false,
            }],
        }
    );
    assert_eq!(
        installation_change(
            "installation",
            &payload("installation", "created.with-requester.json")
        )
        .expect("created"),
        created
    );
    assert_eq!(
        installation_change("installation", &payload("installation", "deleted.json"))
            .expect("deleted"),
        InstallationChange::Deleted {
            installation_id: 2,
            account_login: "octocat".into()
        }
    );
    assert_eq!(
        installation_change("installation", &payload("installation", "suspend.json"))
            .expect("suspend"),
        InstallationChange::Suspended {
            installation_id: 16_598_467
        }
    );
    assert_eq!(
        installation_change("installation", &payload("installation", "unsuspend.json"))
            .expect("unsuspend"),
        InstallationChange::Unsuspended {
            installation_id: 16_598_467
        }
    );
    assert_eq!(
        installation_change(
            "installation",
            &payload("installation", "new_permissions_accepted.json")
        )
        .expect("new permissions"),
        InstallationChange::NewPermissionsAccepted {
            installation_id: 957_387,
            permissions: codertocat_permissions(),
        }
    );
    let mut future = payload("installation", "deleted.json");
    future["action"] = json!("teleported");
    assert_eq!(
        installation_change("installation", &future).expect("other"),
        InstallationChange::Other {
            installation_id: 2,
            action: "teleported".into()
        }
    );
}

#[test]
fn repositories_lifecycle() {
    let added = repositories_change(
        "installation_repositories",
        &payload("installation_repositories", "added.json"),
    )
    .expect("added");
    assert_eq!(added.installation_id, 957_387);
    assert_eq!(
        added.added,
        vec![RepoRef {
            id: 186_853_007,
            full_name: "Codertocat/Space".into(),
            private: false
        }]
    );
    assert!(added.removed.is_empty());
    assert_eq!(added.repository_selection.as_deref(), Some("selected"));

    let removed = repositories_change(
        "installation_repositories",
        &payload("installation_repositories", "removed.json"),
    )
    .expect("removed");
    assert_eq!(removed.installation_id, 2);
    assert!(removed.added.is_empty());
    assert_eq!(removed.removed[0].full_name, "octocat/Hello-World");
}

#[test]
fn lifecycle_extractors_check_the_event() {
    let p = payload("installation", "created.json");
    assert!(matches!(
        installation_change("push", &p),
        Err(NormalizeError::WrongEvent { .. })
    ));
    assert!(matches!(
        repositories_change("installation", &p),
        Err(NormalizeError::WrongEvent { .. })
    ));
    let mut broken = p.clone();
    broken["installation"]
        .as_object_mut()
        .expect("object")
        .remove("id");
    assert_eq!(
        installation_change("installation", &broken),
        Err(NormalizeError::MissingField {
            event: "installation".into(),
            field: "installation.id"
        })
    );
}

// ---------------------------------------------------------------- bad input

#[test]
fn bad_bodies_give_clear_errors() {
    assert!(matches!(
        normalize_bytes("push", b"not json"),
        Err(NormalizeError::InvalidJson(_))
    ));
    assert!(matches!(
        normalize_bytes("push", b""),
        Err(NormalizeError::InvalidJson(_))
    ));
    assert_eq!(
        normalize_bytes("push", b"null"),
        Err(NormalizeError::NotAnObject {
            event: "push".into(),
            found: "null"
        })
    );
    assert_eq!(
        normalize("pull_request", &json!([1, 2])),
        Err(NormalizeError::NotAnObject {
            event: "pull_request".into(),
            found: "an array"
        })
    );
    let err = normalize_bytes("push", b"null").expect_err("null");
    assert_eq!(
        err.to_string(),
        "github push payload must be a JSON object, got null"
    );
    assert_eq!(
        normalize("", &json!({})),
        Err(NormalizeError::MissingEventName)
    );
}

#[test]
fn known_events_without_their_object_are_rejected() {
    for (event, field) in [
        ("pull_request", "pull_request"),
        ("issues", "issue"),
        ("workflow_run", "workflow_run"),
        ("workflow_job", "workflow_job"),
        ("check_run", "check_run"),
        ("release", "release"),
        ("push", "ref"),
        ("installation", "installation"),
        ("deployment_status", "deployment_status"),
    ] {
        assert_eq!(
            normalize(
                event,
                &json!({"action": "opened", "sender": {"login": "x"}})
            ),
            Err(NormalizeError::MissingField {
                event: event.into(),
                field
            }),
            "{event}"
        );
    }
}

#[test]
fn unknown_events_are_ignored_not_errors() {
    match normalize("marketplace_purchase", &json!({"action": "purchased"})) {
        Ok(Normalized::Ignored(reason)) => assert!(reason.contains("marketplace_purchase")),
        other => panic!("{other:?}"),
    }
}
