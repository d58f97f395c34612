//! Graceful stop while checks hang: fleetsim's `slow` clusters accept the
//! connection and never answer, and the check timeout (30 s) is far above
//! `--shutdown-grace` (3 s), so at the signal the stopped monitor holds
//! checks that only the grace can end.
//!
//! What the docs promise (docs/monitoring.md, *Graceful stop*;
//! docs/runbook.md, *A rolling upgrade without gaps*):
//! - on SIGTERM a monitor hands its buckets over, keeps checking what is
//!   due before the handoff time, stops starting checks, waits for
//!   in-flight ones until `--shutdown-grace` from the signal, then cancels
//!   them, deletes its heartbeat and exits 0; after the grace, the
//!   heartbeat's deletion (a store call, bounded by a heartbeat interval)
//!   and the alerts' last attempt (one window of 2 s) run at once, then
//!   the admin API closes and the metrics flush, at once, within 2 s;
//! - a second signal exits at once (code 130).

use super::super::*;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const GRACE: Duration = Duration::from_secs(3);
const SLOW: usize = 30;
/// The monitors' arguments: a check timeout far above the grace, a short
/// interval so that checks are started all the time, and the scheduler's
/// `check started` lines (debug) to see when each check started.
const MON_ARGS: &[&str] = &[
    "--interval",
    "2s",
    "--check-timeout",
    "30s",
    "--shutdown-grace",
    "3s",
    "--log-level",
    "info,clustermon_core::schedule=debug",
];
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// How much later than the stop of starting a logged start may be: the
/// scheduler notices the stop between two due times, and `at_ms` is read
/// when a check starts (milliseconds, rounded).
const START_TOLERANCE_MS: i64 = 250;
/// The slack on "exits at once" after a second signal.
const AT_ONCE_SLACK: Duration = Duration::from_millis(500);

const CANCELLING: &str = "shutdown grace over: cancelling in-flight checks";

struct Stop {
    dir: TempDir,
    store: String,
    db: PathBuf,
    _statsd: Statsd,
    _fleet: Fleet,
    /// The clusters whose API servers never answer.
    slow: Vec<String>,
    /// The others (healthy or failing fast).
    others: Vec<String>,
    mons: Monitors,
}

/// fleetsim with `SLOW` hanging clusters plus `others` more (`faults`:
/// further `--fault` flags for those), and monitors with `MON_ARGS` and
/// `extra`; none started yet.
fn setup(name: &str, others: usize, faults: &[&str], extra: &[&str]) -> Stop {
    let dir = TempDir::new(name);
    let db = dir.path().join("store.db");
    let store = format!("sqlite:{}", db.display());
    let statsd = Statsd::start();
    let n = (SLOW + others).to_string();
    let slow_fault = format!("slow={SLOW}");
    let mut args = vec![
        "--clusters",
        &n,
        "--plain-http",
        "--slow-delay",
        "600s",
        "--fault",
        &slow_fault,
    ];
    args.extend_from_slice(faults);
    let fleet = Fleet::start(dir.path(), &store, &args);
    let (mut slow, mut rest) = (Vec::new(), Vec::new());
    for c in fleet.clusters() {
        let id = c["id"].as_str().expect("cluster id").to_string();
        let is_slow = c["faults"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "slow"));
        if is_slow {
            slow.push(id);
        } else {
            rest.push(id);
        }
    }
    assert_eq!(
        (slow.len(), rest.len()),
        (SLOW, others),
        "fleetsim's faults"
    );
    let mut margs = MON_ARGS.to_vec();
    margs.extend_from_slice(extra);
    let mons = Monitors::new(dir.path(), &store, &statsd, &margs);
    Stop {
        dir,
        store,
        db,
        _statsd: statsd,
        _fleet: fleet,
        slow,
        others: rest,
        mons,
    }
}

/// Starts `ids`, waits until they own every bucket (loads within 1), then
/// until every hanging cluster has a check started (they stay in flight:
/// fleetsim answers after 600 s, the timeout is 30 s) and every other
/// cluster has one started since: checks are in flight and being started.
fn start_and_load(s: &mut Stop, ids: &[&str]) {
    for id in ids {
        s.mons.start(id);
    }
    let store = s.store.clone();
    wait_until(
        "the monitors own every bucket",
        Duration::from_secs(60),
        || buckets(&store).filter(|o| balanced(o, ids)),
    );
    let from = unix_ms(Instant::now());
    wait_until(
        "a check of every hanging cluster in flight, every other one started since the balance",
        Duration::from_secs(30),
        || {
            let ever = check_starts(&s.mons, 0, i64::MAX);
            let since = check_starts(&s.mons, from, i64::MAX);
            (s.slow.iter().all(|id| ever.contains_key(id))
                && s.others.iter().all(|id| since.contains_key(id)))
            .then_some(())
        },
    );
}

/// Unix ms of a log line's timestamp (`2026-11-30T19:57:23.532982Z ...`,
/// tracing's default UTC format).
fn log_ms(line: &str) -> Option<i64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    // Days from 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}

/// The timestamp (Unix ms) of the first log line containing `needle`.
fn logged_at(log: &str, needle: &str) -> Option<i64> {
    log.lines().find(|l| l.contains(needle)).and_then(log_ms)
}

/// The `checks=N` of the cancelling line.
fn cancelled_checks(log: &str) -> Option<u64> {
    log.lines()
        .find(|l| l.contains(CANCELLING))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("checks="))?
        .parse()
        .ok()
}

/// Guards `log_ms`: a `check started` line's timestamp and its `at_ms` are
/// read from the same clock within microseconds of each other.
fn assert_log_clock(log: &str) {
    let line = log
        .lines()
        .find(|l| l.contains(" check started ") && l.contains("at_ms="))
        .expect("a check started line");
    let at: i64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("at_ms="))
        .and_then(|v| v.parse().ok())
        .expect("at_ms");
    let ts = log_ms(line).expect("a parsable timestamp");
    assert!(
        (ts - at).abs() < 1000,
        "log timestamps parse wrong: {ts} against at_ms {at} in {line:?}"
    );
}

/// Sends one signal and waits for the exit (up to `limit`): the signal's
/// time, the exit status and how long after the signal it came.
fn signal_and_wait(p: &mut Proc, limit: Duration) -> (Instant, Option<ExitStatus>, Duration) {
    let t = Instant::now();
    p.signal("TERM");
    let st = p.wait_exit(limit);
    (t, st, t.elapsed())
}

/// "ms after the signal" of the first log line containing `needle` logged
/// at or after the signal, for the report.
fn after(log: &str, needle: &str, sig_ms: i64) -> String {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(log_ms)
        .find(|t| *t >= sig_ms)
        .map_or_else(|| "never".into(), |t| format!("{} ms", t - sig_ms))
}

/// One SIGTERM while ~30 checks hang, 2 monitors on SQLite: m1 exits 0
/// within grace + one store call (bounded by one heartbeat interval, 2 s
/// here) + SLACK, and not before the grace (it waits for the hanging
/// checks); its log names the cancelled checks, at least as many as the
/// hanging ones it had started; it started no check after the grace
/// (its handoff time, 2 heartbeat intervals, is later: the grace cuts
/// it short) though it did start some after the signal (what is due
/// before the handoff time); its heartbeat row is deleted and m2 owns all
/// 256 buckets.
#[test]
fn sigterm_with_hanging_checks_cancels_them_at_the_grace_and_exits_0() {
    let mut s = setup("stop-hanging", 30, &[], &[]);
    start_and_load(&mut s, &["m1", "m2"]);
    let bound = GRACE + HEARTBEAT + SLACK;
    let (t_sig, status, took) = signal_and_wait(s.mons.get("m1"), bound + Duration::from_secs(20));
    let sig_ms = unix_ms(t_sig);
    let log = s.mons.get("m1").log_text();
    assert_log_clock(&log);
    let mut v = Verdict::default();

    v.check(
        status.is_some_and(|st| st.code() == Some(0)),
        format!("m1 exits 0 after SIGTERM: {status:?} after {took:?}"),
    );
    v.check(
        took <= bound,
        format!(
            "m1 exits within grace {GRACE:?} + a store call {HEARTBEAT:?} + slack {SLACK:?} = {bound:?}: {took:?}"
        ),
    );
    v.check(
        took >= GRACE,
        format!("m1 waited for its hanging checks until the grace {GRACE:?}: exit after {took:?}"),
    );

    // The checks in flight at the grace: every hanging cluster m1 started
    // within a check timeout of it could not have ended.
    let recv_ms = logged_at(&log, "shutting down: handing buckets over")
        .expect("m1 logged the start of its shutdown");
    let stop_ms = recv_ms + GRACE.as_millis() as i64;
    let starts = logged_checks(&log);
    let window = stop_ms - CHECK_TIMEOUT.as_millis() as i64 + 2000;
    let mut hanging: Vec<&str> = starts
        .iter()
        .filter(|c| c.at_ms > window && s.slow.contains(&c.cluster))
        .map(|c| c.cluster.as_str())
        .collect();
    hanging.sort_unstable();
    hanging.dedup();
    let cancelled = cancelled_checks(&log);
    v.check(
        !hanging.is_empty() && cancelled.is_some_and(|n| n >= hanging.len() as u64),
        format!(
            "m1 logged {CANCELLING:?} with at least its {} hanging checks: checks={cancelled:?}",
            hanging.len()
        ),
    );

    // Starting stops at the grace at the latest; before it, what is due
    // before the handoff time is still started.
    let after_signal: Vec<_> = starts.iter().filter(|c| c.at_ms > recv_ms).collect();
    let late: Vec<_> = after_signal
        .iter()
        .filter(|c| c.at_ms > stop_ms + START_TOLERANCE_MS)
        .map(|c| (c.cluster.clone(), c.at_ms - recv_ms))
        .collect();
    let last = after_signal.iter().map(|c| c.at_ms - recv_ms).max();
    v.check(
        late.is_empty(),
        format!(
            "no check started more than {START_TOLERANCE_MS} ms after the grace ({} ms after the signal): {late:?}",
            GRACE.as_millis()
        ),
    );
    v.check(
        !after_signal.is_empty(),
        format!(
            "checks due before the handoff time still started after the signal: {}, the last {last:?} ms after it",
            after_signal.len()
        ),
    );

    // Handed over, heartbeat deleted.
    let rows = sqlite_exec_with(
        &s.db,
        "SELECT count(*) FROM monitors WHERE id = ?1",
        &[serde_json::json!("m1")],
    );
    v.check(
        rows.as_ref().ok() == Some(&serde_json::json!([[0]])),
        format!("m1's heartbeat row is deleted: {rows:?}"),
    );
    let owners = buckets(&s.store);
    v.check(
        owners.as_ref().is_some_and(|o| balanced(o, &["m2"])),
        format!(
            "m2 owns all 256 buckets: {:?}",
            owners.as_ref().map(|o| loads(o))
        ),
    );
    eprintln!(
        "stop with hanging checks: signal received {} ms after it was sent; checks cancelled {}, heartbeat deleted {}, stopped {}; exit {status:?} {took:?} after the signal (bound {bound:?}); {} checks started after the signal, the last {last:?} ms after it; cancelled {cancelled:?} ({} hanging started)",
        recv_ms - sig_ms,
        after(&log, CANCELLING, sig_ms),
        after(&log, "heartbeat deleted", sig_ms),
        after(&log, "monitor stopped", sig_ms),
        after_signal.len(),
        hanging.len(),
    );
    v.finish("SIGTERM with hanging checks");
    drop(s.dir);
}

/// Two SIGTERMs while ~30 checks hang, the second once the first has been
/// taken (the monitor logged it) and at least 200 ms later: the monitor is
/// still stopping gracefully when the second comes (the grace is 3 s), and
/// exits with code 130 within 1 s of it (plus `AT_ONCE_SLACK`), logging why.
#[test]
fn a_second_sigterm_while_checks_hang_exits_at_once_with_130() {
    let mut s = setup("stop-twice", 10, &[], &[]);
    start_and_load(&mut s, &["m1"]);
    let p = s.mons.get("m1");
    let t1 = Instant::now();
    p.signal("TERM");
    // Two signals close together may reach the process as one: the second
    // is sent once the first was taken.
    wait_until(
        "m1 takes the first SIGTERM",
        Duration::from_secs(10),
        || {
            p.log_text()
                .contains("stopping gracefully (send again to exit at once)")
                .then_some(())
        },
    );
    let spacing = Duration::from_millis(200);
    if let Some(rest) = spacing.checked_sub(t1.elapsed()) {
        // The scenario's spacing between the two signals, not a wait for
        // anything to happen.
        std::thread::sleep(rest);
    }
    let running = p.child.try_wait().ok().flatten();
    assert!(
        running.is_none(),
        "m1 still stopping when the second signal comes ({:?} after the first): exited {running:?}\n{}",
        t1.elapsed(),
        p.log_text()
    );
    let between = t1.elapsed();
    let bound = Duration::from_secs(1) + AT_ONCE_SLACK;
    let (_, status, took) = signal_and_wait(p, bound + Duration::from_secs(10));
    let log = p.log_text();
    let mut v = Verdict::default();
    v.check(
        status.is_some_and(|st| st.code() == Some(130)),
        format!("m1 exits with code 130 after the second signal: {status:?}"),
    );
    v.check(
        took <= bound,
        format!("m1 exits within 1 s + {AT_ONCE_SLACK:?} of the second signal: {took:?}"),
    );
    v.check(
        log.contains("second signal: exiting now"),
        "m1 logs the second signal",
    );
    eprintln!(
        "two SIGTERMs: second {between:?} after the first, exit {status:?} {took:?} after the second (bound {bound:?})"
    );
    v.finish("two SIGTERMs");
    drop(s.dir);
}

/// An Alertmanager that accepts connections and never answers (nor reads).
struct MuteAlertmanager {
    url: String,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MuteAlertmanager {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the mute Alertmanager");
        l.set_nonblocking(true).expect("non-blocking listener");
        let url = format!("http://{}", l.local_addr().expect("local addr"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, st) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        held.push(c);
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self {
            url,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for MuteAlertmanager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One SIGTERM while ~30 checks hang and alerts are being posted to an
/// Alertmanager that accepts and never answers (10 `down` clusters fire at
/// their first failing check, `--alert-after 1`; a post is in flight and
/// more alerts are queued: the Alertmanager has taken a second connection,
/// a retry after the first post's 5 s timeout). The post in flight and the
/// flush of the queue share one window of 2 s (docs/monitoring.md,
/// *Graceful stop*), while the heartbeat is deleted; the store, the admin
/// API and the metrics sink answer at once here, so that window is the
/// only wait after the grace: exit 0 within grace + 2 s + 1 s of slack.
/// (Before, the post in flight got 2 s and the flush 2 s more, one after
/// the other: 6.93–7.01 s in 3 runs.) The heartbeat interval is 1 s so
/// that a store call's bound (one interval) stays under the window.
#[test]
fn sigterm_with_hanging_checks_and_a_mute_alertmanager_exits_within_the_bound() {
    let am = MuteAlertmanager::start();
    let heartbeat = Duration::from_secs(1);
    let mut s = setup(
        "stop-mute-am",
        20,
        &["--fault", "down=10"],
        &[
            "--heartbeat-interval",
            "1s",
            "--alert-after",
            "1",
            "--alertmanager-url",
            &am.url,
        ],
    );
    start_and_load(&mut s, &["m1"]);
    wait_until(
        "the mute Alertmanager took a retry (a post in flight, alerts queued)",
        Duration::from_secs(60),
        || (am.accepted() >= 2).then_some(()),
    );
    let accepted = am.accepted();
    let window = Duration::from_secs(2);
    let bound = GRACE + window.max(heartbeat) + Duration::from_secs(1);
    let (t_sig, status, took) = signal_and_wait(s.mons.get("m1"), bound + Duration::from_secs(20));
    let sig_ms = unix_ms(t_sig);
    let log = s.mons.get("m1").log_text();
    let mut v = Verdict::default();
    v.check(
        status.is_some_and(|st| st.code() == Some(0)),
        format!("m1 exits 0 after SIGTERM: {status:?} after {took:?}"),
    );
    v.check(
        cancelled_checks(&log).is_some_and(|n| n >= 1),
        format!(
            "m1 logged {CANCELLING:?}: checks={:?}",
            cancelled_checks(&log)
        ),
    );
    v.check(
        took <= bound,
        format!(
            "m1 exits within grace {GRACE:?} + the alerts' window {window:?} + 1 s = {bound:?} with a mute Alertmanager: {took:?}"
        ),
    );
    eprintln!(
        "stop with a mute Alertmanager ({accepted} connections before the signal, {} at the exit): checks cancelled {}, heartbeat deleted {}, the post in flight given up {}, stopped {}; exit {status:?} {took:?} after the signal (bound {bound:?})",
        am.accepted(),
        after(&log, CANCELLING, sig_ms),
        after(&log, "heartbeat deleted", sig_ms),
        after(&log, "posting alerts failed", sig_ms),
        after(&log, "monitor stopped", sig_ms),
    );
    v.finish("SIGTERM with a mute Alertmanager");
    drop(s.dir);
}

/// docs/monitoring.md, *Graceful stop*: the worst case of the bound, with
/// everything the stop waits on hanging at once: ~30 checks in flight that
/// never end, the SQLite store locked by another process (the handoff
/// cannot be written, nor the heartbeat deleted), an Alertmanager that
/// accepts and never answers with a post in flight, and an admin API
/// client that sent half a request and waits. m1 exits 0 within
/// `--shutdown-grace` + max(2 heartbeat intervals, 2 s) + 2 s (3 + 4 + 2 =
/// 9 s) + 1 s of slack, and says it could not hand its buckets over.
/// (Metrics go out as UDP datagrams, which never wait on the receiver.)
#[test]
fn sigterm_with_everything_hanging_exits_within_the_bound() {
    use std::io::Write;
    let am = MuteAlertmanager::start();
    let heartbeat = Duration::from_secs(2);
    let mut s = setup(
        "stop-everything-hangs",
        20,
        &["--fault", "down=10"],
        &["--alert-after", "1", "--alertmanager-url", &am.url],
    );
    start_and_load(&mut s, &["m1"]);
    wait_until(
        "the mute Alertmanager took a post",
        Duration::from_secs(60),
        || (am.accepted() >= 1).then_some(()),
    );
    let url = admin_url_from_log(s.mons.get("m1")).expect("m1's admin URL");
    let mut half = std::net::TcpStream::connect(url.trim_start_matches("http://"))
        .expect("connect to the admin API");
    half.write_all(b"GET /healthz/live HTTP/1.1\r\nHost: m1\r\n")
        .expect("half a request");
    let lock = SqliteLock::hold(s.dir.path(), &s.db, 60);
    let bound = GRACE + (2 * heartbeat).max(Duration::from_secs(2)) + Duration::from_secs(2);
    let (t_sig, status, took) = signal_and_wait(s.mons.get("m1"), bound + Duration::from_secs(20));
    let sig_ms = unix_ms(t_sig);
    let log = s.mons.get("m1").log_text();
    eprintln!(
        "stop with everything hanging: release failed {}, checks cancelled {}, heartbeat delete {}, stopped {}; exit {status:?} {took:?} after the signal (bound {bound:?} + 1 s)",
        after(&log, "could not release buckets", sig_ms),
        after(&log, CANCELLING, sig_ms),
        after(&log, "heartbeat", sig_ms),
        after(&log, "monitor stopped", sig_ms),
    );
    let mut v = Verdict::default();
    v.check(
        status.is_some_and(|st| st.code() == Some(0)),
        format!("m1 exits 0 after SIGTERM: {status:?} after {took:?}"),
    );
    v.check(
        took <= bound + Duration::from_secs(1),
        format!("m1 exits within {bound:?} + 1 s: {took:?}"),
    );
    v.check(
        log.contains("could not release buckets")
            || log.contains("releasing buckets did not finish"),
        "m1 says it could not hand its buckets over".to_string(),
    );
    v.check(
        cancelled_checks(&log).is_some_and(|n| n >= 1),
        format!(
            "m1 cancelled its hanging checks: {:?}",
            cancelled_checks(&log)
        ),
    );
    v.finish("SIGTERM with everything hanging");
    drop(half);
    drop(lock);
    drop(s.dir);
}
