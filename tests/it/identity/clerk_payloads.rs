//! Clerk webhook parsing against every payload in `tests/data/svix/clerk/`.

use infragpt::identity::clerk_events::{ClerkEvent, ClerkEventError, ClerkUser, parse_event};
use infragpt::identity::{ClerkMembershipId, ClerkOrgId, ClerkUserId};
use serde_json::json;

use crate::support::fixtures;

/// Expected result for each fixture file name.
fn expected(file: &str) -> ClerkEvent {
    let user = |id: &str| ClerkUserId::new(id);
    let org = |id: &str| ClerkOrgId::new(id);
    let membership = || ClerkMembershipId::new("orgmem_2g7np7Hrk0SN6kj5EDMLDaKNL0S");
    match file {
        "user.created.json" => ClerkEvent::UserUpserted(ClerkUser {
            clerk_id: user("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S"),
            // primary_email_address_id is set but email_addresses is empty.
            email: None,
            first_name: Some("John".into()),
            last_name: Some("Doe".into()),
            username: None,
            image_url: Some("https://img.clerk.com/xxxxxx".into()),
        }),
        "user.created.docs.json" => ClerkEvent::UserUpserted(ClerkUser {
            clerk_id: user("user_29w83sxmDNGwOuEthce5gg56FcC"),
            email: Some("example@example.org".into()),
            first_name: Some("Example".into()),
            last_name: Some("Example".into()),
            username: None,
            image_url: Some("https://img.clerk.com/xxxxxx".into()),
        }),
        "user.updated.json" => ClerkEvent::UserUpserted(ClerkUser {
            clerk_id: user("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S"),
            email: None,
            first_name: Some("John".into()),
            last_name: Some("Doe Updated".into()),
            username: Some("johndoe".into()),
            image_url: Some("https://img.clerk.com/yyyyy".into()),
        }),
        "user.deleted.json" => ClerkEvent::UserDeleted {
            clerk_id: user("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S"),
        },
        "organization.created.json" => ClerkEvent::OrganizationUpserted {
            clerk_id: org("org_2g7np7Hrk0SN6kj5EDMLDaKNL0S"),
            name: "Acme Corp".into(),
            slug: Some("acme-corp".into()),
            image_url: Some("https://img.clerk.com/xxxxxx".into()),
            created_by: Some(user("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S")),
        },
        "organization.updated.json" => ClerkEvent::OrganizationUpserted {
            clerk_id: org("org_2g7np7Hrk0SN6kj5EDMLDaKNL0S"),
            name: "Acme Corp Updated".into(),
            slug: Some("acme-corp-updated".into()),
            image_url: Some("https://img.clerk.com/yyyyyy".into()),
            created_by: Some(user("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S")),
        },
        "organization.deleted.json" => ClerkEvent::OrganizationDeleted {
            clerk_id: org("org_2g7np7Hrk0SN6kj5EDMLDaKNL0S"),
        },
        "organizationMembership.created.json" => ClerkEvent::MembershipUpserted {
            clerk_membership_id: membership(),
            org_clerk_id: org("org_2g7np7Hrk0SN6kj5EDMLDaKNL0S"),
            user_clerk_id: user("user_2h8op3Isl1QR7tKu5FGNfaLKEoU"),
            role: "org:member".into(),
        },
        "organizationMembership.updated.json" => ClerkEvent::MembershipUpserted {
            clerk_membership_id: membership(),
            org_clerk_id: org("org_2g7np7Hrk0SN6kj5EDMLDaKNL0S"),
            user_clerk_id: user("user_2h8op3Isl1QR7tKu5FGNfaLKEoU"),
            role: "org:admin".into(),
        },
        "organizationMembership.deleted.json" => ClerkEvent::MembershipDeleted {
            clerk_membership_id: membership(),
            org_clerk_id: org("org_2g7np7Hrk0SN6kj5EDMLDaKNL0S"),
            user_clerk_id: user("user_2h8op3Isl1QR7tKu5FGNfaLKEoU"),
        },
        other => panic!("no expectation for fixture {other}: add one"),
    }
}

#[test]
fn every_clerk_fixture_parses_to_the_expected_event() {
    let files = fixtures::json_files("svix/clerk");
    assert_eq!(files.len(), 10, "fixture count changed");
    for (name, bytes) in files {
        let envelope = parse_event(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(envelope.event, expected(&name), "{name}");
        // The file name starts with the event type.
        assert!(
            name.starts_with(&format!("{}.", envelope.event_type)),
            "{name}: type {}",
            envelope.event_type
        );
        assert!(envelope.instance_id.is_some(), "{name}");
        assert!(envelope.timestamp.is_some(), "{name}");
    }
}

#[test]
fn envelope_fields() {
    let bytes = fixtures::clerk("user.created.docs");
    let envelope = parse_event(&bytes).expect("parse");
    assert_eq!(envelope.event_type, "user.created");
    assert_eq!(envelope.instance_id.as_deref(), Some("ins_123"));
    assert_eq!(envelope.timestamp, Some(1_654_012_591_835));
}

#[test]
fn primary_email_is_the_one_whose_id_matches() {
    let body = json!({
        "object": "event",
        "type": "user.updated",
        "timestamp": 1,
        "data": {
            "id": "user_1",
            "primary_email_address_id": "idn_b",
            "email_addresses": [
                {"id": "idn_a", "email_address": "old@example.com"},
                {"id": "idn_b", "email_address": "primary@example.com"}
            ]
        }
    });
    let envelope = parse_event(body.to_string().as_bytes()).expect("parse");
    let ClerkEvent::UserUpserted(user) = envelope.event else {
        panic!("not a user")
    };
    assert_eq!(user.email.as_deref(), Some("primary@example.com"));
    assert_eq!(user.first_name, None);
}

#[test]
fn unknown_types_are_ignored() {
    let body = json!({"object": "event", "type": "session.created", "data": {"id": "sess_1"}});
    let envelope = parse_event(body.to_string().as_bytes()).expect("parse");
    assert_eq!(
        envelope.event,
        ClerkEvent::Ignored {
            event_type: "session.created".into()
        }
    );
}

#[test]
fn bad_bodies_are_rejected_with_a_reason() {
    assert!(matches!(
        parse_event(b"not json"),
        Err(ClerkEventError::InvalidEnvelope(_))
    ));
    assert!(matches!(
        parse_event(b"null"),
        Err(ClerkEventError::InvalidEnvelope(_))
    ));
    assert!(matches!(
        parse_event(br#"{"object":"event","data":{}}"#),
        Err(ClerkEventError::InvalidEnvelope(_))
    ));
    assert!(matches!(
        parse_event(br#"{"object":"user","type":"user.created","data":{}}"#),
        Err(ClerkEventError::NotAnEvent(o)) if o == "user"
    ));
    // A known type whose data lacks the id.
    let err = parse_event(br#"{"object":"event","type":"user.created","data":{"first_name":"x"}}"#)
        .expect_err("no id");
    assert!(
        matches!(&err, ClerkEventError::InvalidData { event_type, .. } if event_type == "user.created"),
        "{err}"
    );
    assert!(err.to_string().contains("id"), "{err}");
    // An organization without a name.
    assert!(matches!(
        parse_event(br#"{"object":"event","type":"organization.created","data":{"id":"org_1"}}"#),
        Err(ClerkEventError::InvalidData { .. })
    ));
    // A membership upsert without a role.
    let membership = json!({
        "object": "event",
        "type": "organizationMembership.created",
        "data": {
            "id": "orgmem_1",
            "organization": {"id": "org_1"},
            "public_user_data": {"user_id": "user_1"}
        }
    });
    assert!(matches!(
        parse_event(membership.to_string().as_bytes()),
        Err(ClerkEventError::InvalidData { .. })
    ));
}
