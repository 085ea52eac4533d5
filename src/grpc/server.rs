//! The gRPC server shell: tonic with the standard `grpc.health.v1.Health` service and a place to
//! add the service implementations.

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The gRPC server failed.
#[derive(Debug, thiserror::Error)]
pub enum GrpcServerError {
    /// The transport failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
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
        Self { routes, health }
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
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tonic::transport::Server::builder()
            .add_routes(self.routes.routes())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }
}
