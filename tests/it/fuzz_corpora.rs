//! Replays the saved fuzz corpora (`tests/fuzz/corpus/<target>/`) and the inputs of fixed
//! crashes (`tests/fuzz/regressions/<target>/`) through the same functions the fuzz targets
//! call (`infragpt::testkit::fuzz`), so the normal test run catches a regression without a
//! fuzzer: every input must return, without a panic, within the time limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use infragpt::testkit::fuzz::TARGETS;

/// Every input of a target together: a hang fails the test instead of stalling the suite.
const TARGET_TIME_LIMIT: Duration = Duration::from_secs(60);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `inputs` through `run` on a thread of its own; the names of those that panicked, or
/// `Err` when they did not finish in time.
fn replay(run: fn(&[u8]), inputs: Vec<PathBuf>) -> Result<Vec<String>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut failed = Vec::new();
        for path in inputs {
            let data = std::fs::read(&path).expect("a readable corpus file");
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(path.display().to_string());
            }
        }
        let _ = tx.send(failed);
    });
    rx.recv_timeout(TARGET_TIME_LIMIT)
        .map_err(|_| format!("did not finish within {TARGET_TIME_LIMIT:?}"))
}

#[test]
fn saved_fuzz_corpora_replay_without_panics() {
    let mut problems = Vec::new();
    for &(name, run) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        // An empty corpus would make this test pass vacuously.
        if corpus.is_empty() {
            problems.push(format!(
                "{name}: no saved corpus in tests/fuzz/corpus/{name}"
            ));
            continue;
        }
        let mut all = corpus;
        all.extend(inputs(&fuzz_dir().join("regressions").join(name)));
        match replay(run, all) {
            Ok(failed) => {
                problems.extend(failed.into_iter().map(|f| format!("{name}: {f} panicked")))
            }
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn replay_reports_a_panicking_input() {
    // The harness itself: a target that panics on an input is reported, not swallowed.
    fn panics_on_x(data: &[u8]) {
        assert!(!data.contains(&b'x'), "found an x");
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("ok"), b"fine").expect("write");
    std::fs::write(dir.path().join("bad"), b"xyz").expect("write");
    let failed = replay(panics_on_x, inputs(dir.path())).expect("it finishes");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].ends_with("bad"), "{failed:?}");
}

#[test]
fn every_target_has_a_fuzz_binary() {
    let manifest =
        std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("tests/fuzz/Cargo.toml");
    for &(name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{name}.rs\"")),
            "tests/fuzz/Cargo.toml has no binary for {name}"
        );
    }
}
