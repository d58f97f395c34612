//! Reads a cluster's server and credentials from a kubeconfig. Inline data
//! and file references are supported; exec plugins and auth providers are
//! refused (they would run commands or fetch tokens we cannot refresh).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clustermon_core::model::{Credentials, Secret};
use serde::Deserialize;

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<Named<ClusterEntry>>,
    #[serde(default)]
    users: Vec<Named<UserEntry>>,
    #[serde(default)]
    contexts: Vec<Named<ContextEntry>>,
    #[serde(default, rename = "current-context")]
    current_context: String,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: Option<T>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry {
    #[serde(default)]
    server: String,
    certificate_authority_data: Option<String>,
    certificate_authority: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct UserEntry {
    token: Option<String>,
    token_file: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_certificate: Option<PathBuf>,
    client_key_data: Option<String>,
    client_key: Option<PathBuf>,
    exec: Option<serde_yaml::Value>,
    auth_provider: Option<serde_yaml::Value>,
}

#[derive(Deserialize, Default)]
struct ContextEntry {
    cluster: String,
    #[serde(default)]
    user: String,
}

fn data(b64: &str, what: &str) -> Result<String, String> {
    let raw = B64
        .decode(b64.trim())
        .map_err(|_| format!("kubeconfig: {what} is not base64"))?;
    String::from_utf8(raw).map_err(|_| format!("kubeconfig: {what} is not PEM text"))
}

fn file(base: &Path, p: &Path, what: &str) -> Result<String, String> {
    let path = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    std::fs::read_to_string(&path)
        .map_err(|e| format!("kubeconfig: cannot read {what} {}: {e}", path.display()))
}

/// Server URL and credentials of `context` (or the current context).
pub fn load(path: &Path, context: Option<&str>) -> Result<(String, Credentials), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, context)
}

pub fn parse(
    text: &str,
    base: &Path,
    context: Option<&str>,
) -> Result<(String, Credentials), String> {
    // serde_yaml errors quote positions, not values.
    let kc: Kubeconfig =
        serde_yaml::from_str(text).map_err(|e| format!("kubeconfig is not valid: {e}"))?;
    let ctx_name = context.unwrap_or(&kc.current_context);
    if ctx_name.is_empty() {
        return Err("kubeconfig has no current-context; pass --context".into());
    }
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.value.as_ref())
        .ok_or_else(|| format!("kubeconfig has no context {ctx_name:?}"))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.value.as_ref())
        .ok_or_else(|| format!("kubeconfig has no cluster {:?}", ctx.cluster))?;
    let empty = UserEntry::default();
    let user = if ctx.user.is_empty() {
        &empty
    } else {
        kc.users
            .iter()
            .find(|u| u.name == ctx.user)
            .and_then(|u| u.value.as_ref())
            .ok_or_else(|| format!("kubeconfig has no user {:?}", ctx.user))?
    };
    if user.exec.is_some() {
        return Err(format!(
            "kubeconfig user {:?} uses an exec plugin, which clustermon does not run; use a token or a client certificate",
            ctx.user
        ));
    }
    if user.auth_provider.is_some() {
        return Err(format!(
            "kubeconfig user {:?} uses an auth-provider, which clustermon does not support",
            ctx.user
        ));
    }
    let mut creds = Credentials {
        insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
        ..Default::default()
    };
    creds.ca_bundle = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(d), _) => Some(data(d, "certificate-authority-data")?),
        (None, Some(p)) => Some(file(base, p, "certificate-authority")?),
        _ => None,
    };
    creds.token = match (&user.token, &user.token_file) {
        (Some(t), _) => Some(Secret::new(t.trim())),
        (None, Some(p)) => Some(Secret::new(file(base, p, "token-file")?.trim())),
        _ => None,
    };
    creds.client_certificate = match (&user.client_certificate_data, &user.client_certificate) {
        (Some(d), _) => Some(data(d, "client-certificate-data")?),
        (None, Some(p)) => Some(file(base, p, "client-certificate")?),
        _ => None,
    };
    creds.client_key = match (&user.client_key_data, &user.client_key) {
        (Some(d), _) => Some(Secret::new(data(d, "client-key-data")?)),
        (None, Some(p)) => Some(Secret::new(file(base, p, "client-key")?)),
        _ => None,
    };
    if cluster.server.is_empty() {
        return Err(format!(
            "kubeconfig cluster {:?} has no server",
            ctx.cluster
        ));
    }
    Ok((cluster.server.clone(), creds))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KC: &str = r#"
apiVersion: v1
kind: Config
current-context: admin@prod
clusters:
- name: prod
  cluster:
    server: https://api.prod.example:6443
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==
- name: dev
  cluster:
    server: https://api.dev.example:6443
    insecure-skip-tls-verify: true
contexts:
- name: admin@prod
  context: {cluster: prod, user: admin}
- name: sso@dev
  context: {cluster: dev, user: sso}
- name: cert@dev
  context: {cluster: dev, user: certuser}
users:
- name: admin
  user:
    token: sha256~very-secret-token
- name: sso
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: oc
- name: certuser
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
"#;

    #[test]
    fn current_context_with_token_and_inline_ca() {
        let (server, c) = parse(KC, Path::new("."), None).unwrap();
        assert_eq!(server, "https://api.prod.example:6443");
        assert_eq!(
            c.token.as_ref().unwrap().expose(),
            "sha256~very-secret-token"
        );
        assert!(c
            .ca_bundle
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!c.insecure_skip_tls_verify);
    }

    #[test]
    fn named_context_with_client_certificate() {
        let (_, c) = parse(KC, Path::new("."), Some("cert@dev")).unwrap();
        assert_eq!(c.client_certificate.as_deref(), Some("CERT"));
        assert_eq!(c.client_key.as_ref().unwrap().expose(), "KEY");
        assert!(c.insecure_skip_tls_verify);
    }

    #[test]
    fn exec_plugins_and_unknown_contexts_are_refused_clearly() {
        let e = parse(KC, Path::new("."), Some("sso@dev")).unwrap_err();
        assert!(e.contains("exec plugin"), "{e}");
        assert!(parse(KC, Path::new("."), Some("nope"))
            .unwrap_err()
            .contains("no context"));
        let e = parse("clusters: [", Path::new("."), None).unwrap_err();
        assert!(e.contains("not valid"));
        assert!(!e.contains("secret"));
    }
}
