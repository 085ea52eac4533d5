//! A private PostgreSQL cluster started with the machine's own server binaries (`initdb`,
//! `pg_ctl`), used when no database is configured and none answers on the default address.
//!
//! Layout of the cluster directory `ROOT`:
//!
//! ```text
//! ROOT/data           PGDATA (created by initdb on first use)
//! ROOT/postgres.log   server log
//! ROOT/start.lock     held (exclusive) while a process starts, adopts or stops the server
//! ROOT/users.lock     held (shared) by every process that uses the server
//! ROOT/guardian.pid   pid of the watcher that stops the server once nobody uses it
//! ```
//!
//! Several processes may share one cluster (the service and the test binaries, or test
//! binaries run in parallel by nextest). Each user holds a shared lock on `users.lock` for as
//! long as it uses the server; the kernel drops that lock when the process ends, however it
//! ends. A detached guardian shell stops the server as soon as it can take `users.lock`
//! exclusively, so a killed owner (or a test binary whose statics are never dropped) never
//! leaves PostgreSQL running. [`PrivateCluster::stop`] and `Drop` stop it at once when the
//! caller is its last user.
//!
//! PostgreSQL refuses to run as root: when we are root the directory is handed to the
//! `postgres` system user and every server command runs through `runuser -u postgres --`.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The system user PostgreSQL runs as when we are root.
const POSTGRES_USER: &str = "postgres";
/// Longest Unix socket path PostgreSQL accepts (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long `pg_ctl start -w` may take before we give up.
const START_TIMEOUT_SECS: u32 = 60;

/// Private cluster failures.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Neither `PATH` nor `/usr/lib/postgresql/*/bin` holds the server binaries.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install them with `apt-get install postgresql`"
    )]
    BinariesNotFound,
    /// A file or directory of the cluster could not be created or read.
    #[error("private PostgreSQL cluster: {action} {path}: {source}")]
    Io {
        /// What we tried.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Running as root without a usable `postgres` system user.
    #[error(
        "running as root: PostgreSQL refuses to run as root and the `postgres` system user is missing and could not be created ({0}); create it with `useradd --system postgres` or run as another user"
    )]
    NoPostgresUser(String),
    /// The `postgres` system user cannot reach the cluster directory.
    #[error(
        "the `postgres` system user cannot write to {0} (a parent directory is probably not accessible to it); choose a data directory it can reach"
    )]
    NotAccessible(PathBuf),
    /// The cluster path cannot be passed to the server safely.
    #[error("the cluster path {0} cannot be used: {1}")]
    BadPath(PathBuf, &'static str),
    /// A server command failed.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The command line (paths only, never secrets).
        command: String,
        /// Exit status.
        status: String,
        /// Its stderr/stdout, trimmed.
        output: String,
    },
    /// The server did not come up.
    #[error(
        "the private PostgreSQL cluster in {dir} did not accept connections on port {port}; see {log}"
    )]
    NotReady {
        /// Data directory.
        dir: PathBuf,
        /// Port it should listen on.
        port: u16,
        /// Server log.
        log: PathBuf,
    },
}

/// Absolute paths of the server binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    /// `initdb`.
    pub initdb: PathBuf,
    /// `pg_ctl`.
    pub pg_ctl: PathBuf,
}

impl PgBinaries {
    /// Looks on `PATH` first, then under `/usr/lib/postgresql/<version>/bin` (highest version).
    pub fn find() -> Result<PgBinaries, ClusterError> {
        if let Some(found) = Self::on_path() {
            return Ok(found);
        }
        Self::under_usr_lib(Path::new("/usr/lib/postgresql")).ok_or(ClusterError::BinariesNotFound)
    }

    fn on_path() -> Option<PgBinaries> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).find_map(|dir| Self::in_dir(&dir))
    }

    fn in_dir(dir: &Path) -> Option<PgBinaries> {
        let initdb = dir.join("initdb");
        let pg_ctl = dir.join("pg_ctl");
        (is_executable(&initdb) && is_executable(&pg_ctl)).then_some(PgBinaries { initdb, pg_ctl })
    }

    fn under_usr_lib(base: &Path) -> Option<PgBinaries> {
        let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(base)
            .ok()?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let version: Option<Vec<u32>> =
                    name.split('.').map(|part| part.parse().ok()).collect();
                Some((version?, entry.path().join("bin")))
            })
            .collect();
        versions.sort();
        versions.iter().rev().find_map(|(_, dir)| Self::in_dir(dir))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How to run a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// `false` turns off fsync, synchronous commit and full page writes: much faster, and
    /// fine for throw-away test data (a machine crash may corrupt the cluster).
    pub durable: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self { durable: true }
    }
}

/// A running private cluster (ours or adopted from an earlier run).
#[derive(Debug)]
pub struct PrivateCluster {
    root: PathBuf,
    data: PathBuf,
    port: u16,
    binaries: PgBinaries,
    run_as: Option<String>,
    /// Our shared lock on `users.lock`; `None` once stopped.
    users_lock: Option<File>,
    started_by_us: bool,
    guardian: Option<Child>,
}

/// How `pg_ctl stop` shuts the server down.
#[derive(Clone, Copy, Debug)]
enum StopMode {
    /// Ends sessions and writes a shutdown checkpoint.
    Fast,
    /// Exits at once, as a crash would; the next start recovers from the WAL.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Immediate => "immediate",
        }
    }
}

impl PrivateCluster {
    /// Starts (or adopts) the cluster in `root` with default (durable) options. Blocking:
    /// call it from `spawn_blocking` in async code.
    pub fn start(root: &Path) -> Result<PrivateCluster, ClusterError> {
        Self::start_with(root, &ClusterOptions::default())
    }

    /// Starts (or adopts, when a live server from an earlier run owns the directory) the
    /// cluster in `root`, running `initdb` first if the directory is new. Blocking.
    pub(crate) fn start_with(
        root: &Path,
        options: &ClusterOptions,
    ) -> Result<PrivateCluster, ClusterError> {
        let binaries = PgBinaries::find()?;
        let run_as = if running_as_root() {
            ensure_postgres_user()?;
            Some(POSTGRES_USER.to_owned())
        } else {
            None
        };

        std::fs::create_dir_all(root).map_err(io_err("create", root))?;
        let root = std::fs::canonicalize(root).map_err(io_err("resolve", root))?;
        if root
            .to_str()
            .is_none_or(|s| s.contains('\'') || s.contains('\n'))
        {
            return Err(ClusterError::BadPath(
                root,
                "it must be UTF-8 without quotes or newlines",
            ));
        }
        if let Some(user) = &run_as {
            let (uid, gid) = user_ids(user)?;
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))
                .map_err(io_err("chown", &root))?;
            let reachable = Command::new("runuser")
                .args(["-u", user, "--", "test", "-w"])
                .arg(&root)
                .args(["-a", "-x"])
                .arg(&root)
                .status()
                .map_err(io_err("run runuser for", &root))?;
            if !reachable.success() {
                return Err(ClusterError::NotAccessible(root));
            }
        }

        let start_lock = open_lock(&root.join("start.lock"))?;
        start_lock
            .lock()
            .map_err(io_err("lock", &root.join("start.lock")))?;
        let users_lock = open_lock(&root.join("users.lock"))?;
        users_lock
            .lock_shared()
            .map_err(io_err("lock", &root.join("users.lock")))?;

        let mut cluster = PrivateCluster {
            data: root.join("data"),
            root,
            port: 0,
            binaries,
            run_as,
            users_lock: Some(users_lock),
            started_by_us: false,
            guardian: None,
        };
        let result = cluster.bring_up(options);
        // Release the start lock before `cluster` can drop: its Drop takes that lock again.
        drop(start_lock);
        result?;
        Ok(cluster)
    }

    fn bring_up(&mut self, options: &ClusterOptions) -> Result<(), ClusterError> {
        if !self.data.join("PG_VERSION").exists() {
            self.initdb()?;
        }
        match self.live_server()? {
            Some(port) => {
                tracing::info!(dir = %self.data.display(), port, "adopting running private PostgreSQL cluster");
                self.port = port;
            }
            None => {
                self.start_server(options)?;
                self.started_by_us = true;
            }
        }
        self.ensure_guardian()?;
        Ok(())
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        tracing::info!(dir = %self.data.display(), "initializing private PostgreSQL cluster");
        let mut cmd = self.server_command(&self.binaries.initdb);
        cmd.arg("-D").arg(&self.data).args([
            "-U",
            POSTGRES_USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(cmd)
    }

    /// The port of a server already running on our data directory, removing a stale
    /// `postmaster.pid`. A live server that does not answer is stopped.
    fn live_server(&self) -> Result<Option<u16>, ClusterError> {
        let pid_file = self.data.join("postmaster.pid");
        let Ok(content) = std::fs::read_to_string(&pid_file) else {
            return Ok(None);
        };
        let mut lines = content.lines();
        let pid = lines.next().and_then(|l| l.trim().parse::<u32>().ok());
        let port = lines.nth(2).and_then(|l| l.trim().parse::<u16>().ok());
        let alive = pid.is_some_and(postgres_process_alive);
        if !alive {
            tracing::warn!(file = %pid_file.display(), "removing stale postmaster.pid");
            std::fs::remove_file(&pid_file).map_err(io_err("remove", &pid_file))?;
            return Ok(None);
        }
        if let Some(port) = port {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if accepts(port) {
                    return Ok(Some(port));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        tracing::warn!(dir = %self.data.display(), "running private cluster does not answer; restarting it");
        self.pg_ctl_stop(StopMode::Fast)?;
        Ok(None)
    }

    fn start_server(&mut self, options: &ClusterOptions) -> Result<(), ClusterError> {
        let log = self.root.join("postgres.log");
        let root = self.root.to_str().unwrap_or_default();
        // Postgres needs the socket path to fit in sun_path; TCP is what we use anyway.
        let socket_dir = if root.len() + "/.s.PGSQL.65535".len() <= MAX_SOCKET_PATH {
            format!("'{root}'")
        } else {
            "''".to_owned()
        };
        let mut last_error = None;
        // A free port can be taken by someone else before the server binds it: retry.
        for _ in 0..3 {
            let port = free_port().map_err(io_err("find a free port for", &self.data))?;
            let mut server_options = format!(
                "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={socket_dir}"
            );
            if !options.durable {
                server_options
                    .push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
            }
            let mut cmd = self.server_command(&self.binaries.pg_ctl);
            cmd.arg("-D").arg(&self.data).arg("-l").arg(&log).args([
                "-w",
                "-t",
                &START_TIMEOUT_SECS.to_string(),
                "-o",
                &server_options,
                "start",
            ]);
            match run(cmd) {
                Ok(()) if accepts(port) => {
                    tracing::info!(dir = %self.data.display(), port, "private PostgreSQL cluster started");
                    self.port = port;
                    return Ok(());
                }
                Ok(()) => {
                    self.port = port;
                    return Err(ClusterError::NotReady {
                        dir: self.data.clone(),
                        port,
                        log,
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, port, "pg_ctl start failed");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or(ClusterError::NotReady {
            dir: self.data.clone(),
            port: 0,
            log,
        }))
    }

    /// Spawns the watcher unless a live one is recorded in `guardian.pid`.
    fn ensure_guardian(&mut self) -> Result<(), ClusterError> {
        let pid_path = self.root.join("guardian.pid");
        let recorded = std::fs::read_to_string(&pid_path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if recorded.is_some_and(process_alive) && !self.started_by_us {
            return Ok(());
        }
        let pg_ctl = self.binaries.pg_ctl.to_string_lossy().into_owned();
        let run_as = self.run_as.clone().unwrap_or_default();
        let data = self.data.to_string_lossy().into_owned();
        let mut cmd = Command::new("sh");
        if which("flock") {
            cmd.arg("-c")
                .arg(GUARDIAN_FLOCK)
                .arg("infragpt-pg-guardian")
                .args([
                    data,
                    self.root.join("start.lock").to_string_lossy().into_owned(),
                    self.root.join("users.lock").to_string_lossy().into_owned(),
                    pg_ctl,
                    run_as,
                ]);
        } else {
            tracing::warn!(
                "`flock` not found: the private cluster stops when this process ends, even if others still use it"
            );
            cmd.arg("-c")
                .arg(GUARDIAN_PID)
                .arg("infragpt-pg-guardian")
                .args([data, std::process::id().to_string(), pg_ctl, run_as]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C aimed at us must not kill the watcher.
            .process_group(0)
            .spawn()
            .map_err(io_err("spawn the guardian for", &self.data))?;
        let mut file = File::create(&pid_path).map_err(io_err("write", &pid_path))?;
        writeln!(file, "{}", child.id()).map_err(io_err("write", &pid_path))?;
        self.guardian = Some(child);
        Ok(())
    }

    /// TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// PGDATA.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// True when this process started the server (false when it adopted a running one).
    pub fn started_by_us(&self) -> bool {
        self.started_by_us
    }

    /// Connection URL for database `db` as the superuser `postgres` (trust auth).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{POSTGRES_USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// True while a server process owns the data directory and accepts connections.
    pub fn is_running(&self) -> bool {
        let Ok(content) = std::fs::read_to_string(self.data.join("postmaster.pid")) else {
            return false;
        };
        content
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
            .is_some_and(postgres_process_alive)
    }

    /// Stops using the cluster: when no other process uses it, runs `pg_ctl stop -m fast`
    /// and waits for the server to exit. Blocking. Calling it again does nothing.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        self.stop_in(StopMode::Fast)
    }

    /// [`Self::stop`] as a crash of the server would (`pg_ctl stop -m immediate`): no
    /// shutdown checkpoint, and commits whose WAL was not flushed yet are lost; the next
    /// start recovers from the WAL on disk. For fault drills.
    pub fn crash(&mut self) -> Result<(), ClusterError> {
        self.stop_in(StopMode::Immediate)
    }

    fn stop_in(&mut self, mode: StopMode) -> Result<(), ClusterError> {
        let Some(users_lock) = self.users_lock.take() else {
            return Ok(());
        };
        drop(users_lock);
        let start_path = self.root.join("start.lock");
        let start_lock = open_lock(&start_path)?;
        start_lock.lock().map_err(io_err("lock", &start_path))?;
        let users_path = self.root.join("users.lock");
        let users = open_lock(&users_path)?;
        let last_user = users.try_lock().is_ok();
        let result = if last_user && self.is_running() {
            tracing::info!(dir = %self.data.display(), "stopping private PostgreSQL cluster");
            self.pg_ctl_stop(mode)
        } else {
            if !last_user {
                tracing::info!(dir = %self.data.display(), "private cluster still used by another process; leaving it running");
            }
            Ok(())
        };
        drop(users);
        drop(start_lock);
        if let Some(mut guardian) = self.guardian.take() {
            // Reap it if it already exited; otherwise it exits by itself once the server is gone.
            let _ = guardian.try_wait();
        }
        result
    }

    fn pg_ctl_stop(&self, mode: StopMode) -> Result<(), ClusterError> {
        let mut cmd = self.server_command(&self.binaries.pg_ctl);
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", mode.as_arg(), "-w", "-t", "60", "stop"]);
        run(cmd)
    }

    /// A command for a server binary, run as the `postgres` user when we are root.
    fn server_command(&self, program: &Path) -> Command {
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        // Keep server processes out of our process group (terminal Ctrl-C) and out of
        // the caller's locale/PG* environment.
        cmd.process_group(0)
            .current_dir(&self.root)
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST");
        cmd
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, dir = %self.data.display(), "failed to stop private PostgreSQL cluster");
        }
    }
}

/// Watches `users.lock`: once no process holds it, stops the server and exits.
/// Args: $1 data dir, $2 start.lock, $3 users.lock, $4 pg_ctl, $5 user to run as (or empty).
const GUARDIAN_FLOCK: &str = r#"
exec 8>>"$2" 9>>"$3"
while sleep 1; do
  [ -f "$1/postmaster.pid" ] || exit 0
  flock -x 8
  if flock -n -x 9; then
    if [ -n "$5" ]; then runuser -u "$5" -- "$4" -D "$1" -m fast -w stop; else "$4" -D "$1" -m fast -w stop; fi
    exit 0
  fi
  flock -u 8
done
"#;

/// Fallback without `flock(1)`: stops the server when the owning process is gone.
/// Args: $1 data dir, $2 owner pid, $3 pg_ctl, $4 user to run as (or empty).
const GUARDIAN_PID: &str = r#"
while kill -0 "$2" 2>/dev/null; do
  [ -f "$1/postmaster.pid" ] || exit 0
  sleep 1
done
if [ -n "$4" ]; then runuser -u "$4" -- "$3" -D "$1" -m fast -w stop; else "$3" -D "$1" -m fast -w stop; fi
"#;

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError {
    let path = path.to_path_buf();
    move |source| ClusterError::Io {
        action,
        path,
        source,
    }
}

fn open_lock(path: &Path) -> Result<File, ClusterError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err("open", path))
}

fn run(mut cmd: Command) -> Result<(), ClusterError> {
    let command = format!("{cmd:?}");
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ClusterError::Io {
            action: "run",
            path: PathBuf::from(cmd.get_program()),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.trim().is_empty() {
        text.push_str(" | ");
        text.push_str(stdout.trim());
    }
    Err(ClusterError::Command {
        command,
        status: output.status.to_string(),
        output: text,
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program)))
    })
}

/// Whether `pid` is a live process (Linux `/proc`; elsewhere `kill -0`).
fn process_alive(pid: u32) -> bool {
    if Path::new("/proc/self").exists() {
        return Path::new(&format!("/proc/{pid}")).exists();
    }
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `pid` is a live postgres process (a reused pid of another program is not).
fn postgres_process_alive(pid: u32) -> bool {
    if !process_alive(pid) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm.trim().starts_with("postgres"),
        // No /proc: trust kill -0.
        Err(_) => true,
    }
}

/// Effective uid 0, read without `unsafe` (from /proc, else `id -u`).
fn running_as_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(line) = status.lines().find(|l| l.starts_with("Uid:"))
    {
        return line.split_whitespace().nth(2) == Some("0");
    }
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn user_ids(user: &str) -> Result<(u32, u32), ClusterError> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(ClusterError::NoPostgresUser(format!("`id {user}` failed"))),
    }
}

fn ensure_postgres_user() -> Result<(), ClusterError> {
    if user_ids(POSTGRES_USER).is_ok() {
        return Ok(());
    }
    tracing::info!(
        user = POSTGRES_USER,
        "creating system user for the private PostgreSQL cluster"
    );
    let output = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ])
        .arg(POSTGRES_USER)
        .output()
        .map_err(|e| ClusterError::NoPostgresUser(format!("cannot run useradd: {e}")))?;
    if !output.status.success() {
        return Err(ClusterError::NoPostgresUser(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    user_ids(POSTGRES_USER).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_highest_version_under_usr_lib() {
        let dir = tempfile::tempdir().unwrap();
        for version in ["9.6", "15", "13", "notaversion"] {
            let bin = dir.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            for exe in ["initdb", "pg_ctl"] {
                let path = bin.join(exe);
                std::fs::write(&path, "#!/bin/sh\n").unwrap();
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let found = PgBinaries::under_usr_lib(dir.path()).unwrap();
        assert_eq!(found.initdb, dir.path().join("15/bin/initdb"));
        assert_eq!(found.pg_ctl, dir.path().join("15/bin/pg_ctl"));
    }

    #[test]
    fn missing_binaries_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert!(PgBinaries::under_usr_lib(dir.path()).is_none());
        assert!(PgBinaries::under_usr_lib(&dir.path().join("absent")).is_none());
        let message = ClusterError::BinariesNotFound.to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
    }

    #[test]
    fn our_own_pid_is_alive_but_not_postgres() {
        assert!(process_alive(std::process::id()));
        assert!(!postgres_process_alive(std::process::id()));
    }
}
