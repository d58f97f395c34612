//! A small Kubernetes API client for one check: per-cluster TLS and
//! authentication, bodies read with a size cap, lists paged with
//! `limit`/`continue` so memory stays bounded whatever the cluster's size.
//! The client (and every connection it opened) is dropped with the check.

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::time::Instant;

use super::tls;
use crate::model::{Credentials, Secret};

/// Largest response body a check reads (a page of a list included).
pub const MAX_BODY: usize = 8 << 20;
/// Items per list page.
pub const PAGE: usize = 100;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum KubeError {
    /// Credentials or TLS settings unusable; names the field, never the value.
    #[error("configuration: {0}")]
    Config(String),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("timed out")]
    Timeout,
    #[error("HTTP {0}")]
    Status(u16),
    #[error("invalid response: {0}")]
    Decode(String),
    #[error("response larger than {MAX_BODY} bytes")]
    TooLarge,
}

impl KubeError {
    /// Short label for metric tags and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            KubeError::Config(_) => "config",
            KubeError::Unreachable(_) => "unreachable",
            KubeError::Timeout => "timeout",
            KubeError::Status(401 | 403) => "unauthorized",
            KubeError::Status(_) => "status",
            KubeError::Decode(_) => "decode",
            KubeError::TooLarge => "too_large",
        }
    }
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// DER of the server's leaf certificate (https only).
    pub peer_certificate: Option<Vec<u8>>,
}

pub struct KubeClient {
    http: reqwest::Client,
    base: String,
    auth: Option<HeaderValue>,
    deadline: Instant,
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[derive(Deserialize)]
struct ListMeta {
    #[serde(default, rename = "continue")]
    cont: Option<String>,
}

#[derive(Deserialize)]
struct List<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
    #[serde(default)]
    metadata: Option<ListMeta>,
}

impl KubeClient {
    pub fn new(
        api_server: &str,
        creds: &Credentials,
        deadline: Instant,
    ) -> Result<Self, KubeError> {
        let https = api_server.starts_with("https://");
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(4)
            .user_agent(concat!("clustermon/", env!("CARGO_PKG_VERSION")));
        if https {
            let config = tls::client_config(creds, true).map_err(KubeError::Config)?;
            b = b.use_preconfigured_tls(config).tls_info(true);
        }
        let http = b.build().map_err(|e| KubeError::Config(chain(&e)))?;
        let auth = match &creds.token {
            Some(t) => Some(bearer(t)?),
            None => None,
        };
        Ok(Self {
            http,
            base: api_server.trim_end_matches('/').to_string(),
            auth,
            deadline,
        })
    }

    /// GET `path` (relative to the API server), body read up to [`MAX_BODY`].
    pub async fn get(&self, path: &str) -> Result<Response, KubeError> {
        let url = format!("{}{path}", self.base);
        let fut = async {
            let mut req = self.http.get(&url).header("Accept", "application/json");
            if let Some(a) = &self.auth {
                req = req.header(AUTHORIZATION, a.clone());
            }
            let mut resp = req
                .send()
                .await
                .map_err(|e| KubeError::Unreachable(chain(&e)))?;
            let status = resp.status().as_u16();
            let peer_certificate = resp
                .extensions()
                .get::<reqwest::tls::TlsInfo>()
                .and_then(|i| i.peer_certificate())
                .map(<[u8]>::to_vec);
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| KubeError::Unreachable(chain(&e)))?
            {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(KubeError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Response {
                status,
                body,
                peer_certificate,
            })
        };
        tokio::time::timeout_at(self.deadline, fut)
            .await
            .map_err(|_| KubeError::Timeout)?
    }

    /// GET and decode a 2xx JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, KubeError> {
        let r = self.get(path).await?;
        if !(200..300).contains(&r.status) {
            return Err(KubeError::Status(r.status));
        }
        serde_json::from_slice(&r.body).map_err(|e| KubeError::Decode(e.to_string()))
    }

    /// Lists `path` page by page, handing each item to `each`. Only one page
    /// is in memory at a time.
    pub async fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        mut each: impl FnMut(T),
    ) -> Result<(), KubeError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut cont: Option<String> = None;
        for _ in 0..100_000 {
            let mut url = format!("{path}{sep}limit={PAGE}");
            if let Some(c) = &cont {
                url.push_str("&continue=");
                url.push_str(&encode_query(c));
            }
            let page: List<T> = self.get_json(&url).await?;
            page.items.into_iter().for_each(&mut each);
            cont = page.metadata.and_then(|m| m.cont).filter(|c| !c.is_empty());
            if cont.is_none() {
                return Ok(());
            }
        }
        Err(KubeError::Decode(
            "list did not end after 100000 pages".into(),
        ))
    }
}

fn bearer(t: &Secret) -> Result<HeaderValue, KubeError> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose().trim()))
        .map_err(|_| KubeError::Config("token has characters not allowed in a header".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// Percent-encodes a query value (continue tokens are base64-ish).
fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Test access to the list envelope.
#[cfg(test)]
pub(crate) mod tests_support {
    pub struct List<T> {
        pub items: Vec<T>,
        pub cont: Option<String>,
    }
    impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for List<T> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let l = super::List::<T>::deserialize(d)?;
            Ok(Self {
                items: l.items,
                cont: l.metadata.and_then(|m| m.cont),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encoding_and_error_kinds() {
        assert_eq!(encode_query("eyJ2Ijo+/="), "eyJ2Ijo%2B%2F%3D");
        assert_eq!(KubeError::Status(401).kind(), "unauthorized");
        assert_eq!(KubeError::Decode("x".into()).kind(), "decode");
    }

    #[test]
    fn token_header_is_sensitive() {
        let h = bearer(&Secret::new("abc\n")).unwrap();
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().unwrap(), "Bearer abc");
        assert!(bearer(&Secret::new("a\u{7}b")).is_err());
    }
}
