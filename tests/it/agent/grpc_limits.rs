//! The gRPC listener's connection limits (`grpc:` section), against the served service: a
//! connection without a handshake is closed after `handshake_timeout_ms`, an idle HTTP/2
//! connection after `idle_timeout_ms`, and connections over `max_connections` are closed at
//! once while the open ones keep working. The timeouts are short; the waits are generous hang
//! guards, never measurements.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::upstream::Pki;
use crate::support::app::TestApp;
use crate::support::wait::eventually;

/// How long a test waits for the server to close a connection before it fails (the
/// configured timeouts are a few hundred milliseconds).
const CLOSE_GUARD: Duration = Duration::from_secs(30);

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame (length 0, type 4, no flags, stream 0).
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

async fn serve(tweak: impl FnOnce(&mut infragpt::config::GrpcConfig) + 'static) -> TestApp {
    TestApp::builder()
        .configure(move |c| tweak(&mut c.grpc))
        .start()
        .await
}

/// Reads until the server closes the connection (EOF or reset); panics if it stays open for
/// [`CLOSE_GUARD`]. Returns what the server sent before closing.
async fn closed_by_server(tcp: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    let closing = async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(CLOSE_GUARD, closing)
        .await
        .unwrap_or_else(|_| panic!("{what}: the server kept the connection open"));
    seen
}

async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[actix_rt::test]
async fn connections_without_a_handshake_are_closed_after_the_handshake_timeout() {
    let app = serve(|g| {
        g.handshake_timeout_ms = 300;
        // Long, so only the handshake timeout can close these connections in time.
        g.idle_timeout_ms = 600_000;
    })
    .await;
    let mut silent = TcpStream::connect(app.grpc_addr()).await.unwrap();
    let mut partial = TcpStream::connect(app.grpc_addr()).await.unwrap();
    partial.write_all(&PREFACE[..16]).await.unwrap();

    closed_by_server(&mut silent, "no bytes sent").await;
    closed_by_server(&mut partial, "part of the preface sent").await;

    // A client that completes the handshake is served, also after the handshake timeout.
    let channel = Endpoint::from_shared(format!("http://{}", app.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    health(channel.clone()).await.expect("health check");
    tokio::time::sleep(Duration::from_millis(600)).await;
    health(channel)
        .await
        .expect("health check after the handshake timeout");
    app.stop().await;
}

#[actix_rt::test]
async fn idle_http2_connections_are_closed_after_the_idle_timeout() {
    let app = serve(|g| {
        g.handshake_timeout_ms = 600_000;
        g.idle_timeout_ms = 500;
    })
    .await;

    // A raw HTTP/2 client: preface and SETTINGS, then silence.
    let mut raw = TcpStream::connect(app.grpc_addr()).await.unwrap();
    raw.write_all(PREFACE).await.unwrap();
    raw.write_all(&EMPTY_SETTINGS).await.unwrap();
    let answer = closed_by_server(&mut raw, "idle after the preface").await;
    // The server spoke HTTP/2 (its SETTINGS frame) before closing: this was the idle timeout,
    // not a refused handshake.
    assert!(answer.len() >= 9 && answer[3] == 4, "{answer:?}");

    // A gRPC client: the call works, the idle connection is closed, the next call reconnects.
    let connector = Watched::new(app.grpc_addr());
    let channel = Endpoint::from_static("http://grpc.test")
        .connect_with_connector(connector.clone())
        .await
        .unwrap();
    health(channel.clone()).await.expect("health check");
    assert_eq!(connector.connects.load(Ordering::SeqCst), 1);
    eventually("the server closes the idle gRPC connection", async || {
        connector.closed.load(Ordering::SeqCst)
    })
    .await;
    health(channel)
        .await
        .expect("health check on a new connection");
    assert_eq!(connector.connects.load(Ordering::SeqCst), 2);
    app.stop().await;
}

#[actix_rt::test]
async fn connections_over_the_cap_are_closed_while_open_ones_keep_working() {
    let app = serve(|g| {
        g.max_connections = 2;
        g.handshake_timeout_ms = 600_000;
        g.idle_timeout_ms = 600_000;
    })
    .await;
    let endpoint = Endpoint::from_shared(format!("http://{}", app.grpc_addr())).unwrap();
    let first = endpoint.connect().await.unwrap();
    health(first.clone()).await.expect("first connection");
    // The second slot: a connection that is still in its handshake counts too.
    let mut second = TcpStream::connect(app.grpc_addr()).await.unwrap();
    second.write_all(&PREFACE[..4]).await.unwrap();

    let mut third = TcpStream::connect(app.grpc_addr()).await.unwrap();
    let sent = closed_by_server(&mut third, "over the cap").await;
    assert!(sent.is_empty(), "closed before any HTTP/2: {sent:?}");
    health(first.clone())
        .await
        .expect("the open connection still works");

    // A freed slot is used again.
    drop(second);
    eventually(
        "a new connection is served once a slot is free",
        async || match endpoint.connect().await {
            Ok(channel) => health(channel).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
    )
    .await;
    health(first)
        .await
        .expect("the first connection still works");
    app.stop().await;
}

#[actix_rt::test]
async fn under_mutual_tls_a_silent_connection_is_closed_and_certified_clients_are_served() {
    let pki = Pki::new();
    let (cert, key, ca) = (
        pki.path("server.crt"),
        pki.path("server.key"),
        pki.path("ca.crt"),
    );
    let app = TestApp::builder()
        .configure(move |c| {
            c.grpc.handshake_timeout_ms = 300;
            c.grpc.idle_timeout_ms = 600_000;
            c.grpc_tls.cert_file = Some(cert);
            c.grpc_tls.key_file = Some(key);
            c.grpc_tls.client_ca_file = Some(ca);
        })
        .start()
        .await;
    let mut silent = TcpStream::connect(app.grpc_addr()).await.unwrap();
    closed_by_server(&mut silent, "no ClientHello").await;

    // The TLS handshake runs over the guarded connection; the client certificate still
    // reaches the service (every call needs one here), also after the handshake timeout.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", app.grpc_addr().port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connect");
    health(channel.clone())
        .await
        .expect("health check over mTLS");
    tokio::time::sleep(Duration::from_millis(600)).await;
    health(channel)
        .await
        .expect("health check after the handshake timeout");
    app.stop().await;
}

/// A connector for the tonic client that counts its connections and notes when the server
/// closed one (a read returned EOF or failed).
#[derive(Clone)]
struct Watched {
    addr: std::net::SocketAddr,
    connects: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
}

impl Watched {
    fn new(addr: std::net::SocketAddr) -> Self {
        Self {
            addr,
            connects: Arc::default(),
            closed: Arc::default(),
        }
    }
}

impl tonic::codegen::Service<Uri> for Watched {
    type Response = TokioIo<WatchedStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(this.addr).await?;
            this.connects.fetch_add(1, Ordering::SeqCst);
            this.closed.store(false, Ordering::SeqCst);
            Ok(TokioIo::new(WatchedStream {
                tcp,
                closed: this.closed.clone(),
            }))
        })
    }
}

/// The client side of a [`Watched`] connection.
struct WatchedStream {
    tcp: TcpStream,
    closed: Arc<AtomicBool>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {
                this.closed.store(true, Ordering::SeqCst)
            }
            Poll::Ready(Err(_)) => this.closed.store(true, Ordering::SeqCst),
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
