use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::admin::Token;
use crate::clock::Clock;
use crate::metrics::Output;
use crate::model::{Credentials, Secret};
use crate::secrets::SecretsKey;

/// A directory of its own under the system's temporary one, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!(
            "clustermon-reload-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        // As a mounted Secret changes: a new file renamed over the old.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn metrics() -> Metrics {
    Metrics::new("m1", Output::discard(), 1000, Clock::system()).0
}

/// A self metric's value in `/metrics` for `file`, if exported.
fn exported(m: &Metrics, name: &str, file: &str) -> Option<f64> {
    let prom = format!("clustermon_{}", name.replace('.', "_"));
    m.prometheus()
        .lines()
        .filter(|l| {
            l.starts_with(&format!("{prom}{{")) || l.starts_with(&format!("{prom}_total{{"))
        })
        .find(|l| l.contains(&format!("file=\"{file}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

const A: &str = "token-a-0123456789abcdef";
const B: &str = "token-b-0123456789abcdef";
const C: &str = "token-c-0123456789abcdef";

#[test]
fn a_reader_keeps_its_value_while_a_reload_replaces_it_for_the_next() {
    let live = Live::new(Secret::new(A));
    let held = live.get();
    let other = live.clone();
    other.set(Secret::new(B));
    assert_eq!(held.expose(), A, "a value in use does not change");
    assert_eq!(live.get().expose(), B, "every clone sees the new value");
    assert_eq!(format!("{live:?}"), "<redacted>");
}

/// The admin token file: a change takes effect; a change that does not
/// parse is refused, named without its content, and the last good tokens
/// stay until the file changes again; an unchanged file is not applied
/// again.
#[test]
fn a_changed_token_file_takes_effect_and_a_bad_one_is_refused_keeping_the_last_good() {
    let dir = Dir::new("token");
    let path = dir.write("token", A.as_bytes());
    let live = Live::new(Token::new(A).unwrap());
    let m = metrics();
    let mut r = Reloader::new(vec![admin_token(path.clone(), live.clone())], m.clone());
    assert_eq!(
        r.look(),
        [Outcome::Unchanged],
        "the first look records the file"
    );
    assert_eq!(
        exported(&m, names::SECRETS_REFUSED, "admin-token-file"),
        Some(0.0)
    );

    dir.write("token", format!("{B}\n{A}\n").as_bytes());
    assert_eq!(r.look(), [Outcome::Applied("2 tokens".into())]);
    assert_eq!((live.get().sent(), live.get().count()), (B, 2));
    assert_eq!(
        r.look(),
        [Outcome::Unchanged],
        "an unchanged file is not applied again"
    );
    assert_eq!(
        exported(&m, names::SECRETS_RELOADED, "admin-token-file"),
        Some(1.0)
    );

    let bad = "short-secret";
    dir.write("token", format!("{C}\n{bad}\n").as_bytes());
    let o = r.look();
    let [Outcome::Refused(why)] = o.as_slice() else {
        panic!("a short line is refused: {o:?}");
    };
    assert!(
        why.contains("--admin-token-file") && why.contains(&*path.to_string_lossy()),
        "{why}"
    );
    assert!(
        why.contains("line 2") && why.contains("16 characters"),
        "{why}"
    );
    assert!(
        !why.contains(bad) && !why.contains(C),
        "the error quotes no content: {why}"
    );
    assert_eq!(
        (live.get().sent(), live.get().count()),
        (B, 2),
        "the last good tokens stay"
    );
    assert_eq!(
        exported(&m, names::SECRETS_REFUSED, "admin-token-file"),
        Some(1.0)
    );
    assert_eq!(
        r.look(),
        [Outcome::Unchanged],
        "refused once, not at every look"
    );
    assert_eq!(
        exported(&m, names::SECRETS_REFUSED, "admin-token-file"),
        Some(1.0),
        "still refused"
    );

    std::fs::remove_file(&path).unwrap();
    let o = r.look();
    assert!(
        matches!(o.as_slice(), [Outcome::Refused(w)] if w.contains("cannot read it")),
        "a missing file is refused: {o:?}"
    );
    assert_eq!(live.get().sent(), B);

    dir.write("token", C.as_bytes());
    assert_eq!(r.look(), [Outcome::Applied("1 token".into())]);
    assert_eq!((live.get().sent(), live.get().count()), (C, 1));
    assert_eq!(
        exported(&m, names::SECRETS_REFUSED, "admin-token-file"),
        Some(0.0)
    );
    assert_eq!(
        exported(&m, names::SECRETS_RELOADED, "admin-token-file"),
        Some(2.0)
    );
}

/// A credentials key rotation without a restart: documents sealed with a
/// new key open once the key files hold it (the current key new, the
/// older one kept); a bad older key refuses the whole ring, which stays.
#[test]
fn a_key_rotation_takes_effect_as_one_ring_and_a_bad_key_keeps_the_last_ring() {
    let dir = Dir::new("keys");
    let (k1, k2) = ([1u8; 32], [2u8; 32]);
    let current = dir.write("key", &k1);
    let older = dir.write("old", &k1);
    let creds = Credentials {
        token: Some(Secret::new("cluster-token")),
        ..Default::default()
    };
    let sealed_new = SecretsKey::from_bytes(k2).seal("c1", &creds).unwrap();
    let sealed_old = SecretsKey::from_bytes(k1).seal("c1", &creds).unwrap();
    let live = Live::new(Some(
        SecretsKey::from_bytes(k1).with_older([SecretsKey::from_bytes(k1)]),
    ));
    let opens = |s: &str| (*live.get()).as_ref().unwrap().open("c1", s).is_ok();
    let m = metrics();
    let mut r = Reloader::new(
        vec![secrets_keys(
            current.clone(),
            vec![older.clone()],
            live.clone(),
        )],
        m.clone(),
    );
    assert_eq!(r.look(), [Outcome::Unchanged]);
    assert!(!opens(&sealed_new) && opens(&sealed_old));

    // Base64 in the current file, raw bytes in the older: both forms.
    use base64::Engine as _;
    dir.write(
        "key",
        base64::engine::general_purpose::STANDARD
            .encode(k2)
            .as_bytes(),
    );
    assert_eq!(
        r.look(),
        [Outcome::Applied("the current key and 1 older key".into())]
    );
    assert!(
        opens(&sealed_new) && opens(&sealed_old),
        "the new key and the older both open"
    );
    for f in ["secrets-key-file", "secrets-old-key-file"] {
        assert_eq!(exported(&m, names::SECRETS_RELOADED, f), Some(1.0), "{f}");
        assert_eq!(exported(&m, names::SECRETS_REFUSED, f), Some(0.0), "{f}");
    }

    dir.write("old", b"not a key at all");
    let o = r.look();
    let [Outcome::Refused(why)] = o.as_slice() else {
        panic!("a bad older key is refused: {o:?}");
    };
    assert!(
        why.contains("--secrets-old-key-file") && why.contains("32 bytes"),
        "{why}"
    );
    assert!(!why.contains("not a key"), "{why}");
    assert!(
        opens(&sealed_new) && opens(&sealed_old),
        "the last ring stays whole"
    );
    assert_eq!(
        exported(&m, names::SECRETS_REFUSED, "secrets-old-key-file"),
        Some(1.0)
    );
    assert_eq!(
        exported(&m, names::SECRETS_REFUSED, "secrets-key-file"),
        Some(0.0)
    );

    // The rotation's end: the older key retired (the current one in its
    // file too).
    dir.write("old", &k2);
    assert!(matches!(r.look().as_slice(), [Outcome::Applied(_)]));
    assert!(
        opens(&sealed_new) && !opens(&sealed_old),
        "the retired key opens nothing"
    );
    assert_eq!(
        exported(&m, names::SECRETS_REFUSED, "secrets-old-key-file"),
        Some(0.0)
    );
}

#[test]
fn an_empty_alertmanager_token_file_is_refused() {
    let dir = Dir::new("am");
    let path = dir.write("am", A.as_bytes());
    let live = Live::new(Secret::new(A));
    let mut r = Reloader::new(vec![alertmanager_token(path, live.clone())], metrics());
    r.look();
    dir.write("am", b"  \n");
    assert!(
        matches!(r.look().as_slice(), [Outcome::Refused(w)] if w.contains("empty")),
        "an empty file is refused"
    );
    dir.write("am", format!(" {B}\n").as_bytes());
    assert_eq!(r.look(), [Outcome::Applied("1 token".into())]);
    assert_eq!(live.get().expose(), B);
}

async fn wait_for(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn token_reloader(dir: &Dir) -> (Reloader, Live<Token>, PathBuf) {
    let path = dir.write("token", A.as_bytes());
    let live = Live::new(Token::new(A).unwrap());
    let r = Reloader::new(vec![admin_token(path.clone(), live.clone())], metrics());
    (r, live, path)
}

fn sent(live: &Live<Token>) -> String {
    live.get().sent().to_string()
}

/// With the timer off, a nudge (SIGHUP) reads the files at once; the loop
/// ends when stopped.
#[tokio::test]
async fn a_nudge_reloads_at_once_and_the_loop_stops_when_asked() {
    let dir = Dir::new("nudge");
    let (r, live, _) = token_reloader(&dir);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(Duration::ZERO, rx, stop.clone()));
    for t in [B, C] {
        dir.write("token", t.as_bytes());
        tx.unbounded_send(()).unwrap();
        wait_for("the nudged reload", Duration::from_secs(5), || {
            sent(&live) == t
        })
        .await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop ends when stopped")
        .unwrap();
}

/// On the timer alone (no nudge ever sent), a change takes effect within
/// an interval; nudges that end (no signal handler) leave the timer on.
#[tokio::test(start_paused = true)]
async fn the_timer_reloads_a_change_within_an_interval() {
    let dir = Dir::new("timer");
    let (r, live, _) = token_reloader(&dir);
    let stop = CancellationToken::new();
    let every = Duration::from_secs(10);
    let task = tokio::spawn(r.run(every, futures::stream::empty(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(1)).await;
    dir.write("token", B.as_bytes());
    tokio::time::sleep(every - Duration::from_secs(1)).await;
    assert_eq!(sent(&live), A, "not before the tick");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sent(&live), B, "read again at the tick");
    stop.cancel();
    task.await.unwrap();
}

/// A file that is not a regular one (a FIFO would block the read forever,
/// `/dev/zero` never end) or larger than the bound is refused, at start
/// (the CLI's read) as at a reload, and the last good value stays.
#[test]
fn a_fifo_a_device_or_an_oversize_file_is_refused_without_reading_it_all() {
    let dir = Dir::new("hostile");
    let fifo = dir.0.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let big = dir.write("big", &vec![b'a'; SECRET_FILE_MAX as usize + 1]);
    let fits = dir.write("fits", &vec![b'a'; SECRET_FILE_MAX as usize]);
    for (p, want) in [
        (fifo.as_path(), "not a regular file"),
        (std::path::Path::new("/dev/zero"), "not a regular file"),
        (big.as_path(), "larger than 65536 bytes"),
    ] {
        let e = read_secret_file(p).expect_err("refused");
        assert_eq!(e, want, "{}", p.display());
    }
    assert_eq!(
        read_secret_file(&fits).unwrap().len(),
        SECRET_FILE_MAX as usize
    );
    assert!(SecretsKey::from_file(std::path::Path::new("/dev/zero"))
        .is_err_and(|e| e.contains("not a regular file")));

    // At a reload: the token file replaced by a FIFO, then by a big file.
    let (mut r, live, path) = token_reloader(&dir);
    r.look();
    std::fs::remove_file(&path).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    assert!(
        matches!(r.look().as_slice(), [Outcome::Refused(w)] if w.contains("not a regular file")),
        "a FIFO is refused, not read"
    );
    std::fs::remove_file(&path).unwrap();
    dir.write("token", &vec![b'b'; SECRET_FILE_MAX as usize + 10]);
    assert!(matches!(r.look().as_slice(), [Outcome::Refused(w)] if w.contains("larger than")));
    assert_eq!(sent(&live), A);
}

/// A certificate and its key, self-signed for 127.0.0.1: (certificate
/// PEM, key PEM).
fn self_signed() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// The admin API's certificate and key are one pair: a renewal (both
/// files) takes effect; a key that does not match is refused under
/// --admin-tls-key-file, a certificate that is not PEM under
/// --admin-tls-cert-file, and the last good pair stays.
#[test]
fn a_renewed_admin_certificate_takes_effect_and_a_mismatched_pair_is_refused() {
    let dir = Dir::new("admin-tls");
    let (c1, k1) = self_signed();
    let (c2, k2) = self_signed();
    let cert = dir.write("tls.crt", c1.as_bytes());
    let key = dir.write("tls.key", k1.as_bytes());
    let first = crate::admin::tls::server_config(c1.as_bytes(), k1.as_bytes()).unwrap();
    let live = Live::new(first);
    let served = |l: &Live<rustls::ServerConfig>| Arc::as_ptr(&l.get());
    let m = metrics();
    let mut r = Reloader::new(vec![admin_tls(cert, key, live.clone())], m.clone());
    assert_eq!(r.look(), [Outcome::Unchanged]);
    let before = served(&live);

    dir.write("tls.crt", c2.as_bytes());
    dir.write("tls.key", k2.as_bytes());
    assert!(matches!(r.look().as_slice(), [Outcome::Applied(_)]));
    let renewed = served(&live);
    assert_ne!(before, renewed, "the renewed pair is in effect");
    assert_eq!(
        exported(&m, names::SECRETS_RELOADED, "admin-tls-cert-file"),
        Some(1.0)
    );

    dir.write("tls.key", k1.as_bytes());
    let o = r.look();
    assert!(
        matches!(o.as_slice(), [Outcome::Refused(w)] if w.contains("--admin-tls-key-file") && !w.contains("PRIVATE")),
        "{o:?}"
    );
    assert_eq!(served(&live), renewed, "the last good pair stays");
    assert_eq!(
        exported(&m, names::SECRETS_REFUSED, "admin-tls-key-file"),
        Some(1.0)
    );
    dir.write("tls.crt", b"not a certificate");
    let o = r.look();
    assert!(
        matches!(o.as_slice(), [Outcome::Refused(w)] if w.contains("--admin-tls-cert-file")),
        "{o:?}"
    );
    assert_eq!(
        exported(&m, names::SECRETS_REFUSED, "admin-tls-key-file"),
        Some(0.0)
    );
    assert_eq!(
        exported(&m, names::SECRETS_REFUSED, "admin-tls-cert-file"),
        Some(1.0)
    );
    // The rest of the pair arrives (a renewal read half-written): the next
    // read applies it and nothing stays refused.
    dir.write("tls.crt", c1.as_bytes());
    assert!(matches!(r.look().as_slice(), [Outcome::Applied(_)]));
    assert_ne!(served(&live), renewed);
    for f in ["admin-tls-cert-file", "admin-tls-key-file"] {
        assert_eq!(exported(&m, names::SECRETS_REFUSED, f), Some(0.0), "{f}");
    }
}

/// `--admin-ca-file`: a new bundle rebuilds the clients that trust it
/// (`apply` runs with its certificates); a file that is no bundle is
/// refused and `apply` does not run. The bound is a CA bundle's, not a
/// token's.
#[test]
fn a_new_admin_ca_bundle_is_applied_and_a_junk_one_refused() {
    let dir = Dir::new("admin-ca");
    let (ca1, _) = self_signed();
    let (ca2, _) = self_signed();
    let path = dir.write("ca.pem", ca1.as_bytes());
    let applied = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let seen = applied.clone();
    let mut r = Reloader::new(
        vec![admin_ca(path, move |certs| {
            seen.lock().unwrap().push(certs.len())
        })],
        metrics(),
    );
    assert_eq!(r.look(), [Outcome::Unchanged]);
    dir.write("ca.pem", format!("{ca1}{ca2}").as_bytes());
    assert_eq!(r.look(), [Outcome::Applied("2 CA certificates".into())]);
    dir.write("ca.pem", b"junk");
    assert!(matches!(r.look().as_slice(), [Outcome::Refused(w)] if w.contains("--admin-ca-file")));
    // Larger than a token file may be, within a bundle's bound.
    let big = format!("{}\n{ca2}", "# a comment line\n".repeat(8_000));
    assert!(big.len() as u64 > SECRET_FILE_MAX);
    dir.write("ca.pem", big.as_bytes());
    assert_eq!(r.look(), [Outcome::Applied("1 CA certificate".into())]);
    assert_eq!(
        *applied.lock().unwrap(),
        [1, 2, 1],
        "the first look, then two changes"
    );
}
