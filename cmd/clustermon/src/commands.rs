//! The subcommands. Each returns `Err(CmdError)` with a one-line message;
//! `main` prints it and exits 2 (usage, bad input) or 1 (runtime failure).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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
}

impl CmdError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CmdError::Usage(_) => 2,
            CmdError::Failed(_) => 1,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            CmdError::Usage(m) | CmdError::Failed(m) => m,
        }
    }
}

fn failed(e: impl std::fmt::Display) -> CmdError {
    CmdError::Failed(e.to_string())
}

async fn store(arg: &crate::cli::StoreArg) -> Result<Arc<dyn Store>, CmdError> {
    open_store_url(&arg.store, &arg.cosmos)
        .await
        .map_err(CmdError::Usage)
}

fn secrets_key(arg: &SecretsArg) -> Result<Option<SecretsKey>, CmdError> {
    arg.secrets_key_file
        .as_deref()
        .map(SecretsKey::from_file)
        .transpose()
        .map_err(CmdError::Usage)
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
    cfg.shutdown_grace = args.shutdown_grace;
    cfg.max_clock_offset = args.max_clock_offset;
    cfg.validate().map_err(CmdError::Usage)?;

    // The admin API: refuse a reachable listener without a token, bind
    // before anything else starts so a taken port fails fast.
    let token = match &args.admin_token_file {
        Some(f) => Some(
            clustermon_core::admin::Token::new(&read_file(f, "--admin-token-file")?)
                .map_err(|e| CmdError::Usage(format!("--admin-token-file {}: {e}", f.display())))?,
        ),
        None if !args.admin_listen.ip().is_loopback() => {
            return Err(CmdError::Usage(format!(
                "--admin-listen {} is not a loopback address: give --admin-token-file so that drain and check-now need a token",
                args.admin_listen
            )))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .map_err(|e| CmdError::Usage(format!("--admin-listen {}: {e}", args.admin_listen)))?;
    let bound = listener.local_addr().map_err(failed)?;
    cfg.admin_url = match &args.admin_advertise {
        Some(u) => u.trim_end_matches('/').to_string(),
        None if bound.ip().is_unspecified() => format!("http://{}:{}", cfg.hostname, bound.port()),
        None => format!("http://{bound}"),
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
    let clock = Clock::system();
    let (metrics, writer) = Metrics::new(&id, output, 8192, clock);
    let checker = match args.collectors {
        Collectors::Full => KubeChecker::standard(key, args.monitored_namespaces.clone(), clock)
            .with_concurrency(usize::from(args.collector_concurrency)),
        Collectors::Healthz => KubeChecker::healthz_only(key, clock),
    };
    let cfg_admin_url = cfg.admin_url.clone();
    let engine = Engine::new(cfg, store.clone(), Arc::new(checker), metrics, clock)
        .map_err(CmdError::Usage)?;
    tracing::info!(
        monitor = %id,
        store = store.kind(),
        interval = ?args.interval,
        max_concurrent_checks = args.max_concurrent_checks,
        "monitor starting"
    );

    let writer_stop = CancellationToken::new();
    let writer_task = tokio::spawn(writer.run(writer_stop.clone()));
    let admin_stop = CancellationToken::new();
    tracing::info!(admin = %bound, url = %cfg_admin_url, "admin API listening");
    let admin_task = tokio::spawn(clustermon_core::admin::serve(
        listener,
        engine.handles(),
        token,
        admin_stop.clone(),
    ));
    engine.run(shutdown).await;
    admin_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    writer_stop.cancel();
    // The writer drains its queue; bounded so a stuck socket cannot hold us.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
    Ok(())
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
    println!("{}", serde_json::to_string_pretty(v).map_err(failed)?);
    Ok(())
}

pub async fn status(args: ReadArgs) -> Result<(), CmdError> {
    let store = store(&args.store).await?;
    let (s, _) = read_fleet(&*store).await?;
    if args.output == Output::Json {
        return print_json(&s);
    }
    match &s.master {
        Some(m) => println!(
            "master:      {} (lease expires in {:.1}s)",
            m.id, m.lease_expires_in_s
        ),
        None => println!("master:      none (lease free or expired)"),
    }
    let rate: f64 = s.monitors.iter().map(|m| m.checks_per_s).sum();
    println!("checks/s:    {rate:.1}");
    println!("generation:  {}", s.generation);
    println!("clusters:    {}", s.clusters);
    println!("unassigned:  {} buckets", s.unassigned_buckets);
    println!();
    println!(
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
        println!(
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
        println!("(no live monitors)");
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
        println!("{owner:<28} {n:>3}  {}", list.join(","));
    }
    Ok(())
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
    println!("cluster {} stored in bucket {}", doc.id, doc.bucket);
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
    let d = ClusterDoc::decode(&r.body)?;
    if d.id != r.id {
        return Err("document id does not match its key".into());
    }
    Ok(d)
}

pub async fn cluster_list(args: ListArgs) -> Result<(), CmdError> {
    let key = secrets_key(&args.secrets)?;
    let args = args.read;
    let store = store(&args.store).await?;
    let raws = store.list_clusters().await.map_err(failed)?;
    let views: Vec<ClusterView> = raws
        .into_iter()
        .map(|r| match decode_stored(&r) {
            Ok(d) => {
                let sealed = d.encrypted_credentials.as_deref().map(|s| match &key {
                    Some(k) => match k.open(&d.id, s) {
                        Ok(_) => "sealed",
                        Err(_) => "sealed (does not open with this key)",
                    },
                    None => "sealed",
                });
                let c = &d.credentials;
                let present = [
                    ("caBundle", c.ca_bundle.is_some()),
                    ("token", c.token.is_some()),
                    ("clientCertificate", c.client_certificate.is_some()),
                    ("clientKey", c.client_key.is_some()),
                    ("insecureSkipTLSVerify", c.insecure_skip_tls_verify),
                ];
                ClusterView {
                    id: d.id,
                    bucket: Some(d.bucket),
                    state: Some(d.provisioning_state),
                    api_server: Some(d.api_server),
                    credentials: present
                        .iter()
                        .filter(|p| p.1)
                        .map(|p| p.0)
                        .chain(sealed)
                        .collect(),
                    labels: d.labels,
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
    println!(
        "{:<36} {:>6} {:<10} {:<48} LABELS",
        "ID", "BUCKET", "STATE", "API SERVER"
    );
    for v in &views {
        if let Some(reason) = &v.invalid {
            println!("{:<36} {:>6} {:<10} {reason}", v.id, "-", "INVALID");
            continue;
        }
        let labels: Vec<String> = v.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
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
        println!("cluster {} deleted", args.id);
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
            println!("sqlite store ready");
        }
        crate::StoreUrl::Cosmos(u) => {
            let cfg = args.cosmos.config(u).map_err(CmdError::Usage)?;
            let created = clustermon_store_cosmos::CosmosStore::init(&cfg)
                .await
                .map_err(failed)?;
            if created.is_empty() {
                println!("cosmos store {u}: database and containers already exist");
            }
            for c in created {
                println!("created {c}");
            }
        }
    }
    Ok(())
}

// ---- commands that talk to monitors' admin APIs ----

fn admin_client() -> Result<reqwest::Client, CmdError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(65))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(failed)
}

fn admin_token(arg: &crate::cli::AdminTokenArg) -> Result<Option<String>, CmdError> {
    arg.admin_token_file
        .as_deref()
        .map(|f| read_file(f, "--admin-token-file").map(|t| t.trim().to_string()))
        .transpose()
}

/// Sends a request to a monitor's admin API; the answer as JSON.
async fn admin_call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
) -> Result<(u16, serde_json::Value), String> {
    let client = admin_client().map_err(|e| e.message().to_string())?;
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

/// One line per collector of a check result (as the admin API answers it).
fn print_collectors(check: &serde_json::Value, indent: &str) {
    for c in check["collectors"].as_array().into_iter().flatten() {
        println!(
            "{indent}{:<18} {:>5} ms  {}",
            c["name"].as_str().unwrap_or(""),
            c["duration_ms"],
            c["error"].as_str().unwrap_or("ok")
        );
    }
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
    println!("cluster:     {}", e.id);
    println!("bucket:      {}", or_dash(e.bucket.map(|b| b.to_string())));
    println!("state:       {}", or_dash(e.state.clone()));
    println!(
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
    match &e.last_check {
        Some(l) => println!(
            "last check:  {} {} ({})",
            l["started_ms"].as_i64().map(fmt_ms).unwrap_or_default(),
            if l["ok"] == true { "ok" } else { "FAILED" },
            l["summary"].as_str().unwrap_or("")
        ),
        None => println!("last check:  -"),
    }
    if let Some(l) = &e.last_check {
        print_collectors(l, "             ");
    }
    println!("next due:    {}", or_dash(e.next_due.map(fmt_ms)));
    println!("checked:     {}", if e.checked { "yes" } else { "NO" });
    if let Some(r) = &e.reason {
        println!("reason:      {r}");
    }
    if let Some(n) = note {
        println!("note:        {n}");
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
    )
    .await
    .map_err(CmdError::Failed)?;
    if code != 200 {
        return Err(CmdError::Failed(format!(
            "drain {}: {code}: {v}",
            args.monitor_id
        )));
    }
    println!(
        "monitor {} is draining; handoff at {}",
        args.monitor_id, v["handoff_at_ms"]
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
                println!("monitor {me} owns no bucket and hands none over");
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
    )
    .await
    .map_err(CmdError::Failed)?;
    if code != 200 {
        return Err(CmdError::Failed(format!(
            "check {id} on {owner}: {code}: {v}"
        )));
    }
    if args.read.output == Output::Json {
        return print_json(&v);
    }
    println!(
        "{id} checked by {owner} in {} ms: {} ({})",
        v["duration_ms"],
        if v["ok"] == true { "ok" } else { "FAILED" },
        v["summary"].as_str().unwrap_or("")
    );
    print_collectors(&v, "  ");
    if v["ok"] != true {
        return Err(CmdError::Failed(format!("{id}: the check failed")));
    }
    Ok(())
}
