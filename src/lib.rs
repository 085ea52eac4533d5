//! InfraGPT service around the `infragpt-actors` core, laid out by feature (see the Layout
//! section of ARCHITECTURE.md):
//!
//! * technology shells the features plug into: [`server`] (run loop and [`server::Module`]),
//!   [`http`] (actix-web shell, middleware, health), [`grpc`] (tonic shell and contracts),
//!   [`db`] (pool, migrations, private PostgreSQL, core port adapters), [`crypto`], [`config`],
//!   [`error`], [`telemetry`];
//! * features: [`slack`], [`github`], [`identity`], [`integrations`], [`conversations`],
//!   [`reply`], [`agent_client`], [`ops`];
//! * the composition root [`app`];
//! * dev-only, never imported by the service modules: [`testkit`] and [`demo`].
//!
//! Dependencies between these top-level modules go one way (no cycles); `layout_tests` checks it.

pub mod agent_client;
pub mod app;
pub mod approvals;
pub mod config;
pub mod conversations;
pub mod crypto;
pub mod db;
pub mod demo;
pub mod error;
pub mod events;
pub mod github;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod integrations;
pub mod ops;
pub mod reply;
pub mod server;
pub mod slack;
pub mod telemetry;
pub mod testkit;

/// Checks the module layout on the source text: the dev-only trees stay apart from the
/// service, and the top-level modules do not depend on each other in a cycle. A dependency is
/// any `crate::<module>` path in a file (code or doc link), including `crate::{a, b}` groups.
#[cfg(test)]
mod layout_tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    /// Modules only the demo, the tests and each other may use.
    const DEV_ONLY: &[&str] = &["testkit", "demo"];

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    fn ident_at(text: &str) -> &str {
        let end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(text.len());
        &text[..end]
    }

    /// The top-level modules named after `crate::` in `source`.
    fn crate_refs(source: &str) -> BTreeSet<String> {
        let mut refs = BTreeSet::new();
        for (at, _) in source.match_indices("crate::") {
            let rest = &source[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                refs.extend(
                    group
                        .split(',')
                        .map(|item| ident_at(item.trim()).to_owned()),
                );
            } else {
                refs.insert(ident_at(rest).to_owned());
            }
        }
        refs.retain(|r| !r.is_empty() && r != "self");
        refs
    }

    /// Top-level module → the top-level modules its files refer to. The crate roots (`lib.rs`,
    /// `main.rs`) only declare and dispatch, so they are not part of the graph.
    fn module_edges() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in files {
            let rel = file.strip_prefix(&src).expect("under src/");
            let first = rel.components().next().expect("a component");
            let first = first.as_os_str().to_str().expect("UTF-8 path");
            if first == "lib.rs" || first == "main.rs" {
                continue;
            }
            let module = first.trim_end_matches(".rs").to_owned();
            let source = std::fs::read_to_string(&file).expect("read a source file");
            let targets = edges.entry(module.clone()).or_default();
            targets.extend(crate_refs(&source).into_iter().filter(|t| *t != module));
        }
        edges
    }

    #[test]
    fn crate_refs_reads_paths_and_groups() {
        let refs = crate_refs("use crate::db::Pool;\nuse crate::{config::Config, http};\n");
        assert_eq!(
            refs,
            BTreeSet::from(["config", "db", "http"].map(String::from))
        );
    }

    #[test]
    fn service_modules_never_use_the_dev_only_trees() {
        let offenders: Vec<String> = module_edges()
            .into_iter()
            .filter(|(module, _)| !DEV_ONLY.contains(&module.as_str()))
            .flat_map(|(module, targets)| {
                targets
                    .into_iter()
                    .filter(|t| DEV_ONLY.contains(&t.as_str()))
                    .map(move |t| format!("{module} -> {t}"))
            })
            .collect();
        assert!(
            offenders.is_empty(),
            "service modules refer to dev-only code: {offenders:?}"
        );
    }

    #[test]
    fn top_level_modules_have_no_dependency_cycle() {
        let edges = module_edges();
        // Repeatedly drop modules that depend on no remaining module or that no remaining
        // module depends on; what is left lies on a cycle.
        let mut remaining: BTreeSet<&String> = edges.keys().collect();
        loop {
            let outside: Vec<&String> = remaining
                .iter()
                .copied()
                .filter(|m| {
                    let uses_none = edges[*m].iter().all(|t| !remaining.contains(t));
                    let used_by_none = !remaining.iter().any(|other| edges[*other].contains(*m));
                    uses_none || used_by_none
                })
                .collect();
            if outside.is_empty() {
                break;
            }
            for module in outside {
                remaining.remove(module);
            }
        }
        let cyclic: Vec<String> = remaining
            .iter()
            .map(|m| {
                let within: Vec<&String> =
                    edges[*m].iter().filter(|t| remaining.contains(t)).collect();
                format!("{m} -> {within:?}")
            })
            .collect();
        assert!(
            cyclic.is_empty(),
            "module dependency cycle among: {cyclic:?}"
        );
    }
}
