//! The subcommands. Each returns `Err(CmdError)` with a one-line message;
//! `main` prints it and exits 2 (usage, bad input) or 1 (runtime failure).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clustermon_core::admin::api::{
    CheckAnswer, CollectorAnswer, DrainAnswer, ErrorAnswer, FleetFailing,
};
use clustermon_core::check::collect::KubeChecker;
use clustermon_core::clock::Clock;
use clustermon_core::config::EngineConfig;
use clustermon_core::engine::Engine;
use clustermon_core::metrics::mdm::MdmConfig;
use clustermon_core::metrics::{self, Format, Metrics};
use clustermon_core::model::{ClusterDoc, Credentials, ProvisioningState, Secret};
use clustermon_core::secrets::SecretsKey;
use clustermon_core::status::{bucket_owners, fleet_status, FleetStatus};
use clustermon_core::store::{RawCluster, Store};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cli::{
    Collectors, DeleteArgs, ListArgs, MetricsFormat, Output, PutArgs, ReadArgs, RunArgs, SecretsArg,
};
use crate::open_store_url;

#[derive(Debug)]
pub enum CmdError {
    /// Bad flags or input: exit code 2.
    Usage(String),
    /// The operation failed: exit code 1.
    Failed(String),
    /// Stdout was closed (the reader of a pipe went away, as `| head` does):
    /// the end of the output, not a failure. Exit code 0, nothing printed:
    /// the command did what was asked until its reader stopped reading, and
    /// `set -o pipefail` scripts that cut the output keep working (the shell's
    /// 141 would mean a death by SIGPIPE, which std turns off in Rust programs).
    StdoutClosed,
}

impl CmdError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CmdError::Usage(_) => 2,
            CmdError::Failed(_) => 1,
            CmdError::StdoutClosed => 0,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            CmdError::Usage(m) | CmdError::Failed(m) => m,
            CmdError::StdoutClosed => "",
        }
    }
}

/// Writes command output to stdout. A closed stdout (EPIPE) ends the
/// command as [`CmdError::StdoutClosed`]; any other write error fails it.
/// (`println!` panics on both.)
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> Result<(), CmdError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CmdError::StdoutClosed),
        Err(e) => Err(CmdError::Failed(format!("writing to stdout: {e}"))),
    }
}

/// `println!` for command output, through [`write_stdout`]; returns from the
/// enclosing function on a closed stdout.
macro_rules! out {
    () => {
        write_stdout(format_args!("\n"))?
    };
    ($($arg:tt)*) => {
        write_stdout(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

fn failed(e: impl std::fmt::Display) -> CmdError {
    CmdError::Failed(e.to_string())
}

fn usage(e: impl std::fmt::Display) -> CmdError {
    CmdError::Usage(e.to_string())
}

/// Opens the store: a bad flag or file exits 2, a store that does not answer 1.
async fn store(arg: &crate::cli::StoreArg) -> Result<Arc<dyn Store>, CmdError> {
    open_store_url(&arg.store, &arg.cosmos)
        .await
        .map_err(|e| match e {
            crate::OpenStoreError::Input(m) => CmdError::Usage(m),
            crate::OpenStoreError::Store(m) => CmdError::Failed(m),
        })
}

fn secrets_key(arg: &SecretsArg) -> Result<Option<SecretsKey>, CmdError> {
    let Some(current) = arg
        .secrets_key_file
        .as_deref()
        .map(SecretsKey::from_file)
        .transpose()
        .map_err(CmdError::Usage)?
    else {
        return Ok(None);
    };
    let older = arg
        .secrets_old_key_file
        .iter()
        .map(|p| {
            SecretsKey::from_file(p)
                .map_err(|e| CmdError::Usage(format!("--secrets-old-key-file: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(current.with_older(older)))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// `clustermon run`: runs a monitor until SIGTERM/SIGINT, then leaves
/// gracefully. A second signal exits at once.
pub async fn run(
    args: RunArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), CmdError> {
    let host = hostname();
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff));
    // SIGHUP re-reads the secret files; installed first, so that one sent
    // during start-up does not end the process (its default action).
    let hangups = hangups()?;
    let mut cfg = EngineConfig::new(id.clone());
    cfg.hostname = host;
    cfg.heartbeat_interval = args.heartbeat_interval;
    cfg.heartbeat_ttl = args.heartbeat_ttl;
    cfg.lease_ttl = args.lease_ttl;
    cfg.feed_interval = args.feed_interval;
    cfg.relist_interval = args.relist_interval;
    cfg.interval = args.interval;
    cfg.max_concurrent_checks = args.max_concurrent_checks;
    cfg.check_timeout = args.check_timeout;
    cfg.dispatch_tick = args.dispatch_tick;
    cfg.hanging_share_pct = args.hanging_share;
    cfg.release_memory = Some(release_free_memory);
    if args.connect_timeout.is_zero() {
        return Err(CmdError::Usage(
            "--connect-timeout must be more than 0".into(),
        ));
    }
    cfg.shutdown_grace = args.shutdown_grace;
    cfg.max_clock_offset = args.max_clock_offset;
    cfg.handoff_notice = args.handoff_notice;
    if !args.alertmanager_url.is_empty() {
        let token = match &args.alertmanager_token_file {
            Some(f) => Some(read_token_file(f, "--alertmanager-token-file")?),
            None => None,
        };
        cfg.alerts = Some(
            clustermon_core::alerts::AlertConfig::new(
                args.alertmanager_url.clone(),
                args.alert_after,
                token,
                args.alert_labels.clone(),
            )
            .map_err(usage)?,
        );
    } else {
        clustermon_core::alerts::check_after(args.alert_after).map_err(usage)?;
        cfg.alerts = Some(clustermon_core::alerts::AlertConfig::tracking(
            args.alert_after,
        ));
    }
    cfg.validate().map_err(usage)?;
    // The secret files, each group re-read without a restart
    // (`clustermon_core::reload`).
    let mut reload = Vec::new();
    if let (Some(f), Some(t)) = (
        &args.alertmanager_token_file,
        cfg.alerts.as_ref().and_then(|a| a.token.clone()),
    ) {
        reload.push(clustermon_core::reload::alertmanager_token(f.clone(), t));
    }

    // The admin API: refuse a reachable listener without a token, bind
    // before anything else starts so a taken port fails fast.
    let token = match &args.admin_token_file {
        Some(f) => {
            let text = read_token_file(f, "--admin-token-file")?;
            let token = clustermon_core::admin::Token::new(&text)
                .map_err(|e| CmdError::Usage(format!("--admin-token-file {}: {e}", f.display())))?;
            // The same token authenticates this monitor's pushed
            // assignments to its peers (every monitor has the same file;
            // the first line is sent, every line accepted).
            let token = clustermon_core::reload::Live::new(token);
            cfg.admin_token = Some(token.clone());
            reload.push(clustermon_core::reload::admin_token(f.clone(), token.clone()));
            Some(token)
        }
        None if !args.admin_listen.ip().is_loopback() => {
            return Err(CmdError::Usage(format!(
                "--admin-listen {} is not a loopback address: give --admin-token-file so that drain and check-now need a token",
                args.admin_listen
            )))
        }
        None => None,
    };
    // HTTPS on the admin API: the pair read bounded, checked now (exit 2),
    // re-read like the secret files.
    let tls = match (&args.admin_tls_cert_file, &args.admin_tls_key_file) {
        (Some(c), Some(k)) => {
            let read = |p: &std::path::Path, flag: &str| {
                clustermon_core::reload::read_secret_file(p).map_err(|e| {
                    CmdError::Usage(format!("cannot read {flag} {}: {e}", p.display()))
                })
            };
            use clustermon_core::admin::tls::PairError;
            let cfg = clustermon_core::admin::tls::server_config(
                &read(c, "--admin-tls-cert-file")?,
                &read(k, "--admin-tls-key-file")?,
            )
            .map_err(|e| {
                let (flag, p) = match &e {
                    PairError::Cert(_) => ("--admin-tls-cert-file", c),
                    PairError::Key(_) => ("--admin-tls-key-file", k),
                };
                CmdError::Usage(format!("{flag} {}: {e}", p.display()))
            })?;
            let live = clustermon_core::reload::Live::new(cfg);
            reload.push(clustermon_core::reload::admin_tls(
                c.clone(),
                k.clone(),
                live.clone(),
            ));
            Some(live)
        }
        _ => None,
    };
    cfg.admin_peer_ca = admin_ca(&args.admin_ca)?;
    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .map_err(|e| CmdError::Usage(format!("--admin-listen {}: {e}", args.admin_listen)))?;
    let bound = listener.local_addr().map_err(failed)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    cfg.admin_url = match &args.admin_advertise {
        Some(u) => u.trim_end_matches('/').to_string(),
        None if bound.ip().is_unspecified() => {
            format!("{scheme}://{}:{}", cfg.hostname, bound.port())
        }
        None => format!("{scheme}://{bound}"),
    };

    let key = secrets_key(&args.secrets)?;
    if key.is_none() {
        tracing::warn!("no --secrets-key-file: cluster credentials are accepted in plaintext, and sealed ones cannot be opened");
    }
    let store = store(&args.store).await?;
    let format = match args.metrics_format {
        MetricsFormat::Dogstatsd => Format::DogStatsd,
        MetricsFormat::Mdm => Format::Mdm(MdmConfig {
            account: args.mdm_account.clone(),
            namespace: args.mdm_namespace.clone(),
        }),
    };
    let output = metrics::Output {
        target: args.statsd.clone(),
        format,
    };
    // One clock, its clones sharing the anchor (a resync moves them all).
    let clock = Clock::system();
    let (metrics, writer) = Metrics::new(&id, output, 8192, clock.clone());
    let checker = match args.collectors {
        Collectors::Full => {
            KubeChecker::standard(key, args.monitored_namespaces.clone(), clock.clone())
                .with_concurrency(usize::from(args.collector_concurrency))
        }
        Collectors::Healthz => KubeChecker::healthz_only(key, clock.clone()),
    }
    .with_connect_timeout(args.connect_timeout.min(args.check_timeout))
    .with_pipeline(usize::from(args.pipelined_requests));
    if let Some(current) = &args.secrets.secrets_key_file {
        reload.push(clustermon_core::reload::secrets_keys(
            current.clone(),
            args.secrets.secrets_old_key_file.clone(),
            checker.key(),
        ));
    }
    let cfg_admin_url = cfg.admin_url.clone();
    let fleet_client = clustermon_core::reload::Live::new(clustermon_core::admin::fleet::client(
        &cfg.admin_peer_ca,
    ));
    let heartbeat_interval = cfg.heartbeat_interval;
    let reload_metrics = metrics.clone();
    let engine =
        Engine::new(cfg, store.clone(), Arc::new(checker), metrics, clock).map_err(usage)?;
    // A new CA bundle rebuilds the clients that trust it: the peers' (probes
    // and pushes) and the fleet view's.
    if let Some(f) = &args.admin_ca.admin_ca_file {
        let (peer, fleet) = (engine.handles().peer_http.clone(), fleet_client.clone());
        reload.push(clustermon_core::reload::admin_ca(f.clone(), move |certs| {
            peer.set(clustermon_core::engine::peer_client(
                heartbeat_interval,
                &certs,
            ));
            fleet.set(clustermon_core::admin::fleet::client(&certs));
        }));
    }
    let reloader = clustermon_core::reload::Reloader::new(reload, reload_metrics);
    tracing::info!(
        monitor = %id,
        store = store.kind(),
        interval = ?args.interval,
        max_concurrent_checks = args.max_concurrent_checks,
        "monitor starting"
    );

    let writer_stop = CancellationToken::new();
    let writer_task = tokio::spawn(writer.run(writer_stop.clone()));
    let reload_stop = CancellationToken::new();
    let reload_task =
        tokio::spawn(reloader.run(args.secrets_reload_interval, hangups, reload_stop.clone()));
    let admin_stop = CancellationToken::new();
    tracing::info!(admin = %bound, url = %cfg_admin_url, "admin API listening");
    let admin_task = tokio::spawn(clustermon_core::admin::serve(
        listener,
        engine.handles(),
        clustermon_core::admin::ServeOptions {
            token,
            tls,
            fleet_client,
            handshake_within: clustermon_core::admin::HANDSHAKE_WITHIN,
        },
        admin_stop.clone(),
    ));
    engine.run(shutdown).await;
    // The admin API's open requests end and the writer drains its queue, at
    // once, in one window: a stuck client or socket cannot hold us longer.
    admin_stop.cancel();
    writer_stop.cancel();
    reload_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = tokio::join!(admin_task, writer_task, reload_task);
    })
    .await;
    Ok(())
}

/// SIGHUP, as a stream: each one asks for the secret files to be read now.
fn hangups() -> Result<futures::stream::BoxStream<'static, ()>, CmdError> {
    use tokio::signal::unix::{signal, SignalKind};
    let sig = signal(SignalKind::hangup())
        .map_err(|e| CmdError::Failed(format!("cannot install the SIGHUP handler: {e}")))?;
    Ok(Box::pin(futures::stream::unfold(
        sig,
        |mut sig| async move { sig.recv().await.map(|()| ((), sig)) },
    )))
}

async fn read_fleet(store: &dyn Store) -> Result<(FleetStatus, Vec<Option<String>>), CmdError> {
    let now = Clock::system().now_ms();
    let live = store.list_monitors(now).await.map_err(failed)?;
    let master = store.read_master().await.map_err(failed)?;
    let clusters = store.count_clusters().await.map_err(failed)?;
    let master = master.map(|m| m.value);
    Ok((
        fleet_status(master.as_ref(), &live, clusters, now),
        bucket_owners(master.as_ref(), &live),
    ))
}

fn print_json(v: &impl Serialize) -> Result<(), CmdError> {
    out!("{}", serde_json::to_string_pretty(v).map_err(failed)?);
    Ok(())
}

/// `status --output json`: the fleet from the store, and the failing
/// clusters gathered through the monitors' admin APIs.
#[derive(Serialize)]
struct StatusOut<'a> {
    #[serde(flatten)]
    fleet: &'a FleetStatus,
    /// The fleet-wide view (`None`: no monitor's admin API answered).
    failing: Option<&'a FleetFailing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failing_error: Option<&'a str>,
    /// The monitor whose `/api/status` answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    gathered_by: Option<&'a str>,
}

/// Asks live monitors (ready ones first) for the fleet-wide failing view
/// until one answers: which monitor answered, and its view.
async fn gather_failing(
    live: &[clustermon_core::model::MonitorDoc],
    limit: usize,
    ca: &[reqwest::Certificate],
) -> Result<(String, FleetFailing), String> {
    let mut order: Vec<&clustermon_core::model::MonitorDoc> =
        live.iter().filter(|m| !m.admin_url.is_empty()).collect();
    order.sort_by_key(|m| (!m.stats.ready, m.id.clone()));
    /// The part of `/api/status` read here.
    #[derive(serde::Deserialize)]
    struct Answer {
        failing: FleetFailing,
    }
    let mut last = "no live monitor advertises an admin URL".to_string();
    let client = admin_client(Duration::from_secs(5), ca).map_err(|e| e.message().to_string())?;
    for m in order {
        let url = format!(
            "{}/api/status?limit={limit}",
            m.admin_url.trim_end_matches('/')
        );
        // A paused monitor accepts the connection and never answers: a
        // short timeout, then the next one.
        let answer = async {
            let r = client.get(&url).send().await?.error_for_status()?;
            r.bytes().await
        };
        match answer.await {
            // The decode error names the field and type, never a value.
            Ok(b) => match clustermon_core::decode::json_slice::<Answer>(&b, &[]) {
                Ok(a) => return Ok((m.id.clone(), a.failing)),
                Err(e) => last = format!("{}: the answer does not decode: {e}", m.id),
            },
            Err(e) if e.is_timeout() => last = format!("{}: no answer within 5s", m.id),
            Err(e) => last = format!("{}: {e}", m.id),
        }
    }
    Err(last)
}

pub async fn status(args: ReadArgs) -> Result<(), CmdError> {
    let store = store(&args.store).await?;
    let (s, _) = read_fleet(&*store).await?;
    let live = store
        .list_monitors(Clock::system().now_ms())
        .await
        .map_err(failed)?;
    let limit = if args.output == Output::Json { 200 } else { 50 };
    let gathered = gather_failing(&live, limit, &admin_ca(&args.admin_ca)?).await;
    if args.output == Output::Json {
        let (by, failing, error) = match &gathered {
            Ok((by, f)) => (Some(by.as_str()), Some(f), None),
            Err(e) => (None, None, Some(e.as_str())),
        };
        return print_json(&StatusOut {
            fleet: &s,
            failing,
            failing_error: error,
            gathered_by: by,
        });
    }
    match &s.master {
        Some(m) => out!(
            "master:      {} (lease expires in {:.1}s)",
            m.id,
            m.lease_expires_in_s
        ),
        None => out!("master:      none (lease free or expired)"),
    }
    let rate: f64 = s.monitors.iter().map(|m| m.checks_per_s).sum();
    out!("checks/s:    {rate:.1}");
    out!("generation:  {}", s.generation);
    out!("clusters:    {}", s.clusters);
    out!("unassigned:  {} buckets", s.unassigned_buckets);
    out!();
    out!(
        "{:<28} {:<20} {:<10} {:>9} {:<5} {:>7} {:>9} {:>8} {:>7}  DRAINING",
        "MONITOR",
        "HOSTNAME",
        "VERSION",
        "HEARTBEAT",
        "READY",
        "BUCKETS",
        "CHECKS/S",
        "CACHE",
        "FAILING"
    );
    for m in &s.monitors {
        out!(
            "{:<28} {:<20} {:<10} {:>8.1}s {:<5} {:>7} {:>9.1} {:>8} {:>7}  {}",
            m.id,
            m.hostname,
            m.version,
            m.heartbeat_age_s,
            if m.ready { "yes" } else { "NO" },
            m.buckets,
            m.checks_per_s,
            m.cache_size,
            m.failing,
            if m.draining { "yes" } else { "no" }
        );
    }
    if s.monitors.is_empty() {
        out!("(no live monitors)");
    }
    out!();
    match &gathered {
        Ok((by, f)) => print_failing(by, f)?,
        Err(e) => out!("failing clusters: unknown: no monitor's admin API answered ({e})"),
    }
    Ok(())
}

/// The fleet-wide failing clusters, peer probes and gather outcomes.
fn print_failing(by: &str, f: &FleetFailing) -> Result<(), CmdError> {
    let shown = if f.failing_total > f.failing.len() {
        format!("{} of {}", f.failing.len(), f.failing_total)
    } else {
        f.failing.len().to_string()
    };
    out!("failing clusters: {shown} (gathered by {by})");
    for m in f.monitors.iter().filter(|m| !m.ok) {
        out!(
            "  missing: {}'s clusters ({})",
            m.monitor,
            m.error.as_deref().unwrap_or("no report")
        );
    }
    if let Some(am) = f.silences.as_ref().filter(|a| !a.ok) {
        out!(
            "  silences unknown: {}",
            am.error.as_deref().unwrap_or("Alertmanager did not answer")
        );
    }
    if !f.failing.is_empty() {
        out!(
            "{:<28} {:<12} {:<16} {:<28} SUMMARY",
            "CLUSTER",
            "STATE",
            "MONITOR",
            "ALERTS"
        );
        for c in &f.failing {
            let alerts: Vec<&str> = c.alerts.iter().map(|a| a.alertname.as_str()).collect();
            out!(
                "{:<28} {:<12} {:<16} {:<28} {}",
                c.id,
                c.state.as_str(),
                c.monitor,
                if alerts.is_empty() {
                    "-".to_string()
                } else {
                    alerts.join(",")
                },
                c.summary
            );
        }
    }
    let probes: Vec<_> = f
        .monitors
        .iter()
        .flat_map(|m| m.probes.iter().map(move |p| (&m.monitor, p)))
        .collect();
    if !probes.is_empty() {
        out!();
        out!("{:<28} {:<28} {:<9} PROBED", "PROBER", "PEER", "OUTCOME");
        let now = Clock::system().now_ms();
        for (by, p) in probes {
            out!(
                "{:<28} {:<28} {:<9} {:.1}s ago",
                by,
                p.peer,
                p.outcome,
                (now - p.at_ms).max(0) as f64 / 1000.0
            );
        }
    }
    Ok(())
}

pub async fn buckets(args: ReadArgs) -> Result<(), CmdError> {
    let store = store(&args.store).await?;
    let (_, owners) = read_fleet(&*store).await?;
    if args.output == Output::Json {
        return print_json(&owners);
    }
    // Ranges of consecutive buckets per owner.
    let mut by_owner: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for (b, o) in owners.iter().enumerate() {
        let key = o.clone().unwrap_or_else(|| "(unassigned)".into());
        let ranges = by_owner.entry(key).or_default();
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == b => *end = b,
            _ => ranges.push((b, b)),
        }
    }
    for (owner, ranges) in by_owner {
        let n: usize = ranges.iter().map(|(a, b)| b - a + 1).sum();
        let list: Vec<String> = ranges
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        out!("{owner:<28} {n:>3}  {}", list.join(","));
    }
    Ok(())
}

/// A token file: bounded, a regular file (`clustermon_core::reload`).
fn read_token_file(p: &std::path::Path, what: &str) -> Result<String, CmdError> {
    let bytes = clustermon_core::reload::read_secret_file(p)
        .map_err(|e| CmdError::Usage(format!("cannot read {what} {}: {e}", p.display())))?;
    String::from_utf8(bytes)
        .map_err(|_| CmdError::Usage(format!("{what} {}: not UTF-8 text", p.display())))
}

fn read_file(p: &std::path::Path, what: &str) -> Result<String, CmdError> {
    std::fs::read_to_string(p)
        .map_err(|e| CmdError::Usage(format!("cannot read {what} {}: {e}", p.display())))
}

/// Server and credentials from the flags (files or a kubeconfig).
fn put_credentials(args: &PutArgs) -> Result<(String, Credentials), CmdError> {
    if let Some(kc) = &args.kubeconfig {
        let (server, mut c) =
            crate::kubeconfig::load(kc, args.context.as_deref()).map_err(CmdError::Usage)?;
        c.insecure_skip_tls_verify |= args.insecure_skip_tls_verify;
        return Ok((args.api_server.clone().unwrap_or(server), c));
    }
    let opt = |p: &Option<std::path::PathBuf>, what: &str| {
        p.as_deref().map(|p| read_file(p, what)).transpose()
    };
    let creds = Credentials {
        ca_bundle: opt(&args.ca_file, "CA file")?,
        token: opt(&args.token_file, "token file")?.map(|t| Secret::new(t.trim())),
        client_certificate: opt(&args.client_cert, "client certificate")?,
        client_key: opt(&args.client_key, "client key")?.map(Secret::new),
        insecure_skip_tls_verify: args.insecure_skip_tls_verify,
    };
    Ok((args.api_server.clone().unwrap_or_default(), creds))
}

pub async fn cluster_put(args: PutArgs) -> Result<(), CmdError> {
    let key = secrets_key(&args.secrets)?;
    let (api_server, creds) = put_credentials(&args)?;
    let mut doc = ClusterDoc {
        id: args.id.clone(),
        bucket: args.bucket.unwrap_or_else(rand::random),
        provisioning_state: args.state,
        api_server,
        credentials: Default::default(),
        encrypted_credentials: None,
        labels: args.labels.iter().cloned().collect(),
    };
    doc.validate().map_err(CmdError::Usage)?;
    if !creds.is_empty() {
        // Refuse credentials that cannot work now rather than at check time.
        clustermon_core::check::tls::client_config(&creds, doc.api_server.starts_with("https://"))
            .map_err(CmdError::Usage)?;
    }
    match (&key, creds.is_empty()) {
        (_, true) => {}
        (Some(k), false) => {
            doc.encrypted_credentials = Some(k.seal(&doc.id, &creds).map_err(failed)?)
        }
        (None, false) => {
            eprintln!(
                "clustermon: warning: no --secrets-key-file: credentials are stored in plaintext"
            );
            doc.credentials = creds;
        }
    }
    let store = store(&args.store).await?;
    store.put_cluster(&doc).await.map_err(failed)?;
    out!("cluster {} stored in bucket {}", doc.id, doc.bucket);
    Ok(())
}

/// What `cluster list` shows of a document: never credential material.
#[derive(Serialize)]
struct ClusterView {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    bucket: Option<u8>,
    #[serde(rename = "provisioningState", skip_serializing_if = "Option::is_none")]
    state: Option<ProvisioningState>,
    #[serde(rename = "apiServer", skip_serializing_if = "Option::is_none")]
    api_server: Option<String>,
    /// Which credential fields are present.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    credentials: Vec<&'static str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invalid: Option<String>,
}

/// A stored cluster document, decoded as the monitors decode it: its id
/// must be its key (a document's own id is a value of the document, and is
/// not shown when it differs).
fn decode_stored(r: &RawCluster) -> Result<ClusterDoc, String> {
    let doc = ClusterDoc::decode(&r.body)?;
    if doc.id != r.id {
        return Err("document id does not match its key".into());
    }
    Ok(doc)
}

pub async fn cluster_list(args: ListArgs) -> Result<(), CmdError> {
    let key = secrets_key(&args.secrets)?;
    let args = args.read;
    let store = store(&args.store).await?;
    let raws = store.list_clusters().await.map_err(failed)?;
    let views: Vec<ClusterView> = raws
        .into_iter()
        .map(|r| match decode_stored(&r) {
            Ok(doc) => {
                let sealed = doc.encrypted_credentials.as_deref().map(|s| match &key {
                    Some(k) => match k.open_which(&doc.id, s) {
                        Ok((_, 0)) => "sealed",
                        Ok(_) => "sealed (with an older key: seal it again)",
                        Err(_) => "sealed (does not open with this key)",
                    },
                    None => "sealed",
                });
                let c = &doc.credentials;
                let present = [
                    ("caBundle", c.ca_bundle.is_some()),
                    ("token", c.token.is_some()),
                    ("clientCertificate", c.client_certificate.is_some()),
                    ("clientKey", c.client_key.is_some()),
                    ("insecureSkipTLSVerify", c.insecure_skip_tls_verify),
                ];
                ClusterView {
                    id: doc.id,
                    bucket: Some(doc.bucket),
                    state: Some(doc.provisioning_state),
                    api_server: Some(doc.api_server),
                    credentials: present
                        .iter()
                        .filter(|p| p.1)
                        .map(|p| p.0)
                        .chain(sealed)
                        .collect(),
                    labels: doc.labels,
                    invalid: None,
                }
            }
            Err(reason) => ClusterView {
                id: r.id,
                bucket: None,
                state: None,
                api_server: None,
                credentials: vec![],
                labels: BTreeMap::new(),
                invalid: Some(reason),
            },
        })
        .collect();
    if args.output == Output::Json {
        return print_json(&views);
    }
    out!(
        "{:<36} {:>6} {:<10} {:<48} LABELS",
        "ID",
        "BUCKET",
        "STATE",
        "API SERVER"
    );
    for v in &views {
        if let Some(reason) = &v.invalid {
            out!("{:<36} {:>6} {:<10} {reason}", v.id, "-", "INVALID");
            continue;
        }
        let labels: Vec<String> = v.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out!(
            "{:<36} {:>6} {:<10} {:<48} {}",
            v.id,
            v.bucket.unwrap_or_default(),
            v.state.map_or("", |s| s.as_str()),
            v.api_server.as_deref().unwrap_or(""),
            labels.join(",")
        );
    }
    Ok(())
}

pub async fn cluster_delete(args: DeleteArgs) -> Result<(), CmdError> {
    let store = store(&args.store).await?;
    if store.delete_cluster(&args.id).await.map_err(failed)? {
        out!("cluster {} deleted", args.id);
        Ok(())
    } else {
        Err(CmdError::Failed(format!(
            "no cluster with id {:?}",
            args.id
        )))
    }
}

/// `clustermon store init`: creates what the store needs, idempotently.
pub async fn store_init(args: crate::cli::StoreArg) -> Result<(), CmdError> {
    match &args.store {
        crate::StoreUrl::Sqlite(_) => {
            // Opening creates the file and its tables.
            store(&args).await?;
            out!("sqlite store ready");
        }
        crate::StoreUrl::Cosmos(u) => {
            let cfg = args.cosmos.config(u).map_err(CmdError::Usage)?;
            let created = clustermon_store_cosmos::CosmosStore::init(&cfg)
                .await
                .map_err(failed)?;
            if created.is_empty() {
                out!("cosmos store {u}: database and containers already exist");
            }
            for c in created {
                out!("created {c}");
            }
        }
        crate::StoreUrl::Postgres(u) => {
            let cfg = args.cosmos.postgres_config(u).map_err(CmdError::Usage)?;
            use clustermon_store_postgres::InitOutcome;
            let outcome = clustermon_store_postgres::PostgresStore::init(&cfg)
                .await
                .map_err(failed)?;
            let v = clustermon_store_postgres::SCHEMA_VERSION;
            match outcome {
                InitOutcome::Created => {
                    out!("postgres store {u}: created the schema (version {v})")
                }
                InitOutcome::Migrated { from } => {
                    out!("postgres store {u}: migrated the schema from version {from} to {v}")
                }
                InitOutcome::Current => {
                    out!("postgres store {u}: schema version {v} already exists")
                }
            }
        }
    }
    Ok(())
}

// ---- commands that talk to monitors' admin APIs ----

/// A client for monitors' admin APIs; `timeout` bounds a whole request
/// (check-now waits for the check; reads are short).
fn admin_client(
    timeout: Duration,
    ca: &[reqwest::Certificate],
) -> Result<reqwest::Client, CmdError> {
    clustermon_core::http::client_builder()
        .tls_certs_merge(ca.iter().cloned())
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5).min(timeout))
        .build()
        .map_err(failed)
}

/// The token the CLI sends: the file's first token (a monitor's file may
/// list several during a rotation).
fn admin_token(arg: &crate::cli::AdminTokenArg) -> Result<Option<String>, CmdError> {
    arg.admin_token_file
        .as_deref()
        .map(|f| {
            let text = read_token_file(f, "--admin-token-file")?;
            clustermon_core::admin::Token::new(&text)
                .map(|t| t.sent().to_string())
                .map_err(|e| CmdError::Usage(format!("--admin-token-file {}: {e}", f.display())))
        })
        .transpose()
}

/// The CA bundle of `--admin-ca-file` (none: the system's roots only).
pub fn admin_ca(arg: &crate::cli::AdminCaArg) -> Result<Vec<reqwest::Certificate>, CmdError> {
    let Some(f) = &arg.admin_ca_file else {
        return Ok(Vec::new());
    };
    let pem = clustermon_core::reload::read_bounded(f, clustermon_core::reload::CA_FILE_MAX)
        .map_err(|e| {
            CmdError::Usage(format!("cannot read --admin-ca-file {}: {e}", f.display()))
        })?;
    clustermon_core::admin::tls::ca_certs(&pem)
        .map_err(|e| CmdError::Usage(format!("--admin-ca-file {}: {e}", f.display())))
}

/// Sends a request to a monitor's admin API; the status and the body's
/// JSON (a string when the body is not JSON).
async fn admin_call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    ca: &[reqwest::Certificate],
) -> Result<(u16, serde_json::Value), String> {
    let client = admin_client(Duration::from_secs(65), ca).map_err(|e| e.message().to_string())?;
    let mut req = client.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
    let code = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
    if code == 401 {
        return Err(format!(
            "{url}: 401 unauthorized: give the monitor's token with --admin-token-file"
        ));
    }
    let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    Ok((code, v))
}

fn monitor_url<'a>(
    live: &'a [clustermon_core::model::MonitorDoc],
    id: &str,
) -> Result<&'a str, CmdError> {
    let m = live
        .iter()
        .find(|m| m.id == id)
        .ok_or_else(|| CmdError::Failed(format!("monitor {id} is not live (no heartbeat)")))?;
    if m.admin_url.is_empty() {
        return Err(CmdError::Failed(format!(
            "monitor {id} advertises no admin URL"
        )));
    }
    Ok(&m.admin_url)
}

/// A success answer of the admin API as its type (`admin::api`).
fn admin_answer<T: serde::de::DeserializeOwned>(
    what: &str,
    v: serde_json::Value,
) -> Result<T, CmdError> {
    serde_json::from_value(v)
        .map_err(|e| CmdError::Failed(format!("{what}: the monitor's answer does not decode: {e}")))
}

/// An error answer of the admin API in one line: its `error`, else the body.
fn admin_error(v: &serde_json::Value) -> String {
    match serde_json::from_value::<ErrorAnswer>(v.clone()) {
        Ok(e) => e.error,
        Err(_) => v.to_string(),
    }
}

/// One line per collector of a check result.
fn print_collectors(collectors: &[CollectorAnswer], indent: &str) -> Result<(), CmdError> {
    for c in collectors {
        out!(
            "{indent}{:<18} {:>5} ms  {}",
            c.name,
            c.duration_ms,
            c.error.as_deref().unwrap_or("ok")
        );
    }
    Ok(())
}

/// `clustermon explain CLUSTER_ID`.
pub async fn explain(args: crate::cli::ExplainArgs) -> Result<(), CmdError> {
    use clustermon_core::status::{explain, Doc};
    let store = store(&args.read.store).await?;
    let now = Clock::system().now_ms();
    let id = args.cluster_id.as_str();
    let raw = store.get_cluster(id).await.map_err(failed)?;
    let live = store.list_monitors(now).await.map_err(failed)?;
    let master = store
        .read_master()
        .await
        .map_err(failed)?
        .map(|m| m.value.normalised());
    let decoded = raw.as_ref().map(decode_stored);
    let doc = match &decoded {
        None => Doc::Missing,
        Some(Err(e)) => Doc::Invalid(e.clone()),
        Some(Ok(d)) => Doc::Valid(d),
    };
    // The owner's own view: last check and next due time.
    let mut owner_view = None;
    let mut note = None;
    if let (Some(Ok(d)), Some(m)) = (&decoded, &master) {
        let owner = m.buckets[usize::from(d.bucket)].owner.clone();
        if let Some(url) = owner.and_then(|o| monitor_url(&live, &o).ok().map(str::to_string)) {
            match admin_call(
                reqwest::Method::GET,
                &format!("{url}/debug/clusters/{id}"),
                None,
                &admin_ca(&args.read.admin_ca)?,
            )
            .await
            {
                Ok((200 | 404, v)) => owner_view = Some(v),
                Ok((code, v)) => note = Some(format!("the owner's admin API answered {code}: {v}")),
                Err(e) => note = Some(format!("the owner's admin API did not answer: {e}")),
            }
        }
    }
    let e = explain(id, doc, master.as_ref(), &live, owner_view.as_ref());
    if args.read.output == Output::Json {
        return print_json(&e);
    }
    let or_dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    out!("cluster:     {}", e.id);
    out!("bucket:      {}", or_dash(e.bucket.map(|b| b.to_string())));
    out!("state:       {}", or_dash(e.state.clone()));
    out!(
        "owner:       {} ({})",
        or_dash(e.owner.clone()),
        match (
            e.owner.is_some(),
            e.owner_alive,
            e.owner_ready,
            e.owner_draining
        ) {
            (false, ..) => "none",
            (true, false, ..) => "dead",
            (true, true, _, true) => "alive, draining",
            (true, true, Some(true), false) => "alive, ready",
            (true, true, _, false) => "alive, NOT ready",
        }
    );
    let fmt_ms = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| {
                format!(
                    "{} ({:+.1}s)",
                    t.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    (ms - now) as f64 / 1000.0
                )
            })
            .unwrap_or_else(|| ms.to_string())
    };
    let last = e
        .last_check
        .clone()
        .and_then(|l| serde_json::from_value::<CheckAnswer>(l).ok());
    match &last {
        Some(l) => out!(
            "last check:  {} {} ({})",
            fmt_ms(l.started_ms),
            if l.ok { "ok" } else { "FAILED" },
            l.summary
        ),
        None => out!("last check:  -"),
    }
    if let Some(l) = &last {
        print_collectors(&l.collectors, "             ")?;
    }
    out!("next due:    {}", or_dash(e.next_due.map(fmt_ms)));
    out!("checked:     {}", if e.checked { "yes" } else { "NO" });
    if let Some(r) = &e.reason {
        out!("reason:      {r}");
    }
    if let Some(n) = note {
        out!("note:        {n}");
    }
    Ok(())
}

/// `clustermon drain MONITOR_ID [--wait]`.
pub async fn drain(args: crate::cli::DrainArgs) -> Result<(), CmdError> {
    let store = store(&args.store).await?;
    let token = admin_token(&args.token)?;
    let now = Clock::system().now_ms();
    let live = store.list_monitors(now).await.map_err(failed)?;
    let url = monitor_url(&live, &args.monitor_id)?.to_string();
    let (code, v) = admin_call(
        reqwest::Method::POST,
        &format!("{url}/admin/drain"),
        token.as_deref(),
        &admin_ca(&args.admin_ca)?,
    )
    .await
    .map_err(CmdError::Failed)?;
    if code != 200 {
        return Err(CmdError::Failed(format!(
            "drain {}: {code}: {}",
            args.monitor_id,
            admin_error(&v)
        )));
    }
    let answer: DrainAnswer = admin_answer("drain", v)?;
    out!(
        "monitor {} is draining; handoff at {}",
        args.monitor_id,
        answer.handoff_at_ms
    );
    if !args.wait {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        let now = Clock::system().now_ms();
        if let Ok(Some(m)) = store.read_master().await {
            let me = args.monitor_id.as_str();
            let busy = m
                .value
                .buckets
                .iter()
                .filter(|b| b.involves(me, now))
                .count();
            if busy == 0 {
                out!("monitor {me} owns no bucket and hands none over");
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CmdError::Failed(format!(
                "monitor {} still owns buckets after {:?}",
                args.monitor_id, args.timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `clustermon check CLUSTER_ID`: check now, on the owner.
pub async fn check(args: crate::cli::CheckArgs) -> Result<(), CmdError> {
    let store = store(&args.read.store).await?;
    let token = admin_token(&args.token)?;
    let now = Clock::system().now_ms();
    let id = args.cluster_id.as_str();
    let raw = store
        .get_cluster(id)
        .await
        .map_err(failed)?
        .ok_or_else(|| CmdError::Failed(format!("no such cluster: {id}")))?;
    let doc = decode_stored(&raw).map_err(CmdError::Failed)?;
    let live = store.list_monitors(now).await.map_err(failed)?;
    let master =
        store.read_master().await.map_err(failed)?.ok_or_else(|| {
            CmdError::Failed("no master document: is any monitor running?".into())
        })?;
    let owner = master.value.normalised().buckets[usize::from(doc.bucket)]
        .owner_at(now)
        .map(str::to_string)
        .ok_or_else(|| CmdError::Failed(format!("bucket {} is unassigned", doc.bucket)))?;
    let url = monitor_url(&live, &owner)?.to_string();
    let (code, v) = admin_call(
        reqwest::Method::POST,
        &format!("{url}/admin/check/{id}"),
        token.as_deref(),
        &admin_ca(&args.read.admin_ca)?,
    )
    .await
    .map_err(CmdError::Failed)?;
    if code != 200 {
        return Err(CmdError::Failed(format!(
            "check {id} on {owner}: {code}: {}",
            admin_error(&v)
        )));
    }
    let answer: CheckAnswer = admin_answer("check", v)?;
    if args.read.output == Output::Json {
        return print_json(&answer);
    }
    out!(
        "{id} checked by {owner} in {} ms: {} ({})",
        answer.duration_ms,
        if answer.ok { "ok" } else { "FAILED" },
        answer.summary
    );
    print_collectors(&answer.collectors, "  ")?;
    if !answer.ok {
        return Err(CmdError::Failed(format!("{id}: the check failed")));
    }
    Ok(())
}

/// Gives the allocator's free pages back to the system (glibc keeps them):
/// called by the engine after it dropped the documents of buckets it no
/// longer checks.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim walks the allocator's own free lists; it has no
    // precondition.
    unsafe {
        libc::malloc_trim(0);
    }
}
