//! The HTTP shell: middleware, error handling, health routes, and a hook for the routes the
//! feature modules add (features plug in here; this module imports none of them). Build the app with [`app`]; the composition root passes it to `HttpServer`.

pub mod health;
pub mod middleware;
pub mod rate_limit;
pub mod side;
pub mod webhook_body;

use std::sync::Arc;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, Error, web};

pub use health::{Readiness, ReadinessCheck, ReadinessReport};
pub use middleware::{REQUEST_ID_HEADER, RequestId};
pub use rate_limit::{WebhookRateLimits, WebhookRoute};
pub use webhook_body::WebhookIntake;

use crate::config::{Config, CorsConfig};

/// The credentials of an `Authorization: Bearer <token>` header value. The scheme is
/// case-insensitive (RFC 9110 section 11.1) and any whitespace may separate it from the token;
/// `None` for another scheme or an empty token. The one parser every route uses.
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(char::is_whitespace)?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

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
    ops_routes: Vec<RouteHook>,
}

impl std::fmt::Debug for HttpShell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpShell")
            .field("readiness", &self.readiness)
            .field("http_log", &self.http_log)
            .field("cors", &self.cors)
            .field("webhooks", &self.webhooks)
            .field("routes", &self.routes.len())
            .field("ops_routes", &self.ops_routes.len())
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
            ops_routes: Vec::new(),
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

    /// Adds routes served only on the internal ops listener (`ops.port`), when there is one.
    pub fn add_ops_routes(&mut self, hook: RouteHook) {
        self.ops_routes.push(hook);
    }

    /// The shell of the ops listener: the same middleware and health routes, with the ops
    /// routes in place of the public ones.
    pub fn ops_shell(&self) -> HttpShell {
        HttpShell {
            readiness: self.readiness.clone(),
            http_log: self.http_log,
            cors: CorsConfig::default(),
            webhooks: self.webhooks.clone(),
            routes: self.ops_routes.clone(),
            ops_routes: Vec::new(),
        }
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

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for (header, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("Bearer\tabc", Some("abc")),
            ("Bearer ", None),
            ("Bearer", None),
            ("Basic abc", None),
            ("Bearerabc", None),
            ("", None),
        ] {
            assert_eq!(bearer_token(header), token, "{header:?}");
        }
    }
}
