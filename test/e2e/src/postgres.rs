//! A private PostgreSQL server for the e2e tests, run by
//! `hack/postgres/start.sh` / `stop.sh` (initdb + pg_ctl in the test's temp
//! dir, on a free port). Stopped on drop, even when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::clustermon;

pub struct PostgresServer {
    pub dir: PathBuf,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`, schema initialised.
    pub store: String,
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../hack/postgres")
        .join(name)
}

impl PostgresServer {
    /// Starts a server in `dir/postgres` and runs `clustermon store init`.
    pub fn start(dir: &Path) -> Self {
        let mut s = PostgresServer {
            dir: dir.join("postgres"),
            store: String::new(),
        };
        let url = s.up();
        let (code, out, err) = clustermon(&["store", "init", "--store", &url]);
        assert_eq!(code, 0, "clustermon store init: {out}{err}");
        s.store = url;
        s
    }

    fn up(&self) -> String {
        let out = Command::new("bash")
            .arg(script("start.sh"))
            .arg(&self.dir)
            .output()
            .expect("run hack/postgres/start.sh");
        assert!(
            out.status.success(),
            "postgres start.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts the stopped server again on the same port; when it answers.
    pub fn resume(&self) -> Instant {
        self.up();
        Instant::now()
    }

    /// Fast shutdown (sessions cut, as a crash or fail-over of the primary);
    /// when it was down.
    pub fn stop(&self) -> Instant {
        let st = Command::new("bash")
            .arg(script("stop.sh"))
            .arg(&self.dir)
            .status()
            .expect("run hack/postgres/stop.sh");
        assert!(st.success(), "postgres stop.sh failed");
        Instant::now()
    }

    /// Runs SQL through psql (as the superuser, over the server's socket dir).
    pub fn psql(&self, sql: &str) -> String {
        let port = std::fs::read_to_string(self.dir.join("port")).unwrap_or_default();
        let out = Command::new("psql")
            .args(["-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", port.trim(), "-d", "postgres", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// How many sessions LISTEN (the monitors' push connections).
    pub fn listeners(&self) -> usize {
        self.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'clustermon-listen' AND query LIKE 'LISTEN%'")
            .parse()
            .unwrap_or(0)
    }
}

impl PostgresServer {
    /// Transactions committed in the database so far (every store call is one).
    pub fn commits(&self) -> u64 {
        self.psql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'")
            .parse()
            .unwrap_or(0)
    }

    /// CPU seconds (user + system) used so far by the server's processes
    /// (the postmaster and its live children), from /proc.
    pub fn cpu_seconds(&self) -> f64 {
        let pm = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap_or_default();
        let Some(pm) = pm.lines().next().map(|l| l.trim().to_string()) else {
            return 0.0;
        };
        let tick = 100.0; // USER_HZ on Linux
        let mut total = 0u64;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // Fields after the command name (which may hold spaces).
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let pid = e.file_name().to_string_lossy().to_string();
            if f.len() > 13 && (pid == pm || f[1] == pm) {
                total += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
            }
        }
        total as f64 / tick
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let t = Instant::now();
        let _ = Command::new("bash")
            .arg(script("stop.sh"))
            .arg(&self.dir)
            .status();
        if t.elapsed() > Duration::from_secs(30) {
            eprintln!("postgres: stop took {:?}", t.elapsed());
        }
    }
}
