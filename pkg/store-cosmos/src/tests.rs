//! Unit tests that need no endpoint. The contract suite against a real
//! Cosmos REST endpoint is in `tests/contract.rs`.

use super::*;

#[test]
fn system_properties_and_ttl_are_stripped() {
    let v = serde_json::json!({"id": "a", "bucket": 3, "_etag": "\"1\"", "_ts": 5, "_rid": "x", "ttl": 70});
    let raw = to_raw(v).unwrap();
    assert_eq!(raw.id, "a");
    let back: Value = serde_json::from_str(&raw.body).unwrap();
    assert_eq!(back, serde_json::json!({"id": "a", "bucket": 3}));
    assert!(
        to_raw(serde_json::json!({"bucket": 3})).is_none(),
        "no id: skipped"
    );
}

#[test]
fn key_auth_debug_is_redacted() {
    let a = CosmosAuth::Key("very-secret-key".into());
    assert_eq!(format!("{a:?}"), "Key(<redacted>)");
    let cfg = CosmosConfig {
        url: CosmosUrl::parse("cosmos://127.0.0.1:1/db").unwrap(),
        auth: a,
        region: "East US".into(),
        retry: RetryPolicy::default(),
    };
    assert!(!format!("{cfg:?}").contains("very-secret-key"));
}
