//! Which keyed worker handles a GitHub delivery. GitHub's order matters per repository (a
//! push, its check runs, the pull request that follows), not per installation: one busy
//! organization must not serialize all its repositories on one actor. So deliveries about a
//! repository go to that repository's worker, and only installation-level deliveries
//! (`installation`, `installation_repositories`, organization events) to the installation's.
//!
//! Keys: `installation:{id}:repository:{repo id}`, `installation:{id}`,
//! `github:repository:{repo id}` (a repository webhook without an App installation) and
//! [`NO_INSTALLATION_KEY`].

use infragpt_actors::ids::InstallationId;
use infragpt_actors::inbox::RoutingKey;

/// Routing key of deliveries without an installation or a repository (app-level `ping`, ...).
pub const NO_INSTALLATION_KEY: &str = "github:no-installation";

/// The routing key of a delivery from its `installation.id` and `repository.id`.
pub fn routing_key(installation: Option<i64>, repository: Option<i64>) -> RoutingKey {
    match (installation, repository) {
        (Some(i), Some(r)) => RoutingKey(format!(
            "{}:repository:{r}",
            InstallationId(i).to_routing_key().0
        )),
        (Some(i), None) => InstallationId(i).to_routing_key(),
        (None, Some(r)) => RoutingKey(format!("github:repository:{r}")),
        (None, None) => RoutingKey(NO_INSTALLATION_KEY.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_of_one_installation_get_their_own_keys() {
        let a = routing_key(Some(7), Some(100));
        let b = routing_key(Some(7), Some(200));
        assert_ne!(a, b);
        assert_eq!(a.0, "installation:7:repository:100");
        assert_eq!(routing_key(Some(7), None).0, "installation:7");
        assert_eq!(routing_key(None, Some(100)).0, "github:repository:100");
        assert_eq!(routing_key(None, None).0, NO_INSTALLATION_KEY);
    }
}
