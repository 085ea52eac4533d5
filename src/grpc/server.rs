//! The gRPC server shell: tonic with the standard `grpc.health.v1.Health` service and a place to
//! add the service implementations, optionally behind TLS or mutual TLS (`grpc_tls`), with the
//! connection limits of the `grpc` section (see [`super::limits`]).

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::limits::ConnectionLimits;
use crate::config::GrpcConfig;

/// The gRPC server failed.
#[derive(Debug, thiserror::Error)]
pub enum GrpcServerError {
    /// The transport failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The gRPC listener's TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GrpcTlsError {
    /// A PEM file could not be read.
    #[error("grpc_tls.{key}: cannot read {}: {source}", path.display())]
    Read {
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificates or the key are not usable PEM.
    #[error("grpc_tls: the certificate, key or client CA is not usable: {0}")]
    Invalid(#[source] tonic::transport::Error),
}

/// The listener's TLS configuration from `grpc_tls`: `None` when `cert_file` is not set. With
/// `client_ca_file`, clients must present a certificate signed by one of its CAs.
pub fn tls_config(
    config: &crate::config::GrpcTlsConfig,
) -> Result<Option<ServerTlsConfig>, GrpcTlsError> {
    let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) else {
        return Ok(None);
    };
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| GrpcTlsError::Read {
            key,
            path: path.to_owned(),
            source,
        })
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
        read("cert_file", cert)?,
        read("key_file", key)?,
    ));
    if let Some(ca) = &config.client_ca_file {
        // client_auth_optional stays false: a connection without a certificate fails the
        // handshake.
        tls = tls.client_ca_root(Certificate::from_pem(read("client_ca_file", ca)?));
    }
    Ok(Some(tls))
}

/// Controls what `grpc.health.v1.Health` reports: for the server as a whole (service `""`)
/// and for every service added to the shell.
#[derive(Clone, Debug)]
pub struct GrpcHealth {
    reporter: HealthReporter,
    services: Arc<Mutex<Vec<String>>>,
}

impl GrpcHealth {
    async fn set_all(&self, status: ServingStatus) {
        let mut names = self.services.lock().clone();
        names.push(String::new());
        for name in names {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Reports SERVING (call once the service is ready).
    pub async fn set_serving(&self) {
        self.set_all(ServingStatus::Serving).await;
    }

    /// Reports NOT_SERVING (before ready, and when shutting down).
    pub async fn set_not_serving(&self) {
        self.set_all(ServingStatus::NotServing).await;
    }

    /// The underlying reporter (for per-service statuses).
    pub fn reporter(&self) -> &HealthReporter {
        &self.reporter
    }
}

/// Collects gRPC services and serves them with the health service.
#[derive(Debug)]
pub struct GrpcShell {
    routes: RoutesBuilder,
    health: GrpcHealth,
    tls: Option<ServerTlsConfig>,
    limits: GrpcConfig,
}

impl GrpcShell {
    /// A shell with only the health service, reporting NOT_SERVING until
    /// [`GrpcHealth::set_serving`].
    pub async fn new() -> Self {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = GrpcHealth {
            reporter,
            services: Arc::default(),
        };
        health.set_not_serving().await;
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        Self {
            routes,
            health,
            tls: None,
            limits: GrpcConfig::default(),
        }
    }

    /// Timeouts, keepalive and the connection cap (the `grpc` section; its defaults until
    /// set).
    pub fn set_limits(&mut self, limits: GrpcConfig) -> &mut Self {
        self.limits = limits;
        self
    }

    /// Serves over TLS (mutual TLS when `tls` has a client CA). The configuration is tried
    /// here, so a bad certificate or key fails the start, not the listener later.
    pub fn set_tls(&mut self, tls: ServerTlsConfig) -> Result<&mut Self, GrpcTlsError> {
        tonic::transport::Server::builder()
            .tls_config(tls.clone())
            .map_err(GrpcTlsError::Invalid)?;
        self.tls = Some(tls);
        Ok(self)
    }

    /// Adds a service; its health follows the server's.
    pub fn add_service<S>(&mut self, svc: S) -> &mut Self
    where
        S: tonic::codegen::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.health.services.lock().push(S::NAME.to_owned());
        self.routes.add_service(svc);
        self
    }

    /// The limits (the `grpc` section), for services that apply their own (message size).
    pub fn limits(&self) -> &GrpcConfig {
        &self.limits
    }

    /// The health handle.
    pub fn health(&self) -> GrpcHealth {
        self.health.clone()
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting and drains the
    /// connections already open.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), GrpcServerError> {
        let limits = &self.limits;
        let incoming = super::limits::incoming(listener, ConnectionLimits::from(limits));
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(limits.max_concurrent_streams))
            .http2_keepalive_interval(limits.keepalive_interval())
            .http2_keepalive_timeout(Some(limits.keepalive_timeout()));
        if let Some(timeout) = limits.request_timeout() {
            builder = builder.timeout(timeout);
        }
        if let Some(mut tls) = self.tls {
            // The TLS handshake gets the same budget as a plaintext preface.
            if let Some(timeout) = limits.handshake_timeout() {
                tls = tls.timeout(timeout);
            }
            builder = builder.tls_config(tls)?;
        }
        builder
            .add_routes(self.routes.routes())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }
}
