//! Several `infragpt serve` processes on one database, and a closed-loop Slack load over
//! them (dev-only: the `cluster` integration tests and the `replicas` benchmark).
//!
//! * [`ReplicaSet`] writes one configuration per replica (fixed loopback ports, so a restarted
//!   replica keeps its addresses; the same database, Slack simulator, agent and vault key),
//!   starts the binary it is given (`env!("CARGO_BIN_EXE_infragpt")` in tests and benches),
//!   and kills (`SIGKILL`), terminates (`SIGTERM`, waiting for the exit), pauses (`SIGSTOP`)
//!   and resumes (`SIGCONT`) them. Each replica logs to a file in the set's directory; a
//!   replica that fails to start is reported with the end of its log.
//! * [`Load`] drives threads of mentions through the simulator, closed loop per thread: the
//!   next mention of a thread is posted once the previous one is answered. Every mention
//!   carries a tag (`load-t007-m0012`) that the development agent echoes, so each answer
//!   names the mention it answers.
//! * [`check_answers`] and [`check_agent_order`] turn the simulator's messages and the
//!   agent's requests into a list of violations (a mention answered twice or never, an answer
//!   in the wrong thread, a turn the agent saw out of order), each naming the mention.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use infragpt_actors::Secret;
use parking_lot::Mutex;
use serde_json::Value;

use crate::grpc::pb::agent::AgentRequest;
use crate::testkit::slack_sim::{BotPost, SimConfig, SlackSim};

/// The simulator for replica runs (tests and the bench): mentions only (one envelope per
/// mention), bot posts not echoed, nothing recorded but deliveries and messages. Envelopes
/// are redelivered after 2 s up to 30 times: while a replica is paused or cut off, its
/// connections still take their turn in the simulator's round robin, and with Slack's 3
/// redeliveries an envelope could land on them every time.
pub fn sim_config() -> SimConfig {
    let mut config = SimConfig::default()
        .with_record_traffic(false)
        .with_echo_bot_messages(false)
        .with_ack_timeout(Duration::from_secs(2));
    config.subscriptions.message = false;
    config.max_redeliveries = 30;
    config.max_connections = 10;
    config
}

/// Cluster timings short enough for tests: a dead replica's partitions move within about 2 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub lease_ms: u64,
    pub heartbeat_ms: u64,
    pub safety_margin_ms: u64,
    pub rescan_interval_ms: u64,
    pub handover_timeout_ms: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            lease_ms: 1_500,
            heartbeat_ms: 300,
            safety_margin_ms: 300,
            rescan_interval_ms: 2_000,
            handover_timeout_ms: 5_000,
        }
    }
}

/// What the replicas share.
#[derive(Debug, Clone)]
pub struct ReplicaSetConfig {
    /// The `infragpt` binary.
    pub binary: PathBuf,
    /// How many replicas.
    pub replicas: usize,
    /// The database every replica uses (unless [`ReplicaSet::set_database_url`] says otherwise).
    pub database_url: Secret,
    /// Socket Mode against a simulator, with this many connections per replica.
    pub slack: Option<SlackSetup>,
    /// Where the replicas call the agent.
    pub agent_addr: SocketAddr,
    pub timings: Timings,
    /// Appended to every replica's configuration (top-level YAML keys not written here).
    pub extra_yaml: String,
    /// `log_level` of the replicas (`warn` unless `INFRAGPT_REPLICA_LOG` says otherwise).
    pub log_level: String,
    /// Database pool per replica.
    pub pool_size: usize,
}

/// The simulator's coordinates for the replicas' `slack:` section.
#[derive(Debug, Clone)]
pub struct SlackSetup {
    pub api_url: String,
    pub app_token: Secret,
    pub bot_token: Secret,
    pub signing_secret: Secret,
    pub connections: u32,
}

impl SlackSetup {
    /// The first app and workspace of `sim`.
    pub fn of(sim: &SlackSim, connections: u32) -> Self {
        let config = sim.config();
        Self {
            api_url: sim.base_url(),
            app_token: config.apps[0].app_token.clone(),
            bot_token: config.teams[0].bot_token.clone(),
            signing_secret: config.apps[0].signing_secret.clone(),
            connections,
        }
    }
}

impl ReplicaSetConfig {
    /// `replicas` replicas of `binary` on `database_url`, calling the agent at `agent_addr`.
    pub fn new(
        binary: impl Into<PathBuf>,
        replicas: usize,
        database_url: Secret,
        agent_addr: SocketAddr,
    ) -> Self {
        Self {
            binary: binary.into(),
            replicas,
            database_url,
            slack: None,
            agent_addr,
            timings: Timings::default(),
            extra_yaml: String::new(),
            log_level: std::env::var("INFRAGPT_REPLICA_LOG").unwrap_or_else(|_| "warn".into()),
            pool_size: 8,
        }
    }
}

/// The admin token of every replica (`/cluster` on the public port needs it).
pub const ADMIN_TOKEN: &str = "replicas-admin-token-0123456789";
/// A test-only vault key (32 bytes, base64), the same on every replica.
const VAULT_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A replica set could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("replica {index}: {what}: {source}")]
    Io {
        index: usize,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("replica {index} {what}; the end of its log:\n{log}")]
    Failed {
        index: usize,
        what: String,
        log: String,
    },
}

/// A replica's fixed addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub ops: SocketAddr,
}

#[derive(Debug)]
struct Replica {
    ports: Ports,
    database_url: Secret,
    child: Option<Child>,
    /// Restarts so far (each start appends to the same log).
    starts: usize,
    paused: bool,
}

/// Replicas of the service as child processes. Dropping it kills those still running and
/// removes its directory (configurations and logs) unless `INFRAGPT_KEEP_REPLICA_LOGS` is set.
#[derive(Debug)]
pub struct ReplicaSet {
    config: ReplicaSetConfig,
    dir: PathBuf,
    replicas: Vec<Replica>,
    http: reqwest::Client,
}

/// A free loopback port now (the OS's choice; kept by the replica across restarts).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr")
}

/// `n` distinct free loopback ports, none of `except`: all are bound at once, then released.
pub fn free_ports(n: usize, except: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = l.local_addr().expect("local addr");
        if !except.iter().any(|e| e.port() == addr.port()) {
            ports.push(addr);
        }
        held.push(l);
    }
    ports
}

fn signal(pid: u32, name: &str) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill -{name} {pid}: {status}"
        )))
    }
}

impl ReplicaSet {
    /// Reserves ports and a directory; starts nothing.
    pub fn new(config: ReplicaSetConfig) -> Result<Self, ReplicaError> {
        let dir = std::env::temp_dir().join(format!(
            "infragpt-replicas-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).map_err(|source| ReplicaError::Io {
            index: 0,
            what: "creating the directory",
            source,
        })?;
        // Held together so the OS cannot hand the same port out twice; never the agent's.
        let mut ports = free_ports(3 * config.replicas, &[config.agent_addr]).into_iter();
        let mut next = || ports.next().expect("enough ports");
        let replicas = (0..config.replicas)
            .map(|_| Replica {
                ports: Ports {
                    http: next(),
                    grpc: next(),
                    ops: next(),
                },
                database_url: config.database_url.clone(),
                child: None,
                starts: 0,
                paused: false,
            })
            .collect();
        Ok(Self {
            config,
            dir,
            replicas,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
        })
    }

    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    pub fn ports(&self, index: usize) -> Ports {
        self.replicas[index].ports
    }

    /// `http://127.0.0.1:PORT` of every replica's gRPC listener (SendReply).
    pub fn grpc_endpoints(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|r| format!("http://{}", r.ports.grpc))
            .collect()
    }

    /// The replica's pid while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.replicas[index].child.as_ref().map(Child::id)
    }

    /// Where replica `index` logs.
    pub fn log_path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("replica-{index}.log"))
    }

    /// The last `lines` lines of the replica's log.
    pub fn log_tail(&self, index: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(index)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Replica `index` uses `url` from its next start (a relay in front of the database).
    pub fn set_database_url(&mut self, index: usize, url: Secret) {
        self.replicas[index].database_url = url;
    }

    fn yaml(&self, index: usize) -> String {
        let c = &self.config;
        let r = &self.replicas[index];
        let t = c.timings;
        let mut yaml = format!(
            "bind_address: 127.0.0.1\nport: {}\ngrpc_port: {}\nlog_format: json\n\
             log_level: {}\nhttp_log: false\nshutdown_grace_ms: 10000\n\
             admin:\n  token: {ADMIN_TOKEN}\n\
             ops:\n  port: {}\n  bind_address: 127.0.0.1\n\
             agent:\n  endpoint: \"http://{}\"\n  connect_timeout_ms: 1000\n  call_timeout_ms: 90000\n  retry_attempts: 3\n\
             vault:\n  active_key: k1\n  keys:\n    k1: \"{VAULT_KEY}\"\n\
             database:\n  url: \"{}\"\n  pool_size: {}\n\
             cluster:\n  lease_ms: {}\n  heartbeat_ms: {}\n  safety_margin_ms: {}\n  rescan_interval_ms: {}\n  handover_timeout_ms: {}\n",
            r.ports.http.port(),
            r.ports.grpc.port(),
            c.log_level,
            r.ports.ops.port(),
            c.agent_addr,
            r.database_url.expose(),
            c.pool_size,
            t.lease_ms,
            t.heartbeat_ms,
            t.safety_margin_ms,
            t.rescan_interval_ms,
            t.handover_timeout_ms,
        );
        if let Some(s) = &c.slack {
            yaml.push_str(&format!(
                "slack:\n  api_url: \"{}\"\n  app_token: \"{}\"\n  bot_token: \"{}\"\n  signing_secret: \"{}\"\n  socket_mode: true\n  connections: {}\n  throttle: false\n",
                s.api_url,
                s.app_token.expose(),
                s.bot_token.expose(),
                s.signing_secret.expose(),
                s.connections
            ));
        }
        yaml.push_str(&c.extra_yaml);
        yaml
    }

    /// Starts replica `index` (which must not be running); does not wait for it.
    pub fn spawn(&mut self, index: usize) -> Result<(), ReplicaError> {
        assert!(
            self.replicas[index].child.is_none(),
            "replica {index} already runs"
        );
        let io = |what| {
            move |source| ReplicaError::Io {
                index,
                what,
                source,
            }
        };
        let path = self.dir.join(format!("replica-{index}.yaml"));
        std::fs::write(&path, self.yaml(index)).map_err(io("writing its configuration"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(index))
            .map_err(io("opening its log"))?;
        let err = log.try_clone().map_err(io("opening its log"))?;
        let child = Command::new(&self.config.binary)
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .env_remove("RUST_LOG")
            .env("HOSTNAME", format!("replica{index}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(io("spawning the binary"))?;
        let r = &mut self.replicas[index];
        r.child = Some(child);
        r.starts += 1;
        r.paused = false;
        Ok(())
    }

    /// Starts replica `index` and waits until it is ready and holds partitions.
    pub async fn start(&mut self, index: usize) -> Result<(), ReplicaError> {
        self.spawn(index)?;
        self.wait_ready(index, Duration::from_secs(90)).await?;
        self.wait_holding(index, Duration::from_secs(60)).await
    }

    /// Starts every replica, then waits for all of them.
    pub async fn start_all(&mut self) -> Result<(), ReplicaError> {
        for i in 0..self.len() {
            self.spawn(i)?;
        }
        for i in 0..self.len() {
            self.wait_ready(i, Duration::from_secs(90)).await?;
        }
        for i in 0..self.len() {
            self.wait_holding(i, Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// New ports for replica `index`: none another replica or the agent uses.
    fn rebind(&mut self, index: usize) {
        let mut except = vec![self.config.agent_addr];
        except.extend(
            self.replicas
                .iter()
                .flat_map(|r| [r.ports.http, r.ports.grpc, r.ports.ops]),
        );
        let mut ports = free_ports(3, &except).into_iter();
        let mut next = || ports.next().expect("three ports");
        self.replicas[index].ports = Ports {
            http: next(),
            grpc: next(),
            ops: next(),
        };
    }

    fn failed(&self, index: usize, what: impl Into<String>) -> ReplicaError {
        ReplicaError::Failed {
            index,
            what: what.into(),
            log: self.log_tail(index, 40),
        }
    }

    /// True when the child has exited (it is then reaped).
    fn exited(&mut self, index: usize) -> Option<ExitStatus> {
        let child = self.replicas[index].child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.replicas[index].child = None;
                Some(status)
            }
            _ => None,
        }
    }

    /// Waits until `/readyz` on the replica's ops port answers 200.
    ///
    /// The ports reserved in [`ReplicaSet::new`] are free again until the replica binds them,
    /// and parallel tests may take one meanwhile. A first start that fails only because a
    /// port is taken is started again on new ports (up to three times); a later start keeps
    /// its ports, which other parts of a test may know by then.
    pub async fn wait_ready(&mut self, index: usize, within: Duration) -> Result<(), ReplicaError> {
        let deadline = Instant::now() + within;
        let mut rebinds = 0;
        // Where this attempt's part of the log starts.
        let mut attempt_log = 0;
        loop {
            if let Some(status) = self.exited(index) {
                let log = std::fs::read_to_string(self.log_path(index)).unwrap_or_default();
                let first_start = self.replicas[index].starts == rebinds + 1;
                if first_start
                    && rebinds < 3
                    && log
                        .get(attempt_log..)
                        .is_some_and(|l| l.contains("Address already in use"))
                {
                    rebinds += 1;
                    attempt_log = log.len();
                    self.rebind(index);
                    self.spawn(index)?;
                    continue;
                }
                return Err(self.failed(index, format!("exited while starting ({status})")));
            }
            let last = match self.readyz(index).await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(self.failed(
                    index,
                    format!("not ready within {within:?} (last /readyz: {last})"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the replica reports holding at least one partition.
    pub async fn wait_holding(
        &mut self,
        index: usize,
        within: Duration,
    ) -> Result<(), ReplicaError> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(view) = self.cluster_view(index).await
                && view["this_replica"]["partitions"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty())
            {
                return Ok(());
            }
            if let Some(status) = self.exited(index) {
                return Err(self.failed(index, format!("exited ({status})")));
            }
            if Instant::now() >= deadline {
                return Err(self.failed(index, format!("held no partition within {within:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /readyz` on the ops port: status and body.
    pub async fn readyz(&self, index: usize) -> Result<(u16, String), String> {
        let url = format!("http://{}/readyz", self.replicas[index].ports.ops);
        let r = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.text().await.unwrap_or_default()))
    }

    /// `GET /cluster` on the ops port.
    pub async fn cluster_view(&self, index: usize) -> Result<Value, String> {
        let url = format!("http://{}/cluster", self.replicas[index].ports.ops);
        let r = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("/cluster answered {}", r.status()));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    /// `GET /actors/{kind}/{key}` on the ops port: one actor's snapshot.
    pub async fn actor(&self, index: usize, kind: &str, key: &str) -> Result<Value, String> {
        let url = format!(
            "http://{}/actors/{kind}/{key}",
            self.replicas[index].ports.ops
        );
        let r = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("/actors/{kind}/{key} answered {}", r.status()));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    /// This replica's id, as `/cluster` names it.
    pub async fn replica_id(&self, index: usize) -> Result<String, String> {
        let view = self.cluster_view(index).await?;
        view["this_replica"]["replica"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no replica id in {view}"))
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.replicas[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.replicas[index].paused = false;
    }

    /// SIGTERM, then waits for the exit (a graceful stop: drain, then the listeners stop).
    /// Returns the exit status and how long the stop took.
    pub async fn terminate(
        &mut self,
        index: usize,
        within: Duration,
    ) -> Result<(ExitStatus, Duration), ReplicaError> {
        let Some(pid) = self.pid(index) else {
            return Err(self.failed(index, "is not running"));
        };
        let started = Instant::now();
        signal(pid, "TERM").map_err(|source| ReplicaError::Io {
            index,
            what: "sending SIGTERM",
            source,
        })?;
        loop {
            if let Some(status) = self.exited(index) {
                return Ok((status, started.elapsed()));
            }
            if started.elapsed() >= within {
                let e = self.failed(index, format!("did not exit within {within:?} of SIGTERM"));
                self.kill(index);
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn pause(&mut self, index: usize) -> Result<(), ReplicaError> {
        let pid = self.pid(index).expect("a running replica");
        signal(pid, "STOP").map_err(|source| ReplicaError::Io {
            index,
            what: "sending SIGSTOP",
            source,
        })?;
        self.replicas[index].paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, index: usize) -> Result<(), ReplicaError> {
        let pid = self.pid(index).expect("a running replica");
        signal(pid, "CONT").map_err(|source| ReplicaError::Io {
            index,
            what: "sending SIGCONT",
            source,
        })?;
        self.replicas[index].paused = false;
        Ok(())
    }

    /// True while the child runs (not reaped).
    pub fn is_running(&mut self, index: usize) -> bool {
        self.exited(index);
        self.replicas[index].child.is_some()
    }
}

impl Drop for ReplicaSet {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            if let Some(mut child) = r.child.take() {
                if r.paused {
                    let _ = signal(child.id(), "CONT");
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::env::var_os("INFRAGPT_KEEP_REPLICA_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("replica logs kept in {}", self.dir.display());
        }
    }
}

// ----- partitions in /cluster ---------------------------------------------------------------

/// Who holds what, from a `GET /cluster` body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Live replicas (heartbeat within the lease, not stopped) → partitions held.
    pub live: BTreeMap<String, Vec<u16>>,
    /// Partitions with a current owner that is not live.
    pub held_by_others: Vec<u16>,
    /// Partitions without a current owner.
    pub unowned: Vec<u16>,
}

impl Holdings {
    pub fn of(view: &Value) -> Self {
        let mut h = Self::default();
        for r in view["view"]["replicas"].as_array().into_iter().flatten() {
            if r["live"] == true
                && let Some(id) = r["id"].as_str()
            {
                h.live.insert(id.to_owned(), Vec::new());
            }
        }
        for p in view["view"]["partitions"].as_array().into_iter().flatten() {
            let n = p["partition"].as_u64().unwrap_or(u64::MAX) as u16;
            match p["owner"].as_str() {
                Some(owner) => match h.live.get_mut(owner) {
                    Some(held) => held.push(n),
                    None => h.held_by_others.push(n),
                },
                None => h.unowned.push(n),
            }
        }
        h
    }

    /// Every partition is held by a live replica, and each of the `replicas` live ones holds
    /// some: `Err` says what is not so yet.
    pub fn all_held_by(&self, replicas: usize) -> Result<(), String> {
        let held: usize = self.live.values().map(Vec::len).sum();
        let counts: Vec<usize> = self.live.values().map(Vec::len).collect();
        if self.live.len() == replicas
            && held == usize::from(infragpt_actors::inbox::PARTITIONS)
            && counts.iter().all(|n| *n > 0)
        {
            Ok(())
        } else {
            Err(format!(
                "{} live replicas holding {counts:?} partitions, {} held by replicas not live, {} unowned",
                self.live.len(),
                self.held_by_others.len(),
                self.unowned.len()
            ))
        }
    }
}

// ----- the load -------------------------------------------------------------------------------

/// Where the load posts.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub team: String,
    pub channels: Vec<String>,
    pub user: String,
    pub bot_user: String,
    /// Threads, each one closed loop.
    pub threads: usize,
    /// A thread stops after this many mentions (or when told to stop).
    pub max_turns: usize,
    /// A mention not answered within this long fails its thread.
    pub turn_timeout: Duration,
}

impl LoadConfig {
    /// The simulator's first workspace, its first channels, its first user.
    pub fn for_sim(sim: &SlackSim, threads: usize, max_turns: usize) -> Self {
        let config = sim.config();
        let team = &config.teams[0];
        Self {
            team: team.id.clone(),
            channels: team
                .channels
                .iter()
                .filter(|c| c.id.starts_with('C'))
                .map(|c| c.id.clone())
                .collect(),
            user: team.users[0].id.clone(),
            bot_user: team.bot_user_id.clone(),
            threads,
            max_turns,
            turn_timeout: Duration::from_secs(120),
        }
    }
}

/// The tag of mention `turn` of thread `thread`, carried in its text and echoed in its answer.
pub fn tag(thread: usize, turn: usize) -> String {
    format!("load-t{thread:03}-m{turn:04}")
}

/// The (thread, turn) of the first tag in `text`.
pub fn parse_tag(text: &str) -> Option<(usize, usize)> {
    let at = text.find("load-t")?;
    let rest = &text[at + "load-t".len()..];
    let thread = rest.get(..3)?.parse().ok()?;
    let rest = rest.get(3..)?.strip_prefix("-m")?;
    let turn = rest.get(..4)?.parse().ok()?;
    Some((thread, turn))
}

/// One mention and its answer.
#[derive(Debug, Clone)]
pub struct Turn {
    pub posted_at: Instant,
    /// When the simulator stored the answer.
    pub answered_at: Option<Instant>,
    pub ts: String,
}

/// One thread's mentions.
#[derive(Debug, Clone, Default)]
pub struct ThreadLog {
    pub channel: String,
    /// The first mention's ts: the thread.
    pub root_ts: Option<String>,
    pub turns: Vec<Turn>,
    /// Why the thread stopped early, if it did.
    pub error: Option<String>,
}

/// A running load. [`Load::stop`] asks every thread to finish its current mention.
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    logs: Arc<Mutex<Vec<ThreadLog>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dispatcher: tokio::task::JoinHandle<()>,
    config: LoadConfig,
    started: Instant,
}

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Load")
            .field("threads", &self.config.threads)
            .field("answered", &self.answered())
            .finish_non_exhaustive()
    }
}

impl Load {
    /// Starts the threads (on the current tokio runtime).
    pub fn start(sim: Arc<SlackSim>, config: LoadConfig) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let logs = Arc::new(Mutex::new(vec![ThreadLog::default(); config.threads]));
        let mut senders = HashMap::new();
        let mut receivers = Vec::new();
        for t in 0..config.threads {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<BotPost>();
            senders.insert(t, tx);
            receivers.push(rx);
        }
        let mut posts = sim.subscribe_bot_posts();
        let dispatcher = tokio::spawn(async move {
            while let Some(post) = posts.recv().await {
                if let Some((thread, _)) = parse_tag(&post.text)
                    && let Some(tx) = senders.get(&thread)
                {
                    let _ = tx.send(post);
                }
            }
        });
        let tasks = receivers
            .into_iter()
            .enumerate()
            .map(|(thread, rx)| {
                tokio::spawn(run_thread(
                    sim.clone(),
                    config.clone(),
                    thread,
                    rx,
                    stop.clone(),
                    answered.clone(),
                    logs.clone(),
                ))
            })
            .collect();
        Self {
            stop,
            answered,
            logs,
            tasks,
            dispatcher,
            config,
            started: Instant::now(),
        }
    }

    /// Mentions answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }

    /// When the load started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits until at least `n` mentions are answered (or `within` passes: `false`).
    pub async fn wait_answered(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.answered() < n {
            if Instant::now() >= deadline || self.finished() {
                return self.answered() >= n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// True once every thread has stopped.
    pub fn finished(&self) -> bool {
        self.tasks.iter().all(tokio::task::JoinHandle::is_finished)
    }

    /// A copy of the logs so far.
    pub fn snapshot(&self) -> Vec<ThreadLog> {
        self.logs.lock().clone()
    }

    /// Asks the threads to stop after their current mention, waits for them and returns the
    /// logs.
    pub async fn stop(self) -> Vec<ThreadLog> {
        self.stop.store(true, Ordering::Relaxed);
        self.finish().await
    }

    /// Waits for the threads to end on their own (`max_turns`) and returns the logs.
    pub async fn finish(self) -> Vec<ThreadLog> {
        for t in self.tasks {
            let _ = t.await;
        }
        self.dispatcher.abort();
        self.logs.lock().clone()
    }
}

async fn run_thread(
    sim: Arc<SlackSim>,
    config: LoadConfig,
    thread: usize,
    mut answers: tokio::sync::mpsc::UnboundedReceiver<BotPost>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    logs: Arc<Mutex<Vec<ThreadLog>>>,
) {
    let channel = config.channels[thread % config.channels.len()].clone();
    logs.lock()[thread].channel = channel.clone();
    let mut root: Option<String> = None;
    for turn in 0..config.max_turns {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let text = format!("<@{}> ping {}", config.bot_user, tag(thread, turn));
        let posted_at = Instant::now();
        let ts = match sim.post_user_message(
            &config.team,
            &channel,
            &config.user,
            &text,
            root.as_deref(),
        ) {
            Ok(ts) => ts,
            Err(e) => {
                logs.lock()[thread].error = Some(format!("posting {}: {e}", tag(thread, turn)));
                return;
            }
        };
        if root.is_none() {
            root = Some(ts.clone());
            logs.lock()[thread].root_ts = Some(ts.clone());
        }
        logs.lock()[thread].turns.push(Turn {
            posted_at,
            answered_at: None,
            ts,
        });
        let deadline = tokio::time::Instant::now() + config.turn_timeout;
        loop {
            match tokio::time::timeout_at(deadline, answers.recv()).await {
                Ok(Some(post)) if parse_tag(&post.text) == Some((thread, turn)) => {
                    logs.lock()[thread].turns[turn].answered_at = Some(post.at);
                    answered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                // An answer to an earlier mention (a duplicate): the checks report it.
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => {
                    logs.lock()[thread].error = Some(format!(
                        "{} not answered within {:?}",
                        tag(thread, turn),
                        config.turn_timeout
                    ));
                    return;
                }
            }
        }
    }
}

// ----- checks ---------------------------------------------------------------------------------

/// Mentions posted (answered or not).
pub fn mentions(logs: &[ThreadLog]) -> usize {
    logs.iter().map(|l| l.turns.len()).sum()
}

/// Where a bot message is: channel and thread.
type Place = (String, Option<String>);

/// Every mention answered exactly once, in its own thread, and no other bot message in the
/// load's channels. Returns the violations, each naming the mention.
pub fn check_answers(sim: &SlackSim, config: &LoadConfig, logs: &[ThreadLog]) -> Vec<String> {
    let mut violations = Vec::new();
    // tag → (channel, thread_ts) of each bot message carrying it, with the message described
    // (ts, reply intent, text) for a mention answered more than once.
    let mut answers: HashMap<(usize, usize), Vec<(Place, String)>> = HashMap::new();
    for channel in &config.channels {
        for m in sim.messages_in(&config.team, channel) {
            // A duplicate the bot withdrew (chat.delete) is not an answer.
            if m.bot_id.is_none() || m.deleted {
                continue;
            }
            match parse_tag(&m.text) {
                Some(t) => answers.entry(t).or_default().push((
                    (channel.clone(), m.thread_ts.clone()),
                    format!(
                        "ts {} metadata {} text {:?}",
                        m.ts,
                        m.metadata
                            .as_ref()
                            .map_or_else(|| "none".to_owned(), |v| v["event_payload"].to_string()),
                        m.text.chars().take(80).collect::<String>()
                    ),
                )),
                None => violations.push(format!(
                    "a bot message without a mention tag in {channel} (thread {:?}): {:?}",
                    m.thread_ts,
                    m.text.chars().take(200).collect::<String>()
                )),
            }
        }
    }
    for (thread, log) in logs.iter().enumerate() {
        if let Some(e) = &log.error {
            violations.push(format!("thread {thread}: {e}"));
        }
        for turn in 0..log.turns.len() {
            let key = (thread, turn);
            let found = answers.remove(&key).unwrap_or_default();
            let name = tag(thread, turn);
            match found.as_slice() {
                [] => violations.push(format!("{name} was never answered")),
                [((channel, thread_ts), _)] => {
                    if *channel != log.channel || thread_ts.as_ref() != log.root_ts.as_ref() {
                        violations.push(format!(
                            "{name} was answered in {channel} thread {thread_ts:?}, not in its own ({} thread {:?})",
                            log.channel, log.root_ts
                        ));
                    }
                }
                more => {
                    let (places, posts): (Vec<&Place>, Vec<&str>) =
                        more.iter().map(|(p, d)| (p, d.as_str())).unzip();
                    violations.push(format!(
                        "{name} was answered {} times: {places:?}; the answers: {}",
                        more.len(),
                        posts.join(" | ")
                    ));
                }
            }
        }
    }
    for ((thread, turn), found) in answers {
        violations.push(format!(
            "{} answered {} times but never posted",
            tag(thread, turn),
            found.len()
        ));
    }
    violations.sort();
    violations
}

/// Which repeated asks [`check_agent_order`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeats {
    /// Only a turn asked again right after itself (a retried event).
    Adjacent,
    /// Also a late ask for any older turn: a replica paused past its lease can send a request
    /// it had begun before the pause once it resumes (the bytes leave after SIGCONT); the
    /// agent then answers a turn that was answered already, and the reply is dropped.
    Late,
}

/// What the agent saw, per conversation: the mentions' turns in order. A repeated ask that
/// `repeats` accepts is counted; anything else out of order, a conversation mixing threads,
/// or a posted mention the agent never saw is a violation. Returns the violations and how
/// many repeated asks there were.
pub fn check_agent_order(
    requests: &[AgentRequest],
    logs: &[ThreadLog],
    repeats_allowed: Repeats,
) -> (Vec<String>, usize) {
    let mut violations = Vec::new();
    let mut per_conversation: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
    for r in requests {
        match parse_tag(&r.current_message) {
            Some(t) => per_conversation
                .entry(r.conversation_id.as_str())
                .or_default()
                .push(t),
            None => violations.push(format!(
                "the agent got a message without a tag in {}: {:?}",
                r.conversation_id, r.current_message
            )),
        }
    }
    let mut repeats = 0;
    let mut seen_threads: HashMap<usize, &str> = HashMap::new();
    for (conversation, turns) in &per_conversation {
        let thread = turns[0].0;
        if let Some(other) = seen_threads.insert(thread, conversation) {
            violations.push(format!(
                "thread {thread} is two conversations: {other} and {conversation}"
            ));
        }
        let mut expected = 0usize;
        for (i, (t, turn)) in turns.iter().enumerate() {
            if *t != thread {
                violations.push(format!(
                    "conversation {conversation} of thread {thread} got {}",
                    tag(*t, *turn)
                ));
            } else if *turn == expected {
                expected += 1;
            } else if i > 0
                && (*turn + 1 == expected || (repeats_allowed == Repeats::Late && *turn < expected))
            {
                repeats += 1;
            } else {
                violations.push(format!(
                    "thread {thread} out of order: the agent got {} when {} was due (sequence {:?})",
                    tag(thread, *turn),
                    tag(thread, expected),
                    turns.iter().map(|(_, n)| *n).collect::<Vec<_>>()
                ));
                break;
            }
        }
        let posted = logs.get(thread).map_or(0, |l| l.turns.len());
        if expected != posted {
            violations.push(format!(
                "thread {thread}: the agent saw turns 0..{expected} of the {posted} posted"
            ));
        }
    }
    for (thread, log) in logs.iter().enumerate() {
        if !log.turns.is_empty() && !seen_threads.contains_key(&thread) {
            violations.push(format!("the agent never saw thread {thread}"));
        }
    }
    (violations, repeats)
}

/// Turn latencies (posted → answer stored) in milliseconds, of the turns posted within
/// `[from, to)`.
pub fn latencies_ms(logs: &[ThreadLog], from: Instant, to: Instant) -> Vec<f64> {
    let mut out: Vec<f64> = logs
        .iter()
        .flat_map(|l| &l.turns)
        .filter(|t| t.posted_at >= from && t.posted_at < to)
        .filter_map(|t| Some((t.answered_at? - t.posted_at).as_secs_f64() * 1000.0))
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

/// The `q` quantile (0..=1) of sorted values (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        assert_eq!(parse_tag(&tag(7, 12)), Some((7, 12)));
        assert_eq!(
            parse_tag("[demo agent] You said: “ping load-t123-m0042”."),
            Some((123, 42))
        );
        assert_eq!(parse_tag("no tag"), None);
        assert_eq!(parse_tag("load-t12"), None);
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.0);
        assert_eq!(quantile(&v, 0.99), 4.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    fn request(conversation: &str, thread: usize, turn: usize) -> AgentRequest {
        AgentRequest {
            conversation_id: conversation.into(),
            current_message: format!("ping {}", tag(thread, turn)),
            ..AgentRequest::default()
        }
    }

    fn log(turns: usize) -> ThreadLog {
        ThreadLog {
            turns: (0..turns)
                .map(|_| Turn {
                    posted_at: Instant::now(),
                    answered_at: None,
                    ts: String::new(),
                })
                .collect(),
            ..ThreadLog::default()
        }
    }

    #[test]
    fn agent_order_allows_a_repeat_and_names_what_is_out_of_order() {
        let logs = vec![log(3)];
        let ok = [
            request("c", 0, 0),
            request("c", 0, 1),
            request("c", 0, 1),
            request("c", 0, 2),
        ];
        assert_eq!(
            check_agent_order(&ok, &logs, Repeats::Adjacent),
            (vec![], 1)
        );
        let bad = [request("c", 0, 0), request("c", 0, 2), request("c", 0, 1)];
        let (violations, _) = check_agent_order(&bad, &logs, Repeats::Adjacent);
        assert!(
            violations[0].contains("out of order") && violations[0].contains("load-t000-m0002"),
            "{violations:?}"
        );
        let (violations, _) = check_agent_order(&[request("c", 0, 0)], &logs, Repeats::Adjacent);
        assert_eq!(
            violations,
            vec!["thread 0: the agent saw turns 0..1 of the 3 posted"]
        );
    }
}
