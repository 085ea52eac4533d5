//! Roles on the integrations API, with real session tokens and roles from the membership
//! mirror: every route × admin, legacy admin, member, non-member × own organization, another
//! organization's id, a token naming another organization. Members read; only admins
//! create, refresh or delete; the callbacks are authorized by the state alone, and only an
//! admin can obtain a state. See `support::rest` for the cast.

use serde_json::json;

use crate::support::rest::{
    ALICE, CAROL, FAKE2, NEEDS_ADMIN, ORG_A, Persona, RestEnv, Row, Target, assert_error_shape,
    call, run_matrix, state_of,
};

const fn row(
    target: Target,
    method: &'static str,
    path: &'static str,
    body: &'static str,
    expect: [u16; 4],
) -> Row {
    Row {
        target,
        method,
        path,
        body,
        expect,
    }
}

const CREATE: &str = r#"{"connector_type": "fake2"}"#;
const CALLBACK: &str = "/integrations/callback/fake?code=c1&state=forged";
const SLACK_CALLBACK: &str = "/slack/oauth/callback?code=c1&state=forged";

use Target::{OtherId, OtherOrg, Own};

/// In execution order: the changes that succeed come last, refresh before delete.
#[rustfmt::skip]
const MATRIX: &[Row] = &[
    //   target    method    path                             body    admin legacy member outsider
    // A token naming B: none of them is a member of B (the membership check answers).
    row(OtherOrg, "POST",   "/integrations",                 CREATE, [403, 403, 403, 403]),
    row(OtherOrg, "GET",    "/integrations",                 "",     [403, 403, 403, 403]),
    row(OtherOrg, "GET",    "/integrations/{id}",            "",     [403, 403, 403, 403]),
    row(OtherOrg, "GET",    "/integrations/{id}/status",     "",     [403, 403, 403, 403]),
    row(OtherOrg, "GET",    "/integrations/{id}/events",     "",     [403, 403, 403, 403]),
    row(OtherOrg, "POST",   "/integrations/{id}/refresh",    "",     [403, 403, 403, 403]),
    row(OtherOrg, "DELETE", "/integrations/{id}",            "",     [403, 403, 403, 403]),
    // The callbacks ignore the token: a state is what counts, and a forged one is refused.
    row(OtherOrg, "GET",    CALLBACK,                        "",     [400, 400, 400, 400]),
    row(OtherOrg, "GET",    SLACK_CALLBACK,                  "",     [400, 400, 400, 400]),
    // A's token, B's integration: 404 as for an unknown id; a member is refused for the role
    // first (the same answer whether the id exists or not).
    row(OtherId,  "GET",    "/integrations/{id}",            "",     [404, 404, 404, 403]),
    row(OtherId,  "GET",    "/integrations/{id}/status",     "",     [404, 404, 404, 403]),
    row(OtherId,  "GET",    "/integrations/{id}/events",     "",     [404, 404, 404, 403]),
    row(OtherId,  "POST",   "/integrations/{id}/refresh",    "",     [404, 404, 403, 403]),
    row(OtherId,  "DELETE", "/integrations/{id}",            "",     [404, 404, 403, 403]),
    // Own organization.
    row(Own,      "GET",    "/integrations",                 "",     [200, 200, 200, 403]),
    row(Own,      "GET",    "/integrations/{id}",            "",     [200, 200, 200, 403]),
    row(Own,      "GET",    "/integrations/{id}/status",     "",     [200, 200, 200, 403]),
    row(Own,      "GET",    "/integrations/{id}/events",     "",     [200, 200, 200, 403]),
    row(Own,      "GET",    CALLBACK,                        "",     [400, 400, 400, 400]),
    row(Own,      "GET",    SLACK_CALLBACK,                  "",     [400, 400, 400, 400]),
    row(Own,      "POST",   "/integrations",                 CREATE, [201, 201, 403, 403]),
    row(Own,      "POST",   "/integrations/{id}/refresh",    "",     [200, 200, 403, 403]),
    row(Own,      "DELETE", "/integrations/{id}",            "",     [200, 200, 403, 403]),
];

#[actix_rt::test]
async fn integrations_matrix_admin() {
    run_matrix(Persona::Admin, MATRIX).await;
}

#[actix_rt::test]
async fn integrations_matrix_legacy_admin() {
    run_matrix(Persona::LegacyAdmin, MATRIX).await;
}

#[actix_rt::test]
async fn integrations_matrix_member() {
    run_matrix(Persona::Member, MATRIX).await;
}

#[actix_rt::test]
async fn integrations_matrix_outsider() {
    run_matrix(Persona::Outsider, MATRIX).await;
}

/// The callbacks check no role because only an admin can obtain the state they need: a
/// member's POST /integrations issues none (and records nothing); an admin's does, and the
/// callback completes with it and no token at all.
#[actix_rt::test]
async fn only_admins_obtain_a_state_and_the_state_alone_completes_the_callback() {
    let env = RestEnv::new().await;
    let svc = env.service().await;
    let before = env.snapshot().await;
    let (status, answer) = call(
        &svc,
        "POST",
        "/integrations",
        Some(&Persona::Member.token(ORG_A)),
        Some(json!({"connector_type": FAKE2})),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert_error_shape(&answer, "forbidden", "member initiates");
    assert_eq!(answer["error"]["message"], NEEDS_ADMIN);
    assert!(answer.get("url").is_none() && !answer.to_string().contains("state="));
    assert_eq!(
        env.snapshot().await,
        before,
        "no pending integration, no audit"
    );

    let (status, answer) = call(
        &svc,
        "POST",
        "/integrations",
        Some(&Persona::Admin.token(ORG_A)),
        Some(json!({"connector_type": FAKE2})),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let state = state_of(answer["url"].as_str().expect("url"));
    let (status, answer) = call(
        &svc,
        "GET",
        &format!("/integrations/callback/{FAKE2}?code=c2&state={state}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["integration"]["status"], "active");
    assert_eq!(answer["integration"]["organization_id"], env.org_a);
    assert_eq!(answer["integration"]["created_by"], ALICE);
}

/// The role is read from the mirror on every request: a demotion takes effect on the
/// tokens already issued, and so does a promotion.
#[actix_rt::test]
async fn role_changes_in_the_mirror_apply_to_tokens_already_issued() {
    let env = RestEnv::new().await;
    let svc = env.service().await;
    let refresh = format!("/integrations/{}/refresh", env.integration_a);
    let alice = Persona::Admin.token(ORG_A);
    let carol = Persona::Member.token(ORG_A);

    env.set_role_in_a(ALICE, "org:member", 2).await;
    let before = env.snapshot().await;
    let logs = infragpt::telemetry::capture();
    let (status, answer) = call(&svc, "POST", &refresh, Some(&alice), None).await;
    assert_eq!(status, 403, "demoted alice: {answer}");
    assert_eq!(answer["error"]["message"], NEEDS_ADMIN);
    assert_eq!(env.snapshot().await, before);
    // The refusal is logged with who, where and which role, the route as its pattern.
    let lines = logs.lines();
    let refusal = lines
        .iter()
        .find(|l| l["message"] == "request refused: role may not change this organization")
        .unwrap_or_else(|| panic!("no refusal logged: {}", logs.contents()));
    assert_eq!(refusal["org"], env.org_a);
    assert_eq!(refusal["user"], ALICE);
    assert_eq!(refusal["role"], "org:member");
    assert_eq!(refusal["method"], "POST");
    assert_eq!(refusal["route"], "/integrations/{id}/refresh");
    drop(logs);

    env.set_role_in_a(CAROL, "org:admin", 2).await;
    let (status, answer) = call(&svc, "POST", &refresh, Some(&carol), None).await;
    assert_eq!(status, 200, "promoted carol: {answer}");
    assert_eq!(env.fake.refresh_count(), 1);
}
