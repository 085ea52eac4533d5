//! The HTTP shell: middleware, error handling, health routes, and a hook for the routes the
//! feature modules add (features plug in here; this module imports none of them). Build the app with [`app`]; the composition root passes it to `HttpServer`.

pub mod health;
pub mod middleware;
pub mod webhook_body;

use std::sync::Arc;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, Error, web};

pub use health::{Readiness, ReadinessCheck, ReadinessReport};
pub use middleware::{REQUEST_ID_HEADER, RequestId};
pub use webhook_body::WebhookIntake;

use crate::config::{Config, CorsConfig};

/// A function that adds routes (and app data) to the app.
pub type RouteHook = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// Everything the HTTP app is built from. Cheap to clone (once per worker).
#[derive(Clone)]
pub struct HttpShell {
    /// Readiness checks behind `/readyz`.
    pub readiness: Readiness,
    /// Log one line per request.
    pub http_log: bool,
    /// Cross-origin policy.
    pub cors: CorsConfig,
    /// Webhook body limits, shared by every webhook route (and by the shells of the extra
    /// webhook ports, which take the main shell's).
    pub webhooks: Arc<WebhookIntake>,
    routes: Vec<RouteHook>,
}

impl std::fmt::Debug for HttpShell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpShell")
            .field("readiness", &self.readiness)
            .field("http_log", &self.http_log)
            .field("cors", &self.cors)
            .field("webhooks", &self.webhooks)
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl HttpShell {
    /// A shell with the health routes only (and the default webhook limits).
    pub fn new(readiness: Readiness, http_log: bool, cors: CorsConfig) -> Self {
        Self {
            readiness,
            http_log,
            cors,
            webhooks: Arc::new(WebhookIntake::new(&Default::default())),
            routes: Vec::new(),
        }
    }

    /// A shell configured from `config`.
    pub fn from_config(config: &Config, readiness: Readiness) -> Self {
        Self::new(readiness, config.http_log, config.cors.clone())
            .with_webhooks(Arc::new(WebhookIntake::new(&config.webhooks)))
    }

    /// Uses `intake` for the webhook routes (share one between the shells of one process).
    pub fn with_webhooks(mut self, intake: Arc<WebhookIntake>) -> Self {
        self.webhooks = intake;
        self
    }

    /// Adds routes; hooks run in the order added, on every worker.
    pub fn with_routes(
        mut self,
        hook: impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static,
    ) -> Self {
        self.routes.push(Arc::new(hook));
        self
    }

    /// Adds a shared route hook.
    pub fn add_routes(&mut self, hook: RouteHook) {
        self.routes.push(hook);
    }
}

/// Builds the app: request id + request log + JSON errors (outermost), panic catching, CORS,
/// the JSON extractor error handlers, `/healthz`, `/readyz`, the added routes and a JSON 404.
pub fn app(
    shell: HttpShell,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<BoxBody>,
        Error = Error,
        InitError = (),
    >,
> {
    let settings = middleware::RequestLogSettings {
        http_log: shell.http_log,
    };
    let mut app = App::new()
        .app_data(web::Data::new(shell.readiness.clone()))
        .app_data(web::Data::from(shell.webhooks.clone()))
        .app_data(crate::error::json_config())
        .app_data(crate::error::path_config())
        .app_data(crate::error::query_config())
        .configure(health::configure);
    for hook in &shell.routes {
        app = app.configure(|cfg| hook(cfg));
    }
    app.default_service(web::to(crate::error::not_found))
        .wrap(middleware::cors(&shell.cors))
        .wrap(actix_web::middleware::from_fn(middleware::catch_panic))
        .wrap(actix_web::middleware::from_fn(move |req, next| {
            middleware::request_context(settings, req, next)
        }))
}
