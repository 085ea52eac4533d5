//! A headless Chromium driven over the Chrome DevTools protocol (CDP) on a WebSocket: what
//! the ops page test needs (navigate, evaluate, click with the mouse, type, screenshot) and
//! nothing more. No WebDriver crate: `tokio-tungstenite` is in the tree already, and CDP
//! needs no second process.
//!
//! Chromium is found on `PATH` (`chromium`, `chromium-browser`, `google-chrome`) or at
//! `$INFRAGPT_CHROMIUM`. A missing browser fails the test with the package to install; it
//! never skips (`.ci/run` installs Debian's `chromium`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long one CDP command may take (a hang guard).
const COMMAND_GUARD: Duration = Duration::from_secs(30);

/// The browser binary, or a panic naming what to install.
pub fn chromium_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("INFRAGPT_CHROMIUM").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the ops page test needs a headless Chromium and found none on PATH \
         (chromium, chromium-browser, google-chrome) or at $INFRAGPT_CHROMIUM: \
         install it with `apt-get install chromium chromium-driver` (.ci/run does)"
    );
}

/// A running headless Chromium with one page. Dropping it kills the browser.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    socket: Socket,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium with a fresh profile and attaches to its first page.
    pub async fn start() -> Browser {
        let binary = chromium_binary();
        let profile = tempfile::tempdir().expect("browser profile folder");
        let child = Command::new(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let port = devtools_port(profile.path()).await;
        let ws = page_socket_url(port).await;
        let (socket, _) = tokio_tungstenite::connect_async(ws.as_str())
            .await
            .unwrap_or_else(|e| panic!("connecting to the page's DevTools socket {ws}: {e}"));
        Browser {
            child,
            _profile: profile,
            socket,
            next_id: 0,
        }
    }

    /// Sends one CDP command and waits for its answer (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let text = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket
            .send(Message::text(text))
            .await
            .unwrap_or_else(|e| panic!("CDP {method}: send: {e}"));
        let deadline = Instant::now() + COMMAND_GUARD;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("CDP {method}: no answer within {COMMAND_GUARD:?}"))
                .unwrap_or_else(|| panic!("CDP {method}: the browser closed the socket"))
                .unwrap_or_else(|e| panic!("CDP {method}: {e}"));
            let Message::Text(text) = msg else { continue };
            let value: Value = serde_json::from_str(&text).expect("CDP sends JSON");
            if value["id"] != json!(id) {
                continue;
            }
            if let Some(error) = value.get("error") {
                panic!("CDP {method} failed: {error}");
            }
            return value["result"].clone();
        }
    }

    /// Opens `url` and waits until the document has loaded.
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        let started = Instant::now();
        while self.eval("document.readyState").await != json!("complete") {
            assert!(started.elapsed() < COMMAND_GUARD, "{url} did not load");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Evaluates `expression` in the page (promises awaited) and returns its JSON value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("evaluating `{expression}` threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Clicks the middle of the first element matching `selector` with the mouse (pressed and
    /// released), as a person would: the page sees real input events.
    pub async fn click(&mut self, selector: &str) {
        let selector_json = serde_json::to_string(selector).expect("selector");
        let rect = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({selector_json}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return {{x: r.left + r.width / 2, y: r.top + r.height / 2}}; }})()"
            ))
            .await;
        assert!(rect.is_object(), "no element matches {selector}");
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": rect["x"], "y": rect["y"], "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    /// Focuses the element matching `selector` and types `text` into it.
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector).await;
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Sets the viewport (CSS pixels); `mobile` emulates a phone's screen.
    pub async fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await;
    }

    /// A PNG of the whole page at `width`: the viewport grows to the page's height first, so
    /// sticky elements stay where a person sees them.
    pub async fn screenshot(&mut self, width: u32) -> Vec<u8> {
        self.viewport(width, 600, false).await;
        let height = self
            .eval("document.documentElement.scrollHeight")
            .await
            .as_u64()
            .unwrap_or(900);
        self.viewport(width, u32::try_from(height).unwrap_or(900), false)
            .await;
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium writes its DevTools port into the profile once it listens.
async fn devtools_port(profile: &Path) -> u16 {
    let file = profile.join("DevToolsActivePort");
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok())
        {
            return port;
        }
        assert!(
            started.elapsed() < COMMAND_GUARD,
            "Chromium did not open its DevTools port (no {})",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The WebSocket address of the browser's first page.
async fn page_socket_url(port: u16) -> String {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let targets: Option<Vec<Value>> = match client
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        if let Some(url) = targets.into_iter().flatten().find_map(|t| {
            (t["type"] == "page")
                .then(|| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
                .flatten()
        }) {
            return url;
        }
        assert!(
            started.elapsed() < COMMAND_GUARD,
            "Chromium lists no page on its DevTools port {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
