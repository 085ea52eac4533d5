//! Actor benchmark (not a test): message throughput through router → worker with a no-op
//! handler and the in-memory inbox, and memory per idle keyed worker.
//!
//! Run: `cargo run --release -p infragpt-actors --bin actor_bench`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use infragpt_actors::health::{ActorState, HealthRegistry};
use infragpt_actors::inbox::{InboundEvent, InboundEvents};
use infragpt_actors::kinds::CONVERSATION_THREAD;
use infragpt_actors::sources::SLACK;
use infragpt_actors::testing::{MemoryInbox, eventually, slack_event};
use infragpt_actors::{
    Cluster, ClusterConfig, EventHandler, HandleOutcome, HandlerError, Metrics, StreamSpec,
};

/// Counts calls and does nothing else.
#[derive(Debug, Default)]
struct Counting(AtomicU64);

#[async_trait]
impl EventHandler for Counting {
    async fn handle(&self, _event: &InboundEvent) -> Result<HandleOutcome, HandlerError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(HandleOutcome::Done)
    }
}

fn config(events: usize) -> ClusterConfig {
    ClusterConfig {
        idle_timeout_ms: 600_000,
        high_water_mark: events + 1,
        mailbox_capacity: events + 1,
        drain_page_size: 1_000,
        ..ClusterConfig::default()
    }
}

fn cluster(config: ClusterConfig, inbox: Arc<MemoryInbox>, handler: Arc<Counting>) -> Cluster {
    let cluster = Cluster::start(
        config,
        inbox,
        HealthRegistry::new(),
        Metrics::new().expect("metrics"),
    )
    .expect("cluster");
    cluster
        .register_stream(StreamSpec {
            name: "conversations".into(),
            kind: CONVERSATION_THREAD,
            source: SLACK,
            handler,
        })
        .expect("stream");
    cluster
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn wait_for(handler: &Counting, n: u64) {
    let ok = eventually(Duration::from_secs(120), || {
        handler.0.load(Ordering::Relaxed) >= n
    })
    .await;
    assert!(ok, "benchmark did not finish");
}

/// Events recorded one by one through `Cluster::ingest` (record + dispatch + claim + handle +
/// mark done).
async fn ingest_throughput(keys: usize, per_key: usize) -> f64 {
    let n = keys * per_key;
    let inbox = MemoryInbox::new();
    let handler = Arc::new(Counting::default());
    let c = cluster(config(n), inbox, handler.clone());
    let start = Instant::now();
    for s in 0..per_key {
        for k in 0..keys {
            c.ingest(slack_event(&format!("T/C/{k}.0"), s as u64))
                .await
                .expect("ingest");
        }
    }
    wait_for(&handler, n as u64).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    c.shutdown().await;
    rate
}

/// Events already in the inbox, dispatched by recovery (router → worker → handler → inbox).
async fn dispatch_throughput(keys: usize, per_key: usize) -> f64 {
    let n = keys * per_key;
    let inbox = MemoryInbox::new();
    for s in 0..per_key {
        for k in 0..keys {
            inbox
                .record(slack_event(&format!("T/C/{k}.0"), s as u64))
                .await
                .expect("record");
        }
    }
    let handler = Arc::new(Counting::default());
    let c = cluster(config(n), inbox, handler.clone());
    let start = Instant::now();
    c.recover().await.expect("recover");
    wait_for(&handler, n as u64).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    c.shutdown().await;
    rate
}

/// RSS per idle worker with `workers` live workers (one handled event each).
async fn memory_per_worker(workers: usize) -> (f64, u64) {
    let inbox = MemoryInbox::new();
    for k in 0..workers {
        inbox
            .record(slack_event(&format!("T/C/{k}.0"), 0))
            .await
            .expect("record");
    }
    let handler = Arc::new(Counting::default());
    let c = cluster(config(workers), inbox.clone(), handler.clone());
    // Let the start-up allocations settle before measuring.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = rss_kib();
    c.recover().await.expect("recover");
    wait_for(&handler, workers as u64).await;
    let health = c.health().clone();
    let ok = eventually(Duration::from_secs(60), || {
        health.count(CONVERSATION_THREAD, ActorState::Running) == workers
    })
    .await;
    assert!(ok, "workers did not all register");
    let after = rss_kib();
    let live = health.count(CONVERSATION_THREAD, ActorState::Running) as u64;
    let per = (after.saturating_sub(before) as f64 * 1024.0) / workers as f64;
    c.shutdown().await;
    (per, live)
}

fn main() {
    let system = actix::System::new();
    system.block_on(async {
        let keys = 1_000;
        let per_key = 100;
        let ingest = ingest_throughput(keys, per_key).await;
        println!(
            "ingest throughput:   {ingest:>10.0} events/s ({} events, {keys} keys; record + dispatch + handle + mark)",
            keys * per_key
        );
        let dispatch = dispatch_throughput(keys, per_key).await;
        println!(
            "dispatch throughput: {dispatch:>10.0} events/s ({} events, {keys} keys; recovery drain → router → worker → handler → mark)",
            keys * per_key
        );
        let hot = dispatch_throughput(10, 10_000).await;
        println!(
            "single-key-heavy:    {hot:>10.0} events/s (100000 events, 10 keys)"
        );
        let (per, live) = memory_per_worker(100_000).await;
        println!(
            "memory per idle worker: {per:>7.0} bytes ({live} live ConversationThread workers, incl. health entry and router slot)"
        );
    });
}
