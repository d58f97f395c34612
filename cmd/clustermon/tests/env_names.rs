//! Every `CLUSTERMON_*` variable the deployment examples and the docs set
//! is one the binary reads: a renamed flag fails here rather than leaving a
//! Deployment or an env file whose setting is silently ignored.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `CLUSTERMON_[A-Z0-9_]+` words of `text`.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("CLUSTERMON_") {
        let rest = &text[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let name = rest[..end].trim_end_matches('_');
        if name.len() > "CLUSTERMON".len() {
            out.insert(name.to_string());
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn every_variable_the_examples_and_docs_set_is_read_by_the_binary() {
    let src = root().join("cmd/clustermon/src");
    let mut read = BTreeSet::new();
    let mut srcs = Vec::new();
    files(&src, &mut srcs);
    for f in &srcs {
        let text = std::fs::read_to_string(f).unwrap();
        // clap's `env = "..."`, and the variables read directly.
        for line in text.lines() {
            if line.contains("env = \"CLUSTERMON_") || line.contains("env::var(\"CLUSTERMON_") {
                read.extend(names(line));
            }
        }
    }
    assert!(read.len() > 30, "variables the binary reads: {read:?}");
    assert!(
        read.contains("CLUSTERMON_SECRETS_RELOAD_INTERVAL"),
        "{read:?}"
    );

    let mut docs = Vec::new();
    files(&root().join("deploy"), &mut docs);
    files(&root().join("docs"), &mut docs);
    docs.push(root().join("README.md"));
    // Variables of the tests and the fleet simulator, not of the binary.
    let not_ours = [
        "CLUSTERMON_RACE_DB",
        "CLUSTERMON_RACE_WORKER",
        "CLUSTERMON_MIGRATE_DB",
    ];
    let mut unknown = Vec::new();
    let mut seen = 0;
    for f in &docs {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for n in names(&text) {
            seen += 1;
            if !read.contains(&n) && !not_ours.contains(&n.as_str()) {
                unknown.push(format!(
                    "{}: {n}",
                    f.strip_prefix(root()).unwrap_or(f).display()
                ));
            }
        }
    }
    assert!(
        seen > 20,
        "variables named in deploy/, docs/ and README.md: {seen}"
    );
    assert!(
        unknown.is_empty(),
        "named in the examples or docs, read by no flag: {unknown:#?}"
    );
}
