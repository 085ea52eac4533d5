//! `GET /ops`: the live ops page. Three embedded files (HTML, CSS, JavaScript; no build step,
//! no CDN) that poll the JSON endpoints every 2 s: `/readyz`, `/actors`, `/metrics`,
//! `/cluster` and `/admin/events`.
//!
//! The page itself holds no data, so it is served without a token on every listener that
//! serves the ops routes. The data endpoints keep their own access: open on the ops listener,
//! the admin token on the public port (the page asks for it once and keeps it in the tab's
//! `sessionStorage`), the admin token for dead letters everywhere.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

const INDEX_HTML: &str = include_str!("assets/index.html");
const OPS_CSS: &str = include_str!("assets/ops.css");
const OPS_JS: &str = include_str!("assets/ops.js");

/// Only the page's own files and same-origin calls; no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's paths (the OpenAPI document and the route test use these).
pub const PAGE_PATH: &str = "/ops";
pub const CSS_PATH: &str = "/ops/ops.css";
pub const JS_PATH: &str = "/ops/ops.js";

/// Adds the page's three routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(PAGE_PATH, web::get().to(page))
        .route(CSS_PATH, web::get().to(css))
        .route(JS_PATH, web::get().to(js));
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        // Small files; a new binary may change them, so browsers revalidate every load.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// The HTML page.
#[utoipa::path(get, path = "/ops", tag = "ops",
    responses((status = 200, description = "The live ops page (HTML, no data inside)", content_type = "text/html")))]
pub async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The page's stylesheet.
#[utoipa::path(get, path = "/ops/ops.css", tag = "ops",
    responses((status = 200, description = "The ops page's stylesheet", content_type = "text/css")))]
pub async fn css() -> HttpResponse {
    asset("text/css; charset=utf-8", OPS_CSS)
}

/// The page's script.
#[utoipa::path(get, path = "/ops/ops.js", tag = "ops",
    responses((status = 200, description = "The ops page's script", content_type = "text/javascript")))]
pub async fn js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", OPS_JS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        assert!(INDEX_HTML.contains(&format!("href=\"{CSS_PATH}\"")));
        assert!(INDEX_HTML.contains(&format!("src=\"{JS_PATH}\"")));
        for text in [INDEX_HTML, OPS_CSS, OPS_JS] {
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "no CDN, no remote asset"
            );
        }
        // The CSP forbids inline scripts and style attributes.
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains(" style="));
    }

    #[test]
    fn the_token_stays_in_the_session() {
        assert!(OPS_JS.contains("sessionStorage"));
        assert!(!OPS_JS.contains("localStorage") && !OPS_JS.contains("document.cookie"));
    }
}
