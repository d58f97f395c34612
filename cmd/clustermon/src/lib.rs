//! The `clustermon` command: flag parsing, store selection and the runbook
//! commands. The binary (`main.rs`) is a thin wrapper; tools such as the
//! fleet simulator reuse [`open_store`] so they accept the same store URLs.

pub mod cli;
pub mod commands;
pub mod kubeconfig;

use std::path::PathBuf;
use std::sync::Arc;

use clustermon_core::store::{Store, StoreError};
use clustermon_store_cosmos::{CosmosAuth, CosmosConfig, CosmosUrl};

/// A parsed `--store` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Cosmos(CosmosUrl),
    Postgres(clustermon_store_postgres::PostgresUrl),
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
        if s.starts_with("cosmos://") {
            return CosmosUrl::parse(s).map(StoreUrl::Cosmos);
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return clustermon_store_postgres::PostgresUrl::parse(s).map(StoreUrl::Postgres);
        }
        Err(format!(
            "unsupported store URL {s:?}: expected sqlite:PATH, cosmos://ACCOUNT_HOST[:PORT]/DATABASE or postgres://USER@HOST[:PORT]/DATABASE"
        ))
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

/// How a Cosmos DB store authenticates, as flags (shared by every command
/// and by tools such as the fleet simulator).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CosmosArgs {
    /// Cosmos DB account key, in a file (key auth). The key itself may come
    /// from CLUSTERMON_COSMOS_KEY instead.
    #[arg(long, env = "CLUSTERMON_COSMOS_KEY_FILE", value_name = "FILE")]
    pub cosmos_key_file: Option<PathBuf>,
    /// key (default with a key), managed-identity, workload-identity or
    /// azure-cli (Microsoft Entra ID; the identity needs a data-plane role).
    #[arg(long, value_enum, env = "CLUSTERMON_COSMOS_AUTH")]
    pub cosmos_auth: Option<CosmosAuthKind>,
    /// Client id of a user-assigned managed identity.
    #[arg(long, env = "CLUSTERMON_COSMOS_CLIENT_ID")]
    pub cosmos_client_id: Option<String>,
    /// Preferred Azure region for requests (the SDK orders the others by proximity).
    #[arg(long, default_value = "East US", env = "CLUSTERMON_COSMOS_REGION")]
    pub cosmos_region: String,
    /// PostgreSQL password, in a file (a postgres:// store); PGPASSWORD
    /// otherwise. Never printed. (Here so that every command and tool taking
    /// the store flags gets it.)
    #[arg(long, env = "CLUSTERMON_POSTGRES_PASSWORD_FILE", value_name = "FILE")]
    pub postgres_password_file: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum CosmosAuthKind {
    Key,
    ManagedIdentity,
    WorkloadIdentity,
    AzureCli,
}

impl CosmosArgs {
    /// The Cosmos configuration these flags name; errors are one line.
    pub fn config(&self, url: &CosmosUrl) -> Result<CosmosConfig, String> {
        let key = || -> Result<String, String> {
            if let Some(f) = &self.cosmos_key_file {
                let k = std::fs::read_to_string(f)
                    .map_err(|e| format!("--cosmos-key-file {}: {e}", f.display()))?;
                let k = k.trim().to_string();
                if k.is_empty() {
                    return Err(format!("--cosmos-key-file {} is empty", f.display()));
                }
                return Ok(k);
            }
            match std::env::var("CLUSTERMON_COSMOS_KEY") {
                Ok(k) if !k.trim().is_empty() => Ok(k.trim().to_string()),
                _ => Err("a cosmos store needs credentials: --cosmos-key-file (or CLUSTERMON_COSMOS_KEY), or --cosmos-auth managed-identity|workload-identity|azure-cli".into()),
            }
        };
        let auth = match self.cosmos_auth {
            None | Some(CosmosAuthKind::Key) => CosmosAuth::Key(key()?),
            Some(CosmosAuthKind::ManagedIdentity) => CosmosAuth::ManagedIdentity {
                client_id: self.cosmos_client_id.clone(),
            },
            Some(CosmosAuthKind::WorkloadIdentity) => CosmosAuth::WorkloadIdentity,
            Some(CosmosAuthKind::AzureCli) => CosmosAuth::AzureCli,
        };
        Ok(CosmosConfig {
            url: url.clone(),
            auth,
            region: self.cosmos_region.clone(),
            retry: Default::default(),
        })
    }
}

impl CosmosArgs {
    /// The PostgreSQL configuration for `url`: the password from
    /// `--postgres-password-file`, else `PGPASSWORD`, else none (trust or
    /// certificate auth). Errors never include the password.
    pub fn postgres_config(
        &self,
        url: &clustermon_store_postgres::PostgresUrl,
    ) -> Result<clustermon_store_postgres::PostgresConfig, String> {
        let password = match &self.postgres_password_file {
            Some(f) => {
                let p = std::fs::read_to_string(f)
                    .map_err(|e| format!("--postgres-password-file {}: {e}", f.display()))?;
                let p = p.trim_end_matches(['\n', '\r']).to_string();
                if p.is_empty() {
                    return Err(format!("--postgres-password-file {} is empty", f.display()));
                }
                Some(p)
            }
            None => std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()),
        };
        Ok(clustermon_store_postgres::PostgresConfig::new(
            url.clone(),
            password,
        ))
    }
}

/// Opens the store a URL names. The error is one line, fit for stderr.
pub async fn open_store(url: &str, cosmos: &CosmosArgs) -> Result<Arc<dyn Store>, String> {
    open_store_url(&StoreUrl::parse(url)?, cosmos)
        .await
        .map_err(|e| e.to_string())
}

/// Why a store did not open, in one line: the input named something that
/// cannot work (the command line exits 2), or the store did not answer or
/// refused (exit 1: a network or service failure, worth retrying).
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Store(String),
}

/// Errors of the flags and files (a bad path, an empty key file).
impl From<String> for OpenStoreError {
    fn from(m: String) -> Self {
        OpenStoreError::Input(m)
    }
}

fn one_line(e: StoreError) -> OpenStoreError {
    match e {
        StoreError::Invalid(m) => OpenStoreError::Input(m),
        other => OpenStoreError::Store(other.to_string()),
    }
}

pub async fn open_store_url(
    url: &StoreUrl,
    cosmos: &CosmosArgs,
) -> Result<Arc<dyn Store>, OpenStoreError> {
    match url {
        StoreUrl::Sqlite(path) => {
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || {
                clustermon_store_sqlite::SqliteStore::open(path)
            })
            .await
            .map_err(|e| OpenStoreError::Store(e.to_string()))?
            .map_err(one_line)?;
            Ok(Arc::new(store))
        }
        StoreUrl::Cosmos(u) => {
            let cfg = cosmos.config(u)?;
            let store = clustermon_store_cosmos::CosmosStore::connect(&cfg)
                .await
                .map_err(one_line)?;
            Ok(Arc::new(store))
        }
        StoreUrl::Postgres(u) => {
            let cfg = cosmos.postgres_config(u)?;
            let store = clustermon_store_postgres::PostgresStore::connect(&cfg)
                .await
                .map_err(one_line)?;
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
        assert!(matches!(
            StoreUrl::parse("cosmos://acct.documents.azure.com/db").unwrap(),
            StoreUrl::Cosmos(_)
        ));
        assert!(StoreUrl::parse("cosmos://acct.documents.azure.com")
            .unwrap_err()
            .contains("database"));
        assert!(StoreUrl::parse("postgres://x")
            .unwrap_err()
            .contains("postgres://USER@HOST"));
        assert!(matches!(
            StoreUrl::parse("postgresql://mon@db:5433/cm?sslmode=require").unwrap(),
            StoreUrl::Postgres(_)
        ));
        assert!(StoreUrl::parse("mysql://x")
            .unwrap_err()
            .contains("unsupported store URL"));
    }
}

#[cfg(test)]
mod cosmos_args_tests {
    use super::*;

    #[test]
    fn cosmos_credentials_are_required_and_read_from_the_key_file() {
        let url = CosmosUrl::parse("cosmos://127.0.0.1:1/db").unwrap();
        let dir = std::env::temp_dir().join(format!("cm-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("key");
        std::fs::write(&f, "c2VjcmV0\n").unwrap();
        let args = CosmosArgs {
            cosmos_key_file: Some(f.clone()),
            ..Default::default()
        };
        let cfg = args.config(&url).unwrap();
        assert!(matches!(&cfg.auth, CosmosAuth::Key(k) if k == "c2VjcmV0"));
        std::fs::write(&f, "  \n").unwrap();
        assert!(args.config(&url).unwrap_err().contains("empty"));
        let mi = CosmosArgs {
            cosmos_auth: Some(CosmosAuthKind::ManagedIdentity),
            cosmos_client_id: Some("cid".into()),
            ..Default::default()
        };
        assert!(matches!(
            mi.config(&url).unwrap().auth,
            CosmosAuth::ManagedIdentity { client_id: Some(_) }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
