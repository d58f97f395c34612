//! Engine configuration: validated timings. Parsed by the command line into
//! this plain struct, so the engine never sees flags or environment.

use std::time::Duration;

/// The default timings and sizes: the one definition, read by
/// [`EngineConfig::new`] and by the command line's flag defaults.
pub mod defaults {
    use std::time::Duration;

    pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
    pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);
    pub const LEASE_TTL: Duration = Duration::from_secs(10);
    pub const FEED_INTERVAL: Duration = Duration::from_secs(2);
    pub const INTERVAL: Duration = Duration::from_secs(60);
    /// A waiting check costs ~6.5 KB of heap and one socket (docs/performance.md):
    /// room for a quarter of a 16,667-cluster share hanging for a 30 s
    /// timeout at a 1-minute interval (~2,100) within the hanging share.
    pub const MAX_CONCURRENT_CHECKS: usize = 5000;
    pub const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
    /// Checks due within one tick start together at its end: one wake-up of
    /// the scheduler for several checks (docs/performance.md, *The dispatch
    /// tick*).
    pub const DISPATCH_TICK: Duration = Duration::from_millis(10);
    /// TCP connect and TLS handshake of a check, within its timeout.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Percent of the pool that hanging clusters may hold.
    pub const HANGING_SHARE_PCT: u8 = 50;
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
    pub const FEED_PAGE_SIZE: usize = 1000;
    pub const RELIST_INTERVAL: Duration = Duration::from_secs(600);
    pub const MAX_CLOCK_OFFSET: Duration = Duration::from_secs(1);
    /// Consecutive failing checks before an alert fires (`--alert-after`).
    pub const ALERT_AFTER: u32 = 3;
    /// How often the secret files are read again (`crate::reload`).
    pub const SECRETS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
}

/// Why an [`EngineConfig`] cannot work; the message names the flag.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--id: {0}")]
    Id(String),
    #[error("{flag} must be at least 10ms")]
    TooShort { flag: &'static str },
    #[error("{flag} must be at least twice --heartbeat-interval")]
    TtlTooShort { flag: &'static str },
    #[error("--max-concurrent-checks must be at least 1")]
    NoWorkers,
    #[error("--relist-interval must be 0 (off) or at least --feed-interval")]
    RelistTooShort,
    #[error("feed page size must be at least 1")]
    EmptyFeedPage,
    #[error("--dispatch-tick must be at most 1s")]
    DispatchTickTooLong,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub id: String,
    pub hostname: String,
    pub version: String,
    pub heartbeat_interval: Duration,
    pub heartbeat_ttl: Duration,
    pub lease_ttl: Duration,
    pub feed_interval: Duration,
    pub interval: Duration,
    pub max_concurrent_checks: usize,
    pub check_timeout: Duration,
    /// Checks due within one tick of this length start together at its end
    /// (`schedule::due::start_at`); zero: each at its due millisecond. At
    /// most a tenth of the interval is used ([`EngineConfig::tick`]).
    pub dispatch_tick: Duration,
    /// Percent of the pool that checks of hanging clusters (the last check
    /// used its whole timeout) may hold: `schedule::hanging_permits`.
    pub hanging_share_pct: u8,
    /// Called after the documents of buckets this monitor no longer checks
    /// were dropped: gives the allocator's free pages back (the binary
    /// knows its allocator; `None` does nothing).
    pub release_memory: Option<fn()>,
    pub shutdown_grace: Duration,
    /// Changes read per change-feed request.
    pub feed_page_size: usize,
    /// How often a monitor re-lists its buckets to find deletes, for stores
    /// whose change feed does not carry them; zero turns the re-list off.
    pub relist_interval: Duration,
    /// Base URL of this monitor's admin API, advertised in its heartbeat.
    pub admin_url: String,
    /// Beyond this distance from the fleet's clock a monitor takes no lease
    /// and no bucket (see `liveness`).
    pub max_clock_offset: Duration,
    /// Alerts to Alertmanager (`crate::alerts`); `None`: off.
    pub alerts: Option<crate::alerts::AlertConfig>,
    /// The admin token of the fleet (the same `--admin-token-file` on every
    /// monitor), sent with pushed assignments to peers' `POST /admin/sync`
    /// (its first token; replaced when the file changes).
    pub admin_token: Option<crate::reload::Live<crate::admin::Token>>,
    /// `--admin-ca-file`: the only roots peers' admin APIs are trusted with
    /// when they serve HTTPS (probes, pushed assignments); empty: the
    /// system's.
    pub admin_peer_ca: Vec<reqwest::Certificate>,
    /// `--handoff-notice`: how long a moving bucket stays with its previous
    /// owner; `None`: [`EngineConfig::handoff`]'s two heartbeat intervals.
    pub handoff_notice: Option<Duration>,
}

impl EngineConfig {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            hostname: String::new(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            heartbeat_interval: defaults::HEARTBEAT_INTERVAL,
            heartbeat_ttl: defaults::HEARTBEAT_TTL,
            lease_ttl: defaults::LEASE_TTL,
            feed_interval: defaults::FEED_INTERVAL,
            interval: defaults::INTERVAL,
            max_concurrent_checks: defaults::MAX_CONCURRENT_CHECKS,
            check_timeout: defaults::CHECK_TIMEOUT,
            dispatch_tick: defaults::DISPATCH_TICK,
            hanging_share_pct: defaults::HANGING_SHARE_PCT,
            release_memory: None,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            feed_page_size: defaults::FEED_PAGE_SIZE,
            relist_interval: defaults::RELIST_INTERVAL,
            admin_url: String::new(),
            max_clock_offset: defaults::MAX_CLOCK_OFFSET,
            alerts: None,
            admin_token: None,
            admin_peer_ca: Vec::new(),
            handoff_notice: None,
        }
    }

    /// Rejects timings that cannot work together, with the reason.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::model::validate_id(&self.id).map_err(ConfigError::Id)?;
        let nonzero = [
            ("--heartbeat-interval", self.heartbeat_interval),
            ("--heartbeat-ttl", self.heartbeat_ttl),
            ("--lease-ttl", self.lease_ttl),
            ("--feed-interval", self.feed_interval),
            ("--interval", self.interval),
            ("--check-timeout", self.check_timeout),
            ("--max-clock-offset", self.max_clock_offset),
        ];
        for (name, d) in nonzero {
            if d < Duration::from_millis(10) {
                return Err(ConfigError::TooShort { flag: name });
            }
        }
        if self.heartbeat_ttl < self.heartbeat_interval * 2 {
            return Err(ConfigError::TtlTooShort {
                flag: "--heartbeat-ttl",
            });
        }
        if self.lease_ttl < self.heartbeat_interval * 2 {
            return Err(ConfigError::TtlTooShort {
                flag: "--lease-ttl",
            });
        }
        if self.max_concurrent_checks == 0 {
            return Err(ConfigError::NoWorkers);
        }
        if !self.relist_interval.is_zero() && self.relist_interval < self.feed_interval {
            return Err(ConfigError::RelistTooShort);
        }
        if self.feed_page_size == 0 {
            return Err(ConfigError::EmptyFeedPage);
        }
        if self.dispatch_tick > Duration::from_secs(1) {
            return Err(ConfigError::DispatchTickTooLong);
        }
        if self
            .handoff_notice
            .is_some_and(|d| d < Duration::from_millis(10))
        {
            return Err(ConfigError::TooShort {
                flag: "--handoff-notice",
            });
        }
        Ok(())
    }

    /// A monitor whose membership loop has shown no activity (no pass
    /// started or finished) for this long was stalled (a paused process, a
    /// frozen VM): its scheduler refreshes the assignment before it starts
    /// another check. Peers take a monitor's buckets only after its
    /// heartbeat has been silent for the TTL as they observe it, so up to
    /// TTL − one heartbeat interval (8 s by default) nothing can have moved.
    /// A loop that keeps failing against a store that is down marks every
    /// pass it starts and ends (each store call is bounded by one heartbeat
    /// interval), so a slow or dead store never triggers it; the chaos suite
    /// once caught a pass of about 5 s under a locked store and a loaded CI
    /// machine against the earlier bound of half a TTL.
    pub fn stalled_after(&self) -> Duration {
        self.heartbeat_ttl.saturating_sub(self.heartbeat_interval)
    }

    /// How long a moving bucket stays with its previous owner: the new table
    /// is written at the end of the master's pass and every monitor reads it
    /// in its next pass, which starts within one heartbeat interval and
    /// whose reads are bounded by one more: two intervals. The lease holder
    /// also pushes the change (`POST /admin/sync`), which makes the monitors
    /// read it within milliseconds; `--handoff-notice` can shorten the
    /// notice to that, at the cost of a missed or doubled check per lost push
    /// (`make bench`'s `handoff_notice` measures both).
    pub fn handoff(&self) -> Duration {
        self.handoff_notice.unwrap_or(self.heartbeat_interval * 2)
    }

    /// The dispatch tick in use: `--dispatch-tick`, at most a tenth of the
    /// interval, so a short interval (tests, demos) keeps its spread.
    pub fn tick(&self) -> Duration {
        self.dispatch_tick.min(self.interval / 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_timings_are_named() {
        assert!(EngineConfig::new("m1").validate().is_ok());
        let mut c = EngineConfig::new("m1");
        c.heartbeat_ttl = Duration::from_secs(3);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--heartbeat-ttl"));
        let mut c = EngineConfig::new("m,1");
        c.id = "m,1".into();
        assert!(c.validate().unwrap_err().to_string().contains("--id"));
        let mut c = EngineConfig::new("m1");
        c.max_concurrent_checks = 0;
        assert!(c.validate().is_err());
        let mut c = EngineConfig::new("m1");
        assert_eq!(c.handoff(), c.heartbeat_interval * 2, "the default notice");
        c.handoff_notice = Some(Duration::from_millis(300));
        assert_eq!(c.handoff(), Duration::from_millis(300));
        c.handoff_notice = Some(Duration::from_millis(1));
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--handoff-notice"));
        let mut c = EngineConfig::new("m1");
        assert_eq!(c.tick(), Duration::from_millis(10), "the default tick");
        c.interval = Duration::from_millis(50);
        assert_eq!(
            c.tick(),
            Duration::from_millis(5),
            "a tenth of a short interval"
        );
        c.dispatch_tick = Duration::ZERO;
        assert!(c.validate().is_ok());
        assert_eq!(c.tick(), Duration::ZERO, "off");
        c.dispatch_tick = Duration::from_millis(1001);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--dispatch-tick"));
    }
}
