//! `postgres://USER@HOST[:PORT]/DATABASE[?sslmode=…&sslrootcert=…&listen=…]`.
//! The password never appears in the URL: it comes from a file or
//! `PGPASSWORD`, and [`PostgresConfig`]'s `Debug` redacts it.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP (the default for a loopback host).
    Disable,
    /// TLS, the server's certificate not verified (handshake signatures are).
    Require,
    /// TLS, the certificate verified against `sslrootcert` and the host name
    /// (the default for any other host).
    VerifyFull,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresUrl {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub sslmode: SslMode,
    /// PEM CA bundle for `verify-full`.
    pub sslrootcert: Option<PathBuf>,
    /// Whether monitors `LISTEN` for pushed changes (`listen=false`: poll only).
    pub listen: bool,
    /// The URL carried a password (dropped here): refused when the store is
    /// opened, not at parsing, where a flag parser would echo the value.
    pub password_in_url: bool,
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

impl PostgresUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
            .ok_or("postgres store URL must start with postgres:// or postgresql://")?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, q),
            None => (rest, ""),
        };
        let usage = "postgres store URL: postgres://USER@HOST[:PORT]/DATABASE";
        let (authority, database) = rest.split_once('/').ok_or(usage)?;
        let database = database.trim_end_matches('/');
        if database.is_empty() || database.contains('/') {
            return Err(format!("{usage} (one database name)"));
        }
        let (user, hostport) = authority.rsplit_once('@').ok_or(usage)?;
        // Never kept nor echoed: the part after ':' is a password.
        let (user, password_in_url) = match user.split_once(':') {
            Some((u, _)) => (u, true),
            None => (user, false),
        };
        if user.is_empty() {
            return Err(format!("{usage} (a user name is required)"));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or(usage)?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("{usage} (a host is required)"));
        }
        let port = match port {
            None => 5432,
            Some(p) => p
                .parse()
                .map_err(|_| format!("postgres store URL: invalid port {p:?}"))?,
        };
        let mut url = PostgresUrl {
            user: user.to_string(),
            sslmode: if is_loopback(&host) {
                SslMode::Disable
            } else {
                SslMode::VerifyFull
            },
            host,
            port,
            database: database.to_string(),
            sslrootcert: None,
            listen: true,
            password_in_url,
        };
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "sslmode" => {
                    url.sslmode = match v {
                        "disable" => SslMode::Disable,
                        "require" => SslMode::Require,
                        "verify-full" => SslMode::VerifyFull,
                        _ => return Err(format!(
                            "postgres store URL: sslmode={v:?}: expected disable, require or verify-full"
                        )),
                    }
                }
                "sslrootcert" => url.sslrootcert = Some(PathBuf::from(v)),
                "listen" => {
                    url.listen = match v {
                        "true" | "on" | "1" => true,
                        "false" | "off" | "0" => false,
                        _ => return Err(format!("postgres store URL: listen={v:?}: expected true or false")),
                    }
                }
                _ => return Err(format!(
                    "postgres store URL: unknown parameter {k:?} (sslmode, sslrootcert, listen)"
                )),
            }
        }
        Ok(url)
    }
}

impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "postgres://{}@{}:{}/{}",
            self.user, host, self.port, self.database
        )
    }
}

/// Everything needed to connect. `Debug` redacts the password.
#[derive(Clone)]
pub struct PostgresConfig {
    pub url: PostgresUrl,
    pub password: Option<String>,
    /// Bound on opening a connection (a stopped server fails within it).
    pub connect_timeout: Duration,
    /// Bound on a point call (heartbeat, list, master, a cluster write),
    /// connection included: below the engine's bound on a store call (one
    /// heartbeat interval, 2 s), so a stuck call gives way before the next pass.
    pub call_timeout: Duration,
    /// Bound on bulk reads (feed pages, list of clusters).
    pub bulk_timeout: Duration,
}

impl PostgresConfig {
    pub fn new(url: PostgresUrl, password: Option<String>) -> Self {
        Self {
            url,
            password,
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_millis(1800),
            bulk_timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.url.to_string())
            .field("sslmode", &self.url.sslmode)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_reject_passwords() {
        let u = PostgresUrl::parse("postgres://mon@127.0.0.1:5433/cm").unwrap();
        assert_eq!(
            (
                u.user.as_str(),
                u.host.as_str(),
                u.port,
                u.database.as_str()
            ),
            ("mon", "127.0.0.1", 5433, "cm")
        );
        assert_eq!(u.sslmode, SslMode::Disable);
        assert!(u.listen);
        assert_eq!(u.to_string(), "postgres://mon@127.0.0.1:5433/cm");
        let u = PostgresUrl::parse(
            "postgresql://mon@db.example.com/cm?sslmode=verify-full&sslrootcert=/etc/ca.pem&listen=false",
        )
        .unwrap();
        assert_eq!(
            (u.port, u.sslmode, u.listen),
            (5432, SslMode::VerifyFull, false)
        );
        assert_eq!(
            u.sslrootcert.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(
            PostgresUrl::parse("postgres://mon@db/cm").unwrap().sslmode,
            SslMode::VerifyFull
        );
        let u = PostgresUrl::parse("postgres://mon:CANARY@db/cm").unwrap();
        assert!(u.password_in_url && u.user == "mon");
        assert!(!format!("{u} {u:?}").contains("CANARY"));
        assert!(PostgresUrl::parse("postgres://db/cm").is_err());
        assert!(PostgresUrl::parse("postgres://mon@db").is_err());
        assert!(PostgresUrl::parse("postgres://mon@db/cm?sslmode=prefer").is_err());
        assert!(
            PostgresUrl::parse("postgres://mon@[::1]:7/cm")
                .unwrap()
                .host
                == "::1"
        );
        let cfg = PostgresConfig::new(
            PostgresUrl::parse("postgres://mon@db/cm").unwrap(),
            Some("CANARY".into()),
        );
        assert!(!format!("{cfg:?}").contains("CANARY"));
    }
}
