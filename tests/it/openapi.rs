//! The OpenAPI document (`GET /openapi.json`) against the routes the service really serves:
//! every route of the actix app is in the document and every documented route is served
//! (so neither can drift), and schemathesis finds no 5xx and no answer that contradicts it.

use std::collections::BTreeSet;
use std::process::Command;

use actix_web::{HttpRequest, web};
use infragpt::identity::store::IdentityStore;
use serde_json::Value;

use crate::support::app::{ADMIN, TestApp};
use crate::support::identity::{KEY_A, KID_A, claims_v2, sign_jwt};
use crate::support::rest::{ALICE, ORG_A, seed_identities};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];
/// A test-only route that answers the app's resource map.
const PROBE: &str = "/__resource_map";

/// `{name}` and `{name:regex}` (actix) become `{name}` (OpenAPI).
fn openapi_path(pattern: &str) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let name = rest[start + 1..end].split(':').next().expect("name");
        out.push_str(&format!("{{{name}}}"));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The full patterns of the leaf resources in actix's resource map, read from its
/// pretty `Debug` (actix has no public iterator over routes): each `ResourceMap {` opens a
/// scope or a resource at its indentation, its `patterns:` line holds its pattern, and
/// `nodes: None` marks a resource (no children).
fn leaf_patterns(debug: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = debug.lines().collect();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut out = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if text == "ResourceMap {" {
            while stack.last().is_some_and(|(d, _)| *d >= indent) {
                stack.pop();
            }
            let at = lines[i..]
                .iter()
                .position(|l| l.trim().starts_with("patterns: "))
                .expect("a pattern")
                + i;
            let literal = lines[at + 1].trim().trim_end_matches(',');
            let pattern: String = serde_json::from_str(literal)
                .unwrap_or_else(|e| panic!("pattern {literal:?}: {e}"));
            stack.push((indent, pattern));
        } else if text == "nodes: None," {
            out.insert(stack.iter().map(|(_, p)| p.as_str()).collect());
        }
    }
    out
}

#[actix_rt::test]
async fn every_route_is_documented() {
    let app = TestApp::builder().with_identity().start().await;
    let doc: Value = app
        .http()
        .get(format!("{}/openapi.json", app.base_url()))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .expect("operations")
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();

    // The app exactly as served, plus one route that reads its resource map.
    let svc = actix_web::test::init_service(infragpt::http::app(app.http_shell()).route(
        PROBE,
        web::get().to(|req: HttpRequest| async move { format!("{:#?}", req.resource_map()) }),
    ))
    .await;
    let map = actix_web::test::call_and_read_body(
        &svc,
        actix_web::test::TestRequest::get().uri(PROBE).to_request(),
    )
    .await;
    let patterns = leaf_patterns(&String::from_utf8_lossy(&map));
    assert!(
        patterns.contains("/healthz") && patterns.contains("/identity/me"),
        "{patterns:?}"
    );

    // Which methods each resource answers: anything but the fallback's 404 or a 405.
    let mut served = BTreeSet::new();
    for pattern in patterns.iter().filter(|p| p.as_str() != PROBE) {
        // Every parameter `1`: reads as an id, a kind and a key alike.
        let concrete = openapi_path(pattern)
            .split('/')
            .map(|s| if s.starts_with('{') { "1" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for method in METHODS {
            let req = actix_web::test::TestRequest::default()
                .method(method.parse().expect("method"))
                .uri(&concrete)
                .to_request();
            let resp = actix_web::test::call_service(&svc, req).await;
            let status = resp.status().as_u16();
            let body = actix_web::test::read_body(resp).await;
            let fallback = status == 404 && String::from_utf8_lossy(&body).contains("no route for");
            if !fallback && status != 405 {
                served.insert((method.to_owned(), openapi_path(pattern)));
            }
        }
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from /openapi.json: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented routes the app does not serve: {unserved:?}"
    );

    // Every operation names its errors in the one shape, and the protected ones their scheme.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                // `/readyz` answers its report with 503: that is its documented body.
                if (status.starts_with('4') || status.starts_with('5')) && path != "/readyz" {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                }
            }
            let open = path.starts_with("/healthz")
                || path.starts_with("/readyz")
                || path.starts_with("/ops")
                || path == "/openapi.json"
                || path.contains("callback");
            assert_eq!(
                op.get("security").is_none(),
                open,
                "{method} {path}: security"
            );
        }
    }
    app.stop().await;
}

/// Runs schemathesis on the served app, the REST API with a member's session token and the
/// operator routes with the admin token, a bounded number of examples per operation.
#[actix_rt::test]
async fn schemathesis_finds_no_server_error_and_no_contradiction() {
    let schemathesis = which("schemathesis").unwrap_or_else(|| {
        panic!(
            "this test runs schemathesis and found none on PATH: \
             install it with `pip install schemathesis` (.ci/run does)"
        )
    });
    let app = TestApp::builder().with_identity().start().await;
    seed_identities(&IdentityStore::new(app.pool().clone())).await;
    let session = sign_jwt(KEY_A, KID_A, &claims_v2(ALICE, ORG_A, "org:admin"));
    let schema = format!("{}/openapi.json", app.base_url());
    let report_dir = tempfile::tempdir().expect("report folder");
    // Webhooks are signed (every generated request is refused at the signature, before the
    // body) and /reply posts to Slack: they are covered by their own tests.
    let runs = [
        (
            "session",
            session.as_str(),
            "^/(identity|integrations|conversations|audit|event-rules|event-sources)",
        ),
        (
            "admin",
            ADMIN,
            "^/(actors|metrics|cluster|admin|healthz|readyz|ops|openapi)",
        ),
    ];
    for (name, token, paths) in runs {
        let out = tokio::task::spawn_blocking({
            let (schemathesis, schema, dir) =
                (schemathesis.clone(), schema.clone(), report_dir.path().to_owned());
            let (token, paths) = (token.to_owned(), paths.to_owned());
            move || {
                Command::new(schemathesis)
                    .args(["run", &schema, "--no-color", "--max-examples", "20", "--seed", "17"])
                    .args(["--workers", "2", "--phases", "examples,coverage,fuzzing"])
                    .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"])
                    .args(["--include-path-regex", &paths])
                    .args(["--generation-database", "none", "--request-timeout", "20"])
                    .args(["--max-time", "30"])
                    .arg("--header")
                    .arg(format!("Authorization: Bearer {token}"))
                    .arg("--report-dir")
                    .arg(&dir)
                    .env("SCHEMATHESIS_TELEMETRY", "false")
                    // Its cache (`.schemathesis/`) goes to the temporary folder, not the repository.
                    .current_dir(&dir)
                    .output()
                    .expect("running schemathesis")
            }
        })
        .await
        .expect("schemathesis thread");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis ({name}) found problems:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Shown with --nocapture: what was tested.
        eprintln!("schemathesis ({name}):\n{stdout}");
        assert!(
            stdout.contains("passed") && !stdout.contains("No operations"),
            "schemathesis ({name}) tested nothing:\n{stdout}"
        );
    }
    app.stop().await;
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
