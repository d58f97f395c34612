//! Command-line definitions. Every flag can also be set from the
//! environment as `CLUSTERMON_<FLAG>` (e.g. `CLUSTERMON_HEARTBEAT_INTERVAL`).

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clustermon_core::config::defaults;
use clustermon_core::metrics::Target;

use crate::StoreUrl;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 500ms, 2s, 5m)"))
}

/// A default of `config::defaults` as flag text ("2s", "1m"), so that the
/// engine and the flags share one definition and `--help` shows it. Leaks a
/// few bytes per flag, once per parser built.
fn human(d: Duration) -> &'static str {
    Box::leak(humantime::format_duration(d).to_string().into_boxed_str())
}

#[derive(Parser, Debug)]
#[command(
    name = "clustermon",
    version,
    about = "Watches a fleet of Kubernetes/OpenShift clusters from the outside"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "CLUSTERMON_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log filter (tracing env-filter syntax), e.g. info or clustermon_core=debug.
    #[arg(
        long,
        global = true,
        default_value = "info",
        env = "CLUSTERMON_LOG_LEVEL"
    )]
    pub log_level: String,
    /// Threads that run the process's tasks. 1 (the default): one thread
    /// runs them all, no work stealing and no cross-thread wake-ups, which
    /// measured 8-21% less CPU per check than a pool of one worker per core
    /// (docs/performance.md, *CPU per check*); a monitor's share needs a
    /// fraction of a core. More: a work-stealing pool of that many threads,
    /// for a monitor whose checks need more than one core. Blocking store
    /// calls run on a pool of their own either way.
    #[arg(
        long,
        global = true,
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=1024),
        env = "CLUSTERMON_THREADS"
    )]
    pub threads: u16,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum MetricsFormat {
    Dogstatsd,
    Mdm,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a monitor.
    Run(Box<RunArgs>),
    /// Show the fleet: master, monitors, bucket assignment, cluster count.
    Status(ReadArgs),
    /// Show the owner of each of the 256 buckets.
    Buckets(ReadArgs),
    /// Manage cluster documents (what the RP writes).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage the store itself.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Who checks a cluster, when it was last checked and, if it is not, why.
    Explain(ExplainArgs),
    /// Hand a monitor's buckets to the others (no gap, no duplicate check);
    /// the monitor stays up and finishes its in-flight checks.
    Drain(DrainArgs),
    /// Run a check of a cluster now, on its owner, and print the result.
    Check(CheckArgs),
}

/// `--admin-ca-file`: the monitors' admin APIs serve HTTPS with a
/// certificate from this CA.
#[derive(Args, Debug, Clone, Default)]
pub struct AdminCaArg {
    /// PEM bundle of the CA that issued the monitors' admin certificates
    /// (their --admin-tls-cert-file), trusted on top of the system's roots
    /// for https:// admin URLs; `run`: the only roots its peers' admin
    /// APIs are trusted with (probes, pushed assignments), re-read while
    /// running.
    #[arg(long, env = "CLUSTERMON_ADMIN_CA_FILE", value_name = "FILE")]
    pub admin_ca_file: Option<std::path::PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct AdminTokenArg {
    /// Bearer token for the monitors' admin APIs (their --admin-token-file;
    /// of several lines, the first is sent).
    #[arg(long, env = "CLUSTERMON_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    pub cluster_id: String,
    #[command(flatten)]
    pub read: ReadArgs,
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    pub monitor_id: String,
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub admin_ca: AdminCaArg,
    #[command(flatten)]
    pub token: AdminTokenArg,
    /// Return only when the monitor owns no bucket and hands none over.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (exit 1).
    #[arg(long, default_value = "2m", value_parser = duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    pub cluster_id: String,
    #[command(flatten)]
    pub read: ReadArgs,
    #[command(flatten)]
    pub token: AdminTokenArg,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Create what the store needs (Cosmos DB: the database and its three
    /// containers, key auth; PostgreSQL: the tables and the schema version),
    /// leaving what exists as it is.
    Init(StoreArg),
}

#[derive(Args, Debug, Clone)]
pub struct StoreArg {
    /// Store URL: sqlite:PATH, cosmos://ACCOUNT_HOST[:PORT]/DATABASE or
    /// postgres://USER@HOST[:PORT]/DATABASE[?sslmode=disable|require|verify-full&sslrootcert=CA_FILE].
    #[arg(long, env = "CLUSTERMON_STORE", value_parser = StoreUrl::parse)]
    pub store: StoreUrl,
    #[command(flatten)]
    pub cosmos: crate::CosmosArgs,
}

#[derive(Args, Debug)]
pub struct ReadArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub admin_ca: AdminCaArg,
    #[arg(long, value_enum, default_value = "table", env = "CLUSTERMON_OUTPUT")]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Where metrics go: udp:HOST:PORT, unix:PATH (a Unix stream socket, e.g.
    /// /var/etw/mdm_statsd.socket), or none.
    #[arg(long, env = "CLUSTERMON_STATSD", value_parser = Target::parse)]
    pub statsd: Target,
    /// Statsd dialect: dogstatsd (tags as |#k:v) or mdm (Geneva's JSON name).
    #[arg(
        long,
        value_enum,
        default_value = "dogstatsd",
        env = "CLUSTERMON_METRICS_FORMAT"
    )]
    pub metrics_format: MetricsFormat,
    /// Geneva MDM account (with --metrics-format mdm; empty is sent as *).
    #[arg(long, default_value = "", env = "CLUSTERMON_MDM_ACCOUNT")]
    pub mdm_account: String,
    /// Geneva MDM namespace (with --metrics-format mdm; empty is sent as *).
    #[arg(long, default_value = "", env = "CLUSTERMON_MDM_NAMESPACE")]
    pub mdm_namespace: String,
    /// This monitor's id (default: HOSTNAME-RANDOM, new on every start).
    #[arg(long, env = "CLUSTERMON_ID")]
    pub id: Option<String>,
    #[arg(long, default_value = human(defaults::HEARTBEAT_INTERVAL), value_parser = duration, env = "CLUSTERMON_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Duration,
    #[arg(long, default_value = human(defaults::HEARTBEAT_TTL), value_parser = duration, env = "CLUSTERMON_HEARTBEAT_TTL")]
    pub heartbeat_ttl: Duration,
    #[arg(long, default_value = human(defaults::LEASE_TTL), value_parser = duration, env = "CLUSTERMON_LEASE_TTL")]
    pub lease_ttl: Duration,
    #[arg(long, default_value = human(defaults::FEED_INTERVAL), value_parser = duration, env = "CLUSTERMON_FEED_INTERVAL")]
    pub feed_interval: Duration,
    /// Stores whose change feed has no deletes (Cosmos DB): how often a
    /// monitor re-lists its buckets to drop deleted clusters; 0 turns it off.
    #[arg(long, default_value = human(defaults::RELIST_INTERVAL), value_parser = duration, env = "CLUSTERMON_RELIST_INTERVAL")]
    pub relist_interval: Duration,
    /// How often each cluster is checked.
    #[arg(long, default_value = human(defaults::INTERVAL), value_parser = duration, env = "CLUSTERMON_INTERVAL")]
    pub interval: Duration,
    #[arg(long, default_value_t = defaults::MAX_CONCURRENT_CHECKS, env = "CLUSTERMON_MAX_CONCURRENT_CHECKS")]
    pub max_concurrent_checks: usize,
    #[arg(long, default_value = human(defaults::CHECK_TIMEOUT), value_parser = duration, env = "CLUSTERMON_CHECK_TIMEOUT")]
    pub check_timeout: Duration,
    /// How long a check's connection (TCP connect and TLS handshake) may
    /// take, within --check-timeout.
    #[arg(long, default_value = human(defaults::CONNECT_TIMEOUT), value_parser = duration, env = "CLUSTERMON_CONNECT_TIMEOUT")]
    pub connect_timeout: Duration,
    /// Checks due within one tick start together at its end (never early,
    /// less than a tick late): fewer wake-ups per check; 0 starts each at
    /// its due millisecond. At most a tenth of --interval is used.
    #[arg(long, default_value = human(defaults::DISPATCH_TICK), value_parser = duration, env = "CLUSTERMON_DISPATCH_TICK")]
    pub dispatch_tick: Duration,
    /// Percent of --max-concurrent-checks that checks of hanging clusters
    /// (whose last check used its whole timeout) may hold; the rest stays
    /// free for clusters that answer.
    #[arg(
        long,
        default_value_t = defaults::HANGING_SHARE_PCT,
        value_parser = clap::value_parser!(u8).range(1..=100),
        env = "CLUSTERMON_HANGING_SHARE"
    )]
    pub hanging_share: u8,
    /// How long a moving bucket stays with its previous owner (default: two
    /// --heartbeat-interval). Shorter is safe while the lease holder's
    /// pushed assignments reach every monitor (--admin-advertise reachable
    /// from the peers): a monitor that misses a push learns at its next
    /// pass, and a check due in between is missed or runs twice.
    #[arg(long, value_parser = duration, env = "CLUSTERMON_HANDOFF_NOTICE")]
    pub handoff_notice: Option<Duration>,
    /// On SIGTERM/SIGINT: time to hand over and finish in-flight checks.
    #[arg(long, default_value = human(defaults::SHUTDOWN_GRACE), value_parser = duration, env = "CLUSTERMON_SHUTDOWN_GRACE")]
    pub shutdown_grace: Duration,
    /// Beyond this distance from the fleet's clock (measured from the peers'
    /// heartbeats) a monitor is not ready and takes no bucket and no lease.
    #[arg(long, default_value = human(defaults::MAX_CLOCK_OFFSET), value_parser = duration, env = "CLUSTERMON_MAX_CLOCK_OFFSET")]
    pub max_clock_offset: Duration,
    #[command(flatten)]
    pub secrets: SecretsArg,
    /// Admin API listener (health, metrics, debug, drain, status page).
    /// Port 0 picks a free one; a non-loopback address needs --admin-token-file.
    #[arg(
        long,
        default_value = "127.0.0.1:9464",
        env = "CLUSTERMON_ADMIN_LISTEN"
    )]
    pub admin_listen: std::net::SocketAddr,
    /// File with the bearer token that the admin API's POST endpoints
    /// require: one token per line, each accepted, the first sent to peers
    /// (several only while a token is rotated).
    #[arg(long, env = "CLUSTERMON_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// How often the secret files (--admin-token-file, --secrets-key-file,
    /// --secrets-old-key-file, --alertmanager-token-file, the admin API's
    /// --admin-tls-cert-file, --admin-tls-key-file and --admin-ca-file)
    /// are read again: a
    /// changed file takes effect without a restart; one that does not parse
    /// is refused and the previous value kept. SIGHUP reads them at once;
    /// 0s: only on SIGHUP.
    #[arg(long, default_value = human(defaults::SECRETS_RELOAD_INTERVAL), value_parser = duration, env = "CLUSTERMON_SECRETS_RELOAD_INTERVAL")]
    pub secrets_reload_interval: Duration,
    /// PEM certificate chain the admin API serves HTTPS with (with
    /// --admin-tls-key-file): tokens then never cross the network in clear.
    /// Re-read like the secret files: a renewed certificate is served from
    /// the next connection on.
    #[arg(
        long,
        env = "CLUSTERMON_ADMIN_TLS_CERT_FILE",
        value_name = "FILE",
        requires = "admin_tls_key_file"
    )]
    pub admin_tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of --admin-tls-cert-file.
    #[arg(
        long,
        env = "CLUSTERMON_ADMIN_TLS_KEY_FILE",
        value_name = "FILE",
        requires = "admin_tls_cert_file"
    )]
    pub admin_tls_key_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub admin_ca: AdminCaArg,
    /// Admin URL other monitors and tools use to reach this one (default:
    /// http://LISTEN, or http://HOSTNAME:PORT when listening on all addresses).
    #[arg(long, env = "CLUSTERMON_ADMIN_ADVERTISE")]
    pub admin_advertise: Option<String>,
    /// Alertmanager to post alerts to (v2 API); repeatable: every URL gets
    /// every alert. None: no alerts.
    #[arg(
        long,
        value_name = "URL",
        env = "CLUSTERMON_ALERTMANAGER_URL",
        value_delimiter = ','
    )]
    pub alertmanager_url: Vec<String>,
    /// Consecutive failing checks before an alert fires.
    #[arg(long, default_value_t = defaults::ALERT_AFTER, env = "CLUSTERMON_ALERT_AFTER")]
    pub alert_after: u32,
    /// File with a bearer token for the Alertmanagers.
    #[arg(long, value_name = "FILE", env = "CLUSTERMON_ALERTMANAGER_TOKEN_FILE")]
    pub alertmanager_token_file: Option<std::path::PathBuf>,
    /// Static labels on every alert: NAME=VALUE,...
    #[arg(long, value_name = "NAME=VALUE,...", value_delimiter = ',', value_parser = clustermon_core::alerts::parse_label, env = "CLUSTERMON_ALERT_LABELS")]
    pub alert_labels: Vec<(String, String)>,
    /// What a check runs: full (API server, then every collector) or healthz.
    #[arg(
        long,
        value_enum,
        default_value = "full",
        env = "CLUSTERMON_COLLECTORS"
    )]
    pub collectors: Collectors,
    /// Namespaces whose pods are checked (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        env = "CLUSTERMON_MONITORED_NAMESPACES",
        default_values_t = clustermon_core::check::collect::DEFAULT_NAMESPACES.iter().map(|n| n.to_string())
    )]
    pub monitored_namespaces: Vec<String>,
    /// Collectors run at once inside one check (1..=8). 1 runs them in turn
    /// on one keep-alive connection, every collector's first request sent
    /// at once (pipelined): the least CPU per check (measured: 3.9 ms
    /// against 7.1 ms at 5, before pipelining). More trades CPU and sockets
    /// for latency.
    #[arg(
        long,
        default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(1..=8),
        env = "CLUSTERMON_COLLECTOR_CONCURRENCY"
    )]
    pub collector_concurrency: u8,
    /// Most requests a check sends at once on one connection (HTTP/1.1
    /// pipelining, answered in order), 1..=32: after healthz, every
    /// collector's first request; the pod lists' first pages. 1 sends one
    /// at a time (for a front end that mishandles pipelining).
    #[arg(
        long,
        default_value_t = 24,
        value_parser = clap::value_parser!(u8).range(1..=32),
        env = "CLUSTERMON_PIPELINED_REQUESTS"
    )]
    pub pipelined_requests: u8,
}

/// File descriptors `run` keeps out of the check pool: 64 for the process
/// itself (stdio, the runtime's epoll and wake-up fds, the signal pipe, the
/// statsd socket, the admin API's listener and a few of its connections,
/// /metrics scrapes, the blocking pool's occasional files), plus 16 for
/// SQLite (the database, its -wal and -shm files, temporary files; the
/// Cosmos store's HTTPS connections fit there too).
pub const FD_RESERVE: u64 = 64 + 16;

/// The pool size that fits `soft_limit` open files when each check holds up
/// to `sockets_per_check` sockets (`--collector-concurrency`) besides
/// [`FD_RESERVE`], or `None` when `max_checks` already fits. Never below 1.
pub fn pool_for_fd_limit(
    soft_limit: u64,
    max_checks: usize,
    sockets_per_check: u8,
) -> Option<usize> {
    let per = u64::from(sockets_per_check.max(1));
    let need = (max_checks as u64)
        .saturating_mul(per)
        .saturating_add(FD_RESERVE);
    if need <= soft_limit {
        return None;
    }
    let fits = soft_limit.saturating_sub(FD_RESERVE) / per;
    Some(
        usize::try_from(fits)
            .unwrap_or(usize::MAX)
            .clamp(1, max_checks.max(1)),
    )
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum Collectors {
    Full,
    Healthz,
}

#[derive(Args, Debug, Clone)]
pub struct SecretsArg {
    /// Key for credentials at rest: 32 bytes, or their base64. Without it,
    /// plaintext credentials are accepted (with a warning).
    #[arg(long, env = "CLUSTERMON_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<std::path::PathBuf>,
    /// An older key: it still opens credentials sealed with it and never
    /// seals (repeatable; in the environment, paths separated by commas).
    /// The previous key during a rotation, until monitor.credentials.old_key
    /// stays 0 for an interval; the current key otherwise, so that a
    /// rotation is a change of the files, not of the flags.
    #[arg(
        long,
        env = "CLUSTERMON_SECRETS_OLD_KEY_FILES",
        value_delimiter = ',',
        requires = "secrets_key_file"
    )]
    pub secrets_old_key_file: Vec<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Create or replace a cluster document.
    Put(Box<PutArgs>),
    /// List cluster documents (credentials are never printed).
    List(ListArgs),
    /// Delete a cluster document.
    Delete(DeleteArgs),
}

#[derive(Args, Debug)]
pub struct PutArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[arg(long)]
    pub id: String,
    /// API server base URL, e.g. https://api.example:6443 (default: from --kubeconfig).
    #[arg(long, required_unless_present = "kubeconfig")]
    pub api_server: Option<String>,
    /// Bucket 0-255 (default: uniformly random).
    #[arg(long)]
    pub bucket: Option<u8>,
    /// Label as key=value; repeatable. Labels become metric tags.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[arg(long, default_value = "Succeeded")]
    pub state: clustermon_core::model::ProvisioningState,
    /// PEM CA bundle the API server's certificate must chain to.
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// File holding a bearer token.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// PEM client certificate (with --client-key).
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<std::path::PathBuf>,
    /// PEM client private key (with --client-cert).
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<std::path::PathBuf>,
    /// Do not verify the API server's certificate (counted and logged by monitors).
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,
    /// Take the server and credentials from a kubeconfig (exec plugins refused).
    #[arg(long, conflicts_with_all = ["ca_file", "token_file", "client_cert", "client_key"])]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Kubeconfig context (default: its current-context).
    #[arg(long, requires = "kubeconfig")]
    pub context: Option<String>,
    #[command(flatten)]
    pub secrets: SecretsArg,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// With a key, sealed credentials are checked to open (never printed).
    #[command(flatten)]
    pub secrets: SecretsArg,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[arg(long)]
    pub id: String,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} must be key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `run` with its two required flags.
    const RUN: [&str; 5] = [
        "run",
        "--store",
        "sqlite:/tmp/x.db",
        "--statsd",
        "udp:127.0.0.1:8125",
    ];

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("clustermon").chain(args.iter().copied()))
    }

    #[test]
    fn run_defaults_match_the_documented_timings() {
        let cli = parse(&[
            "run",
            "--store",
            "sqlite:/tmp/x.db",
            "--statsd",
            "udp:127.0.0.1:8125",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(r.heartbeat_ttl, Duration::from_secs(10));
        assert_eq!(r.lease_ttl, Duration::from_secs(10));
        assert_eq!(r.feed_interval, Duration::from_secs(2));
        assert_eq!(r.interval, Duration::from_secs(60));
        assert_eq!(r.max_concurrent_checks, 5000);
        assert_eq!(r.check_timeout, Duration::from_secs(30));
        assert_eq!(r.shutdown_grace, Duration::from_secs(10));
        assert_eq!(r.relist_interval, Duration::from_secs(600));
    }

    /// The flags' defaults are the engine's: `run` with no timing flag
    /// configures what `EngineConfig::new` does.
    #[test]
    fn run_defaults_are_the_engine_defaults() {
        let cli = parse(&[
            "run",
            "--store",
            "sqlite:/tmp/x.db",
            "--statsd",
            "udp:127.0.0.1:8125",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        let e = clustermon_core::config::EngineConfig::new("m1");
        assert_eq!(r.heartbeat_interval, e.heartbeat_interval);
        assert_eq!(r.heartbeat_ttl, e.heartbeat_ttl);
        assert_eq!(r.lease_ttl, e.lease_ttl);
        assert_eq!(r.feed_interval, e.feed_interval);
        assert_eq!(r.interval, e.interval);
        assert_eq!(r.max_concurrent_checks, e.max_concurrent_checks);
        assert_eq!(r.check_timeout, e.check_timeout);
        assert_eq!(r.dispatch_tick, e.dispatch_tick);
        assert_eq!(r.hanging_share, e.hanging_share_pct);
        assert_eq!(r.shutdown_grace, e.shutdown_grace);
        assert_eq!(r.relist_interval, e.relist_interval);
        assert_eq!(r.max_clock_offset, e.max_clock_offset);
        assert_eq!(
            r.monitored_namespaces,
            clustermon_core::check::collect::DEFAULT_NAMESPACES
        );
    }

    #[test]
    fn the_pool_shrinks_to_fit_the_fd_limit() {
        // Fits: nothing to do.
        assert_eq!(pool_for_fd_limit(1 << 20, 2000, 1), None);
        assert_eq!(pool_for_fd_limit(2000 + FD_RESERVE, 2000, 1), None);
        // `ulimit -n 512`, defaults: 512 - 80 = 432 checks.
        assert_eq!(pool_for_fd_limit(512, 2000, 1), Some(432));
        // Two sockets per check halve it.
        assert_eq!(pool_for_fd_limit(512, 2000, 2), Some(216));
        assert_eq!(pool_for_fd_limit(1024, 2000, 8), Some(118));
        // A limit below the reserve still leaves one check.
        assert_eq!(pool_for_fd_limit(20, 2000, 1), Some(1));
    }

    #[test]
    fn bad_values_are_refused() {
        let with = |extra: &[&str]| parse(&[&RUN[..], extra].concat());
        assert!(with(&["--interval", "soon"]).is_err());
        assert!(parse(&["run", "--store", "mysql://x", "--statsd", "udp:h:1"]).is_err());
        assert!(parse(&["run", "--store", "sqlite:x", "--statsd", "udp:nohost"]).is_err());
        assert!(parse(&[
            "cluster",
            "put",
            "--store",
            "sqlite:x",
            "--id",
            "a",
            "--api-server",
            "http://x",
            "--label",
            "novalue"
        ])
        .is_err());
        assert!(parse(&[
            "cluster",
            "put",
            "--store",
            "sqlite:x",
            "--id",
            "a",
            "--api-server",
            "http://x",
            "--bucket",
            "256"
        ])
        .is_err());
        assert!(with(&["--interval", "30s"]).is_ok());
        assert!(with(&["--threads", "0"]).is_err());
        assert!(with(&["--threads", "many"]).is_err());
        assert!(with(&["--threads", "1025"]).is_err());
    }

    /// One thread runs every task unless `--threads` asks for a pool.
    #[test]
    fn one_thread_by_default_and_a_pool_on_request() {
        assert_eq!(parse(&RUN).unwrap().threads, 1);
        assert_eq!(
            parse(&[&RUN[..], &["--threads", "4"]].concat())
                .unwrap()
                .threads,
            4
        );
        // Global: before the subcommand too.
        assert_eq!(
            parse(&[&["--threads", "2"], &RUN[..]].concat())
                .unwrap()
                .threads,
            2
        );
    }
}
