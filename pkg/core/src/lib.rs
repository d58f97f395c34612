//! clustermon core: everything but the databases and the command line.
//!
//! - [`model`]: the documents (clusters, monitors, master).
//! - [`store`]: the store contract, an in-memory store, the contract suite.
//! - [`balance`]: pure assignment decisions (balancer, handoff, lease).
//! - [`feed`]: change feed stream and the reflector into the cluster map.
//! - [`schedule`]: phases, the scheduler and its bounded check pool.
//! - [`check`]: the check seam, the healthz checker, TLS and the Kubernetes client.
//! - [`secrets`]: credentials sealed at rest (AES-256-GCM).
//! - [`reload`]: secret files re-read without a restart.
//! - [`engine`]: membership loop and wiring, graceful shutdown.
//! - [`metrics`]: every metric, and the non-blocking statsd emitter.
//! - [`zone`]: the global allocator that keeps each bucket's entries together.

pub mod admin;
pub mod alerts;
pub mod balance;
pub mod check;
pub mod clock;
pub mod config;
pub mod decode;
pub mod engine;
pub mod feed;
pub mod http;
pub mod liveness;
pub mod metrics;
pub mod model;
pub mod reload;
pub mod schedule;
pub mod secrets;
pub mod status;
pub mod store;
pub mod zone;

/// The library's tests run on the allocator the binary installs: every
/// test exercises it, and entries are built in their buckets' zones.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOC: zone::Global = zone::Global;

/// Nothing is spawned fire-and-forget: outside test code, every task or
/// thread spawned in the workspace's sources has its handle kept (joined,
/// aborted, or owned by a `JoinSet`), so shutdown can wait for it or end
/// it. A statement that is a bare `tokio::spawn(..)` (its handle dropped)
/// fails here.
#[cfg(test)]
mod spawn_tests {
    use std::path::{Path, PathBuf};

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                if !matches!(name, "tests" | "target" | "node_modules") {
                    sources(&p, out);
                }
            } else if name.ends_with(".rs") && name != "tests.rs" {
                out.push(p);
            }
        }
    }

    /// Lines (1-based) of `text`, before its first `#[cfg(test)]`, whose
    /// statement is a spawn whose handle is dropped: it starts the statement
    /// (not the right-hand side of a `let`, not an argument) and its call
    /// is followed by `;` (not `.await`, `.abort()`, nor returned).
    fn loose_spawns(text: &str) -> Vec<usize> {
        const SPAWNS: [&str; 5] = [
            "tokio::spawn(",
            "tokio::task::spawn(",
            "tokio::task::spawn_blocking(",
            "std::thread::spawn(",
            "thread::spawn(",
        ];
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let lines: Vec<&str> = code.lines().collect();
        let mut out = Vec::new();
        let mut prev = "";
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            let continues = prev.ends_with('=') || prev.ends_with('(') || prev.ends_with(',');
            if !t.is_empty() {
                prev = t;
            }
            let Some(s) = SPAWNS.iter().find(|s| t.starts_with(**s)) else {
                continue;
            };
            if continues {
                continue;
            }
            // The text after the call's closing parenthesis.
            let rest = lines[i..].join("\n");
            let mut depth = 0usize;
            let mut after = "";
            for (j, c) in rest.char_indices().skip(s.len() - 1) {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            after = &rest[j + 1..];
                            break;
                        }
                    }
                    _ => {}
                }
            }
            if after.trim_start().starts_with(';') {
                out.push(i + 1);
            }
        }
        out
    }

    #[test]
    fn the_check_finds_a_dropped_handle_and_passes_a_kept_one() {
        assert_eq!(
            loose_spawns("fn f() {\n    tokio::spawn(async {});\n}"),
            [2]
        );
        assert!(loose_spawns("let t = tokio::spawn(async {});").is_empty());
        assert!(loose_spawns("let t =\n    tokio::spawn(async {});").is_empty());
        assert!(loose_spawns("set.push(\n    tokio::spawn(async {}),\n);").is_empty());
        assert!(loose_spawns("#[cfg(test)]\nmod t {\n    tokio::spawn(async {});\n}").is_empty());
        assert_eq!(
            loose_spawns("    tokio::spawn(async move {\n        f(x).await\n    });"),
            [1]
        );
        assert!(loose_spawns(
            "    tokio::task::spawn_blocking(move || {\n        g()\n    })\n    .await"
        )
        .is_empty());
        assert!(loose_spawns("fn h() -> J {\n    tokio::spawn(run())\n}").is_empty());
    }

    #[test]
    fn nothing_is_spawned_fire_and_forget() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files = Vec::new();
        for d in ["pkg", "cmd", "hack"] {
            sources(&root.join(d), &mut files);
        }
        assert!(files.len() > 30, "sources found: {}", files.len());
        let loose: Vec<String> = files
            .iter()
            .flat_map(|f| {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                loose_spawns(&text)
                    .into_iter()
                    .map(|n| format!("{}:{n}", f.strip_prefix(&root).unwrap_or(f).display()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            loose.is_empty(),
            "spawned with the handle dropped: {loose:#?}"
        );
    }
}

/// ARCHITECTURE.md stays true: every path its code map names exists.
#[cfg(test)]
mod code_map_tests {
    use std::path::Path;

    #[test]
    fn every_path_in_the_code_map_exists() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
        let map = doc
            .split("## Code map")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("ARCHITECTURE.md has a \"## Code map\" section");
        let paths: Vec<&str> = map
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        assert!(paths.len() > 10, "the code map lists paths: {paths:?}");
        let missing: Vec<&&str> = paths.iter().filter(|p| !root.join(p).exists()).collect();
        assert!(
            missing.is_empty(),
            "ARCHITECTURE.md's code map names paths that do not exist: {missing:?}"
        );
    }
}
