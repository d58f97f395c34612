//! The one way untrusted input is decoded: cluster documents, monitor and
//! master documents read back from a store, Kubernetes API answers, and
//! (in the command line) kubeconfig files.
//!
//! # Invariant: a decode error never carries a value of the input
//!
//! serde's own messages do: serde_json and the YAML parser print the offending
//! value in `invalid type: string "eyJhbGciOi...", expected ...`, in
//! `invalid value: ...`, in ``unknown variant `X` ``, and custom
//! `Error::custom` messages (chrono's, for one) may quote anything. A
//! cluster document whose `credentials` is a string (a base64 kubeconfig)
//! would print that string in logs and in `clustermon cluster list`.
//!
//! So errors are rebuilt here, never passed through. A [`DecodeError`] reads
//! `<path>: <what>`, where
//!
//! - `<path>` is the field path (`credentials.insecureSkipTlsVerify`,
//!   `items[3].metadata.name`). A map key is a value too: a key that is not
//!   one of the schema's names (the `names` every decoder passes) is shown as
//!   `<key>`;
//! - `<what>` is one of: `invalid type <kind>, expected X` (`<kind>` is one
//!   word of a fixed list: string, integer, boolean, map, sequence...;
//!   `X` is what our own `Deserialize` impl expects), `invalid value,
//!   expected X`, `unknown variant, expected one of ...` (our list),
//!   ``missing field `f` `` / ``duplicate field `f` `` (only when `f` is one of
//!   the schema's names), `invalid length N, expected X`, `syntax error at
//!   line L column C` (JSON and YAML syntax errors keep only the position),
//!   and, for anything else, `invalid value`.
//!
//! YAML (the kubeconfig import, in the command line) is parsed to a YAML
//! value, converted to a JSON value (map keys become strings) and decoded by
//! [`json_value`], so its only own errors are syntax errors, which the
//! importer reduces to a position (the YAML parser's messages may quote content).

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use serde_path_to_error::Segment;

/// A decode error that names the field path and the expected type, never a
/// value of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(String);

impl DecodeError {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for String {
    fn from(e: DecodeError) -> String {
        e.0
    }
}

/// Decodes JSON text. `names` are the schema's field (and variant) names:
/// only those may appear in an error's path.
pub fn json_str<'de, T: Deserialize<'de>>(raw: &'de str, names: &[&str]) -> Result<T, DecodeError> {
    json_slice(raw.as_bytes(), names)
}

/// Decodes JSON bytes without building an intermediate value (Kubernetes
/// answers may be megabytes).
///
/// Valid input is decoded once, without tracking the path (measured: the
/// path tracking cost a tenth of a full check's CPU); only input that fails
/// is decoded again with it, for the error (the same bytes fail the same
/// way). The bytes' UTF-8 is checked once, not string by string as
/// serde_json does for bytes (measured: 3% of a full check's CPU). `T`
/// may borrow its strings from `raw`.
pub fn json_slice<'de, T: Deserialize<'de>>(
    raw: &'de [u8],
    names: &[&str],
) -> Result<T, DecodeError> {
    if let Ok(text) = std::str::from_utf8(raw) {
        if let Ok(v) = serde_json::from_str::<T>(text) {
            return Ok(v);
        }
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    let v: T = serde_path_to_error::deserialize(&mut de).map_err(|e| from_json_error(e, names))?;
    de.end().map_err(|e| syntax(&e))?;
    Ok(v)
}

/// Decodes an already parsed JSON value (the Cosmos DB SDK hands those).
pub fn json_value<T: DeserializeOwned>(v: Value, names: &[&str]) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(v).map_err(|e| from_json_error(e, names))
}

fn syntax(e: &serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Eof => "unexpected end of input",
        Category::Io => "read error",
        Category::Syntax | Category::Data => "syntax error",
    };
    DecodeError(if e.line() == 0 {
        what.to_string()
    } else {
        format!("{what} at line {} column {}", e.line(), e.column())
    })
}

fn from_json_error(
    e: serde_path_to_error::Error<serde_json::Error>,
    names: &[&str],
) -> DecodeError {
    use serde_json::error::Category;
    let path = render_path(e.path(), names);
    let inner = e.inner();
    if !matches!(inner.classify(), Category::Data) {
        // Where the parser stood (e.g. a number where an enum's name was
        // expected), then the position.
        let s = syntax(inner);
        return if path.is_empty() {
            s
        } else {
            DecodeError(format!("{path}: {s}"))
        };
    }
    // The message without serde_json's " at line L column C" suffix.
    let full = inner.to_string();
    let suffix = format!(" at line {} column {}", inner.line(), inner.column());
    let msg = if inner.line() != 0 {
        full.strip_suffix(&suffix).unwrap_or(&full)
    } else {
        &full
    };
    let what = classify(msg, names);
    DecodeError(if path.is_empty() {
        what
    } else {
        format!("{path}: {what}")
    })
}

fn render_path(path: &serde_path_to_error::Path, names: &[&str]) -> String {
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                if names.contains(&key.as_str()) {
                    out.push_str(key);
                } else {
                    out.push_str("<key>");
                }
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// serde's `Unexpected` kinds, as its messages print them.
const KINDS: &[&str] = &[
    "boolean",
    "integer",
    "floating point",
    "character",
    "string",
    "byte array",
    "Option value",
    "unit value",
    "unit variant",
    "newtype struct",
    "newtype variant",
    "sequence",
    "map",
    "enum",
    "tuple variant",
    "struct variant",
    "null",
];

/// The part after the last ", expected ": what our own impl expects. The
/// value, if any, is before it.
fn expected(msg: &str) -> Option<&str> {
    msg.rfind(", expected ")
        .map(|i| &msg[i + ", expected ".len()..])
        .filter(|x| !x.is_empty() && x.len() <= 300)
}

/// A backquoted name that is one of the schema's names.
fn known_quoted<'a>(rest: &'a str, names: &[&str]) -> Option<&'a str> {
    let name = rest.strip_prefix('`')?.strip_suffix('`')?;
    names.contains(&name).then_some(name)
}

fn classify(msg: &str, names: &[&str]) -> String {
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        let kind = KINDS
            .iter()
            .filter(|k| {
                rest.strip_prefix(**k)
                    .is_some_and(|r| r.is_empty() || r.starts_with([' ', ',']))
            })
            .max_by_key(|k| k.len());
        return match (kind, expected(rest)) {
            (Some(k), Some(x)) => format!("invalid type {k}, expected {x}"),
            (Some(k), None) => format!("invalid type {k}"),
            (None, Some(x)) => format!("invalid type, expected {x}"),
            (None, None) => "invalid type".into(),
        };
    }
    if let Some(rest) = msg.strip_prefix("invalid value: ") {
        return match expected(rest) {
            Some(x) => format!("invalid value, expected {x}"),
            None => "invalid value".into(),
        };
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        return match expected(rest) {
            Some(x) => format!("unknown variant, expected {x}"),
            None => "unknown variant".into(),
        };
    }
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        return match expected(rest) {
            Some(x) => format!("unknown field, expected {x}"),
            None => "unknown field".into(),
        };
    }
    for prefix in ["missing field ", "duplicate field "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            return match known_quoted(rest, names) {
                Some(f) => format!("{prefix}`{f}`"),
                None => prefix.trim_end().to_string(),
            };
        }
    }
    if let Some(rest) = msg.strip_prefix("invalid length ") {
        let n = rest.split(',').next().unwrap_or("");
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return match expected(rest) {
                Some(x) => format!("invalid length {n}, expected {x}"),
                None => format!("invalid length {n}"),
            };
        }
        return "invalid length".into();
    }
    "invalid value".into()
}

/// Strategies and checks shared by the decoders' property tests.
#[cfg(test)]
pub(crate) mod testing {
    use proptest::prelude::*;
    use serde_json::Value;

    /// Every canary contains this; no error may.
    pub const MARK: &str = "cnry";

    /// A canary-marked string, with tails that imitate serde's own message
    /// syntax (quotes, backquotes, ", expected ...", positions).
    pub fn canary() -> impl Strategy<Value = String> + Clone {
        (
            any::<u32>(),
            prop::sample::select(vec![
                "",
                ", expected a string",
                "`, expected one of `A`",
                "\"",
                " at line 1 column 2",
                ": ",
                "\\",
                "eyJhbGciOiJSUzI1NiJ9",
            ]),
        )
            .prop_map(|(n, tail)| format!("{MARK}{n:x}{tail}Zq"))
    }

    /// Random JSON: nested objects and arrays whose keys are canaries or the
    /// schema's names and whose strings are canaries, schema names or
    /// canary-marked URLs.
    pub fn value(names: &'static [&'static str]) -> impl Strategy<Value = Value> + Clone {
        let name = prop::sample::select(names.to_vec()).prop_map(str::to_string);
        let key = prop_oneof![1 => canary(), 2 => name.clone()];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (0u64..300).prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            canary().prop_map(Value::String),
            canary().prop_map(|c| Value::String(format!("https://{c}"))),
            name.prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Every place (JSON pointer) of a value, the root included.
    pub fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    pointers(x, format!("{at}/{k}"), out);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    pointers(x, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
        out.push(at);
    }

    /// A valid `template` with up to three of its places replaced by random
    /// values: the decoders go deep before they fail.
    pub fn mutated(
        template: Value,
        names: &'static [&'static str],
    ) -> impl Strategy<Value = Value> {
        let mut ptrs = Vec::new();
        pointers(&template, String::new(), &mut ptrs);
        prop::collection::vec((prop::sample::select(ptrs), value(names)), 1..4).prop_map(
            move |edits| {
                let mut v = template.clone();
                for (p, x) in edits {
                    if p.is_empty() {
                        v = x;
                    } else if let Some(slot) = v.pointer_mut(&p) {
                        *slot = x;
                    }
                }
                v
            },
        )
    }

    /// Every key and string of a value.
    pub fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::String(s) => out.push(s),
            Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            Value::Object(m) => {
                for (k, x) in m {
                    out.push(k);
                    strings(x, out);
                }
            }
            _ => {}
        }
    }

    /// No string of the input of 6 characters or more, other than the
    /// schema's names, appears in the error; nor does any canary.
    pub fn assert_clean(err: &str, input: &Value, names: &[&str]) -> Result<(), TestCaseError> {
        prop_assert!(!err.contains(MARK), "canary in error: {err}");
        let mut all = Vec::new();
        strings(input, &mut all);
        for s in all {
            if s.chars().count() >= 6 && !names.contains(&s) {
                prop_assert!(!err.contains(s), "input string {s:?} in error: {err}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::testing::{assert_clean, canary, mutated, value, MARK};
    use super::*;
    use crate::model::{
        BucketAssignment, ClusterDoc, Credentials, MasterDoc, MonitorDoc, ProvisioningState,
        Secret, CLUSTER_NAMES, MASTER_NAMES, MONITOR_NAMES,
    };

    const C: &str = "cnry-eyJhbGciOiJSUzI1NiJ9-Zq";

    fn cluster() -> Value {
        json!({
            "id": "c1",
            "bucket": 7,
            "provisioningState": "Succeeded",
            "apiServer": "https://api.c1:6443",
            "credentials": {
                "caBundle": "PEM",
                "token": "tok",
                "clientCertificate": "PEM",
                "clientKey": "KEY",
                "insecureSkipTlsVerify": true
            },
            "encryptedCredentials": "v1:x",
            "labels": {"env": "prod"}
        })
    }

    fn monitor() -> Value {
        serde_json::to_value(MonitorDoc::decode(&monitor_raw()).unwrap()).unwrap()
    }

    fn monitor_raw() -> String {
        json!({
            "id": "m1",
            "hostname": "h",
            "version": "1",
            "startedAt": "2024-01-01T00:00:00Z",
            "adminUrl": "http://a",
            "draining": true,
            "expiresAtMs": 5,
            "heartbeatAtMs": 4,
            "stats": {"buckets": 1, "cacheSize": 2, "checksPerS": 1.5, "ready": true, "failing": 1}
        })
        .to_string()
    }

    fn master() -> Value {
        let mut m = MasterDoc::empty();
        m.lease_owner = Some("m1".into());
        m.lease_expires_ms = 9;
        m.generation = 3;
        m.buckets.truncate(2);
        m.buckets[0] = BucketAssignment {
            owner: Some("m1".into()),
            prev: Some("m2".into()),
            handoff_at_ms: 7,
            earlier: vec![crate::model::Handoff {
                monitor: "m3".into(),
                until_ms: 5,
            }],
        };
        serde_json::to_value(m).unwrap()
    }

    fn keys(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    out.insert(k.clone());
                    keys(x, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| keys(x, out)),
            _ => {}
        }
    }

    #[test]
    fn names_lists_cover_every_field_of_the_documents() {
        let full = ClusterDoc {
            id: "c".into(),
            bucket: 1,
            provisioning_state: ProvisioningState::Failed,
            api_server: "https://x".into(),
            credentials: Credentials {
                ca_bundle: Some("p".into()),
                token: Some(Secret::new("t")),
                client_certificate: Some("p".into()),
                client_key: Some(Secret::new("k")),
                insecure_skip_tls_verify: true,
            },
            encrypted_credentials: Some("s".into()),
            labels: [("k".to_string(), "v".to_string())].into(),
        };
        let mut k = BTreeSet::new();
        keys(&serde_json::to_value(full).unwrap(), &mut k);
        k.remove("k");
        for f in &k {
            assert!(
                CLUSTER_NAMES.contains(&f.as_str()),
                "{f} missing from CLUSTER_NAMES"
            );
        }
        let mut k = BTreeSet::new();
        keys(&monitor(), &mut k);
        for f in &k {
            assert!(
                MONITOR_NAMES.contains(&f.as_str()),
                "{f} missing from MONITOR_NAMES"
            );
        }
        let mut k = BTreeSet::new();
        keys(&master(), &mut k);
        for f in &k {
            assert!(
                MASTER_NAMES.contains(&f.as_str()),
                "{f} missing from MASTER_NAMES"
            );
        }
    }

    /// Wrong values for a field: every JSON type, each carrying the canary
    /// where it can.
    fn wrong_values() -> Vec<(&'static str, Value)> {
        vec![
            ("string", json!(C)),
            ("integer", json!(300)),
            ("integer", json!(-1)),
            ("floating point", json!(1.5)),
            ("boolean", json!(true)),
            ("sequence", json!([C])),
            ("map", json!({ C: C })),
        ]
    }

    /// Whether `v` is an acceptable value at `field` (right type).
    fn accepted(field: &str, v: &Value) -> bool {
        match field {
            "bucket" => v.as_u64().is_some_and(|n| n < 256),
            "credentials.insecureSkipTlsVerify" => v.is_boolean(),
            "labels" => v.is_object(),
            // serde takes a struct from a sequence too (fields in order).
            "credentials" => v.is_object() || v.is_array(),
            "provisioningState" => false,
            _ => v.is_string(),
        }
    }

    fn set(doc: &mut Value, field: &str, v: Value) {
        let ptr = format!("/{}", field.replace('.', "/"));
        *doc.pointer_mut(&ptr).unwrap() = v;
    }

    #[test]
    fn a_canary_in_any_field_of_a_cluster_document_is_never_echoed() {
        let fields = [
            "id",
            "bucket",
            "provisioningState",
            "apiServer",
            "credentials",
            "credentials.caBundle",
            "credentials.token",
            "credentials.clientCertificate",
            "credentials.clientKey",
            "credentials.insecureSkipTlsVerify",
            "encryptedCredentials",
            "labels",
            "labels.env",
        ];
        let mut cases = 0;
        for field in fields {
            let mut values = wrong_values();
            if field == "provisioningState" {
                values.push(("variant", json!(C)));
            }
            for (kind, v) in values {
                if accepted(field, &v) {
                    continue;
                }
                let mut doc = cluster();
                set(&mut doc, field, v.clone());
                let raw = doc.to_string();
                let e = match ClusterDoc::decode(&raw) {
                    Err(e) => e,
                    Ok(_) => panic!("{field}={v} was accepted"),
                };
                cases += 1;
                assert!(!e.contains("cnry"), "{field}={v}: {e}");
                assert!(!e.contains("eyJhbGci"), "{field}={v}: {e}");
                let shown = if field == "labels.env" {
                    "labels.<key>"
                } else {
                    field
                };
                assert!(
                    e.contains(&format!("document: {shown}: ")),
                    "{field}={v}: error does not name the field: {e}"
                );
                if field == "provisioningState" && !v.is_string() {
                    // serde_json stops at the token: a position, no value.
                    assert!(e.contains("expected") || e.contains("at line 1"), "{e}");
                } else if field == "provisioningState" {
                    assert!(e.contains("unknown variant, expected one of"), "{e}");
                } else if field == "bucket" && v.is_number() {
                    assert!(e.contains("expected u8"), "{e}");
                } else if kind != "variant" {
                    assert!(e.contains(&format!("invalid type {kind}, expected")), "{e}");
                }
                // The same through a parsed value (Cosmos DB's path).
                let e2 = json_value::<ClusterDoc>(doc, CLUSTER_NAMES).unwrap_err();
                assert!(!e2.as_str().contains("cnry"), "{e2}");
            }
        }
        assert!(cases > 60, "{cases}");
        // A label key is a value: shown as <key>.
        let mut doc = cluster();
        doc["labels"] = json!({ C: 5 });
        let e = ClusterDoc::decode(&doc.to_string()).unwrap_err();
        assert!(
            e.contains("labels.<key>: invalid type integer, expected a string"),
            "{e}"
        );
        assert!(!e.contains("cnry"), "{e}");
        // The two cases, word for word.
        let mut doc = cluster();
        doc["credentials"] = json!("eyJhbGciOi-cnry");
        let e = ClusterDoc::decode(&doc.to_string()).unwrap_err();
        assert_eq!(
            e,
            "invalid cluster document: credentials: invalid type string, expected struct Credentials"
        );
        let mut doc = cluster();
        doc["credentials"]["insecureSkipTlsVerify"] = json!("cnry-true");
        let e = ClusterDoc::decode(&doc.to_string()).unwrap_err();
        assert_eq!(
            e,
            "invalid cluster document: credentials.insecureSkipTlsVerify: invalid type string, expected a boolean"
        );
        // A missing field is named; an invalid apiServer names the field only.
        let mut doc = cluster();
        doc.as_object_mut().unwrap().remove("apiServer");
        let e = ClusterDoc::decode(&doc.to_string()).unwrap_err();
        assert!(e.ends_with("missing field `apiServer`"), "{e}");
        let mut doc = cluster();
        doc["id"] = json!(C);
        doc["apiServer"] = json!(format!("ftp://{C}"));
        let e = ClusterDoc::decode(&doc.to_string()).unwrap_err();
        assert!(e.contains("apiServer") && !e.contains("cnry"), "{e}");
    }

    #[test]
    fn syntax_errors_keep_only_the_position() {
        for raw in [
            format!("{{\"token\": \"{C}"),
            format!("{{\"token\": {C}}}"),
            format!("{{\"id\": \"c1\"}} {C}"),
            format!("{{\"id\": \"c1\", \"id\": \"{C}\"}}"),
            format!("[\"{C}\" \"{C}\"]"),
            C.to_string(),
            String::new(),
        ] {
            let e = ClusterDoc::decode(&raw).unwrap_err();
            assert!(!e.contains("cnry"), "{raw}: {e}");
        }
        let e = json_str::<ClusterDoc>("{\"id\": x}", CLUSTER_NAMES).unwrap_err();
        assert_eq!(e.as_str(), "id: syntax error at line 1 column 8");
        let e = json_str::<ClusterDoc>("{\"id\": ", CLUSTER_NAMES).unwrap_err();
        assert_eq!(e.as_str(), "id: unexpected end of input at line 1 column 7");
    }

    #[test]
    fn messages_are_rebuilt_from_their_kind_never_passed_through() {
        let n = CLUSTER_NAMES;
        assert_eq!(
            classify(
                "invalid type: string \"a, expected b\", expected a boolean",
                n
            ),
            "invalid type string, expected a boolean"
        );
        assert_eq!(
            classify("invalid type: floating point `1.5`, expected u8", n),
            "invalid type floating point, expected u8"
        );
        assert_eq!(
            classify("invalid type: weird cnry, expected x", n),
            "invalid type, expected x"
        );
        assert_eq!(
            classify("invalid value: integer `300`, expected u8", n),
            "invalid value, expected u8"
        );
        assert_eq!(
            classify(
                "unknown variant `cnry, expected one of`, expected one of `A`, `B`",
                n
            ),
            "unknown variant, expected one of `A`, `B`"
        );
        assert_eq!(
            classify("unknown variant `cnry`, there are no variants", n),
            "unknown variant"
        );
        assert_eq!(
            classify("missing field `apiServer`", n),
            "missing field `apiServer`"
        );
        assert_eq!(classify("missing field `cnry`", n), "missing field");
        assert_eq!(classify("duplicate field `id`", n), "duplicate field `id`");
        assert_eq!(
            classify("invalid length 3, expected fewer elements in array", n),
            "invalid length 3, expected fewer elements in array"
        );
        assert_eq!(classify("invalid length cnry", n), "invalid length");
        assert_eq!(
            classify("input contains invalid characters: cnry", n),
            "invalid value"
        );
        assert_eq!(classify("premature end of input", n), "invalid value");
    }

    #[test]
    fn monitor_and_master_documents_decode_and_fail_safely() {
        assert!(MonitorDoc::decode(&monitor_raw()).is_ok());
        assert!(MasterDoc::decode(&master().to_string()).is_ok());
        let mut m = monitor();
        m["startedAt"] = json!(C);
        let e = MonitorDoc::decode(&m.to_string()).unwrap_err();
        assert_eq!(e, "invalid monitor document: startedAt: invalid value");
        let mut m = master();
        m["buckets"][1]["owner"] = json!({ C: C });
        let e = MasterDoc::decode_value(m).unwrap_err();
        assert_eq!(
            e,
            "invalid master document: buckets[1].owner: invalid type map, expected a string"
        );
    }

    fn check_cluster(v: &Value) -> Result<(), TestCaseError> {
        if let Err(e) = ClusterDoc::decode(&v.to_string()) {
            assert_clean(&e, v, CLUSTER_NAMES)?;
        }
        if let Err(e) = json_value::<ClusterDoc>(v.clone(), CLUSTER_NAMES) {
            assert_clean(e.as_str(), v, CLUSTER_NAMES)?;
        }
        Ok(())
    }

    fn check_monitor(v: &Value) -> Result<(), TestCaseError> {
        if let Err(e) = MonitorDoc::decode(&v.to_string()) {
            assert_clean(&e, v, MONITOR_NAMES)?;
        }
        if let Err(e) = MonitorDoc::decode_value(v.clone()) {
            assert_clean(&e, v, MONITOR_NAMES)?;
        }
        Ok(())
    }

    fn check_master(v: &Value) -> Result<(), TestCaseError> {
        if let Err(e) = MasterDoc::decode(&v.to_string()) {
            assert_clean(&e, v, MASTER_NAMES)?;
        }
        if let Err(e) = MasterDoc::decode_value(v.clone()) {
            assert_clean(&e, v, MASTER_NAMES)?;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decode_cluster_random_values_never_echo(v in value(CLUSTER_NAMES)) {
            check_cluster(&v)?;
        }

        #[test]
        fn decode_cluster_mutated_documents_never_echo(v in mutated(cluster(), CLUSTER_NAMES)) {
            check_cluster(&v)?;
        }

        #[test]
        fn decode_monitor_documents_never_echo(
            v in prop_oneof![value(MONITOR_NAMES).boxed(), mutated(monitor(), MONITOR_NAMES).boxed()]
        ) {
            check_monitor(&v)?;
        }

        #[test]
        fn decode_master_documents_never_echo(
            v in prop_oneof![value(MASTER_NAMES).boxed(), mutated(master(), MASTER_NAMES).boxed()]
        ) {
            check_master(&v)?;
        }

        #[test]
        fn decode_broken_text_keeps_only_positions(
            v in mutated(cluster(), CLUSTER_NAMES),
            cut in any::<prop::sample::Index>(),
            junk in canary(),
        ) {
            let raw = v.to_string();
            let at = cut.index(raw.len() + 1);
            let at = (0..=at).rev().find(|i| raw.is_char_boundary(*i)).unwrap_or(0);
            for text in [raw[..at].to_string(), format!("{}{junk}{}", &raw[..at], &raw[at..])] {
                if let Err(e) = ClusterDoc::decode(&text) {
                    prop_assert!(!e.contains(MARK), "{text}: {e}");
                    assert_clean(&e, &v, CLUSTER_NAMES)?;
                }
            }
        }
    }
}
