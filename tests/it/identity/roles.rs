//! Roles on the `/identity` API, with real session tokens and roles from the membership
//! mirror: every route × admin, legacy admin, member, non-member × own organization, a body
//! naming another organization, a token naming another organization. Any member reads; only
//! admins change the organization's metadata. See `support::rest` for the cast.

use crate::support::rest::{Persona, RestEnv, Row, Target, call, run_matrix};

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

const METADATA: &str =
    r#"{"company_size": "5000+", "team_size": "100+", "use_cases": ["incident_response"]}"#;
/// The organization comes from the token only; naming another one in the body is an
/// unknown field for an admin, and a member is refused before the body is looked at.
const METADATA_FOR_B: &str = r#"{"organization_id": "org_roles_b", "company_size": "5000+"}"#;

use Target::{OtherInBody, OtherOrg, Own};

#[rustfmt::skip]
const MATRIX: &[Row] = &[
    //   target       method  path                                body            admin legacy member outsider
    // A token naming B: none of them is a member of B (the membership check answers).
    row(OtherOrg,    "GET",  "/identity/me",                     "",             [403, 403, 403, 403]),
    row(OtherOrg,    "GET",  "/identity/organization",           "",             [403, 403, 403, 403]),
    row(OtherOrg,    "PUT",  "/identity/organization/metadata",  METADATA,       [403, 403, 403, 403]),
    row(OtherOrg,    "GET",  "/audit",                           "",             [403, 403, 403, 403]),
    // A's token, a body naming B.
    row(OtherInBody, "PUT",  "/identity/organization/metadata",  METADATA_FOR_B, [422, 422, 403, 403]),
    // Own organization; the change last.
    row(Own,         "GET",  "/identity/me",                     "",             [200, 200, 200, 403]),
    row(Own,         "GET",  "/identity/organization",           "",             [200, 200, 200, 403]),
    // The audit log is for admins only, though it only reads.
    row(Own,         "GET",  "/audit",                           "",             [200, 200, 403, 403]),
    row(Own,         "PUT",  "/identity/organization/metadata",  METADATA,       [200, 200, 403, 403]),
];

#[actix_rt::test]
async fn identity_matrix_admin() {
    run_matrix(Persona::Admin, MATRIX).await;
}

#[actix_rt::test]
async fn identity_matrix_legacy_admin() {
    run_matrix(Persona::LegacyAdmin, MATRIX).await;
}

#[actix_rt::test]
async fn identity_matrix_member() {
    run_matrix(Persona::Member, MATRIX).await;
}

#[actix_rt::test]
async fn identity_matrix_outsider() {
    run_matrix(Persona::Outsider, MATRIX).await;
}

/// The role reported is the mirror's, not the token's: every persona's token claims
/// `org:admin`.
#[actix_rt::test]
async fn the_role_answered_is_the_mirrors() {
    let env = RestEnv::new().await;
    let svc = env.service().await;
    for (persona, role) in [
        (Persona::Admin, "org:admin"),
        (Persona::LegacyAdmin, "admin"),
        (Persona::Member, "org:member"),
    ] {
        let token = persona.token(crate::support::rest::ORG_A);
        for uri in ["/identity/me", "/identity/organization"] {
            let (status, answer) = call(&svc, "GET", uri, Some(&token), None).await;
            assert_eq!(status, 200, "{persona:?} {uri}: {answer}");
            assert_eq!(answer["role"], role, "{persona:?} {uri}");
        }
    }
}
