//! Building slack-morphism clients, including ones that talk plain `http://` to the simulator.
//!
//! `SlackClientHyperConnector::new()` builds an https-only connector, so it cannot reach a
//! loopback simulator. [`http_connector`] builds the same connector type (rustls with ring)
//! that also allows `http://`, so production and tests share one client type.

use std::sync::Arc;

use hyper_rustls::HttpsConnectorBuilder;
use slack_morphism::hyper_tokio::{SlackClientHyperConnector, SlackClientHyperHttpsConnector};

/// The slack-morphism client type the service uses (production and simulator alike).
pub type SlackHyperClient = slack_morphism::SlackClient<SlackClientHyperHttpsConnector>;

/// Why a connector could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The platform's root certificates could not be loaded.
    #[error("loading native root certificates: {0}")]
    NativeRoots(#[from] std::io::Error),
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    // Name the provider explicitly: never rely on a process-wide default (see DESIGN.md).
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An https-only connector for `https://slack.com/api` (what `SlackClientHyperConnector::new()`
/// gives, with the ring provider named explicitly).
pub(crate) fn https_connector() -> Result<SlackClientHyperHttpsConnector, ConnectorError> {
    let https = HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(ring())?
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(SlackClientHyperConnector::with_connector(https))
}

/// A connector that also speaks plain `http://` and targets `api_url` (for example the
/// simulator's `http://127.0.0.1:PORT/api/`). A trailing slash is dropped, because
/// slack-morphism joins the base and the method with `/`.
///
/// TLS still works for `https://` URLs when the platform has root certificates. When it has
/// none, the connector is built with an empty root store (logged): plain http keeps working and
/// any https request fails certificate verification, never silently succeeds.
pub fn http_connector(api_url: &str) -> Result<SlackClientHyperHttpsConnector, ConnectorError> {
    let builder = match HttpsConnectorBuilder::new().with_provider_and_native_roots(ring()) {
        Ok(builder) => builder,
        Err(error) => {
            tracing::warn!(%error, "no native root certificates; https disabled for this client");
            let config = rustls::ClientConfig::builder_with_provider(ring())
                .with_safe_default_protocol_versions()
                .map_err(std::io::Error::other)?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let https = builder.https_or_http().enable_http1().build();
    Ok(SlackClientHyperConnector::with_connector(https)
        .with_slack_api_url(api_url.trim_end_matches('/')))
}

/// A slack-morphism client against `api_url` that allows `http://` (simulator, tests).
pub fn http_client(api_url: &str) -> Result<SlackHyperClient, ConnectorError> {
    Ok(slack_morphism::SlackClient::new(http_connector(api_url)?))
}
