//! Secret files re-read while the monitor runs: the admin token, the
//! credentials keys, the Alertmanager token, the admin API's TLS
//! certificate and key and the CA its peers are trusted with take effect
//! without a restart, so a rotation or a
//! renewal is a file change (a Kubernetes Secret's mounted volume is
//! updated in place) rather than a rollout.
//!
//! - [`Live`]: a value readers share and a reload replaces. Each reader
//!   takes the current value for one use (a check, a request); a reload
//!   never changes a value under a reader.
//! - [`Reloader`]: the files, each group parsed whole (the credentials
//!   keys are one ring, the certificate and its key one pair), re-read on every tick and on demand (SIGHUP).
//!   A change that parses replaces the value and is counted
//!   (`monitor.secrets.reloaded`); one that does not is refused, logged
//!   once with the parser's error (which never quotes the content) and
//!   shown in `monitor.secrets.refused` until the file changes again,
//!   while the last good value stays in effect.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::metrics::{names, Metrics};

/// A value shared by its readers and replaced as a whole by a reload.
/// Clones share the value.
pub struct Live<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Live<T> {
    pub fn new(v: T) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(v))))
    }

    /// The current value (kept by the caller for one use).
    pub fn get(&self) -> Arc<T> {
        // A poisoned lock still holds a whole value: the writer only
        // swaps an `Arc`.
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the value for every reader's next `get`.
    pub fn set(&self, v: T) {
        let v = Arc::new(v);
        match self.0.write() {
            Ok(mut g) => *g = v,
            Err(p) => *p.into_inner() = v,
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The value's own Debug: secrets print redacted.
        self.get().fmt(f)
    }
}

/// The most a secret file may hold: tokens and keys are a few lines.
pub const SECRET_FILE_MAX: u64 = 64 * 1024;

/// Reads a token or key file: a regular file (a FIFO would block the read
/// forever, a device never end) of at most [`SECRET_FILE_MAX`] bytes. The
/// error says why, never what the file holds.
pub fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    read_bounded(path, SECRET_FILE_MAX)
}

/// The most a CA bundle may hold (a system bundle is ~250 KB).
pub const CA_FILE_MAX: u64 = 4 << 20;

/// A regular file of at most `max` bytes.
pub fn read_bounded(path: &std::path::Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| e.kind().to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut out = Vec::with_capacity(meta.len().min(max) as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut out))
        .map_err(|e| e.kind().to_string())?;
    if out.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(out)
}

/// Which secret a file holds: the `file` tag of the reload metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    AdminToken,
    SecretsKey,
    SecretsOldKey,
    AlertmanagerToken,
    AdminTlsCert,
    AdminTlsKey,
    AdminCa,
}

impl SecretKind {
    pub const ALL: [SecretKind; 7] = [
        SecretKind::AdminToken,
        SecretKind::SecretsKey,
        SecretKind::SecretsOldKey,
        SecretKind::AlertmanagerToken,
        SecretKind::AdminTlsCert,
        SecretKind::AdminTlsKey,
        SecretKind::AdminCa,
    ];

    /// The flag that names the file, without its dashes: the metrics'
    /// `file` tag and the logs' `file` field.
    pub fn flag(self) -> &'static str {
        match self {
            SecretKind::AdminToken => "admin-token-file",
            SecretKind::SecretsKey => "secrets-key-file",
            SecretKind::SecretsOldKey => "secrets-old-key-file",
            SecretKind::AlertmanagerToken => "alertmanager-token-file",
            SecretKind::AdminTlsCert => "admin-tls-cert-file",
            SecretKind::AdminTlsKey => "admin-tls-key-file",
            SecretKind::AdminCa => "admin-ca-file",
        }
    }
}

/// Parses a group's files (in the order given) and, when all parse, puts
/// the new value in effect; says what it applied ("2 tokens"), or which
/// file (its index) is refused and why. Errors never quote the content.
pub type Apply = Box<dyn Fn(&[Vec<u8>]) -> Result<String, (usize, String)> + Send + Sync>;

/// Files read and applied together.
pub struct Group {
    files: Vec<(SecretKind, PathBuf)>,
    /// The most each file may hold.
    max: u64,
    apply: Apply,
    /// What was last read, per file: a hash of the content, or the read
    /// error. `None`: not read since start.
    seen: Option<Vec<Result<u64, String>>>,
    /// The file refused since the last change (index), if any.
    refused: Option<usize>,
}

impl Group {
    /// `files` hold the value now in effect (read at start): the first
    /// look applies them again, reported as no change.
    pub fn new(files: Vec<(SecretKind, PathBuf)>, apply: Apply) -> Self {
        Self {
            files,
            max: SECRET_FILE_MAX,
            apply,
            seen: None,
            refused: None,
        }
    }
}

/// What one look at a group did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Applied(String),
    /// The file's flag and path, and the error; the last good value stays.
    Refused(String),
}

fn digest(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

impl Group {
    /// Reads the group's files; applies them when any changed since the
    /// last look (the first look records them).
    pub fn look(&mut self) -> Outcome {
        let read: Vec<Result<Vec<u8>, String>> = self
            .files
            .iter()
            .map(|(_, p)| read_bounded(p, self.max))
            .collect();
        let now: Vec<Result<u64, String>> = read
            .iter()
            .map(|r| r.as_ref().map(|b| digest(b)).map_err(Clone::clone))
            .collect();
        let first = self.seen.is_none();
        if self.seen.as_ref() == Some(&now) {
            return Outcome::Unchanged;
        }
        self.seen = Some(now);
        let named = |i: usize| {
            let (kind, path) = &self.files[i];
            format!("--{} {}", kind.flag(), path.display())
        };
        let result = match read.iter().position(Result::is_err) {
            Some(i) => {
                let e = read[i].as_ref().err().cloned().unwrap_or_default();
                Err((i, format!("cannot read it: {e}")))
            }
            None => {
                let bytes: Vec<Vec<u8>> = read.into_iter().flatten().collect();
                (self.apply)(&bytes)
            }
        };
        match result {
            // The first look applies what the files hold (they may have
            // changed since the value in effect was read), as no change.
            Ok(_) if first => {
                self.refused = None;
                Outcome::Unchanged
            }
            Ok(what) => {
                self.refused = None;
                Outcome::Applied(what)
            }
            Err((i, e)) => {
                self.refused = Some(i);
                Outcome::Refused(format!("{}: {e}", named(i)))
            }
        }
    }

    /// The kinds of this group's files, each once.
    fn kinds(&self) -> Vec<SecretKind> {
        let mut k: Vec<SecretKind> = self.files.iter().map(|(k, _)| *k).collect();
        k.dedup();
        k
    }

    /// The kind of the file refused since the last change, if any.
    fn refused_kind(&self) -> Option<SecretKind> {
        self.refused.map(|i| self.files[i].0)
    }

    fn name(&self) -> &'static str {
        self.files.first().map_or("", |(k, _)| k.flag())
    }
}

/// The secret files of one monitor.
pub struct Reloader {
    groups: Vec<Group>,
    metrics: Metrics,
}

impl Reloader {
    pub fn new(groups: Vec<Group>, metrics: Metrics) -> Self {
        Self { groups, metrics }
    }

    /// One look at every group, each outcome logged (never the content)
    /// and counted; `monitor.secrets.refused` set for every kind watched.
    pub fn look(&mut self) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(self.groups.len());
        for g in &mut self.groups {
            let o = g.look();
            match &o {
                Outcome::Unchanged => {}
                Outcome::Applied(what) => {
                    tracing::info!(file = g.name(), applied = %what, "secret file reloaded");
                    for k in g.kinds() {
                        self.metrics
                            .self_count(names::SECRETS_RELOADED, 1, &[("file", k.flag())]);
                    }
                }
                Outcome::Refused(why) => tracing::warn!(
                    file = g.name(),
                    error = %why,
                    "secret file refused: the previous value stays in effect"
                ),
            }
            out.push(o);
        }
        for kind in SecretKind::ALL {
            if !self.groups.iter().any(|g| g.kinds().contains(&kind)) {
                continue;
            }
            let n = self
                .groups
                .iter()
                .filter(|g| g.refused_kind() == Some(kind))
                .count();
            self.metrics.self_gauge_tagged(
                names::SECRETS_REFUSED,
                n as u64,
                &[("file", kind.flag())],
            );
        }
        out
    }

    /// Looks once to record the files in effect, then on every `every`
    /// (zero: never on a timer) and on every item of `nudge` (SIGHUP),
    /// until `stop`.
    pub async fn run(
        mut self,
        every: Duration,
        mut nudge: impl Stream<Item = ()> + Unpin,
        stop: CancellationToken,
    ) {
        self.look();
        let mut tick = (!every.is_zero()).then(|| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut nudges_open = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = async {
                    match tick.as_mut() {
                        Some(t) => { t.tick().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
                n = nudge.next(), if nudges_open => {
                    if n.is_none() {
                        nudges_open = false;
                        continue;
                    }
                    tracing::info!("reloading secret files (signal)");
                }
            }
            self.look();
        }
    }
}

/// A token file's text (the first file of its group).
fn utf8(b: &[u8]) -> Result<&str, (usize, String)> {
    std::str::from_utf8(b).map_err(|_| (0, "the file is not UTF-8 text".to_string()))
}

/// "1 token", "2 tokens".
fn counted(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// `--admin-token-file`: its tokens, one per line (the first sent, all
/// accepted; [`crate::admin::Token`]).
pub fn admin_token(path: PathBuf, live: Live<crate::admin::Token>) -> Group {
    Group::new(
        vec![(SecretKind::AdminToken, path)],
        Box::new(move |files| {
            let text = utf8(&files[0])?;
            let token = crate::admin::Token::new(text).map_err(|e| (0, e.to_string()))?;
            let n = token.count();
            live.set(token);
            Ok(counted(n, "token"))
        }),
    )
}

/// `--secrets-key-file` and each `--secrets-old-key-file`: one ring, the
/// current key first ([`crate::secrets::SecretsKey`]).
pub fn secrets_keys(
    current: PathBuf,
    older: Vec<PathBuf>,
    live: Live<Option<crate::secrets::SecretsKey>>,
) -> Group {
    let mut files = vec![(SecretKind::SecretsKey, current)];
    files.extend(older.into_iter().map(|p| (SecretKind::SecretsOldKey, p)));
    Group::new(
        files,
        Box::new(move |files| {
            let mut keys = files
                .iter()
                .enumerate()
                .map(|(i, b)| crate::secrets::SecretsKey::parse(b).map_err(|e| (i, e)));
            let current = keys.next().ok_or((0, "no key".to_string()))??;
            let older = keys.collect::<Result<Vec<_>, _>>()?;
            let n = older.len();
            live.set(Some(current.with_older(older)));
            Ok(format!("the current key and {}", counted(n, "older key")))
        }),
    )
}

/// `--admin-tls-cert-file` and `--admin-tls-key-file`: read together (a
/// renewal replaces both), served from the next connection on.
pub fn admin_tls(cert: PathBuf, key: PathBuf, live: crate::admin::tls::ServerTls) -> Group {
    Group::new(
        vec![
            (SecretKind::AdminTlsCert, cert),
            (SecretKind::AdminTlsKey, key),
        ],
        Box::new(move |files| {
            use crate::admin::tls::PairError;
            let cfg =
                crate::admin::tls::server_config(&files[0], &files[1]).map_err(|e| match e {
                    PairError::Cert(e) => (0, e),
                    PairError::Key(e) => (1, e),
                })?;
            live.set(cfg);
            Ok("the certificate and its key".to_string())
        }),
    )
}

/// `--admin-ca-file`: the CA bundle peers' admin APIs are trusted with;
/// `apply` rebuilds the clients that use it.
pub fn admin_ca(
    path: PathBuf,
    apply: impl Fn(Vec<reqwest::Certificate>) + Send + Sync + 'static,
) -> Group {
    let mut g = Group::new(
        vec![(SecretKind::AdminCa, path)],
        Box::new(move |files| {
            let certs = crate::admin::tls::ca_certs(&files[0]).map_err(|e| (0, e))?;
            let n = certs.len();
            apply(certs);
            Ok(counted(n, "CA certificate"))
        }),
    );
    g.max = CA_FILE_MAX;
    g
}

/// `--alertmanager-token-file`: one token (surrounding white space
/// ignored).
pub fn alertmanager_token(path: PathBuf, live: Live<crate::model::Secret>) -> Group {
    Group::new(
        vec![(SecretKind::AlertmanagerToken, path)],
        Box::new(move |files| {
            let text = utf8(&files[0])?;
            match text.trim() {
                "" => Err((0, "the file is empty".to_string())),
                t => {
                    live.set(crate::model::Secret::new(t));
                    Ok("1 token".to_string())
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests;
