//! fleetsim: a simulated fleet of Kubernetes and OpenShift API servers for
//! clustermon's tests, demo and benchmarks. One process serves every
//! cluster under `/clusters/{id}` (TLS with its own CA by default), writes
//! their documents to a store (`--register`), injects faults, and can act as
//! a statsd receiver for the demo. The first stdout line is
//! `fleetsim listening on http://127.0.0.1:PORT` (the control endpoint).

mod pki;
mod server;
mod sim;
mod statsd;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use clap::Parser;
use clustermon_core::model::{ClusterDoc, Credentials, ProvisioningState, Secret, BUCKETS};
use clustermon_core::secrets::SecretsKey;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;
use tokio::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::server::{Fleet, Role};
use crate::sim::{Auth, Cluster, Fault, Flavor};

#[derive(Parser, Debug)]
#[command(
    name = "fleetsim",
    version,
    about = "Simulated fleet of Kubernetes/OpenShift API servers"
)]
struct Args {
    /// Number of clusters.
    #[arg(long, default_value_t = 100)]
    clusters: usize,
    /// Control endpoint address (and the clusters' with --plain-http).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Cluster id prefix; ids are PREFIX00000, PREFIX00001, ...
    #[arg(long, default_value = "c-")]
    id_prefix: String,
    /// Faults from the start, KIND=COUNT, repeatable; clusters are taken from
    /// the end of the id range. Kinds: down, healthz500, slow, degraded-node,
    /// crashloop, operator-degraded, cert-expiring, malformed, unauthorized,
    /// and hostile servers: endless-body, slowloris, redirect-loop, tls-reset.
    #[arg(long = "fault", value_parser = sim::parse_fault_arg)]
    faults: Vec<(Fault, usize)>,
    /// How long the `slow` fault delays every answer.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    slow_delay: Duration,
    /// How long the `slowloris` fault waits between two bytes of an answer.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    slowloris_every: Duration,
    /// Nodes per cluster (3 masters, the rest workers).
    #[arg(long, default_value_t = 6)]
    nodes: usize,
    /// Control-plane pods per cluster, spread over the monitored namespaces.
    #[arg(long, default_value_t = 24)]
    pods: usize,
    /// One cluster's own size, ID=NODES:PODS, repeatable (others use --nodes/--pods).
    #[arg(long = "size", value_parser = parse_size)]
    sizes: Vec<(String, usize, usize)>,
    /// Every Nth cluster is vanilla Kubernetes (no OpenShift API); 0: none.
    #[arg(long, default_value_t = 2)]
    vanilla_every: usize,
    /// Largest page a list answers, whatever `limit` asks (the API server's own cap).
    #[arg(long, default_value_t = 500)]
    page_cap: usize,
    /// Serve the clusters over plain http without credentials.
    #[arg(long)]
    plain_http: bool,
    /// The API servers' serving key: `ecdsa-p256` (rcgen's, cheap to sign
    /// with) or `rsa-2048` (kubeadm's default for API servers; made with
    /// `openssl genpkey`): a TLS 1.3 handshake costs the
    /// server a signature and the client its verification, so the key type
    /// sets how their CPU per probe compare.
    #[arg(long, default_value = "ecdsa-p256", value_parser = ["ecdsa-p256", "rsa-2048"])]
    serving_key: String,
    /// Write every cluster's document (with credentials) to this store: any
    /// store URL clustermon accepts, with the same credential flags.
    #[arg(long, value_name = "STORE_URL")]
    register: Option<String>,
    #[command(flatten)]
    cosmos: clustermon::CosmosArgs,
    /// Encrypt the registered credentials with this key (as clustermon's flag).
    #[arg(long, value_name = "FILE")]
    secrets_key_file: Option<PathBuf>,
    /// Tests only: write every cluster's secret material (tokens, client
    /// keys) to this file, one JSON object per line, so a test can prove it
    /// never shows up in clustermon's logs, metrics or output.
    #[arg(long, value_name = "FILE", hide = true)]
    credentials_out: Option<PathBuf>,
    /// Labels of the registered documents, KEY=VALUE, repeatable.
    #[arg(long = "label", default_value = "fleet=sim")]
    labels: Vec<String>,
    /// Receive DogStatsD on this UDP address; GET /control/statsd summarises it.
    #[arg(long, value_name = "ADDR")]
    statsd_listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if e.use_stderr() => {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("fleetsim: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetsim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetsim: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Credentials a registered document carries, kept only until registration.
type DocCreds = Vec<Credentials>;

async fn run(args: Args) -> Result<(), String> {
    if args.clusters == 0 {
        return Err("--clusters must be at least 1".into());
    }
    let faults = sim::assign_faults(args.clusters, &args.faults)?;
    if args.plain_http
        && args
            .faults
            .iter()
            .any(|(f, n)| *f == Fault::TlsReset && *n > 0)
    {
        return Err("--fault tls-reset needs TLS (drop --plain-http)".into());
    }
    let sizes: HashMap<&str, (usize, usize)> = args
        .sizes
        .iter()
        .map(|(id, n, p)| (id.as_str(), (*n, *p)))
        .collect();
    let key = match &args.secrets_key_file {
        Some(p) => Some(SecretsKey::from_file(p)?),
        None => None,
    };
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| format!("--label {l:?}: expected KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }

    let control = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let control_addr = control.local_addr().map_err(|e| e.to_string())?;

    // TLS: one listener per serving certificate.
    let mut tls_listeners = Vec::new();
    let (ca_pem, ca) = if args.plain_http {
        (None, None)
    } else {
        let ca = pki::Ca::new()?;
        for (cn, days) in [
            ("fleetsim apiserver", 365),
            ("fleetsim apiserver (expiring)", 5),
        ] {
            let serving = ca.server(cn, days, args.serving_key == "rsa-2048")?;
            let config = ca.server_config(&serving)?;
            let l = TcpListener::bind((control_addr.ip(), 0))
                .await
                .map_err(|e| format!("cannot listen: {e}"))?;
            tls_listeners.push((l, tokio_rustls::TlsAcceptor::from(config)));
        }
        (Some(ca.pem.clone()), Some(ca))
    };
    // The `tls-reset` clusters' listener: plain TCP that resets every
    // connection once the ClientHello arrives.
    let reset_listener = if args.plain_http {
        None
    } else {
        Some(
            TcpListener::bind((control_addr.ip(), 0))
                .await
                .map_err(|e| format!("cannot listen: {e}"))?,
        )
    };
    let base_url = |fs: &BTreeSet<Fault>| -> Result<String, String> {
        if args.plain_http {
            return Ok(format!("http://{control_addr}"));
        }
        let l = match &reset_listener {
            Some(l) if fs.contains(&Fault::TlsReset) => l,
            _ => &tls_listeners[usize::from(fs.contains(&Fault::CertExpiring))].0,
        };
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        Ok(format!("https://{addr}"))
    };

    let mut clusters = Vec::with_capacity(args.clusters);
    let mut creds: DocCreds = Vec::with_capacity(args.clusters);
    let mut by_id = HashMap::with_capacity(args.clusters);
    for (i, fs) in faults.into_iter().enumerate() {
        let id = sim::cluster_id(&args.id_prefix, i, args.clusters);
        clustermon_core::model::validate_id(&id).map_err(|e| format!("--id-prefix: {e}"))?;
        let fs: BTreeSet<Fault> = fs.into_iter().collect();
        let url = format!("{}/clusters/{id}", base_url(&fs)?);
        let (auth, c) = match &ca {
            None => (Auth::None, Credentials::default()),
            Some(ca) if i % 2 == 0 => {
                let token = format!("sim-token-{id}-{:016x}", rand::random::<u64>());
                let c = Credentials {
                    ca_bundle: ca_pem.clone(),
                    token: Some(Secret::new(token.clone())),
                    ..Default::default()
                };
                (Auth::Bearer(token), c)
            }
            Some(ca) => {
                let issued = ca.client(&format!("system:serviceaccount:clustermon:{id}"))?;
                let c = Credentials {
                    ca_bundle: ca_pem.clone(),
                    client_certificate: Some(issued.cert_pem),
                    client_key: Some(Secret::new(issued.key_pem)),
                    ..Default::default()
                };
                (Auth::ClientCert(issued.cert_der.to_vec()), c)
            }
        };
        let vanilla = args.vanilla_every > 0 && i % args.vanilla_every == args.vanilla_every - 1;
        let (nodes, pods) = sizes
            .get(id.as_str())
            .copied()
            .unwrap_or((args.nodes, args.pods));
        by_id.insert(id.clone(), i);
        creds.push(c);
        clusters.push(Arc::new(Cluster {
            id,
            index: i,
            url,
            base_flavor: if vanilla {
                Flavor::Vanilla
            } else {
                Flavor::OpenShift
            },
            nodes,
            pods,
            auth,
            faults: Mutex::new(fs),
            requests: AtomicU64::new(0),
        }));
    }

    if let Some(id) = sizes.keys().find(|id| !by_id.contains_key(**id)) {
        return Err(format!("--size {id}: no such cluster in this fleet"));
    }
    if let Some(path) = &args.credentials_out {
        write_secrets(path, &clusters, &creds)?;
    }
    if let Some(url) = &args.register {
        register(url, &args.cosmos, &clusters, creds, key.as_ref(), &labels).await?;
    } else {
        drop(creds);
    }

    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let seen = match args.statsd_listen {
        Some(addr) => {
            let sock = UdpSocket::bind(addr)
                .await
                .map_err(|e| format!("cannot listen for statsd on {addr}: {e}"))?;
            let seen = Arc::new(Mutex::new(statsd::Seen::default()));
            tasks.spawn(statsd::receive(sock, seen.clone(), stop.clone()));
            Some(seen)
        }
        None => None,
    };
    let fleet = Arc::new(Fleet {
        clusters,
        by_id,
        slow_delay: args.slow_delay,
        slowloris_every: args.slowloris_every,
        page_cap: args.page_cap.max(1),
        seen,
    });
    let control_role = Role::Control {
        clusters: args.plain_http,
    };
    tasks.spawn(server::serve(
        control,
        None,
        control_role,
        fleet.clone(),
        stop.clone(),
    ));
    for (l, acceptor) in tls_listeners {
        tasks.spawn(server::serve(
            l,
            Some(acceptor),
            Role::Clusters,
            fleet.clone(),
            stop.clone(),
        ));
    }
    if let Some(l) = reset_listener {
        tasks.spawn(server::serve_reset(l, stop.clone()));
    }
    let faulty = fleet
        .clusters
        .iter()
        .filter(|c| !c.faults().is_empty())
        .count();
    println!("fleetsim listening on http://{control_addr}");
    tracing::info!(
        clusters = fleet.clusters.len(),
        faulty,
        tls = !args.plain_http,
        "fleet serving; GET /control/clusters lists the clusters"
    );

    wait_for_signal().await;
    tracing::info!("stopping");
    stop.cancel();
    if tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tasks.abort_all();
    }
    Ok(())
}

async fn register(
    url: &str,
    cosmos: &clustermon::CosmosArgs,
    clusters: &[Arc<Cluster>],
    creds: DocCreds,
    key: Option<&SecretsKey>,
    labels: &BTreeMap<String, String>,
) -> Result<(), String> {
    let store = clustermon::open_store(url, cosmos).await?;
    if key.is_none() && creds.iter().any(|c| !c.is_empty()) {
        tracing::warn!(
            "registering credentials in plaintext: give --secrets-key-file to encrypt them"
        );
    }
    for (c, creds) in clusters.iter().zip(creds) {
        let (credentials, encrypted_credentials) = match key {
            Some(k) if !creds.is_empty() => (Credentials::default(), Some(k.seal(&c.id, &creds)?)),
            _ => (creds, None),
        };
        let doc = ClusterDoc {
            id: c.id.clone(),
            bucket: (clustermon_core::schedule::fnv1a(&c.id) % BUCKETS as u64) as u8,
            provisioning_state: ProvisioningState::Succeeded,
            api_server: c.url.clone(),
            credentials,
            encrypted_credentials,
            labels: labels.clone(),
        };
        store
            .put_cluster(&doc)
            .await
            .map_err(|e| format!("registering {}: {e}", c.id))?;
    }
    tracing::info!(store = url, clusters = clusters.len(), "registered");
    Ok(())
}

/// `ID=NODES:PODS` from `--size`.
fn parse_size(s: &str) -> Result<(String, usize, usize), String> {
    let err = || format!("--size {s:?}: expected ID=NODES:PODS");
    let (id, size) = s.split_once('=').ok_or_else(err)?;
    let (n, p) = size.split_once(':').ok_or_else(err)?;
    Ok((
        id.to_string(),
        n.parse().map_err(|_| err())?,
        p.parse().map_err(|_| err())?,
    ))
}

fn write_secrets(
    path: &std::path::Path,
    clusters: &[Arc<Cluster>],
    creds: &DocCreds,
) -> Result<(), String> {
    let mut out = String::new();
    for (c, cr) in clusters.iter().zip(creds) {
        let line = serde_json::json!({
            "id": c.id,
            "token": cr.token.as_ref().map(|t| t.expose().to_string()),
            "clientKey": cr.client_key.as_ref().map(|k| k.expose().to_string()),
            "caBundle": cr.ca_bundle,
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| format!("--credentials-out {}: {e}", path.display()))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; waiting for ctrl-c");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
