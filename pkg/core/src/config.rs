//! Engine configuration: validated timings. Parsed by the command line into
//! this plain struct, so the engine never sees flags or environment.

use std::time::Duration;

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
}

impl EngineConfig {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            hostname: String::new(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_ttl: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(10),
            feed_interval: Duration::from_secs(2),
            interval: Duration::from_secs(60),
            max_concurrent_checks: 2000,
            check_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            feed_page_size: 1000,
            relist_interval: Duration::from_secs(600),
            admin_url: String::new(),
            max_clock_offset: Duration::from_secs(1),
        }
    }

    /// Rejects timings that cannot work together, with the reason.
    pub fn validate(&self) -> Result<(), String> {
        crate::model::validate_id(&self.id).map_err(|e| format!("--id: {e}"))?;
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
                return Err(format!("{name} must be at least 10ms"));
            }
        }
        if self.heartbeat_ttl < self.heartbeat_interval * 2 {
            return Err("--heartbeat-ttl must be at least twice --heartbeat-interval".into());
        }
        if self.lease_ttl < self.heartbeat_interval * 2 {
            return Err("--lease-ttl must be at least twice --heartbeat-interval".into());
        }
        if self.max_concurrent_checks == 0 {
            return Err("--max-concurrent-checks must be at least 1".into());
        }
        if !self.relist_interval.is_zero() && self.relist_interval < self.feed_interval {
            return Err("--relist-interval must be 0 (off) or at least --feed-interval".into());
        }
        if self.feed_page_size == 0 {
            return Err("feed page size must be at least 1".into());
        }
        Ok(())
    }

    /// A monitor whose membership loop has not finished a pass for this long
    /// was stalled (a paused process, a frozen VM): its scheduler refreshes
    /// the assignment before it starts another check. A loop that keeps
    /// failing against a store that is down still finishes its passes
    /// (each store call is bounded by one heartbeat interval and the three
    /// reads of a pass run at once), so an outage never triggers it.
    pub fn stalled_after(&self) -> Duration {
        self.heartbeat_ttl / 2
    }

    /// How long a moving bucket stays with its previous owner: both monitors
    /// read the new table within one heartbeat interval, so two leave slack.
    pub fn handoff(&self) -> Duration {
        self.heartbeat_interval * 2
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
        assert!(c.validate().unwrap_err().contains("--heartbeat-ttl"));
        let mut c = EngineConfig::new("m,1");
        c.id = "m,1".into();
        assert!(c.validate().unwrap_err().contains("--id"));
        let mut c = EngineConfig::new("m1");
        c.max_concurrent_checks = 0;
        assert!(c.validate().is_err());
    }
}
