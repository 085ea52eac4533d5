//! A side listener: a small second HTTP server on its own address, built from an
//! [`HttpShell`] (the same middleware, error shape and health routes as the main port). The
//! Clerk and GitHub webhook ports and the internal ops port are side listeners.

use std::net::SocketAddr;

use anyhow::Context as _;

use super::HttpShell;

/// A running side listener; stop it with [`SideListener::stop`].
#[derive(Debug)]
pub struct SideListener {
    name: &'static str,
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl SideListener {
    /// Binds `ip:port` (port 0: any free port) and serves `shell` on one worker. `name` says
    /// what it is in logs and errors; `grace_ms` is the shutdown grace for in-flight requests.
    pub fn start(
        name: &'static str,
        ip: std::net::IpAddr,
        port: u16,
        shell: HttpShell,
        grace_ms: u64,
    ) -> anyhow::Result<Self> {
        let addr = SocketAddr::new(ip, port);
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the {name} listener on {addr}"))?;
        let addr = listener.local_addr()?;
        // actix counts the grace period in whole seconds.
        let grace_secs = grace_ms.div_ceil(1000).max(1);
        let server = actix_web::HttpServer::new(move || super::app(shell.clone()))
            .workers(1)
            .disable_signals()
            .shutdown_timeout(grace_secs)
            .listen(listener)
            .with_context(|| format!("starting the {name} listener"))?
            .run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        tracing::info!(listener = name, %addr, "side listener started");
        Ok(Self {
            name,
            addr,
            handle,
            task,
        })
    }

    /// Where it is bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, and logs how
    /// the server ended.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        match self.task.await {
            Ok(Ok(())) => tracing::info!(listener = self.name, "side listener stopped"),
            Ok(Err(e)) => tracing::error!(listener = self.name, error = %e, "side listener failed"),
            Err(e) => {
                tracing::error!(listener = self.name, error = %e, "side listener task failed")
            }
        }
    }
}
