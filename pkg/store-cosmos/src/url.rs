//! `cosmos://HOST[:PORT]/DATABASE[?tls=true|false]`: parsed by a pure function.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosmosUrl {
    pub host: String,
    pub port: Option<u16>,
    pub database: String,
    /// https (the default), or plain http: only for a loopback test endpoint.
    pub tls: bool,
}

impl CosmosUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("cosmos://")
            .ok_or_else(|| format!("cosmos store URL must start with cosmos://, got {s:?}"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, database) = rest
            .split_once('/')
            .ok_or("cosmos store URL needs a database: cosmos://ACCOUNT_HOST[:PORT]/DATABASE")?;
        let database = database.trim_end_matches('/');
        if database.is_empty() || database.contains('/') {
            return Err(
                "cosmos store URL needs one database name: cosmos://ACCOUNT_HOST[:PORT]/DATABASE"
                    .into(),
            );
        }
        if database.len() > 255
            || database
                .chars()
                .any(|c| matches!(c, '\\' | '#' | '?' | ' ') || c.is_control())
        {
            return Err(format!("invalid cosmos database name {database:?}"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port: u16 = p
                    .parse()
                    .map_err(|_| format!("invalid port {p:?} in cosmos store URL"))?;
                (h, Some(port))
            }
            _ => (authority, None),
        };
        if host.is_empty() {
            return Err("cosmos store URL needs an account host".into());
        }
        let host = host.to_string();
        let loopback = is_loopback(&host);
        let mut tls = !loopback;
        if let Some(q) = query {
            for kv in q.split('&').filter(|kv| !kv.is_empty()) {
                match kv {
                    "tls=true" => tls = true,
                    "tls=false" => tls = false,
                    other => {
                        return Err(format!(
                            "unknown cosmos store URL option {other:?} (tls=true|false)"
                        ))
                    }
                }
            }
        }
        if !tls && !loopback {
            return Err(
                "plain http is only for a loopback test endpoint; real accounts use TLS".into(),
            );
        }
        Ok(Self {
            host,
            port,
            database: database.to_string(),
            tls,
        })
    }

    pub fn is_loopback(&self) -> bool {
        is_loopback(&self.host)
    }

    /// The account endpoint for the SDK.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        match self.port {
            Some(p) => format!("{scheme}://{}:{p}/", self.host),
            None => format!("{scheme}://{}/", self.host),
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

impl fmt::Display for CosmosUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cosmos://{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "/{}", self.database)?;
        if self.tls == self.is_loopback() {
            write!(f, "?tls={}", self.tls)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_accounts_and_loopback_endpoints() {
        let u = CosmosUrl::parse("cosmos://acct.documents.azure.com/clustermon").unwrap();
        assert_eq!(u.endpoint(), "https://acct.documents.azure.com/");
        assert_eq!(u.database, "clustermon");
        assert!(u.tls);
        let u = CosmosUrl::parse("cosmos://127.0.0.1:8081/db").unwrap();
        assert_eq!(u.endpoint(), "http://127.0.0.1:8081/");
        assert_eq!(u.to_string(), "cosmos://127.0.0.1:8081/db");
        let u = CosmosUrl::parse("cosmos://localhost:8081/db?tls=true").unwrap();
        assert_eq!(u.endpoint(), "https://localhost:8081/");
        assert_eq!(
            CosmosUrl::parse(&u.to_string()).unwrap(),
            u,
            "Display round-trips"
        );
        let u = CosmosUrl::parse("cosmos://acct.example:443/db/").unwrap();
        assert_eq!(u.port, Some(443));
    }

    #[test]
    fn refuses_bad_urls_with_the_reason() {
        for (url, why) in [
            ("sqlite:/x", "cosmos://"),
            ("cosmos://acct.example", "needs a database"),
            ("cosmos://acct.example/", "one database"),
            ("cosmos://acct.example/a/b", "one database"),
            ("cosmos://:8081/db", "account host"),
            ("cosmos://acct.example:99999/db", "invalid port"),
            ("cosmos://acct.example/db?tls=false", "loopback"),
            ("cosmos://acct.example/db?x=1", "unknown"),
        ] {
            let e = CosmosUrl::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
