//! Identifier newtypes and the Slack thread key.
//!
//! Every identifier crossing a module boundary has its own type so a channel id can never be
//! passed where a team id is expected. String ids serialize transparently (as the plain string).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::inbox::RoutingKey;

/// Errors from parsing identifiers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// An identifier was empty.
    #[error("{what} must not be empty")]
    Empty {
        /// Which identifier.
        what: &'static str,
    },
    /// An identifier contained a character it may not hold.
    #[error("{what} {value:?} contains the forbidden character {ch:?}")]
    ForbiddenChar {
        /// Which identifier.
        what: &'static str,
        /// The rejected value.
        value: String,
        /// The offending character.
        ch: char,
    },
    /// A Slack message timestamp is not `seconds.micros`.
    #[error("message ts {0:?} is not of the form 1700000000.000100")]
    BadTs(String),
    /// A routing key is not `team/channel/thread_ts`.
    #[error("routing key {0:?} is not of the form TEAM/CHANNEL/THREAD_TS")]
    BadThreadKey(String),
}

/// Checks a Slack string id: non-empty, no `/` (the thread key separator), no whitespace.
fn check_slack_id(what: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    if let Some(ch) = value.chars().find(|c| *c == '/' || c.is_whitespace()) {
        return Err(IdError::ForbiddenChar {
            what,
            value: value.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// Declares an identifier newtype; the one macro for every id of the code base. Three forms:
///
/// * `pub struct X(String);` (or `(pub String)`): an id taken as the sender spelled it, with
///   `new`, `as_str`, `Display`, `From<&str>`/`From<String>`, comparison with `str`, and
///   transparent serde.
/// * `pub struct X(String) checked by check_fn("what");`: a validated id; `check_fn(what,
///   &value) -> Result<(), IdError>` guards `parse`, `FromStr`, `TryFrom<String>` and
///   deserialization; serializes as the plain string.
/// * `pub struct X(pub Uuid);`: our own UUID ids, with `new_random`, `Display`, `FromStr` and
///   transparent serde.
///
/// The crate that uses it needs `serde` (and `uuid` for the UUID form) as dependencies.
#[macro_export]
macro_rules! id_newtype {
    ($(#[$doc:meta])* $vis:vis struct $name:ident($fvis:vis String);) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(transparent)]
        $vis struct $name($fvis String);

        impl $name {
            /// Wraps an id as the sender spelled it.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl ::std::convert::From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl ::std::convert::From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }

        impl ::std::cmp::PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl ::std::cmp::PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
    ($(#[$doc:meta])* $vis:vis struct $name:ident(String) checked by $check:ident($what:literal);) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        $vis struct $name(String);

        impl ::std::convert::TryFrom<String> for $name {
            type Error = $crate::ids::IdError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl ::std::convert::From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl $name {
            #[doc = concat!("Wraps a value after checking it is a valid ", $what, ".")]
            pub fn parse(value: impl Into<String>) -> Result<Self, $crate::ids::IdError> {
                let value = value.into();
                $check($what, &value)?;
                Ok(Self(value))
            }

            /// The plain string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::ids::IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
    ($(#[$doc:meta])* $vis:vis struct $name:ident(pub Uuid);) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(transparent)]
        $vis struct $name(pub ::uuid::Uuid);

        impl $name {
            /// A fresh random (v4) id.
            pub fn new_random() -> Self {
                Self(::uuid::Uuid::new_v4())
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                ::uuid::Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_newtype! {
    /// A Slack workspace id (`T…`).
    pub struct TeamId(String) checked by check_slack_id("team id");
}
id_newtype! {
    /// A Slack channel id (`C…`, `D…`, `G…`).
    pub struct ChannelId(String) checked by check_slack_id("channel id");
}
id_newtype! {
    /// A Slack user id (`U…`, `W…`).
    pub struct SlackUserId(String) checked by check_slack_id("slack user id");
}
id_newtype! {
    /// A Slack message timestamp (`"1700000000.000100"`), which is also a message's id within
    /// its channel. Kept as the exact string Slack sent: converting to a float loses digits.
    pub struct MessageTs(String) checked by check_ts("message ts");
}

/// Checks the `digits.digits` form of a message ts.
fn check_ts(_what: &'static str, value: &str) -> Result<(), IdError> {
    let ok = value.split_once('.').is_some_and(|(secs, frac)| {
        !secs.is_empty()
            && !frac.is_empty()
            && secs.bytes().all(|b| b.is_ascii_digit())
            && frac.bytes().all(|b| b.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(IdError::BadTs(value.to_owned()))
    }
}

impl MessageTs {
    /// Chronological order (the digits compared as numbers, never through a float; the
    /// derived `Ord` compares the strings).
    pub fn chrono_cmp(&self, other: &Self) -> std::cmp::Ordering {
        fn parts(ts: &str) -> (&str, &str) {
            let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
            (secs.trim_start_matches('0'), frac.trim_end_matches('0'))
        }
        let (s1, f1) = parts(&self.0);
        let (s2, f2) = parts(&other.0);
        s1.len()
            .cmp(&s2.len())
            .then_with(|| s1.cmp(s2))
            .then_with(|| f1.cmp(f2))
    }
}

id_newtype! {
    /// Our id of a conversation (one per Slack thread); sent to the agent as `conversation_id`.
    pub struct ConversationId(pub Uuid);
}
id_newtype! {
    /// Our id of an organization (not Clerk's `org_…` id).
    pub struct OrganizationId(pub Uuid);
}
id_newtype! {
    /// Our id of an approval the agent asked for (issue 14).
    pub struct ApprovalId(pub Uuid);
}
id_newtype! {
    /// Our id of a reply intent (one answer or notice to post once); it travels in the
    /// metadata of every message posted for the intent.
    pub struct ReplyIntentId(pub Uuid);
}

/// A GitHub App installation id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstallationId(pub i64);

impl InstallationId {
    /// The routing key of the installation's webhook stream: `installation:42`.
    pub fn to_routing_key(self) -> RoutingKey {
        RoutingKey(format!("installation:{}", self.0))
    }
}

impl fmt::Display for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for InstallationId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// A Slack thread: the unit of conversation ordering. For a top-level message the thread ts
/// is the message's own ts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ThreadKey {
    pub team: TeamId,
    pub channel: ChannelId,
    /// Timestamp of the thread's parent message.
    pub thread_ts: MessageTs,
}

impl ThreadKey {
    /// Builds a key.
    pub fn new(team: TeamId, channel: ChannelId, thread_ts: MessageTs) -> Self {
        Self {
            team,
            channel,
            thread_ts,
        }
    }

    /// The thread of a message: its `thread_ts` when it is a reply, else its own `ts` (a
    /// top-level message starts its thread). The one place that rule lives.
    pub(crate) fn of_message(
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
        thread_ts: Option<&MessageTs>,
    ) -> Self {
        Self::new(
            team.clone(),
            channel.clone(),
            thread_ts.unwrap_or(ts).clone(),
        )
    }

    /// The routing key of a workspace's events that belong to no thread (and of events too
    /// broken to tell): `TEAM/-/-`, which no thread key can equal (`-` is not a valid ts).
    pub fn unthreaded_routing_key(team: &str) -> RoutingKey {
        RoutingKey(format!("{team}/-/-"))
    }

    /// `TEAM/CHANNEL/THREAD_TS`, the routing key of the thread's actor. None of the parts can
    /// hold a `/`, so the key parses back unambiguously.
    pub fn to_routing_key(&self) -> RoutingKey {
        RoutingKey(self.to_string())
    }

    /// Parses a routing key made by [`ThreadKey::to_routing_key`].
    pub fn from_routing_key(key: &RoutingKey) -> Result<Self, IdError> {
        key.0.parse()
    }
}

impl fmt::Display for ThreadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.team, self.channel, self.thread_ts)
    }
}

impl FromStr for ThreadKey {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdError::BadThreadKey(s.to_owned());
        let mut parts = s.split('/');
        let (Some(team), Some(channel), Some(ts), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Self {
            team: TeamId::parse(team).map_err(|_| bad())?,
            channel: ChannelId::parse(channel).map_err(|_| bad())?,
            thread_ts: MessageTs::parse(ts).map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_chronological_order() {
        let ts = |s: &str| MessageTs::parse(s).expect("ts");
        use std::cmp::Ordering::*;
        assert_eq!(
            ts("1700000000.000100").chrono_cmp(&ts("1700000000.000200")),
            Less
        );
        assert_eq!(
            ts("999999999.900000").chrono_cmp(&ts("1000000000.000001")),
            Less
        );
        assert_eq!(
            ts("1700000000.1").chrono_cmp(&ts("1700000000.100000")),
            Equal
        );
        assert_eq!(
            ts("1700000001.000000").chrono_cmp(&ts("1700000000.999999")),
            Greater
        );
    }

    #[test]
    fn thread_key_round_trip() {
        let key = ThreadKey::new(
            TeamId::parse("T1").unwrap(),
            ChannelId::parse("C2").unwrap(),
            MessageTs::parse("1700000000.000100").unwrap(),
        );
        let rk = key.to_routing_key();
        assert_eq!(rk.0, "T1/C2/1700000000.000100");
        assert_eq!(ThreadKey::from_routing_key(&rk).unwrap(), key);
        let reply = MessageTs::parse("1700000001.000100").unwrap();
        assert_eq!(
            ThreadKey::of_message(&key.team, &key.channel, &reply, Some(&key.thread_ts)),
            key
        );
        assert_eq!(
            ThreadKey::of_message(&key.team, &key.channel, &key.thread_ts, None),
            key
        );
        let loose = ThreadKey::unthreaded_routing_key("T1");
        assert_eq!(loose.0, "T1/-/-");
        assert!(ThreadKey::from_routing_key(&loose).is_err());
    }

    #[test]
    fn thread_key_rejects_malformed() {
        for bad in [
            "",
            "T1/C2",
            "T1/C2/1.2/x",
            "/C2/1.2",
            "T1//1.2",
            "T1/C2/abc",
            "T1/C2/1.",
            "T 1/C2/1.2",
        ] {
            assert!(
                bad.parse::<ThreadKey>().is_err(),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn ids_reject_separator_and_empty() {
        assert_eq!(TeamId::parse(""), Err(IdError::Empty { what: "team id" }));
        assert!(ChannelId::parse("C1/x").is_err());
        assert!(MessageTs::parse("1700000000").is_err());
    }

    #[test]
    fn serde_is_transparent() {
        let t = TeamId::parse("T9").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"T9\"");
        assert_eq!(serde_json::from_str::<TeamId>("\"T9\"").unwrap(), t);
        assert!(serde_json::from_str::<TeamId>("\"T/9\"").is_err());
        assert!(serde_json::from_str::<MessageTs>("\"x\"").is_err());
        let i = InstallationId(42);
        assert_eq!(serde_json::to_string(&i).unwrap(), "42");
        assert_eq!(i.to_routing_key().0, "installation:42");
        let c = ConversationId::new_random();
        assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{}\"", c.0));
        assert_eq!(c.to_string().parse::<ConversationId>().unwrap(), c);
    }
}
