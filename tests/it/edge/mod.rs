//! Edge cases found by an outside probe: webhook bodies read before their signature was looked
//! at (memory exhaustion without a credential), signed payloads PostgreSQL cannot store
//! (`\u0000`), and the memory one signed delivery costs.
//!
//! Memory is measured on a spawned `infragpt serve` (its own `/proc/<pid>/status`), so the
//! figures do not depend on what the other tests of this binary are doing.

mod limits;
mod memory;
mod nul;
mod rate_limits;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The head, lower-cased (status line and headers).
    pub head: String,
    pub body: String,
}

impl RawResponse {
    /// The JSON body (null when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    }
}

/// Writes a POST head (with `Content-Length: content_length`) and nothing else.
pub async fn send_head(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    content_length: usize,
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {content_length}\r\nconnection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream
}

/// Reads one response (head and `Content-Length` body); fails the test after `within`.
pub async fn read_response(stream: &mut TcpStream, within: Duration) -> RawResponse {
    tokio::time::timeout(within, read_from(stream))
        .await
        .expect("a response in time")
}

/// Everything the server sends until it closes the connection (or the caller's timeout),
/// lossily as text: for describing a connection in a failure message.
pub async fn read_any(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => return format!("closed after {:?}", String::from_utf8_lossy(&buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return format!("{e} after {:?}", String::from_utf8_lossy(&buf)),
        }
    }
}

async fn read_from<R: AsyncRead + Unpin>(rd: &mut R) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = rd.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().expect("content-length"));
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = rd.read(&mut chunk).await.expect("read body");
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    RawResponse {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// POSTs `body` on a fresh connection and reads the answer (within a generous minute).
pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> RawResponse {
    let mut stream = send_head(addr, path, headers, body.len()).await;
    let (mut rd, mut wr) = stream.split();
    // A server that answers before reading everything may stop reading: ignore write errors.
    let write = async {
        let _ = wr.write_all(body).await;
    };
    let read = tokio::time::timeout(Duration::from_secs(60), read_from(&mut rd));
    let (_, response) = tokio::join!(write, read);
    response.expect("a response in time")
}

/// `infragpt serve` in its own process on a fresh database: memory figures of its own.
pub struct Spawned {
    child: std::process::Child,
    pub http_addr: SocketAddr,
    pub db: infragpt::testkit::test_db::TestDb,
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// Serves with `extra` appended to a minimal configuration (YAML top-level keys).
    pub async fn start(extra: &str) -> Self {
        use std::io::BufRead as _;
        let db = infragpt::testkit::test_db::TestDb::new().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.yaml");
        std::fs::write(
            &path,
            format!(
                "bind_address: 127.0.0.1\nport: 0\ngrpc_port: 0\nlog_format: json\n\
                 log_level: info\nhttp_log: false\n\
                 vault:\n  dev_key_file: {}\n\
                 database:\n  url: \"{}\"\n  pool_size: 4\n{extra}",
                dir.path().join("vault.key").display(),
                db.url.expose()
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_infragpt"))
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // Keeps draining the log so the service never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if !sent
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "serving"
                {
                    let _ = tx.send(v["http_addr"].as_str().unwrap_or_default().to_owned());
                    sent = true;
                }
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(120)))
            .await
            .unwrap();
        let spawned = |http_addr| Self {
            child,
            http_addr,
            db,
            _dir: dir,
        };
        match addr {
            Ok(addr) => spawned(addr.parse().expect("http_addr")),
            Err(e) => {
                let mut s = spawned("127.0.0.1:1".parse().unwrap());
                let _ = s.child.kill();
                panic!("the service did not start: {e}");
            }
        }
    }

    /// A field of the service's `/proc/<pid>/status`, in MiB.
    pub fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("field in /proc status");
        kib / 1024.0
    }

    /// Resident now (MiB).
    pub fn rss(&self) -> f64 {
        self.status_mib("VmRSS")
    }

    /// Peak resident (MiB) since the start or the last [`reset_peak`](Self::reset_peak).
    pub fn peak(&self) -> f64 {
        self.status_mib("VmHWM")
    }

    /// Resets the peak to the current figure (Linux `clear_refs` 5). Without it the peak of
    /// an earlier phase may show: an over-estimate, never an under-estimate.
    pub fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }

    /// Waits until every inbox row is finished (done, ignored or failed).
    pub async fn wait_idle(&self) {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use infragpt::db::schema::inbound_events;
        crate::support::wait::eventually("the service's inbox is idle", async || {
            let mut conn = self.db.pool().get().await.map_err(|e| e.to_string())?;
            let unfinished: i64 = inbound_events::table
                .filter(inbound_events::status.eq_any(["pending", "processing"]))
                .count()
                .get_result(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            if unfinished == 0 {
                Ok(())
            } else {
                Err(format!("{unfinished} unfinished"))
            }
        })
        .await
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
