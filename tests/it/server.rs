//! The HTTP and gRPC shells: health, request ids, JSON errors, panics, readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::{HttpResponse, test, web};
use infragpt::config::CorsConfig;
use infragpt::error::ApiError;
use infragpt::http::{self, HttpShell, Readiness, ReadinessCheck};

use crate::support::body_json;
use crate::support::wait::eventually;

fn shell(readiness: Readiness) -> HttpShell {
    HttpShell::new(readiness, true, CorsConfig::default()).with_routes(|cfg| {
        cfg.route(
            "/boom",
            web::get().to(|| async {
                panic!("boom in handler");
                #[allow(unreachable_code)]
                HttpResponse::Ok().finish()
            }),
        )
        .route(
            "/bare",
            web::get().to(|| async { HttpResponse::TooManyRequests().finish() }),
        )
        .route(
            "/teapot",
            web::get().to(|| async { Err::<HttpResponse, _>(ApiError::conflict("already there")) }),
        )
        .route(
            "/echo",
            web::post().to(|body: web::Json<serde_json::Value>| async move {
                HttpResponse::Ok().json(body.into_inner())
            }),
        );
    })
}

#[actix_rt::test]
async fn healthz_is_ok() {
    let app = test::init_service(http::app(shell(Readiness::default()))).await;
    let resp =
        test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_json(resp).await, serde_json::json!({"status": "ok"}));
}

#[actix_rt::test]
async fn request_id_is_echoed_or_generated_and_logged() {
    let logs = infragpt::telemetry::capture();
    let app = test::init_service(http::app(shell(Readiness::default()))).await;

    let req = test::TestRequest::get()
        .uri("/healthz")
        .insert_header(("x-request-id", "abc-123"))
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.headers().get("x-request-id").unwrap(), "abc-123");

    let resp =
        test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
    let generated = resp
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    // A hostile id (newline, too long) is replaced, not echoed.
    let req = test::TestRequest::get()
        .uri("/healthz")
        .insert_header(("x-request-id", "a".repeat(300)))
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_ne!(resp.headers().get("x-request-id").unwrap().len(), 300);

    let lines: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["message"] == "request")
        .collect();
    assert_eq!(lines.len(), 3, "{}", logs.contents());
    assert_eq!(lines[0]["request_id"], "abc-123");
    assert_eq!(lines[0]["method"], "GET");
    assert_eq!(lines[0]["path"], "/healthz");
    assert_eq!(lines[0]["status"], 200);
    assert!(lines[0]["latency_ms"].is_number());
    assert_eq!(lines[1]["request_id"], generated.as_str());
}

#[actix_rt::test]
async fn unknown_path_is_json_404() {
    let app = test::init_service(http::app(shell(Readiness::default()))).await;
    let resp = test::call_service(&app, test::TestRequest::get().uri("/nope").to_request()).await;
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().contains_key("x-request-id"));
    let body = body_json(resp).await;
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"].as_str().unwrap().contains("/nope"));
}

#[actix_rt::test]
async fn bare_error_statuses_get_the_json_shape() {
    let app = test::init_service(http::app(shell(Readiness::default()))).await;
    let resp = test::call_service(&app, test::TestRequest::get().uri("/bare").to_request()).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(
        body_json(resp).await,
        serde_json::json!({"error": {"code": "too_many_requests", "message": "too many requests"}})
    );
    // A wrong method on a known path is answered like an unknown path, in JSON.
    let resp =
        test::call_service(&app, test::TestRequest::post().uri("/healthz").to_request()).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(body_json(resp).await["error"]["code"], "not_found");
}

#[actix_rt::test]
async fn handler_errors_and_bad_json_use_the_error_shape() {
    let app = test::init_service(http::app(shell(Readiness::default()))).await;
    let resp = test::call_service(&app, test::TestRequest::get().uri("/teapot").to_request()).await;
    assert_eq!(resp.status(), 409);
    assert_eq!(
        body_json(resp).await,
        serde_json::json!({"error": {"code": "conflict", "message": "already there"}})
    );

    let req = test::TestRequest::post()
        .uri("/echo")
        .insert_header(("content-type", "application/json"))
        .set_payload("{not json")
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(body_json(resp).await["error"]["code"], "bad_request");

    let req = test::TestRequest::post()
        .uri("/echo")
        .insert_header(("content-type", "text/plain"))
        .set_payload("{}")
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.status(), 415);
    assert_eq!(
        body_json(resp).await["error"]["code"],
        "unsupported_media_type"
    );
}

#[actix_rt::test]
async fn panic_becomes_json_500_and_an_error_log_line() {
    let logs = infragpt::telemetry::capture();
    let app = test::init_service(http::app(shell(Readiness::default()))).await;
    let req = test::TestRequest::get()
        .uri("/boom")
        .insert_header(("x-request-id", "panic-1"))
        .to_request();
    // The panic leaves the middleware stack as an error (turned into the response by the
    // server's dispatcher), so use try_call_service and render it the same way.
    let err = test::try_call_service(&app, req)
        .await
        .expect_err("an error");
    let resp = err.error_response();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.headers().get("x-request-id").unwrap(), "panic-1");
    let bytes = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"]["code"], "internal");
    assert!(!body.to_string().contains("boom in handler"), "{body}");

    let panic_line = logs
        .lines()
        .into_iter()
        .find(|l| l["message"] == "handler panicked")
        .unwrap_or_else(|| panic!("no panic log line: {}", logs.contents()));
    assert_eq!(panic_line["level"], "ERROR");
    assert_eq!(panic_line["panic"], "boom in handler");
    assert_eq!(panic_line["request_id"], "panic-1");

    // The same service keeps answering.
    let resp =
        test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
    assert_eq!(resp.status(), 200);
}

/// A real server with a single worker: after a panic the worker still serves.
#[actix_rt::test]
async fn real_server_survives_a_panicking_handler() {
    let sh = shell(Readiness::default());
    let server = actix_web::HttpServer::new(move || http::app(sh.clone()))
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);

    let client = reqwest::Client::new();
    for _ in 0..3 {
        let resp = client
            .get(format!("http://{addr}/boom"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "internal");
        let resp = client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    handle.stop(true).await;
}

struct Flag {
    name: &'static str,
    up: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl ReadinessCheck for Flag {
    fn name(&self) -> &str {
        self.name
    }
    async fn check(&self) -> Result<(), String> {
        if self.up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(format!("{} is down", self.name))
        }
    }
}

struct Hangs;

#[async_trait::async_trait]
impl ReadinessCheck for Hangs {
    fn name(&self) -> &str {
        "hangs"
    }
    async fn check(&self) -> Result<(), String> {
        futures::future::pending().await
    }
}

#[actix_rt::test]
async fn readyz_names_each_failing_check() {
    let readiness = Readiness::default();
    let db_up = Arc::new(AtomicBool::new(true));
    let slack_up = Arc::new(AtomicBool::new(true));
    readiness.add(Flag {
        name: "database",
        up: db_up.clone(),
    });
    readiness.add(Flag {
        name: "slack",
        up: slack_up.clone(),
    });
    let app = test::init_service(http::app(shell(readiness.clone()))).await;

    let get = || test::TestRequest::get().uri("/readyz").to_request();
    let resp = test::call_service(&app, get()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        body_json(resp).await,
        serde_json::json!({"status": "ready", "checks": {"database": "ok", "slack": "ok"}})
    );

    db_up.store(false, Ordering::SeqCst);
    let resp = test::call_service(&app, get()).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        body_json(resp).await,
        serde_json::json!({"status": "not_ready", "checks": {"database": "database is down", "slack": "ok"}})
    );

    db_up.store(true, Ordering::SeqCst);
    assert_eq!(test::call_service(&app, get()).await.status(), 200);

    // Checks added later count too; shutting down flips readiness off.
    readiness.set_shutting_down();
    let resp = test::call_service(&app, get()).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(body_json(resp).await["checks"]["shutdown"], "shutting down");
}

#[actix_rt::test]
async fn a_hanging_check_times_out() {
    let readiness = Readiness::new(std::time::Duration::from_millis(50));
    readiness.add(Hangs);
    let report = readiness.report().await;
    assert!(!report.is_ready());
    assert_eq!(report.checks["hangs"], "timed out after 50 ms");
}

#[actix_rt::test]
async fn cors_allows_listed_origins_only() {
    let cors = CorsConfig {
        allowed_origins: vec!["https://app.example.com".into()],
        allow_credentials: true,
    };
    let app =
        test::init_service(http::app(HttpShell::new(Readiness::default(), false, cors))).await;
    let req = test::TestRequest::default()
        .method(actix_web::http::Method::OPTIONS)
        .uri("/healthz")
        .insert_header(("origin", "https://app.example.com"))
        .insert_header(("access-control-request-method", "GET"))
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(
        resp.headers().get("access-control-allow-origin").unwrap(),
        "https://app.example.com"
    );
    assert_eq!(
        resp.headers()
            .get("access-control-allow-credentials")
            .unwrap(),
        "true"
    );

    let req = test::TestRequest::get()
        .uri("/healthz")
        .insert_header(("origin", "https://evil.example.com"))
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert!(resp.headers().get("access-control-allow-origin").is_none());

    let req = test::TestRequest::default()
        .method(actix_web::http::Method::OPTIONS)
        .uri("/healthz")
        .insert_header(("origin", "https://evil.example.com"))
        .insert_header(("access-control-request-method", "GET"))
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    if !resp.status().is_success() {
        assert_eq!(body_json(resp).await["error"]["code"], "bad_request");
    }
}

#[tokio::test]
async fn grpc_health_reports_serving_once_ready() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let grpc = infragpt::grpc::server::GrpcShell::new().await;
    let health = grpc.health();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(grpc.serve(listener, async {
        let _ = stopped.await;
    }));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let status = |r: tonic::Response<tonic_health::pb::HealthCheckResponse>| r.into_inner().status;
    let req = || HealthCheckRequest {
        service: String::new(),
    };
    assert_eq!(
        status(client.check(req()).await.unwrap()),
        ServingStatus::NotServing as i32
    );
    health.set_serving().await;
    assert_eq!(
        status(client.check(req()).await.unwrap()),
        ServingStatus::Serving as i32
    );
    health.set_not_serving().await;
    assert_eq!(
        status(client.check(req()).await.unwrap()),
        ServingStatus::NotServing as i32
    );

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Against a real database.

use infragpt::http::health::{DatabaseCheck, MigrationsCheck};
use infragpt::testkit::test_db::TestDb;

/// A TCP relay to the test database that can be switched off (connections refused... in
/// effect: accepted and closed at once, and live relays cut) and on again, so the database
/// becomes unreachable without touching the server other tests use.
struct Relay {
    addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, up_rx) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*up_rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut up_rx = up_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = up_rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Relay { addr, up }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

fn via(url: &infragpt_actors::Secret, addr: std::net::SocketAddr) -> infragpt_actors::Secret {
    let mut u = url::Url::parse(url.expose()).unwrap();
    u.set_host(Some(&addr.ip().to_string())).unwrap();
    u.set_port(Some(addr.port())).unwrap();
    infragpt_actors::Secret::new(u.to_string())
}

fn target_of(url: &infragpt_actors::Secret) -> String {
    let u = url::Url::parse(url.expose()).unwrap();
    format!("{}:{}", u.host_str().unwrap(), u.port().unwrap_or(5432))
}

/// GET /readyz → (status, body).
macro_rules! readyz {
    ($app:expr) => {{
        let resp =
            test::call_service($app, test::TestRequest::get().uri("/readyz").to_request()).await;
        let status = resp.status().as_u16();
        (status, body_json(resp).await)
    }};
}

#[actix_rt::test]
async fn readyz_follows_the_database() {
    let tdb = TestDb::new().await;
    let relay = Relay::start(target_of(&tdb.url)).await;
    let url = via(&tdb.url, relay.addr);
    let timeout = std::time::Duration::from_secs(2);
    let pool = infragpt::db::build_pool(&url, 2, timeout).unwrap();
    let db = Arc::new(infragpt::db::Database::from_pool(pool, url, timeout));
    let readiness = Readiness::new(std::time::Duration::from_secs(5));
    readiness.add(DatabaseCheck::new(db.clone()));
    readiness.add(MigrationsCheck::new(db.clone()));
    let app = test::init_service(http::app(shell(readiness))).await;

    let (status, body) = readyz!(&app);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["migrations"], "ok");

    relay.set_up(false);
    let body = eventually("not ready without the database", async || {
        let (status, body) = readyz!(&app);
        if status == 503 { Ok(body) } else { Err(body) }
    })
    .await;
    assert_eq!(body["status"], "not_ready");
    assert_ne!(body["checks"]["database"], "ok", "{body}");
    // The public endpoint names the kind of failure, not the server's address.
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");

    relay.set_up(true);
    eventually("ready again", async || {
        let (status, body) = readyz!(&app);
        if status == 200 { Ok(()) } else { Err(body) }
    })
    .await;
}

#[actix_rt::test]
async fn readyz_reports_pending_migrations() {
    let tdb = TestDb::empty().await;
    let db = Arc::new(tdb.database());
    let readiness = Readiness::default();
    readiness.add(DatabaseCheck::new(db.clone()));
    readiness.add(MigrationsCheck::new(db.clone()));
    let app = test::init_service(http::app(shell(readiness))).await;
    let (status, body) = readyz!(&app);
    assert_eq!(status, 503);
    let pending = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(
        body["checks"]["migrations"],
        format!("{pending} pending"),
        "{body}"
    );
    assert_eq!(body["checks"]["database"], "ok");

    db.run_migrations().await.unwrap();
    let (status, body) = readyz!(&app);
    assert_eq!(status, 200, "{body}");
}

/// The real binary: `infragpt serve` against a test database, ready, SIGTERM, exit code 0.
#[tokio::test]
async fn serve_binary_starts_and_stops_gracefully_on_sigterm() {
    use std::io::BufRead as _;
    use std::time::Duration;

    let tdb = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serve.yaml");
    std::fs::write(
        &path,
        "bind_address: 127.0.0.1\nport: 0\ngrpc_port: 0\nlog_format: json\nlog_level: info\n\
         shutdown_grace_ms: 5000\nadmin:\n  token: ${E2E_ADMIN_TOKEN}\n\
         vault:\n  dev_key_file: ${E2E_VAULT_FILE}\n\
         database:\n  url: ${E2E_DATABASE_URL}\n  pool_size: 2\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_infragpt"))
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .env("E2E_DATABASE_URL", tdb.url.expose())
        .env("E2E_ADMIN_TOKEN", "e2e-admin-s3cret")
        .env("E2E_VAULT_FILE", dir.path().join("vault.key"))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // A failed assertion must not leave the service running after the test.
    let _reaper = KillOnPanic(pid);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });

    // The "serving" line names the bound addresses (ports 0 → chosen by the OS).
    let serving = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = rx.recv().await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "serving"
            {
                return Some(v);
            }
        }
        None
    })
    .await;
    let serving = match serving {
        Ok(Some(v)) => v,
        other => {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "no serving line ({other:?}); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let http_addr = serving["http_addr"].as_str().unwrap().to_owned();
    let grpc_addr = serving["grpc_addr"].as_str().unwrap().to_owned();

    let client = reqwest::Client::new();
    eventually("the service is ready", async || {
        let resp = client
            .get(format!("http://{http_addr}/readyz"))
            .send()
            .await;
        resp.map(|r| r.status())
            .map_err(|e| e.to_string())
            .and_then(|status| {
                if status == 200 {
                    Ok(())
                } else {
                    Err(status.to_string())
                }
            })
    })
    .await;

    {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        // gRPC health follows /readyz within a poll period.
        let client = HealthClient::new(channel);
        eventually("gRPC health is SERVING", async || {
            let status = client
                .clone()
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            if status == ServingStatus::Serving as i32 {
                Ok(())
            } else {
                Err(status)
            }
        })
        .await;
    }

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = eventually("the service exits after SIGTERM", async || {
        child.try_wait().unwrap()
    })
    .await;
    let logs = reader.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}\nstdout: {logs}");
    assert!(logs.contains("\"signal\":\"SIGTERM\""), "{logs}");
    assert!(logs.contains("\"message\":\"stopped\""), "{logs}");
    assert!(!logs.contains("e2e-admin-s3cret") && !stderr.contains("e2e-admin-s3cret"));
}

/// A module that adds a slow route (held until released), a readiness check, and records
/// that it was stopped.
struct SlowModule {
    entered: tokio::sync::mpsc::UnboundedSender<()>,
    release: tokio::sync::watch::Receiver<bool>,
    stopped: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl infragpt::server::Module for SlowModule {
    fn name(&self) -> &str {
        "slow"
    }

    async fn start(
        &mut self,
        state: &infragpt::server::AppState,
        http: &mut HttpShell,
        _grpc: &mut infragpt::grpc::server::GrpcShell,
    ) -> anyhow::Result<()> {
        state.readiness.add(Flag {
            name: "slow_module",
            up: Arc::new(AtomicBool::new(true)),
        });
        let entered = self.entered.clone();
        let release = self.release.clone();
        http.add_routes(Arc::new(move |cfg| {
            let entered = entered.clone();
            let release = release.clone();
            cfg.route(
                "/slow",
                web::get().to(move || {
                    let entered = entered.clone();
                    let mut release = release.clone();
                    async move {
                        let _ = entered.send(());
                        let _ = release.wait_for(|r| *r).await;
                        HttpResponse::Ok().body("done")
                    }
                }),
            );
        }));
        Ok(())
    }

    async fn stop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

#[actix_rt::test]
async fn stop_finishes_in_flight_requests_then_stops_modules_and_listeners() {
    let tdb = TestDb::new().await;
    let mut config = infragpt::config::Config {
        bind_address: "127.0.0.1".into(),
        port: 0,
        grpc_port: 0,
        shutdown_grace_ms: 10_000,
        ..Default::default()
    };
    config.database.url = Some(tdb.url.clone());
    config.database.pool_size = 2;

    let (entered_tx, mut entered_rx) = tokio::sync::mpsc::unbounded_channel();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let stopped = Arc::new(AtomicBool::new(false));
    let module = SlowModule {
        entered: entered_tx,
        release: release_rx,
        stopped: stopped.clone(),
    };
    let running = infragpt::server::start(config, vec![Box::new(module)])
        .await
        .unwrap();
    let addr = running.http_addr;
    let readiness = running.state.readiness.clone();
    let report = readiness.report().await;
    assert!(report.is_ready(), "{report:?}");
    assert_eq!(report.checks["slow_module"], "ok");

    let client = reqwest::Client::new();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.get(format!("http://{addr}/slow")).send().await }
    });
    entered_rx.recv().await.expect("handler entered");

    // Release the handler only once shutdown has begun: it must still complete.
    let release = async {
        eventually("shutdown begins", async || readiness.is_shutting_down()).await;
        release_tx.send_replace(true);
    };
    let (stopped_result, ()) = tokio::join!(running.stop(), release);
    stopped_result.unwrap();

    let resp = in_flight.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "done");
    assert!(stopped.load(Ordering::SeqCst), "module stop() not called");
    assert!(
        client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err(),
        "still accepting after stop"
    );
}

/// Kills a child process when the test panics before it could stop it.
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}
