//! Documents shared with the store: clusters (written by the RP), monitor
//! heartbeats and the master document. Field names are camelCase on the wire.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Number of buckets the fleet is split into. Every cluster lives in one.
pub const BUCKETS: usize = 256;

/// Provisioning state of a cluster document, as the RP writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProvisioningState {
    Creating,
    Succeeded,
    Updating,
    Deleting,
    Failed,
}

impl ProvisioningState {
    /// Clusters being created or deleted are not checked: their API server
    /// is expected to be absent.
    pub fn is_checkable(self) -> bool {
        !matches!(self, Self::Creating | Self::Deleting)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "Creating",
            Self::Succeeded => "Succeeded",
            Self::Updating => "Updating",
            Self::Deleting => "Deleting",
            Self::Failed => "Failed",
        }
    }
}

impl std::str::FromStr for ProvisioningState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "Creating" => Self::Creating,
            "Succeeded" => Self::Succeeded,
            "Updating" => Self::Updating,
            "Deleting" => Self::Deleting,
            "Failed" => Self::Failed,
            other => {
                return Err(format!(
                    "unknown provisioning state {other:?} (Creating, Succeeded, Updating, Deleting, Failed)"
                ))
            }
        })
    }
}

/// A string that must never be printed: tokens, private keys.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret material. Call only where it is used (building a request).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How to reach a cluster's API server. The cluster checks define how each
/// field is used; Debug never shows secret material.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// PEM CA bundle the API server's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// PEM client certificate (public).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<Secret>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_tls_verify: bool,
}

impl Credentials {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The four texts, in a fixed order: CA bundle, token, client
    /// certificate, client key.
    pub fn texts(&self) -> [Option<&str>; 4] {
        [
            self.ca_bundle.as_deref(),
            self.token.as_ref().map(Secret::expose),
            self.client_certificate.as_deref(),
            self.client_key.as_ref().map(Secret::expose),
        ]
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("ca_bundle", &self.ca_bundle.as_ref().map(|_| "<pem>"))
            .field("token", &self.token)
            .field(
                "client_certificate",
                &self.client_certificate.as_ref().map(|_| "<pem>"),
            )
            .field("client_key", &self.client_key)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .finish()
    }
}

/// One cluster, as the RP writes it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDoc {
    pub id: String,
    pub bucket: u8,
    pub provisioning_state: ProvisioningState,
    pub api_server: String,
    #[serde(default, skip_serializing_if = "Credentials::is_empty")]
    pub credentials: Credentials,
    /// `credentials` sealed with the secrets key (see `secrets`); when set,
    /// `credentials` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_credentials: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl fmt::Debug for ClusterDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterDoc")
            .field("id", &self.id)
            .field("bucket", &self.bucket)
            .field("provisioning_state", &self.provisioning_state)
            .field("api_server", &self.api_server)
            .field("credentials", &self.credentials)
            .field(
                "encrypted_credentials",
                &self.encrypted_credentials.as_ref().map(|_| "<sealed>"),
            )
            .field("labels", &self.labels)
            .finish()
    }
}

impl ClusterDoc {
    /// Decodes and validates a stored document through [`crate::decode`]:
    /// the error names the field and the expected type, never a value (the
    /// document may hold credentials).
    pub fn decode(raw: &str) -> Result<Self, String> {
        let doc: ClusterDoc = crate::decode::json_str(raw, CLUSTER_NAMES)
            .map_err(|e| format!("invalid cluster document: {e}"))?;
        doc.validate()?;
        Ok(doc)
    }

    /// Checks what the types do not; the error quotes no value.
    pub fn validate(&self) -> Result<(), String> {
        validate_id(&self.id)?;
        if !(self.api_server.starts_with("http://") || self.api_server.starts_with("https://")) {
            return Err("apiServer must be an http:// or https:// URL".into());
        }
        // The cache packs them with 32-bit offsets (`feed::PackedCredentials`).
        let texts = self.credentials.texts();
        if texts.iter().flatten().map(|t| t.len()).sum::<usize>() >= u32::MAX as usize {
            return Err("credentials must be under 4 GiB together".into());
        }
        Ok(())
    }
}

/// The names of the cluster document's schema (fields, nested fields,
/// provisioning states): the only input words a decode error may show.
pub const CLUSTER_NAMES: &[&str] = &[
    "id",
    "bucket",
    "provisioningState",
    "apiServer",
    "credentials",
    "caBundle",
    "token",
    "clientCertificate",
    "clientKey",
    "insecureSkipTlsVerify",
    "encryptedCredentials",
    "labels",
    "Creating",
    "Succeeded",
    "Updating",
    "Deleting",
    "Failed",
];

/// The names of the monitor document's schema.
pub const MONITOR_NAMES: &[&str] = &[
    "id",
    "hostname",
    "version",
    "startedAt",
    "adminUrl",
    "draining",
    "expiresAtMs",
    "heartbeatAtMs",
    "clockOk",
    "clockOffsetMs",
    "stats",
    "buckets",
    "cacheSize",
    "checksPerS",
    "ready",
    "failing",
];

/// The names of the master document's schema.
pub const MASTER_NAMES: &[&str] = &[
    "schemaVersion",
    "leaseOwner",
    "leaseExpiresMs",
    "generation",
    "buckets",
    "owner",
    "prev",
    "handoffAtMs",
    "earlier",
    "monitor",
    "untilMs",
];

/// Ids are used in URLs, metric tags and file names: keep them plain.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 512 {
        return Err("id must be 1 to 512 characters".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| c.is_control() || matches!(c, ',' | '|' | '#' | '?' | '\\'))
    {
        return Err(format!("id contains a forbidden character {c:?}"));
    }
    Ok(())
}

/// Live statistics a monitor publishes in its heartbeat, for `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MonitorStats {
    pub buckets: u32,
    pub cache_size: u64,
    pub checks_per_s: f64,
    /// Whether the monitor was ready at its last heartbeat.
    pub ready: bool,
    /// Clusters whose last check by this monitor failed.
    pub failing: u32,
}

/// A monitor's heartbeat document. It is live while `expires_at_ms` is in
/// the future; stores with native TTL also expire it by themselves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitorDoc {
    pub id: String,
    pub hostname: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    /// Admin API base URL; empty until the operator tooling adds one.
    #[serde(default)]
    pub admin_url: String,
    #[serde(default)]
    pub draining: bool,
    /// Unix milliseconds after which the document is dead.
    pub expires_at_ms: i64,
    /// Unix milliseconds of the write (the writer's clock: peers only watch
    /// it change, they never compare it with their own clock).
    #[serde(default)]
    pub heartbeat_at_ms: i64,
    /// Whether the writer's clock is within `--max-clock-offset` of the
    /// fleet's (as it measured it); a monitor that says no, or has not
    /// measured yet, gets no bucket and takes no lease. Absent (an older
    /// version): yes.
    #[serde(default = "yes")]
    pub clock_ok: bool,
    /// The writer's estimate of its clock minus the fleet's, in ms.
    #[serde(default)]
    pub clock_offset_ms: i64,
    #[serde(default)]
    pub stats: MonitorStats,
}

fn yes() -> bool {
    true
}

/// Who checks a bucket. During a handoff the previous owner keeps the
/// clusters due before `handoff_at_ms`, the new owner takes those due at or
/// after it: no gap, no duplicate.
///
/// A bucket that moves again before its handoff time keeps the pending
/// handoff as a link of `earlier`: its first owner still checks what is
/// due before the first handoff time (it may not have read the newer table
/// yet), the one it was moving to what is due from then to the new handoff
/// time, and the new owner the rest. Every monitor's role in the older
/// table then holds in the newer one until its own handoff time, so no
/// monitor has to read the newer table sooner than a handoff's notice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketAssignment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub handoff_at_ms: i64,
    /// Earlier links of a handoff chain, oldest first, each `until_ms` at
    /// most the next one's (and at most `handoff_at_ms`). Absent in tables
    /// an older version wrote; an older version ignores it (and then reads
    /// the chain as the single handoff to `prev`, as it always did).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<Handoff>,
}

/// One earlier link of a handoff chain: `monitor` checks the bucket's
/// clusters due before `until_ms` (and after the link before it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handoff {
    pub monitor: String,
    pub until_ms: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl BucketAssignment {
    pub fn owned_by(owner: &str) -> Self {
        Self {
            owner: Some(owner.to_string()),
            ..Self::default()
        }
    }

    /// Which monitor checks a cluster of this bucket that is due at `due_ms`.
    pub fn owner_at(&self, due_ms: i64) -> Option<&str> {
        if let Some(h) = self.earlier.iter().find(|h| due_ms < h.until_ms) {
            return Some(&h.monitor);
        }
        if due_ms < self.handoff_at_ms {
            self.prev.as_deref()
        } else {
            self.owner.as_deref()
        }
    }

    /// Whether `me` checks, or will check, clusters of this bucket as of `now_ms`.
    pub fn involves(&self, me: &str, now_ms: i64) -> bool {
        self.owner.as_deref() == Some(me) || self.handing_over_until(me) > now_ms
    }

    /// Until when `me` checks this bucket's clusters as one of the monitors
    /// handing it over (`prev` or a link of `earlier`); `i64::MIN` if it is
    /// neither.
    pub fn handing_over_until(&self, me: &str) -> i64 {
        let prev = if self.prev.as_deref() == Some(me) {
            self.handoff_at_ms
        } else {
            i64::MIN
        };
        self.earlier
            .iter()
            .filter(|h| h.monitor == me)
            .map(|h| h.until_ms)
            .fold(prev, i64::max)
    }

    /// Whether the bucket is being handed over at `now_ms`, give or take
    /// `skew_ms` (how far apart two monitors' change feeds may deliver one
    /// document): a fresh cluster in it waits for its grid slot rather than
    /// being checked at once. Timed, not read from whether `prev` is
    /// listed: a finished handoff lingers in the table
    /// (`balance::PassTiming::linger_ms`) and must not slow new clusters.
    pub fn in_handoff(&self, now_ms: i64, skew_ms: i64) -> bool {
        let last = self.earlier.iter().map(|h| h.until_ms).fold(
            if self.prev.is_some() {
                self.handoff_at_ms
            } else {
                i64::MIN
            },
            i64::max,
        );
        last != i64::MIN && now_ms < last.saturating_add(skew_ms)
    }
}

impl MonitorDoc {
    /// Decodes a heartbeat document read from a store (text) through
    /// [`crate::decode`]: errors name fields, never values.
    pub fn decode(raw: &str) -> Result<Self, String> {
        crate::decode::json_str(raw, MONITOR_NAMES)
            .map_err(|e| format!("invalid monitor document: {e}"))
    }

    /// Same, from a parsed JSON value.
    pub fn decode_value(v: serde_json::Value) -> Result<Self, String> {
        crate::decode::json_value(v, MONITOR_NAMES)
            .map_err(|e| format!("invalid monitor document: {e}"))
    }
}

/// The master document: the lease and the bucket assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MasterDoc {
    /// The document's schema; a version this build does not know is
    /// treated as invalid (and repaired).
    #[serde(default = "schema_v1")]
    pub schema_version: u32,
    #[serde(default)]
    pub lease_owner: Option<String>,
    /// Unix milliseconds; the lease is free once this has passed.
    #[serde(default)]
    pub lease_expires_ms: i64,
    /// Increases on every change of assignment.
    #[serde(default)]
    pub generation: u64,
    pub buckets: Vec<BucketAssignment>,
}

/// The master document schema this build writes and reads.
pub const MASTER_SCHEMA_VERSION: u32 = 1;

fn schema_v1() -> u32 {
    1
}

impl MasterDoc {
    pub fn empty() -> Self {
        Self {
            schema_version: MASTER_SCHEMA_VERSION,
            lease_owner: None,
            lease_expires_ms: 0,
            generation: 0,
            buckets: vec![BucketAssignment::default(); BUCKETS],
        }
    }

    pub fn lease_held_at(&self, now_ms: i64) -> Option<&str> {
        match &self.lease_owner {
            Some(owner) if self.lease_expires_ms > now_ms => Some(owner),
            _ => None,
        }
    }

    /// Decodes the master document read from a store (text) through
    /// [`crate::decode`]: errors name fields, never values.
    pub fn decode(raw: &str) -> Result<Self, String> {
        crate::decode::json_str(raw, MASTER_NAMES)
            .map_err(|e| format!("invalid master document: {e}"))
            .and_then(Self::known_schema)
    }

    /// Same, from a parsed JSON value.
    pub fn decode_value(v: serde_json::Value) -> Result<Self, String> {
        crate::decode::json_value(v, MASTER_NAMES)
            .map_err(|e| format!("invalid master document: {e}"))
            .and_then(Self::known_schema)
    }

    fn known_schema(self) -> Result<Self, String> {
        if self.schema_version > MASTER_SCHEMA_VERSION {
            return Err(format!(
                "invalid master document: schemaVersion {} is newer than this build's {}",
                self.schema_version, MASTER_SCHEMA_VERSION
            ));
        }
        Ok(self)
    }

    /// A document read from a store may be short or long if it was edited by
    /// hand: normalise it to exactly BUCKETS entries.
    pub fn normalised(mut self) -> Self {
        self.buckets.resize(BUCKETS, BucketAssignment::default());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> ClusterDoc {
        ClusterDoc {
            id: "c1".into(),
            bucket: 7,
            provisioning_state: ProvisioningState::Succeeded,
            api_server: "https://api.c1:6443".into(),
            credentials: Credentials {
                token: Some(Secret::new("s3cr3t-token")),
                client_key: Some(Secret::new("-----BEGIN KEY-----")),
                ..Default::default()
            },
            encrypted_credentials: None,
            labels: BTreeMap::from([("env".into(), "prod".into())]),
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let s = format!("{:?}", doc());
        assert!(!s.contains("s3cr3t"), "{s}");
        assert!(!s.contains("BEGIN KEY"), "{s}");
        assert!(s.contains("<redacted>"));
    }

    #[test]
    fn decode_round_trip_and_errors() {
        let d = doc();
        let raw = serde_json::to_string(&d).unwrap();
        assert_eq!(ClusterDoc::decode(&raw).unwrap(), d);
        let bad_bucket = raw.replace("\"bucket\":7", "\"bucket\":300");
        let e = ClusterDoc::decode(&bad_bucket).unwrap_err();
        assert!(e.contains("invalid cluster document"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let bad_state = raw.replace("Succeeded", "Exploded");
        assert!(ClusterDoc::decode(&bad_state).is_err());
        assert!(ClusterDoc::decode("{not json").is_err());
        let bad_url = raw.replace("https://api.c1:6443", "ftp://x");
        assert!(ClusterDoc::decode(&bad_url)
            .unwrap_err()
            .contains("apiServer"));
    }

    #[test]
    fn owner_at_respects_handoff() {
        let a = BucketAssignment {
            owner: Some("new".into()),
            prev: Some("old".into()),
            handoff_at_ms: 1000,
            ..Default::default()
        };
        assert_eq!(a.owner_at(999), Some("old"));
        assert_eq!(a.owner_at(1000), Some("new"));
        assert!(a.involves("old", 999));
        assert!(!a.involves("old", 1000));
        assert!(a.involves("new", 0));
    }

    #[test]
    fn checkable_states() {
        use ProvisioningState::*;
        assert!(!Creating.is_checkable());
        assert!(!Deleting.is_checkable());
        assert!(Succeeded.is_checkable() && Updating.is_checkable() && Failed.is_checkable());
    }
}
