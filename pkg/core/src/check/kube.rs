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
    /// The collector itself panicked (contained, logged): a bug, not the
    /// cluster's answer.
    #[error("collector panicked")]
    Panicked,
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
            KubeError::Panicked => "panic",
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

/// The names of the Kubernetes answers' schema (the list envelope and the
/// decoders of `collect`): the only words of an answer a decode error may
/// show, through [`crate::decode`].
pub const KUBE_NAMES: &[&str] = &[
    "items",
    "metadata",
    "continue",
    "name",
    "namespace",
    "labels",
    "type",
    "status",
    "gitVersion",
    "conditions",
    "spec",
    "desiredUpdate",
    "version",
    "desired",
    "history",
    "state",
    "phase",
    "containerStatuses",
    "restartCount",
    "waiting",
    "reason",
];

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

/// A short reason for a failed request: what failed (connect, request,
/// body) and the innermost cause ("connection reset by peer"), without the
/// URL or the intermediate layers that `chain` would list.
fn reason(e: &reqwest::Error) -> String {
    let what = if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "reading the body"
    } else {
        "request"
    };
    let mut root: &(dyn std::error::Error + 'static) = e;
    while let Some(c) = root.source() {
        root = c;
    }
    let mut why = root.to_string();
    // reqwest's own message names the URL: " for url (https://…)".
    if let Some(i) = why.find(" for url (") {
        why.truncate(i);
    }
    if why.len() > 120 {
        let mut cut = 120;
        while !why.is_char_boundary(cut) {
            cut -= 1;
        }
        why.truncate(cut);
        why.push('…');
    }
    format!("{what}: {why}")
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
            // Never follow a redirect: the request carries the cluster's
            // credentials (a bearer header, a client certificate) and a
            // hostile or compromised API server could send them elsewhere.
            // A 3xx is the answer, and a failed check.
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
                .map_err(|e| KubeError::Unreachable(reason(&e)))?;
            let status = resp.status().as_u16();
            // A declared length over the cap is refused before any byte is
            // read; an undeclared one (chunked, endless) is capped below.
            if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
                return Err(KubeError::TooLarge);
            }
            let peer_certificate = resp
                .extensions()
                .get::<reqwest::tls::TlsInfo>()
                .and_then(|i| i.peer_certificate())
                .map(<[u8]>::to_vec);
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| KubeError::Unreachable(reason(&e)))?
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
        crate::decode::json_slice(&r.body, KUBE_NAMES).map_err(|e| KubeError::Decode(e.into()))
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

/// Percent-encodes a query value (continue tokens are base64-ish): all
/// but RFC 3986's unreserved characters.
fn encode_query(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    const QUERY_VALUE: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(s, QUERY_VALUE).to_string()
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

    mod answers_never_echo {
        use proptest::prelude::*;
        use serde::de::DeserializeOwned;
        use serde_json::{json, Value};

        use super::super::{List, KUBE_NAMES};
        use crate::check::collect::{ClusterOperator, ClusterVersionObj, Node, Pod, VersionInfo};
        use crate::decode::testing::{assert_clean, mutated, value};

        fn node_list() -> Value {
            json!({"kind": "NodeList", "metadata": {"continue": "abc"}, "items": [{
                "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/master": ""}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}
            }]})
        }

        fn pod_list() -> Value {
            json!({"items": [{
                "metadata": {"name": "p", "namespace": "kube-system"},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [{"name": "c", "restartCount": 3,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
            }]})
        }

        fn operator_list() -> Value {
            json!({"items": [{"metadata": {"name": "dns"},
                "status": {"conditions": [{"type": "Degraded", "status": "False"}]}}]})
        }

        fn cluster_version() -> Value {
            json!({"spec": {"desiredUpdate": {"version": "4.15.2"}},
                "status": {"desired": {"version": "4.15.2"},
                    "history": [{"state": "Completed", "version": "4.15.1"}],
                    "conditions": [{"type": "Available", "status": "True"}]}})
        }

        /// Decodes as `get_json` does and checks the error as a check
        /// report would show it.
        fn check<T: DeserializeOwned>(v: &Value) -> Result<(), TestCaseError> {
            let raw = v.to_string();
            if let Err(e) = crate::decode::json_slice::<T>(raw.as_bytes(), KUBE_NAMES) {
                let shown = super::KubeError::Decode(e.into()).to_string();
                assert_clean(&shown, v, KUBE_NAMES)?;
            }
            Ok(())
        }

        fn all(v: &Value) -> Result<(), TestCaseError> {
            check::<List<Node>>(v)?;
            check::<List<Pod>>(v)?;
            check::<List<ClusterOperator>>(v)?;
            check::<ClusterVersionObj>(v)?;
            check::<VersionInfo>(v)
        }

        #[test]
        fn a_canary_of_the_wrong_type_is_named_not_echoed() {
            let mut v = node_list();
            v["items"][0]["metadata"]["labels"] = json!({"cnry-key": {"cnry": 1}});
            let e = crate::decode::json_str::<List<Node>>(&v.to_string(), KUBE_NAMES)
                .err()
                .unwrap();
            assert_eq!(
                e.as_str(),
                "items[0].metadata.labels.<key>: invalid type map, expected a string"
            );
            let mut v = pod_list();
            v["items"][0]["status"]["containerStatuses"][0]["restartCount"] = json!("cnry-9");
            let e = crate::decode::json_str::<List<Pod>>(&v.to_string(), KUBE_NAMES)
                .err()
                .unwrap();
            assert_eq!(
                e.as_str(),
                "items[0].status.containerStatuses[0].restartCount: invalid type string, expected u64"
            );
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn random_answers_never_echo(v in value(KUBE_NAMES)) {
                all(&v)?;
            }

            #[test]
            fn mutated_answers_never_echo(
                v in prop_oneof![
                    mutated(node_list(), KUBE_NAMES),
                    mutated(pod_list(), KUBE_NAMES),
                    mutated(operator_list(), KUBE_NAMES),
                    mutated(cluster_version(), KUBE_NAMES),
                ]
            ) {
                all(&v)?;
            }
        }
    }

    #[test]
    fn token_header_is_sensitive() {
        let h = bearer(&Secret::new("abc\n")).unwrap();
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().unwrap(), "Bearer abc");
        assert!(bearer(&Secret::new("a\u{7}b")).is_err());
    }
}
