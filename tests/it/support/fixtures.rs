//! Where the shared test payloads are: `INFRAGPT_FIXTURES` when set, else the nearest
//! `shared/fixtures` above the crate (a clone sits beside `shared/`). Included with `#[path]`
//! by the test binaries that read fixtures.

use std::path::{Path, PathBuf};

/// The `shared/fixtures` folder.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = ["INFRAGPT_FIXTURES", "INFRAGPT_FIXTURES_DIR"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
    {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("shared").join("fixtures"))
        .find(|d| d.is_dir())
        .expect("shared/fixtures not found above the crate; set INFRAGPT_FIXTURES")
}
