//! Item 4: what signed GitHub deliveries cost. The body is held once (sized from its
//! Content-Length), only the routing fields are parsed, PostgreSQL builds the jsonb from the
//! text and the insert returns no payload; the byte budget bounds how many large bodies are
//! in memory at once. Figures: peak RSS growth of a spawned service (BENCHMARKS.md).

use infragpt::github::signature::sign;
use infragpt_actors::Secret;

use super::{Spawned, post};

const SECRET: &str = "edge-memory-webhook-secret";
const MIB: f64 = 1024.0 * 1024.0;

/// A signed `ping` delivery of about `size` bytes (the `ping` handler keeps a few fields).
fn delivery(size: usize) -> Vec<u8> {
    let filler = "x".repeat(size.saturating_sub(100));
    serde_json::to_vec(&serde_json::json!({
        "zen": "Keep it logically awesome.",
        "hook_id": 1,
        "installation": {"id": 42},
        "filler": filler,
    }))
    .unwrap()
}

fn headers(body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("x-hub-signature-256", sign(&Secret::new(SECRET), body)),
        ("x-github-event", "ping".into()),
        ("x-github-delivery", uuid::Uuid::new_v4().to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_large_deliveries_cost_a_small_multiple_of_their_size() {
    let service = Spawned::start(&format!(
        "integrations:\n  github:\n    webhook_secret: {SECRET}\n"
    ))
    .await;
    let body = std::sync::Arc::new(delivery(20 * 1024 * 1024));
    let size = body.len() as f64 / MIB;

    service.reset_peak();
    let before = service.rss();
    let resp = post(
        service.http_addr,
        "/webhooks/github",
        &headers(&body),
        &body,
    )
    .await;
    assert_eq!(resp.status, 202, "{resp:?}");
    service.wait_idle().await;
    let one = service.peak() - before;

    service.reset_peak();
    let before = service.rss();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (addr, body) = (service.http_addr, body.clone());
            tokio::spawn(
                async move { post(addr, "/webhooks/github", &headers(&body), &body).await },
            )
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        let resp = task.await.unwrap();
        // Past the budget a delivery waits for room (until the body deadline), then 503.
        assert!(
            resp.status == 202 || (resp.status == 503 && resp.header("retry-after").is_some()),
            "{resp:?}"
        );
        accepted += usize::from(resp.status == 202);
    }
    service.wait_idle().await;
    let ten = service.peak() - before;
    println!(
        "signed {size:.1} MiB deliveries: one +{one:.0} MiB peak RSS, ten at once +{ten:.0} MiB \
         ({accepted} accepted)"
    );
    assert!(accepted >= 1);
    // Measured (debug build, 20 MiB): the old code +120 MiB for one (6x) and +680..900 MiB
    // for ten (34..45x); this code about +61 MiB (3x) and +300..380 MiB (15..19x).
    assert!(
        one < 4.5 * size,
        "one delivery of {size:.1} MiB: +{one:.0} MiB"
    );
    assert!(
        ten < 26.0 * size,
        "ten deliveries of {size:.1} MiB: +{ten:.0} MiB"
    );
}
