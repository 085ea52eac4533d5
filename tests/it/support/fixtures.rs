//! The payloads in the repository's `tests/data` (each folder's README names its source and
//! license). Nothing outside the repository is read, so a clone tests on its own.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// `tests/data/<rel>`.
pub fn path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// The bytes of `tests/data/<rel>`.
pub fn read(rel: &str) -> Vec<u8> {
    let path = path(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `tests/data/<rel>` parsed as JSON.
pub fn json(rel: &str) -> Value {
    serde_json::from_slice(&read(rel)).unwrap_or_else(|e| panic!("{rel}: not JSON: {e}"))
}

/// Every `*.json` file directly in `tests/data/<dir>` as (file name, bytes), sorted by name.
pub fn json_files(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = path(dir);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

/// Every GitHub webhook payload as (event name = folder, file name, bytes), sorted.
pub fn github_webhooks() -> Vec<(String, String, Vec<u8>)> {
    let root = path("github-webhooks");
    let mut events: Vec<String> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    events.sort();
    events
        .into_iter()
        .flat_map(|event| {
            json_files(&format!("github-webhooks/{event}"))
                .into_iter()
                .map(move |(name, bytes)| (event.clone(), name, bytes))
        })
        .collect()
}

/// The bytes of `svix/clerk/<name>.json`.
pub fn clerk(name: &str) -> Vec<u8> {
    read(&format!("svix/clerk/{name}.json"))
}

/// Every Clerk payload in natural order (created, updated, deleted; users, organizations,
/// memberships). The list is checked against the folder so a new payload is not forgotten.
pub fn clerk_natural() -> Vec<(String, Vec<u8>)> {
    let names = [
        "user.created.docs",
        "user.created",
        "user.updated",
        "user.deleted",
        "organization.created",
        "organization.updated",
        "organization.deleted",
        "organizationMembership.created",
        "organizationMembership.updated",
        "organizationMembership.deleted",
    ];
    let mut on_disk: Vec<String> = json_files("svix/clerk")
        .into_iter()
        .map(|(name, _)| name.trim_end_matches(".json").to_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "the fixture list is out of date");
    names.iter().map(|n| ((*n).to_owned(), clerk(n))).collect()
}
