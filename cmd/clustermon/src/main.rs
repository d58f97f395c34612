use std::process::ExitCode;

use clap::Parser;
use clustermon::cli::{Cli, ClusterCommand, Command, LogFormat, StoreCommand};
use clustermon::commands::{self, CmdError};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

/// Each bucket's cached documents are allocated in a zone of their own, so
/// a monitor that gives buckets away gives their memory back
/// (`clustermon_core::zone`); everything else goes to glibc's malloc.
#[global_allocator]
static ALLOC: clustermon_core::zone::Global = clustermon_core::zone::Global;

/// clap's error as one line: its first paragraph, lines joined (a missing
/// argument's name is on the line after "were not provided:"), without the
/// usage and the hint that follow.
fn one_line(text: &str) -> String {
    let first: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let line = first.join(" ");
    let line = line.trim_start_matches("error: ");
    if line.is_empty() {
        "invalid arguments".to_string()
    } else {
        line.to_string()
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line on stderr, exit code 2.
            eprintln!("clustermon: {}", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    init_logging(&cli);
    limit_malloc_arenas();
    let mut builder = if cli.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(usize::from(cli.threads));
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clustermon: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (`| head`) is the end of the output: exit 0.
        Err(CmdError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clustermon: {}", e.message());
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// glibc gives each thread that allocates under contention an arena of its
/// own (up to 8 per core), and memory freed in one is not reused by
/// another: a monitor whose share shrinks keeps the pages of the documents
/// it dropped. Two arenas are plenty for a runtime of one thread per core
/// (measured: RSS, not throughput, is what grows with more). An environment
/// `MALLOC_ARENA_MAX` wins.
///
/// Blocks of 64 KiB and more (the cluster map's and the timetable's tables,
/// store pages) are mapped on their own and given back when freed: glibc's
/// default threshold rises after the first such block is freed, up to
/// 32 MiB, after which those tables land in the heap among small entries
/// and a monitor whose share shrinks keeps their pages. An environment
/// `MALLOC_MMAP_THRESHOLD_` wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets an allocator parameter; called
            // before any thread but this one exists.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 10) };
        }
    }
}

fn init_logging(cli: &Cli) {
    // The Cosmos SDK logs every retried request; clustermon counts and logs
    // store failures itself, so the SDK speaks only of errors unless asked.
    let mut level = cli.log_level.clone();
    if !level.contains("azure") {
        level.push_str(",azure_data_cosmos_driver=error,azure_data_cosmos=error,azure_core=error");
    }
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

async fn dispatch(cmd: Command) -> Result<(), CmdError> {
    match cmd {
        Command::Run(mut args) => {
            fit_fd_limit(&mut args);
            let (mut signals, listener) = signals();
            // The first signal starts the graceful stop inside `run`; the
            // listener keeps running, so a second one exits at once.
            let first = async {
                if signals.recv().await.is_none() {
                    std::future::pending::<()>().await;
                }
            };
            let r = commands::run(*args, first).await;
            listener.abort();
            r
        }
        Command::Status(a) => commands::status(a).await,
        Command::Buckets(a) => commands::buckets(a).await,
        Command::Cluster(ClusterCommand::Put(a)) => commands::cluster_put(*a).await,
        Command::Cluster(ClusterCommand::List(a)) => commands::cluster_list(a).await,
        Command::Cluster(ClusterCommand::Delete(a)) => commands::cluster_delete(a).await,
        Command::Store(StoreCommand::Init(a)) => commands::store_init(a).await,
        Command::Explain(a) => commands::explain(a).await,
        Command::Drain(a) => commands::drain(a).await,
        Command::Check(a) => commands::check(a).await,
    }
}

/// Raises the soft limit on open files to the hard limit, then lowers
/// `--max-concurrent-checks` if the pool's sockets would not fit in it.
fn fit_fd_limit(args: &mut clustermon::cli::RunArgs) {
    let soft = match raise_nofile() {
        Ok((before, after)) => {
            tracing::info!(before, after, "open files limit (RLIMIT_NOFILE, soft)");
            after
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open files limit; not checking the pool size against it");
            return;
        }
    };
    let (max, per) = (args.max_concurrent_checks, args.collector_concurrency);
    if let Some(pool) = clustermon::cli::pool_for_fd_limit(soft, max, per) {
        tracing::warn!(
            max_concurrent_checks = max,
            collector_concurrency = per,
            fd_reserve = clustermon::cli::FD_RESERVE,
            open_files_limit = soft,
            pool,
            "{max} checks x {per} sockets + {} reserved do not fit in the open files limit of {soft}: \
             running at most {pool} checks at once; raise the limit (ulimit -n, systemd LimitNOFILE=, \
             the container's nofile ulimit) to at least {} to keep {max}",
            clustermon::cli::FD_RESERVE,
            (max as u64).saturating_mul(u64::from(per)) + clustermon::cli::FD_RESERVE,
        );
        args.max_concurrent_checks = pool;
    }
}

/// RLIMIT_NOFILE's soft limit before and after raising it to the hard limit.
fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid, exclusive pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before: u64 = lim.rlim_cur;
    if lim.rlim_cur >= lim.rlim_max {
        return Ok((before, before));
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit only reads the `rlimit` it is given; raising the soft
    // limit up to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((before, lim.rlim_cur))
}

/// SIGTERM and SIGINT as a stream. After the first one is taken, a second
/// one ends the process at once (exit 130) instead of waiting for the grace.
fn signals() -> (mpsc::Receiver<&'static str>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1);
    let listen = async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return;
        };
        let mut seen = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            seen += 1;
            if seen == 1 {
                tracing::info!(
                    signal = name,
                    "stopping gracefully (send again to exit at once)"
                );
                let _ = tx.send(name).await;
            } else {
                tracing::warn!(signal = name, "second signal: exiting now");
                std::process::exit(130);
            }
        }
    };
    (rx, tokio::spawn(listen))
}
