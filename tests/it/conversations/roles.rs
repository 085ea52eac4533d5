//! Roles on the conversations API, with real session tokens and roles from the membership
//! mirror: every route × admin, legacy admin, member, non-member × own organization, another
//! organization's conversation, a token naming another organization. Members read; only
//! admins delete, and the role is checked before the id is looked at. See `support::rest`
//! for the cast.

use crate::support::rest::{Persona, Row, Target, run_matrix};

const fn row(target: Target, method: &'static str, path: &'static str, expect: [u16; 4]) -> Row {
    Row {
        target,
        method,
        path,
        body: "",
        expect,
    }
}

const UNKNOWN: &str = "/conversations/00000000-0000-4000-8000-000000000000";
const NOT_AN_ID: &str = "/conversations/not-a-uuid";

use Target::{OtherId, OtherOrg, Own};

/// In execution order: the deletion that succeeds comes last.
#[rustfmt::skip]
const MATRIX: &[Row] = &[
    //   target    method    path                    admin legacy member outsider
    // A token naming B: none of them is a member of B (the membership check answers).
    row(OtherOrg, "GET",    "/conversations",        [403, 403, 403, 403]),
    row(OtherOrg, "GET",    "/conversations/{conv}", [403, 403, 403, 403]),
    row(OtherOrg, "DELETE", "/conversations/{conv}", [403, 403, 403, 403]),
    // A's token, B's conversation: 404 as for an unknown id; a member is refused for the
    // role first (the same answer whether the id exists or not).
    row(OtherId,  "GET",    "/conversations/{conv}", [404, 404, 404, 403]),
    row(OtherId,  "DELETE", "/conversations/{conv}", [404, 404, 403, 403]),
    row(Own,      "GET",    UNKNOWN,                 [404, 404, 404, 403]),
    row(Own,      "DELETE", UNKNOWN,                 [404, 404, 403, 403]),
    row(Own,      "GET",    NOT_AN_ID,               [404, 404, 404, 403]),
    row(Own,      "DELETE", NOT_AN_ID,               [404, 404, 403, 403]),
    // Own organization.
    row(Own,      "GET",    "/conversations",        [200, 200, 200, 403]),
    row(Own,      "GET",    "/conversations/{conv}", [200, 200, 200, 403]),
    row(Own,      "DELETE", "/conversations/{conv}", [200, 200, 403, 403]),
    // Gone for everyone who may look.
    row(Own,      "GET",    "/conversations/{conv}", [404, 404, 200, 403]),
];

#[actix_rt::test]
async fn conversations_matrix_admin() {
    run_matrix(Persona::Admin, MATRIX).await;
}

#[actix_rt::test]
async fn conversations_matrix_legacy_admin() {
    run_matrix(Persona::LegacyAdmin, MATRIX).await;
}

#[actix_rt::test]
async fn conversations_matrix_member() {
    run_matrix(Persona::Member, MATRIX).await;
}

#[actix_rt::test]
async fn conversations_matrix_outsider() {
    run_matrix(Persona::Outsider, MATRIX).await;
}
