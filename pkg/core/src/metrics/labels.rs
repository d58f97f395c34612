//! A cluster's labels as metric tags, bounded and sanitised once, when its
//! document is decoded (`ClusterEntry::from_doc`), never on the emit path.
//!
//! Every per-cluster line carries `resourceId` and the label tags; a label
//! that would make the line too long for one datagram (DogStatsD over UDP)
//! or one MDM line is left out and counted in
//! `monitor.metrics.labels.dropped` with its reason, so the cluster's own
//! metrics always go out. The bounds below are sized so that the longest
//! per-cluster metric, with clustermon's own tags, a 512-byte id and the
//! full label budget, fits [`MAX_LINE`] in both dialects (tested).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::OnceLock;

use super::{names, sanitize_tag, Metrics, CATALOG};

/// Largest line (and UDP datagram payload) sent: 1500-byte Ethernet MTU minus
/// IPv6/UDP headers and slack for tunnels, so no datagram is ever fragmented.
pub const MAX_LINE: usize = 1432;
/// Label tags per line: dashboards slice by a handful of labels, and each tag
/// costs up to 6 bytes of framing in MDM's JSON.
pub const MAX_LABEL_TAGS: usize = 16;
/// Longest label key kept: Kubernetes label names are at most 63 bytes (plus
/// a prefix); a longer key is not a usable dimension name.
pub const MAX_LABEL_KEY_BYTES: usize = 64;
/// Longest label value kept: Kubernetes label values are at most 63 bytes;
/// 128 allows more, yet one label cannot take most of the budget.
pub const MAX_LABEL_VALUE_BYTES: usize = 128;
/// Bytes of all label tags of a line together, counted as MDM dims
/// (`,"key":"value"`, key + value + 6; DogStatsD's `,key:value` is shorter):
/// what is left of [`MAX_LINE`] after MDM's framing (account and namespace
/// up to 64 bytes each), the longest metric name, a 20-digit value, the
/// `resourceId` of a 512-byte id and 238 bytes of clustermon's own tags.
pub const LABEL_TAGS_BUDGET: usize = 400;
/// Framing of one label tag in the budget (MDM's `,"":""`).
const TAG_OVERHEAD: usize = 6;
/// Dropped labels whose key lengths the warning names (the count is complete).
const LOGGED_DROPS: usize = 4;

/// One tag, as [`cluster_tags`] builds it.
pub type Tag = (Box<str>, Box<str>);

/// A cluster's tags as its entry keeps them for its life: keys and values
/// back to back in one string, with their end offsets. Two allocations
/// whatever the number of labels (a tag of owned strings costs two, each
/// with the allocator's overhead: at 50,000 clusters that was ~5 MB).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tags {
    text: Box<str>,
    /// Where each key ends and where its value ends, in `text`.
    ends: Box<[(u32, u32)]>,
}

impl Tags {
    pub fn new(tags: &[Tag]) -> Self {
        let mut text = String::with_capacity(tags.iter().map(|(k, v)| k.len() + v.len()).sum());
        let mut ends = Vec::with_capacity(tags.len());
        for (k, v) in tags {
            text.push_str(k);
            let k_end = text.len() as u32;
            text.push_str(v);
            ends.push((k_end, text.len() as u32));
        }
        Self {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// `(key, value)` in order: `resourceId` first, then the labels.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0usize;
        self.ends.iter().map(move |&(k, v)| {
            let (k, v) = (k as usize, v as usize);
            let pair = (&self.text[start..k], &self.text[k..v]);
            start = v;
            pair
        })
    }
}

/// Why a label is not a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// Key over [`MAX_LABEL_KEY_BYTES`] or value over [`MAX_LABEL_VALUE_BYTES`].
    TooLong,
    /// Beyond [`MAX_LABEL_TAGS`] labels or [`LABEL_TAGS_BUDGET`] bytes.
    TooMany,
    /// Empty key, a key clustermon's own tags use (`resourceId`, `result`,
    /// ...), or a key equal to an earlier one once sanitised.
    Invalid,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::TooLong,
        DropReason::TooMany,
        DropReason::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooLong => "too_long",
            DropReason::TooMany => "too_many",
            DropReason::Invalid => "invalid",
        }
    }
}

/// The labels of one document version that are not tags: counts per reason
/// and the key and value lengths of the first few (never keys or values).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelDrops {
    counts: [u64; 3],
    first: Vec<(DropReason, usize, usize)>,
}

impl LabelDrops {
    /// No label left out.
    pub fn none() -> &'static LabelDrops {
        static NONE: LabelDrops = LabelDrops {
            counts: [0; 3],
            first: Vec::new(),
        };
        &NONE
    }

    fn add(&mut self, reason: DropReason, key_len: usize, value_len: usize) {
        self.counts[reason as usize] += 1;
        if self.first.len() < LOGGED_DROPS {
            self.first.push((reason, key_len, value_len));
        }
    }

    pub fn count(&self, reason: DropReason) -> u64 {
        self.counts[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Counts the drops of a newly applied document version, and logs them
    /// once per cluster: only when they differ from the previous version's
    /// (`prev`), so an update that keeps the labels does not log again.
    pub fn report(&self, cluster: &str, prev: Option<&LabelDrops>, metrics: &Metrics) {
        for r in DropReason::ALL {
            let n = self.count(r);
            if n > 0 {
                metrics.self_count(names::LABELS_DROPPED, n, &[("reason", r.as_str())]);
            }
        }
        if self.is_empty() || prev == Some(self) {
            return;
        }
        let first: Vec<String> = self
            .first
            .iter()
            .map(|(r, k, v)| format!("{}(key_len={k},value_len={v})", r.as_str()))
            .collect();
        // Lengths only: a label's key or value may be huge or hostile.
        tracing::warn!(
            cluster = %cluster,
            too_long = self.count(DropReason::TooLong),
            too_many = self.count(DropReason::TooMany),
            invalid = self.count(DropReason::Invalid),
            first = %first.join(" "),
            "cluster labels left out of its metric tags"
        );
    }
}

/// Tag names clustermon itself puts on per-cluster (and self) metrics: a
/// label with one of these names would make a duplicate tag.
fn reserved() -> &'static BTreeSet<&'static str> {
    static R: OnceLock<BTreeSet<&'static str>> = OnceLock::new();
    // Built outside any bucket's zone: first asked for while an entry is
    // built in one (`crate::zone`).
    R.get_or_init(|| {
        crate::zone::outside(|| {
            CATALOG
                .iter()
                .flat_map(|m| m.tags.split(','))
                .map(str::trim)
                .filter(|t| !t.is_empty() && *t != "labels")
                .collect()
        })
    })
}

/// A label key as a tag name: ASCII letters, digits and `_ . - /` (what
/// Kubernetes label keys use); anything else becomes `_`.
pub fn sanitize_label_key(k: &str) -> String {
    k.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A label value as a tag value: the statsd separators `| , # :`, JSON's
/// escaped `" \`, control characters and line separators become `_`, so the
/// value reads the same in DogStatsD and needs no escaping in MDM's JSON.
pub fn sanitize_label_value(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_control()
                || matches!(
                    c,
                    '|' | ',' | '#' | ':' | '"' | '\\' | '\u{2028}' | '\u{2029}'
                )
            {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// A cluster's tags: `resourceId` first, then its labels in key order as
/// far as the bounds allow, each sanitised; and what was left out, and why.
pub fn cluster_tags(id: &str, labels: &BTreeMap<String, String>) -> (Vec<Tag>, LabelDrops) {
    let mut tags: Vec<Tag> = Vec::with_capacity(labels.len().min(MAX_LABEL_TAGS) + 1);
    tags.push(("resourceId".into(), sanitize_tag(id).into_boxed_str()));
    let mut drops = LabelDrops::default();
    let mut seen = BTreeSet::new();
    let mut used = 0;
    for (k, v) in labels {
        // Raw lengths: sanitising never makes a string longer.
        if k.len() > MAX_LABEL_KEY_BYTES || v.len() > MAX_LABEL_VALUE_BYTES {
            drops.add(DropReason::TooLong, k.len(), v.len());
            continue;
        }
        let key = sanitize_label_key(k);
        if key.is_empty() || reserved().contains(key.as_str()) || seen.contains(&key) {
            drops.add(DropReason::Invalid, k.len(), v.len());
            continue;
        }
        let value = sanitize_label_value(v);
        let cost = key.len() + value.len() + TAG_OVERHEAD;
        if tags.len() > MAX_LABEL_TAGS || used + cost > LABEL_TAGS_BUDGET {
            drops.add(DropReason::TooMany, k.len(), v.len());
            continue;
        }
        used += cost;
        seen.insert(key.clone());
        tags.push((key.into_boxed_str(), value.into_boxed_str()));
    }
    (tags, drops)
}

#[cfg(test)]
mod tests {
    use super::super::mdm::{self, MdmConfig};
    use super::*;
    use proptest::prelude::*;

    /// A metric name, its kind (g, c, t) and extra tags.
    type Fixed = (&'static str, char, Vec<(&'static str, &'static str)>);

    /// Per-cluster metrics whose extra tags clustermon sets itself, with
    /// their longest extra tags.
    fn fixed_lines() -> Vec<Fixed> {
        vec![
            (names::HEALTHZ_CODE, 'g', vec![]),
            (names::CHECK_DURATION, 't', vec![("result", "timeout")]),
            (names::CLUSTER_DURATION, 't', vec![]),
            (
                names::COLLECTOR_DURATION,
                't',
                vec![("collector", "clusteroperators")],
            ),
            (
                names::COLLECTOR_ERROR,
                'c',
                vec![("collector", "clusteroperators"), ("error", "unauthorized")],
            ),
            (names::CLUSTER_INSECURE, 'c', vec![]),
        ]
    }

    fn cfg64() -> MdmConfig {
        MdmConfig {
            account: "a".repeat(64),
            namespace: "n".repeat(64),
        }
    }

    /// Emits `name` with `tags` through the real emit path; the DogStatsD line.
    fn emit(kind: char, name: &str, value: u64, tags: &[(&str, &str)]) -> String {
        let (m, mut rx) = Metrics::capture("m1", 4);
        match kind {
            'g' => m.gauge(name, value, tags),
            'c' => m.count(name, value, tags),
            _ => m.timer_ms(name, value, tags),
        }
        rx.try_recv().expect("one line").line
    }

    /// Parses a DogStatsD line: (name, value, tags).
    fn parse_dogstatsd(line: &str) -> (String, String, Vec<(String, String)>) {
        let (name, rest) = line.split_once(':').expect("name:");
        let mut parts = rest.split('|');
        let value = parts.next().unwrap().to_string();
        let _kind = parts.next().unwrap();
        let mut tags = Vec::new();
        for p in parts {
            if let Some(t) = p.strip_prefix('#') {
                for kv in t.split(',') {
                    let (k, v) = kv.split_once(':').expect("k:v");
                    tags.push((k.to_string(), v.to_string()));
                }
            }
        }
        (name.to_string(), value, tags)
    }

    /// Parses an MDM line (no trailing newline): (metric, value, dims).
    fn parse_mdm(line: &str) -> (String, String, serde_json::Map<String, serde_json::Value>) {
        let (json, rest) = line.rsplit_once("}:").expect("}:");
        let v: serde_json::Value = serde_json::from_str(&format!("{json}}}")).expect("json");
        let value = rest.split('|').next().unwrap().to_string();
        (
            v["Metric"].as_str().unwrap().to_string(),
            value,
            v["Dims"].as_object().unwrap().clone(),
        )
    }

    /// Every fixed per-cluster line of a cluster, in both dialects: within
    /// [`MAX_LINE`], no raw line break, and it parses back to the metric,
    /// the value and exactly the intended tags.
    fn check_lines(id: &str, labels: &BTreeMap<String, String>) -> Result<(), TestCaseError> {
        let (tags, drops) = cluster_tags(id, labels);
        prop_assert_eq!(
            (tags.len() - 1) as u64 + drops.total(),
            labels.len() as u64,
            "every label is a tag or counted"
        );
        prop_assert!(tags.len() <= MAX_LABEL_TAGS + 1);
        for (name, kind, extra) in fixed_lines() {
            let mut all: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (&**k, &**v)).collect();
            all.extend_from_slice(&extra);
            let value = u64::MAX;
            let line = emit(kind, name, value, &all);
            prop_assert!(line.len() <= MAX_LINE, "{} bytes", line.len());
            prop_assert!(!line.contains(['\n', '\r']));
            let (n, v, t) = parse_dogstatsd(&line);
            prop_assert_eq!(&n, name);
            prop_assert_eq!(v, value.to_string());
            prop_assert_eq!(t.len(), all.len());
            for ((k, v), (ek, ev)) in t.iter().zip(&all) {
                prop_assert_eq!(k, ek);
                prop_assert_eq!(v, ev);
            }

            let m = mdm::from_dogstatsd(&line, &cfg64(), 1_787_248_416_000).expect("mdm");
            let m = m.strip_suffix('\n').expect("one trailing newline");
            prop_assert!(m.len() <= MAX_LINE, "mdm {} bytes", m.len());
            prop_assert!(!m.contains(['\n', '\r']));
            let (n, v, dims) = parse_mdm(m);
            prop_assert_eq!(&n, name);
            prop_assert_eq!(v, value.to_string());
            prop_assert_eq!(dims.len(), all.len(), "no duplicate dims");
            for (k, v) in &all {
                prop_assert_eq!(dims.get(*k).and_then(|x| x.as_str()), Some(*v));
            }
        }
        Ok(())
    }

    #[test]
    fn tags_keep_their_order_and_text_in_one_string() {
        let labels: BTreeMap<String, String> = [("env", "prod"), ("team", ""), ("z", "é|x")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (tags, _) = cluster_tags("c-1", &labels);
        let kept = Tags::new(&tags);
        assert_eq!(kept.len(), tags.len());
        let back: Vec<(&str, &str)> = kept.iter().collect();
        let want: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(back, want);
        assert!(Tags::new(&[]).iter().next().is_none());
    }

    const SPECIAL: &[char] = &[
        '|', ',', '#', ':', '\n', '\r', '\t', '"', '\\', '\0', '\u{7f}', '\u{85}', '\u{2028}',
        '\u{2029}', '=', ' ', '@',
    ];

    #[test]
    fn every_special_character_is_sanitised_in_keys_and_values() {
        let controls = (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32);
        for c in SPECIAL.iter().copied().chain(controls) {
            for s in [format!("{c}"), format!("a{c}b"), format!("{c}{c}x{c}")] {
                let k = sanitize_label_key(&s);
                let v = sanitize_label_value(&s);
                assert!(!k.contains(c), "key keeps {c:?}");
                assert!(
                    !v.contains(c) || c == '=' || c == ' ' || c == '@',
                    "value keeps {c:?}"
                );
                assert!(k.len() <= s.len() && v.len() <= s.len());
                assert!(k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c)));
                assert!(
                    !v.contains(['|', ',', '#', ':', '"', '\\'])
                        && !v.chars().any(char::is_control)
                );
                let labels =
                    BTreeMap::from([(s.clone(), s.clone()), ("env".into(), format!("p{c}"))]);
                check_lines("c-1", &labels).unwrap();
                let (tags, drops) = cluster_tags("c-1", &labels);
                assert!(drops.is_empty(), "{c:?}: sanitised, not dropped");
                assert_eq!(tags.len(), 3);
            }
        }
        // Kubernetes-style keys and ordinary values pass unchanged.
        assert_eq!(
            sanitize_label_key("app.kubernetes.io/name-x_1"),
            "app.kubernetes.io/name-x_1"
        );
        assert_eq!(
            sanitize_label_value("eastus 2 (prod) é"),
            "eastus 2 (prod) é"
        );
        assert_eq!(sanitize_label_value("a|b,c#d:e\nf"), "a_b_c_d_e_f");
        assert_eq!(sanitize_label_key("a|b,c#d:e\nf=ü"), "a_b_c_d_e_f__");
    }

    #[test]
    fn oversize_too_many_and_invalid_labels_are_left_out_with_a_reason() {
        let mut labels = BTreeMap::new();
        labels.insert("big".to_string(), "x".repeat(5 << 20));
        labels.insert("k".repeat(65), "v".into());
        labels.insert("resourceId".into(), "spoof".into());
        labels.insert("result".into(), "ok".into());
        labels.insert(String::new(), "empty key".into());
        labels.insert("a|b".into(), "1".into());
        labels.insert("a,b".into(), "2".into()); // a_b again
        for i in 0..100 {
            labels.insert(format!("l{i:03}"), format!("v{i}"));
        }
        let (tags, d) = cluster_tags("c-1", &labels);
        assert_eq!(&*tags[0].0, "resourceId");
        assert_eq!(&*tags[0].1, "c-1", "a label cannot replace resourceId");
        assert_eq!(d.count(DropReason::TooLong), 2);
        assert_eq!(d.count(DropReason::Invalid), 4);
        assert_eq!(tags.len(), 1 + MAX_LABEL_TAGS);
        assert_eq!(d.count(DropReason::TooMany), 101 - MAX_LABEL_TAGS as u64);
        // The first sanitised "a|b" is kept ("a,b" sorts first and wins).
        assert!(tags.iter().any(|(k, v)| &**k == "a_b" && &**v == "2"));
        check_lines("c-1", &labels).unwrap();

        // Exactly at the bounds is kept.
        let edge = BTreeMap::from([(
            "k".repeat(MAX_LABEL_KEY_BYTES),
            "v".repeat(MAX_LABEL_VALUE_BYTES),
        )]);
        let (tags, d) = cluster_tags("c-1", &edge);
        assert!(d.is_empty() && tags.len() == 2);

        // The byte budget binds before the count with long labels.
        let long: BTreeMap<String, String> = (0..16)
            .map(|i| (format!("{i:02}{}", "k".repeat(62)), "v".repeat(128)))
            .collect();
        let (tags, d) = cluster_tags("c-1", &long);
        let per = 64 + 128 + TAG_OVERHEAD;
        assert_eq!(tags.len() - 1, LABEL_TAGS_BUDGET / per);
        assert_eq!(
            d.count(DropReason::TooMany) as usize,
            16 - LABEL_TAGS_BUDGET / per
        );
        check_lines(&"i".repeat(512), &long).unwrap();
    }

    #[test]
    fn the_worst_case_line_fits_with_a_full_budget_and_a_512_byte_id() {
        // Labels that use the budget to the byte.
        let mut labels = BTreeMap::new();
        let mut used = 0;
        let mut i = 0;
        while used + 20 + TAG_OVERHEAD <= LABEL_TAGS_BUDGET && labels.len() < MAX_LABEL_TAGS {
            labels.insert(format!("key{i:07}"), "v".repeat(10));
            used += 20 + TAG_OVERHEAD;
            i += 1;
        }
        let rest = LABEL_TAGS_BUDGET - used - TAG_OVERHEAD - 1;
        labels.insert("z".into(), "w".repeat(rest.min(MAX_LABEL_VALUE_BYTES)));
        let (_, d) = cluster_tags("x", &labels);
        assert!(d.is_empty(), "{d:?}");
        check_lines(&"i".repeat(512), &labels).unwrap();
        // 238 bytes of clustermon's own tags still fit, as MDM dims.
        let (tags, _) = cluster_tags(&"i".repeat(512), &labels);
        let mut all: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (&**k, &**v)).collect();
        let own = "o".repeat(238 - 6 - 1);
        all.push(("o", &own));
        let line = emit('t', names::COLLECTOR_DURATION, u64::MAX, &all);
        let m = mdm::from_dogstatsd(&line, &cfg64(), 0).unwrap();
        assert!(m.len() - 1 <= MAX_LINE, "{}", m.len() - 1);
    }

    #[test]
    fn reserved_keys_are_clustermons_own_tags() {
        let r = reserved();
        for k in [
            "resourceId",
            "result",
            "collector",
            "error",
            "monitor",
            "reason",
            "name",
        ] {
            assert!(r.contains(k), "{k}");
        }
        assert!(!r.contains("labels") && !r.contains("env"));
    }

    #[test]
    fn drops_are_counted_per_version_and_logged_once() {
        let (m, mut rx) = Metrics::capture("m1", 16);
        let labels: BTreeMap<String, String> = (0..20)
            .map(|i| (format!("l{i:02}"), "v".into()))
            .chain([("big".to_string(), "x".repeat(1000))])
            .collect();
        let (_, d) = cluster_tags("c-1", &labels);
        d.report("c-1", None, &m);
        d.report("c-1", Some(&d), &m); // a new version with the same labels
        let lines: Vec<String> =
            std::iter::from_fn(|| rx.try_recv().ok().map(|q| q.line)).collect();
        assert_eq!(
            lines,
            vec![
                "monitor.metrics.labels.dropped:1|c|#monitor:m1,reason:too_long",
                "monitor.metrics.labels.dropped:4|c|#monitor:m1,reason:too_many",
                "monitor.metrics.labels.dropped:1|c|#monitor:m1,reason:too_long",
                "monitor.metrics.labels.dropped:4|c|#monitor:m1,reason:too_many",
            ]
        );
        LabelDrops::default().report("c-2", None, &m);
        assert!(rx.try_recv().is_err(), "no drops, no line");
    }

    fn label_string() -> impl Strategy<Value = String> {
        prop_oneof![
            // Short strings over the hostile characters and ordinary ones.
            proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(SPECIAL.to_vec()),
                    proptest::char::range('a', 'z'),
                    any::<char>(),
                ],
                0..24
            )
            .prop_map(|v| v.into_iter().collect()),
            // Around and over the length bounds.
            (60usize..140).prop_map(|n| "x".repeat(n)),
            "\\PC{0,200}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn any_label_map_gives_lines_that_fit_and_parse_back(
            labels in proptest::collection::btree_map(label_string(), label_string(), 0..40),
            id_len in 1usize..=512,
        ) {
            let id: String = "c".repeat(id_len);
            check_lines(&id, &labels)?;
        }
    }
}
