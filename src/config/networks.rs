//! Source networks (`agent.reply_allowed_networks`): CIDRs (`10.0.0.0/8`, `fd00::/8`) or
//! single addresses (`10.1.2.3` means `10.1.2.3/32`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A list of networks a peer address is matched against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(Vec<IpNet>);

/// An entry that is neither a CIDR nor an address.
#[derive(Debug, thiserror::Error)]
#[error("`{input}` is not a network: write a CIDR such as 10.0.0.0/8 or fd00::/8, or one address")]
pub struct NetworkParseError {
    input: String,
    #[source]
    source: std::net::AddrParseError,
}

impl Networks {
    /// No network at all (only a token or a client certificate authenticates).
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// `127.0.0.0/8` and `::1/128`: the default of `agent.reply_allowed_networks`.
    pub fn loopback() -> Self {
        Self(vec![
            IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
            IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)),
        ])
    }

    /// Parses every entry; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(
        entries: impl IntoIterator<Item = S>,
    ) -> Result<Self, NetworkParseError> {
        entries
            .into_iter()
            .map(|e| parse_one(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// True when `addr` is in one of the networks. IPv4 peers that a dual-stack listener
    /// reports as IPv4-mapped IPv6 (`::ffff:10.1.2.3`) are matched as IPv4.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.0.iter().any(|n| n.contains(&addr))
    }

    /// True when no network is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The listed networks that reach beyond this host (not wholly loopback).
    pub fn beyond_loopback(&self) -> Vec<IpNet> {
        self.0
            .iter()
            .filter(|n| !(n.network().is_loopback() && n.broadcast().is_loopback()))
            .copied()
            .collect()
    }
}

impl std::fmt::Display for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

/// One entry: a CIDR (host bits are cleared, `10.1.2.3/8` is `10.0.0.0/8`) or an address.
fn parse_one(input: &str) -> Result<IpNet, NetworkParseError> {
    let text = input.trim();
    let parsed = match text.parse::<IpNet>() {
        Ok(net) => Ok(net.trunc()),
        Err(_) => text.parse::<IpAddr>().map(IpNet::from),
    };
    parsed.map_err(|source| NetworkParseError {
        input: input.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_and_addresses() {
        let n = Networks::parse(["127.0.0.0/8", "::1/128", "10.1.2.3", "192.168.7.9/16"]).unwrap();
        assert!(n.contains(ip("127.0.0.2")));
        assert!(n.contains(ip("::1")));
        assert!(n.contains(ip("10.1.2.3")));
        assert!(!n.contains(ip("10.1.2.4")));
        assert!(n.contains(ip("192.168.200.1")), "host bits are cleared");
        assert!(!n.contains(ip("172.16.0.1")));
        assert_eq!(
            n.to_string(),
            "127.0.0.0/8, ::1/128, 10.1.2.3/32, 192.168.0.0/16"
        );
    }

    #[test]
    fn loopback_is_the_configured_default() {
        assert_eq!(
            Networks::parse(crate::config::DEFAULT_REPLY_ALLOWED_NETWORKS).unwrap(),
            Networks::loopback()
        );
        assert_eq!(
            Networks::parse(&crate::config::AgentConfig::default().reply_allowed_networks).unwrap(),
            Networks::loopback()
        );
    }

    #[test]
    fn ipv4_mapped_peers_match_as_ipv4() {
        let n = Networks::parse(["127.0.0.1/32"]).unwrap();
        assert!(n.contains(ip("::ffff:127.0.0.1")));
        assert!(!n.contains(ip("::ffff:127.0.0.2")));
        assert!(
            !Networks::parse(["::1/128"])
                .unwrap()
                .contains(ip("127.0.0.1"))
        );
    }

    #[test]
    fn none_contains_nothing_and_bad_entries_are_named() {
        assert!(!Networks::none().contains(ip("127.0.0.1")));
        assert_eq!(Networks::none().to_string(), "(none)");
        for bad in ["", "localhost", "10.0.0.0/33", "10.0.0/8", "::1/129"] {
            let e = Networks::parse([bad]).unwrap_err();
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
    }
}
