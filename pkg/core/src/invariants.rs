//! The invariants of ARCHITECTURE.md that a scan of the sources checks
//! (test code only). Each scan is tested on made-up text, so a scan that
//! stopped finding anything would fail here, not pass quietly.

use std::path::{Path, PathBuf};

/// The workspace's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `.rs` files under `dir`, test files and `target` left out.
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

/// `text` before its first `#[cfg(test)]`, with `//` comments removed.
fn code_of(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Nothing is spawned fire-and-forget: outside test code, every task or
/// thread spawned in the workspace's sources has its handle kept (joined,
/// aborted, or owned by a `JoinSet`), so shutdown can wait for it or end
/// it. A statement that is a bare `tokio::spawn(..)` (its handle dropped)
/// fails here.
#[cfg(test)]
mod spawn_tests {
    use super::{root, sources};

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
        let root = root();
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
mod code_map_tests {
    use super::root;

    #[test]
    fn every_path_in_the_code_map_exists() {
        let root = root();
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

/// *Decisions are pure*: balancing, lease take-over, handoffs, liveness,
/// ownership and the schedule grid are functions of data and a time passed
/// in. Their files import only data types and do no I/O: no clock, no
/// task, no lock, no file, socket, log or randomness.
mod purity_tests {
    use super::{code_of, root};

    const DECISIONS: [&str; 4] = [
        "pkg/core/src/balance.rs",
        "pkg/core/src/liveness.rs",
        "pkg/core/src/model.rs",
        "pkg/core/src/schedule/due.rs",
    ];

    /// What a decision file may import.
    const IMPORTS: [&str; 9] = [
        "std::collections::",
        "std::cmp::",
        "std::fmt",
        "std::ops::",
        "std::time::Duration",
        "crate::model::",
        "chrono::",
        "serde::",
        "super::",
    ];

    /// What never appears in a decision's code.
    const IO: [&str; 22] = [
        "async ",
        ".await",
        "tokio",
        "futures",
        "std::fs",
        "std::net",
        "std::io",
        "std::env",
        "std::process",
        "std::thread",
        "std::sync",
        "Instant",
        "SystemTime",
        "now(",
        "rand::",
        "tracing::",
        "println!",
        "eprintln!",
        "crate::store",
        "crate::engine",
        "crate::clock",
        "static mut",
    ];

    /// What in `text` (a source file) breaks the rule: an import outside
    /// [`IMPORTS`], or a token of [`IO`] in its code outside tests.
    fn impurities(text: &str) -> Vec<String> {
        let code = code_of(text);
        let mut out = Vec::new();
        // Each line that starts a `use`, read on to its `;`.
        let mut at = 0;
        for line in code.split('\n') {
            let from = at;
            at += line.len() + 1;
            let t = line.trim_start();
            let Some(rest) = t
                .strip_prefix("use ")
                .or_else(|| t.strip_prefix("pub use "))
            else {
                continue;
            };
            let start = from + (line.len() - rest.len());
            let stmt = code[start..].split(';').next().unwrap_or("");
            let path: String = stmt.split_whitespace().collect();
            if !IMPORTS.iter().any(|ok| path.starts_with(ok)) {
                out.push(format!("use {path}"));
            }
        }
        out.extend(
            IO.iter()
                .filter(|t| code.contains(**t))
                .map(|t| t.to_string()),
        );
        out
    }

    #[test]
    fn the_scan_finds_io_and_passes_data() {
        let pure = "use std::collections::BTreeMap;\nuse crate::model::{MasterDoc, BUCKETS};\n\
                    /// Never reads the clock: `now_ms` is passed in.\n\
                    pub fn f(now_ms: i64) -> i64 { now_ms + 1 } // not Instant::now()\n\
                    #[cfg(test)]\nmod tests { use tokio::time::Instant; }";
        assert!(impurities(pure).is_empty(), "{:?}", impurities(pure));
        assert_eq!(
            impurities("use std::fs::File;"),
            ["use std::fs::File", "std::fs"]
        );
        assert_eq!(
            impurities("use tokio::sync::Mutex;"),
            ["use tokio::sync::Mutex", "tokio"]
        );
        assert_eq!(
            impurities("fn f() -> i64 { chrono::Utc::now().timestamp() }"),
            ["now("]
        );
        assert_eq!(
            impurities("async fn f() { g().await }"),
            ["async ", ".await"]
        );
        assert_eq!(
            impurities("use std::{fs, collections};"),
            ["use std::{fs,collections}"]
        );
        assert_eq!(
            impurities("impl X {}\nuse std::net::TcpStream;"),
            ["use std::net::TcpStream", "std::net"]
        );
    }

    #[test]
    fn decisions_do_no_io() {
        let root = root();
        for f in DECISIONS {
            let text = std::fs::read_to_string(root.join(f))
                .unwrap_or_else(|e| panic!("{f}: {e} (ARCHITECTURE.md names it)"));
            let found = impurities(&text);
            assert!(
                found.is_empty(),
                "{f} is a pure decision file (ARCHITECTURE.md, *Decisions are pure*), \
                 yet its code has: {found:?}"
            );
        }
    }
}

/// *One writer per state*: the scheduler task alone writes `last_checks`
/// (the admin API and the fleet view only read it).
mod one_writer_tests {
    use super::{code_of, root, sources};

    const WRITES: [&str; 7] = [
        "last_checks.insert(",
        "last_checks.remove(",
        "last_checks.entry(",
        "last_checks.retain(",
        "last_checks.clear(",
        "last_checks.get_mut(",
        "last_checks.alter(",
    ];

    /// Whether `text`'s code (tests left out) writes `last_checks`, however
    /// the call is broken over lines.
    fn writes_last_checks(text: &str) -> bool {
        let flat: String = code_of(text).split_whitespace().collect();
        WRITES.iter().any(|w| flat.contains(w))
    }

    #[test]
    fn the_scan_finds_a_write_over_lines_and_not_a_read() {
        assert!(writes_last_checks(
            "self.deps\n    .last_checks\n    .insert(id, c);"
        ));
        assert!(writes_last_checks("h.last_checks.remove(&id);"));
        assert!(!writes_last_checks(
            "h.last_checks.get(&id).map(|c| c.ok())"
        ));
        assert!(!writes_last_checks(
            "#[cfg(test)]\nfn t() { h.last_checks.insert(a, b); }"
        ));
    }

    #[test]
    fn only_the_scheduler_writes_last_checks() {
        let root = root();
        let mut files = Vec::new();
        sources(&root.join("pkg"), &mut files);
        sources(&root.join("cmd"), &mut files);
        let writers: Vec<String> = files
            .iter()
            .filter(|f| writes_last_checks(&std::fs::read_to_string(f).unwrap_or_default()))
            .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
            .collect();
        assert_eq!(writers, ["pkg/core/src/schedule.rs"]);
    }
}
