//! Connection limits tonic does not have: a handshake timeout, an idle timeout and a cap on
//! open connections, applied to the accepted TCP streams before tonic (and its TLS) sees them.
//!
//! * [`incoming`] accepts, and over `max_connections` closes the new connection at once (the
//!   client fails fast and can back off or go elsewhere, instead of hanging in the listen
//!   backlog while the connections it waits for are idle).
//! * [`GuardedIo`] wraps each connection: it fails reads and writes with `TimedOut` (and so
//!   the connection closes) when the first [`PREFACE_LEN`] bytes have not arrived within the
//!   handshake timeout, or when no byte has moved either way for the idle timeout. Under TLS
//!   those first bytes are the ClientHello; the TLS handshake is bounded by the same timeout
//!   through `ServerTlsConfig::timeout`, and the HTTP/2 preface inside it by the idle timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// Length of the HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
pub const PREFACE_LEN: usize = 24;

/// A pause after a failed `accept` (out of file descriptors, say), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What [`incoming`] and [`GuardedIo`] enforce.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From accept until [`PREFACE_LEN`] bytes have been read; `None`: no limit.
    pub handshake_timeout: Option<Duration>,
    /// No byte read or written for this long closes the connection; `None`: no limit.
    pub idle_timeout: Option<Duration>,
    /// Open connections at most.
    pub max_connections: usize,
    /// TCP keepalive time on accepted sockets.
    pub tcp_keepalive: Option<Duration>,
}

impl From<&crate::config::GrpcConfig> for ConnectionLimits {
    fn from(c: &crate::config::GrpcConfig) -> Self {
        Self {
            handshake_timeout: c.handshake_timeout(),
            idle_timeout: c.idle_timeout(),
            max_connections: c.max_connections.max(1),
            tcp_keepalive: c.tcp_keepalive(),
        }
    }
}

/// The accepted connections of `listener`, capped and wrapped in [`GuardedIo`].
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> impl Stream<Item = io::Result<GuardedIo>> + Send + 'static {
    let accepted = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(limits.tcp_keepalive);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    futures::stream::unfold((accepted, slots), move |(mut accepted, slots)| async move {
        loop {
            match accepted.next().await? {
                Ok(tcp) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let io = GuardedIo::new(tcp, slot, &limits);
                        return Some((Ok(io), (accepted, slots)));
                    }
                    Err(_) => {
                        tracing::warn!(
                            peer = ?tcp.peer_addr().ok(),
                            max_connections = limits.max_connections,
                            "gRPC connection refused: too many open connections"
                        );
                        drop(tcp);
                    }
                },
                // Returning the error would stop tonic's server; a full descriptor table
                // or an aborted connection is worth waiting out instead.
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    })
}

/// An accepted connection that times out a missing handshake and idleness, and holds one of
/// the listener's connection slots until it is dropped.
#[derive(Debug)]
pub struct GuardedIo {
    tcp: TcpStream,
    info: TcpConnectInfo,
    _slot: OwnedSemaphorePermit,
    /// Bytes of the handshake still to read before the idle timeout takes over.
    preface_left: usize,
    idle_timeout: Option<Duration>,
    last_activity: Instant,
    /// The next deadline (handshake, then idle); `None` when neither applies.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl GuardedIo {
    fn new(tcp: TcpStream, slot: OwnedSemaphorePermit, limits: &ConnectionLimits) -> Self {
        let info = tcp.connect_info();
        let now = Instant::now();
        let first = limits.handshake_timeout.or(limits.idle_timeout);
        Self {
            tcp,
            info,
            _slot: slot,
            preface_left: if limits.handshake_timeout.is_some() {
                PREFACE_LEN
            } else {
                0
            },
            idle_timeout: limits.idle_timeout,
            last_activity: now,
            deadline: first.map(|d| Box::pin(tokio::time::sleep_until(now + d))),
        }
    }

    /// `Some(error)` once the deadline has passed; otherwise registers for its wake-up. The
    /// idle deadline is moved on lazily (here, when it fires) rather than on every byte.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        loop {
            let deadline = self.deadline.as_mut()?;
            if deadline.as_mut().poll(cx).is_pending() {
                return None;
            }
            let reason = if self.preface_left > 0 {
                "handshake timeout"
            } else {
                match self.idle_timeout.map(|idle| self.last_activity + idle) {
                    Some(next) if next > Instant::now() => {
                        deadline.as_mut().reset(next);
                        continue;
                    }
                    Some(_) => "idle timeout",
                    None => {
                        self.deadline = None;
                        return None;
                    }
                }
            };
            tracing::debug!(peer = ?self.info.remote_addr(), reason, "closing gRPC connection");
            return Some(io::Error::new(io::ErrorKind::TimedOut, reason));
        }
    }

    fn moved(&mut self, read: usize) {
        self.last_activity = Instant::now();
        if self.preface_left > 0 && read > 0 {
            self.preface_left = self.preface_left.saturating_sub(read);
            if self.preface_left == 0 {
                // The handshake deadline is over; from now on only idleness counts.
                match (self.idle_timeout, self.deadline.as_mut()) {
                    (Some(idle), Some(deadline)) => {
                        deadline.as_mut().reset(self.last_activity + idle)
                    }
                    _ => self.deadline = None,
                }
            }
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.info.remote_addr()
    }
}

impl Connected for GuardedIo {
    // The same info as a plain TcpStream, so `Request::remote_addr` (and, under TLS,
    // `peer_certs`) work as before.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.expired(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = buf.filled().len() - before;
            if read > 0 {
                this.moved(read);
            }
        }
        polled
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.expired(cx) {
            return Poll::Ready(Err(e));
        }
        let polled = Pin::new(&mut this.tcp).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            this.moved(0);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.expired(cx) {
            return Poll::Ready(Err(e));
        }
        let polled = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            this.moved(0);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
