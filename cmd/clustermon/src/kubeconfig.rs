//! Reads a cluster's server and credentials from a kubeconfig. Inline data
//! and file references are supported; exec plugins and auth providers are
//! refused (they would run commands or fetch tokens we cannot refresh).

use std::path::Path;

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
    #[serde(default, rename = "current-context", deserialize_with = "text")]
    current_context: String,
}

#[derive(Deserialize)]
struct Named<T> {
    #[serde(deserialize_with = "text")]
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: Option<T>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry {
    #[serde(default, deserialize_with = "text")]
    server: String,
    #[serde(default, deserialize_with = "opt_text")]
    certificate_authority_data: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    certificate_authority: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct UserEntry {
    #[serde(default, deserialize_with = "opt_text")]
    token: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    token_file: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    client_certificate_data: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    client_certificate: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    client_key_data: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    client_key: Option<String>,
    exec: Option<serde_json::Value>,
    auth_provider: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct ContextEntry {
    #[serde(deserialize_with = "text")]
    cluster: String,
    #[serde(default, deserialize_with = "text")]
    user: String,
}

/// The names of the kubeconfig schema: the only words of the file a decode
/// error may show.
const NAMES: &[&str] = &[
    "clusters",
    "users",
    "contexts",
    "current-context",
    "name",
    "cluster",
    "user",
    "context",
    "server",
    "certificate-authority-data",
    "certificate-authority",
    "insecure-skip-tls-verify",
    "token",
    "token-file",
    "client-certificate-data",
    "client-certificate",
    "client-key-data",
    "client-key",
    "exec",
    "auth-provider",
];

/// A string; a YAML scalar that is not one (`name: 2024`, `token: 123`) is
/// taken as its text, as kubectl does.
struct Text;

impl serde::de::Visitor<'_> for Text {
    type Value = String;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(Text)
}

fn opt_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<serde_json::Value>::deserialize(d)?
        .map(|v| text(v).map_err(serde::de::Error::custom))
        .transpose()
}

/// Decodes a kubeconfig through the core's decoder: YAML is parsed to a
/// YAML value (serde_norway, the maintained fork of the deprecated
/// serde_yaml; its syntax errors reduced to a position: its
/// messages may quote content), converted to JSON, then decoded by
/// `clustermon_core::decode`, whose errors name fields, never values.
fn decode(text: &str) -> Result<Kubeconfig, String> {
    let invalid = |what: String| format!("kubeconfig is not valid: {what}");
    let y: serde_norway::Value = serde_norway::from_str(text).map_err(|e| {
        invalid(match e.location() {
            Some(l) => format!("syntax error at line {} column {}", l.line(), l.column()),
            None => "syntax error".into(),
        })
    })?;
    let j = yaml_to_json(y, 0).map_err(|e| invalid(e.into()))?;
    clustermon_core::decode::json_value(j, NAMES).map_err(|e| invalid(e.into()))
}

/// YAML value to JSON value. Scalar map keys become their text (as
/// kubectl's YAML-to-JSON does); other keys and non-finite numbers are
/// refused, tags dropped. The messages quote nothing.
fn yaml_to_json(y: serde_norway::Value, depth: usize) -> Result<serde_json::Value, &'static str> {
    use serde_json::Value as J;
    use serde_norway::Value as Y;
    if depth > 128 {
        return Err("nested too deeply");
    }
    Ok(match y {
        Y::Null => J::Null,
        Y::Bool(b) => J::Bool(b),
        Y::Number(n) => {
            if let Some(u) = n.as_u64() {
                J::from(u)
            } else if let Some(i) = n.as_i64() {
                J::from(i)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(J::Number)
                    .ok_or("a number is not finite")?
            }
        }
        Y::String(s) => J::String(s),
        Y::Sequence(seq) => J::Array(
            seq.into_iter()
                .map(|v| yaml_to_json(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = serde_json::Map::with_capacity(m.len());
            for (k, v) in m {
                let key = match yaml_to_json(k, depth + 1)? {
                    J::String(s) => s,
                    J::Null => "null".into(),
                    J::Bool(b) => b.to_string(),
                    J::Number(n) => n.to_string(),
                    J::Array(_) | J::Object(_) => return Err("a map key is not a scalar"),
                };
                out.insert(key, yaml_to_json(v, depth + 1)?);
            }
            J::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value, depth + 1)?,
    })
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
    let kc = decode(text)?;
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
        (None, Some(p)) => Some(file(base, Path::new(p), "certificate-authority")?),
        _ => None,
    };
    creds.token = match (&user.token, &user.token_file) {
        (Some(t), _) => Some(Secret::new(t.trim())),
        (None, Some(p)) => Some(Secret::new(file(base, Path::new(p), "token-file")?.trim())),
        _ => None,
    };
    creds.client_certificate = match (&user.client_certificate_data, &user.client_certificate) {
        (Some(d), _) => Some(data(d, "client-certificate-data")?),
        (None, Some(p)) => Some(file(base, Path::new(p), "client-certificate")?),
        _ => None,
    };
    creds.client_key = match (&user.client_key_data, &user.client_key) {
        (Some(d), _) => Some(Secret::new(data(d, "client-key-data")?)),
        (None, Some(p)) => Some(Secret::new(file(base, Path::new(p), "client-key")?)),
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
    fn numbers_and_booleans_are_taken_as_text_like_kubectl() {
        let kc =
            "current-context: 2024\ncontexts: [{name: 2024, context: {cluster: 1, user: true}}]\n\
                  clusters: [{name: 1, cluster: {server: 'https://x'}}]\n\
                  users: [{name: true, user: {token: 12345}}]\n";
        let (server, c) = parse(kc, Path::new("."), None).unwrap();
        assert_eq!(server, "https://x");
        assert_eq!(c.token.unwrap().expose(), "12345");
    }

    const C: &str = "cnry-eyJhbGciOiJSUzI1NiJ9-Zq";

    fn kubeconfig() -> serde_json::Value {
        serde_json::json!({
            "current-context": "ctx",
            "clusters": [{"name": "cl", "cluster": {
                "server": "https://x",
                "certificate-authority-data": "UEVN",
                "certificate-authority": "ca.pem",
                "insecure-skip-tls-verify": false
            }}],
            "users": [{"name": "u", "user": {
                "token": "t",
                "token-file": "tf",
                "client-certificate-data": "UEVN",
                "client-certificate": "c.pem",
                "client-key-data": "S0VZ",
                "client-key": "k.pem"
            }}],
            "contexts": [{"name": "ctx", "context": {"cluster": "cl", "user": "u"}}]
        })
    }

    #[test]
    fn a_canary_in_any_field_of_a_kubeconfig_is_never_echoed() {
        use serde_json::json;
        let text_fields = [
            "/current-context",
            "/clusters/0/name",
            "/clusters/0/cluster/server",
            "/clusters/0/cluster/certificate-authority-data",
            "/clusters/0/cluster/certificate-authority",
            "/users/0/name",
            "/users/0/user/token",
            "/users/0/user/token-file",
            "/users/0/user/client-certificate-data",
            "/users/0/user/client-certificate",
            "/users/0/user/client-key-data",
            "/users/0/user/client-key",
            "/contexts/0/name",
            "/contexts/0/context/cluster",
            "/contexts/0/context/user",
        ];
        let mut cases: Vec<(&str, serde_json::Value, &str)> = Vec::new();
        for f in text_fields {
            cases.push((f, json!([C]), "invalid type sequence, expected a string"));
            cases.push((f, json!({ C: C }), "invalid type map, expected a string"));
        }
        let bool_field = "/clusters/0/cluster/insecure-skip-tls-verify";
        cases.push((
            bool_field,
            json!(C),
            "invalid type string, expected a boolean",
        ));
        cases.push((
            bool_field,
            json!(7),
            "invalid type integer, expected a boolean",
        ));
        cases.push((
            bool_field,
            json!([C]),
            "invalid type sequence, expected a boolean",
        ));
        for f in ["/clusters", "/users", "/contexts"] {
            cases.push((f, json!(C), "invalid type string, expected a sequence"));
            cases.push((f, json!({ C: C }), "invalid type map, expected a sequence"));
        }
        for f in [
            "/clusters/0/cluster",
            "/users/0/user",
            "/contexts/0/context",
        ] {
            cases.push((f, json!(C), "invalid type string, expected struct"));
            cases.push((f, json!(true), "invalid type boolean, expected struct"));
        }
        for (f, v, want) in cases {
            let mut kc = kubeconfig();
            *kc.pointer_mut(f).unwrap() = v.clone();
            let path = f
                .trim_start_matches('/')
                .replace("/0/", "[0].")
                .replace("/0", "[0]")
                .replace('/', ".");
            for text in [serde_norway::to_string(&kc).unwrap(), kc.to_string()] {
                let e = parse(&text, Path::new("."), None).unwrap_err();
                assert!(!e.contains("cnry"), "{f}={v}: {e}");
                assert!(!e.contains("eyJhbGci"), "{f}={v}: {e}");
                assert!(
                    e.contains(&format!("kubeconfig is not valid: {path}: {want}")),
                    "{f}={v}: want {path}: {want}, got {e}"
                );
            }
        }
    }

    #[test]
    fn yaml_syntax_errors_keep_only_the_position() {
        for text in [
            format!("clusters: [{C}"),
            format!("a: {C}\na: {C}\n"),
            format!("{C}: 1\n{C}: 2\n"),
            format!("users: *{C}\n"),
            format!("token: \"{C}\n"),
            format!("clusters:\n- name: {C}\n  - {C}\n"),
            format!("---\n{C}\n---\n{C}\n"),
            format!("? [{C}]\n: 1\n"),
            format!("clusters: !!binary {C}\n"),
        ] {
            let e = parse(&text, Path::new("."), None).unwrap_err();
            assert!(!e.contains("cnry"), "{text}: {e}");
            assert!(!e.contains("eyJhbGci"), "{text}: {e}");
        }
        let e = parse("clusters: [", Path::new("."), None).unwrap_err();
        assert!(
            e.starts_with("kubeconfig is not valid: syntax error at line"),
            "{e}"
        );
    }

    mod random_input {
        use proptest::prelude::*;
        use serde_json::Value;

        use super::super::{decode, parse, NAMES};
        use std::path::Path;

        fn canary() -> impl Strategy<Value = String> + Clone {
            (
                any::<u32>(),
                prop::sample::select(vec!["", ", expected a string", "`", "\"", ": x", "\n- a"]),
            )
                .prop_map(|(n, tail)| format!("cnry{n:x}{tail}Zq"))
        }

        fn value() -> impl Strategy<Value = Value> {
            let name = prop::sample::select(NAMES.to_vec()).prop_map(str::to_string);
            let key = prop_oneof![1 => canary(), 2 => name.clone()];
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                (-1e9f64..1e9).prop_map(Value::from),
                canary().prop_map(Value::String),
                name.prop_map(Value::String),
            ];
            leaf.prop_recursive(5, 64, 6, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::vec((key.clone(), inner), 0..6)
                        .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        /// Random values at random places of a valid kubeconfig.
        fn mutated() -> impl Strategy<Value = Value> {
            let template = super::kubeconfig();
            let mut ptrs = Vec::new();
            pointers(&template, String::new(), &mut ptrs);
            prop::collection::vec((prop::sample::select(ptrs), value()), 1..4).prop_map(
                move |edits| {
                    let mut v = template.clone();
                    for (p, x) in edits {
                        match v.pointer_mut(&p) {
                            Some(slot) => *slot = x,
                            None => v = x,
                        }
                    }
                    v
                },
            )
        }

        fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => m
                    .iter()
                    .for_each(|(k, x)| pointers(x, format!("{at}/{k}"), out)),
                Value::Array(a) => a
                    .iter()
                    .enumerate()
                    .for_each(|(i, x)| pointers(x, format!("{at}/{i}"), out)),
                _ => {}
            }
            out.push(at);
        }

        fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::String(s) => out.push(s),
                Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
                Value::Object(m) => m.iter().for_each(|(k, x)| {
                    out.push(k);
                    strings(x, out);
                }),
                _ => {}
            }
        }

        fn check(v: &Value) -> Result<(), TestCaseError> {
            let mut all = Vec::new();
            strings(v, &mut all);
            for text in [serde_norway::to_string(v).unwrap(), v.to_string()] {
                // The import as a whole never panics.
                let _ = parse(&text, Path::new("/nonexistent"), None);
                if let Err(e) = decode(&text) {
                    prop_assert!(!e.contains("cnry"), "{text}: {e}");
                    for s in &all {
                        if s.chars().count() >= 6 && !NAMES.contains(s) {
                            prop_assert!(!e.contains(s), "{s:?} in {e}");
                        }
                    }
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(384))]

            #[test]
            fn kubeconfig_import_random_values_never_echo(v in value()) {
                check(&v)?;
            }

            #[test]
            fn kubeconfig_import_mutated_files_never_echo(v in mutated()) {
                check(&v)?;
            }

            #[test]
            fn kubeconfig_import_broken_text_never_echoes(v in mutated(), cut in any::<prop::sample::Index>()) {
                let text = serde_norway::to_string(&v).unwrap();
                let at = cut.index(text.len() + 1);
                let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
                if let Err(e) = decode(&text[..at]) {
                    prop_assert!(!e.contains("cnry"), "{}: {e}", &text[..at]);
                }
            }
        }
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
