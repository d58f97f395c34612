//! The `clustermon` command: flag parsing, store selection and the runbook
//! commands. The binary (`main.rs`) is a thin wrapper; tools such as the
//! fleet simulator reuse [`open_store`] so they accept the same store URLs.

pub mod cli;
pub mod commands;
pub mod kubeconfig;

use std::path::PathBuf;
use std::sync::Arc;

use clustermon_core::store::Store;

/// A parsed `--store` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
}

impl StoreUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("sqlite store URL needs a path: sqlite:PATH".into());
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        Err(format!("unsupported store URL {s:?}: expected sqlite:PATH"))
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

/// Opens the store a URL names. The error is one line, fit for stderr.
pub async fn open_store(url: &str) -> Result<Arc<dyn Store>, String> {
    open_store_url(&StoreUrl::parse(url)?).await
}

pub async fn open_store_url(url: &StoreUrl) -> Result<Arc<dyn Store>, String> {
    match url {
        StoreUrl::Sqlite(path) => {
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || {
                clustermon_store_sqlite::SqliteStore::open(path)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| match e {
                clustermon_core::store::StoreError::Invalid(m) => m,
                other => other.to_string(),
            })?;
            Ok(Arc::new(store))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreUrl::parse("sqlite:/tmp/x.db").unwrap(),
            StoreUrl::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite:///tmp/x.db").unwrap(),
            StoreUrl::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite:rel.db").unwrap(),
            StoreUrl::Sqlite("rel.db".into())
        );
        assert!(StoreUrl::parse("sqlite:").is_err());
        assert!(StoreUrl::parse("postgres://x")
            .unwrap_err()
            .contains("unsupported store URL"));
    }
}
