//! Geneva MDM's statsd dialect: the metric name is a JSON object naming the
//! account, namespace, dimensions and timestamp; the value is `|g` for
//! integers and `|f` for floats; one metric per line.
//!
//! ```text
//! {"Metric":"monitor.heartbeat","Account":"acct","Namespace":"BBM","Dims":{"hostname":"vm1"},"TS":"2026-08-20T17:53:36.000"}:1|g
//! ```
//!
//! The converter takes the DogStatsD line cadence formatted, so every metric
//! is defined and emitted the same way whatever the output dialect.

use chrono::{DateTime, Utc};

/// Account and namespace; empty ones are sent as `*`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MdmConfig {
    pub account: String,
    pub namespace: String,
}

/// `YYYY-MM-DDTHH:MM:SS.mmm` in UTC.
pub fn timestamp(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3f")
        .to_string()
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json escapes exactly as JSON requires.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// Converts one DogStatsD line (`name:value|type[|@rate][|#k:v,...]`) into an
/// MDM line with its trailing newline. `None` for a line it cannot parse.
pub fn from_dogstatsd(line: &str, cfg: &MdmConfig, at_ms: i64) -> Option<String> {
    let (name, rest) = line.split_once(':')?;
    let mut parts = rest.split('|');
    let value = parts.next()?;
    let _kind = parts.next()?;
    let mut tags = "";
    for p in parts {
        if let Some(t) = p.strip_prefix('#') {
            tags = t;
        }
    }
    let suffix = if value.parse::<i64>().is_ok() || value.parse::<u64>().is_ok() {
        "g"
    } else if value.parse::<f64>().is_ok_and(f64::is_finite) {
        "f"
    } else {
        return None;
    };
    let or_star = |s: &str| {
        if s.is_empty() {
            "*".to_string()
        } else {
            s.to_string()
        }
    };
    let mut out = String::with_capacity(line.len() + 128);
    out.push_str("{\"Metric\":");
    push_json_str(&mut out, name);
    out.push_str(",\"Account\":");
    push_json_str(&mut out, &or_star(&cfg.account));
    out.push_str(",\"Namespace\":");
    push_json_str(&mut out, &or_star(&cfg.namespace));
    out.push_str(",\"Dims\":{");
    let mut first = true;
    for tag in tags.split(',').filter(|t| !t.is_empty()) {
        let (k, v) = tag.split_once(':').unwrap_or((tag, ""));
        if !first {
            out.push(',');
        }
        first = false;
        push_json_str(&mut out, k);
        out.push(':');
        push_json_str(&mut out, v);
    }
    out.push_str("},\"TS\":");
    push_json_str(&mut out, &timestamp(at_ms));
    out.push_str("}:");
    out.push_str(value);
    out.push('|');
    out.push_str(suffix);
    out.push('\n');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: i64 = 1_787_248_416_000; // 2026-08-20T17:53:36.000Z

    #[test]
    fn byte_exact_gauge_as_in_the_reference() {
        let cfg = MdmConfig {
            account: "acct".into(),
            namespace: "BBM".into(),
        };
        let got = from_dogstatsd(
            "monitor.heartbeat:1|g|#hostname:vm1,location:eastus",
            &cfg,
            TS,
        )
        .unwrap();
        assert_eq!(
            got,
            "{\"Metric\":\"monitor.heartbeat\",\"Account\":\"acct\",\"Namespace\":\"BBM\",\"Dims\":{\"hostname\":\"vm1\",\"location\":\"eastus\"},\"TS\":\"2026-08-20T17:53:36.000\"}:1|g\n"
        );
    }

    #[test]
    fn floats_counters_timers_empty_config_and_escaping() {
        let cfg = MdmConfig::default();
        assert_eq!(
            from_dogstatsd("x.y:2.5|g", &cfg, TS + 7).unwrap(),
            "{\"Metric\":\"x.y\",\"Account\":\"*\",\"Namespace\":\"*\",\"Dims\":{},\"TS\":\"2026-08-20T17:53:36.007\"}:2.5|f\n"
        );
        assert!(from_dogstatsd("c:3|c|#monitor:m1", &cfg, TS)
            .unwrap()
            .ends_with("\"Dims\":{\"monitor\":\"m1\"},\"TS\":\"2026-08-20T17:53:36.000\"}:3|g\n"));
        assert!(from_dogstatsd("t:12|ms|#a:b", &cfg, TS)
            .unwrap()
            .ends_with("}:12|g\n"));
        let esc = from_dogstatsd("q:1|g|#team:a\"b", &cfg, TS).unwrap();
        assert!(esc.contains("\"team\":\"a\\\"b\""), "{esc}");
        // A tag value with ':' keeps everything after the first ':'.
        assert!(from_dogstatsd("u:1|g|#url:http://x:1", &cfg, TS)
            .unwrap()
            .contains("\"url\":\"http://x:1\""));
        assert!(from_dogstatsd("garbage", &cfg, TS).is_none());
        assert!(from_dogstatsd("n:abc|g", &cfg, TS).is_none());
    }
}
