//! Wall-clock milliseconds derived from `tokio::time::Instant`.
//!
//! Schedules are expressed in Unix milliseconds so that every monitor agrees
//! on a cluster's due times; the clock reads them through tokio's time so
//! that tests can pause and advance it. `std::time::Instant` is not used.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Unix milliseconds on tokio's monotonic time, anchored to the host's
/// clock. Clones share the anchor: [`Clock::resync`] moves every clone's
/// reading at once.
#[derive(Clone, Debug)]
pub struct Clock {
    /// What the clock read at `base`; moved only by [`Clock::resync`].
    base_ms: Arc<AtomicI64>,
    base: Instant,
    host: Host,
}

/// Where [`Clock::resync`] reads the host's time.
#[derive(Clone, Debug)]
enum Host {
    System,
    /// Tests: the host's clock reads the start plus tokio's elapsed time
    /// plus a shift that [`Clock::step_host`] moves.
    Manual {
        start_ms: i64,
        shift_ms: Arc<AtomicI64>,
    },
}

impl Clock {
    /// Anchors tokio's monotonic time to the system clock.
    pub fn system() -> Self {
        Self {
            base_ms: Arc::new(AtomicI64::new(system_ms())),
            base: Instant::now(),
            host: Host::System,
        }
    }

    /// A clock reading `ms` now (tests), on a host whose clock reads the
    /// same until [`Clock::step_host`] steps it.
    pub fn at(ms: i64) -> Self {
        Self {
            base_ms: Arc::new(AtomicI64::new(ms)),
            base: Instant::now(),
            host: Host::Manual {
                start_ms: ms,
                shift_ms: Arc::new(AtomicI64::new(0)),
            },
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.base_ms.load(Ordering::Relaxed) + self.base.elapsed().as_millis() as i64
    }

    /// [`Self::now_ms`] as a UTC date-time (for documents that carry one).
    pub fn now_utc(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.now_ms()).unwrap_or_default()
    }

    /// The tokio instant at which this clock will read `ms`.
    pub fn instant_at(&self, ms: i64) -> Instant {
        let delta = ms - self.base_ms.load(Ordering::Relaxed);
        if delta >= 0 {
            self.base + Duration::from_millis(delta as u64)
        } else {
            self.base
                .checked_sub(Duration::from_millis((-delta) as u64))
                .unwrap_or(self.base)
        }
    }

    /// The host's clock now, as `resync` would read it.
    pub fn host_ms(&self) -> i64 {
        match &self.host {
            Host::System => system_ms(),
            Host::Manual { start_ms, shift_ms } => {
                start_ms + self.base.elapsed().as_millis() as i64 + shift_ms.load(Ordering::Relaxed)
            }
        }
    }

    /// Reads the host's clock again and, if this clock is off from it by
    /// at least `min_step_ms`, steps this clock (every clone) to it and
    /// returns the step. Between two resyncs the clock runs on monotonic
    /// time only, so a host clock stepped (by NTP, or by hand) is not
    /// followed: the engine resyncs only while the fleet finds this
    /// monitor's clock skewed and it checks nothing (docs/monitoring.md,
    /// *Clock skew*).
    pub fn resync(&self, min_step_ms: i64) -> Option<i64> {
        let step = self.host_ms() - self.now_ms();
        (step.abs() >= min_step_ms).then(|| {
            self.base_ms.fetch_add(step, Ordering::Relaxed);
            step
        })
    }

    /// Tests: steps the host's clock of a clock made by [`Clock::at`] by
    /// `by_ms`, as NTP would; the clock follows at its next [`resync`].
    /// No effect on the system's clock.
    ///
    /// [`resync`]: Clock::resync
    pub fn step_host(&self, by_ms: i64) {
        if let Host::Manual { shift_ms, .. } = &self.host {
            shift_ms.fetch_add(by_ms, Ordering::Relaxed);
        }
    }
}

/// The system clock in Unix milliseconds.
// The one read of the system clock; everything else derives from it.
#[allow(clippy::disallowed_methods)]
fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_resync_follows_a_stepped_host_in_every_clone_and_ignores_small_steps() {
        let c = Clock::at(1_000_000);
        let other = c.clone();
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(c.now_ms(), 1_000_500);
        assert_eq!(c.resync(100), None, "host and clock agree");
        c.step_host(-30_000);
        assert_eq!(
            c.now_ms(),
            1_000_500,
            "a stepped host is not followed by itself"
        );
        assert_eq!(c.host_ms(), 970_500);
        assert_eq!(c.resync(100), Some(-30_000));
        assert_eq!(other.now_ms(), 970_500, "clones share the anchor");
        assert_eq!(
            other.instant_at(970_500 + 1_000),
            Instant::now() + Duration::from_secs(1)
        );
        c.step_host(50);
        assert_eq!(
            c.resync(100),
            None,
            "a step under the minimum is left alone"
        );
        assert_eq!(c.now_ms(), 970_500);
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(other.now_ms(), 970_750);
        // The system clock: a resync against itself moves nothing.
        let s = Clock::system();
        assert_eq!(s.resync(1_000), None);
        s.step_host(5_000);
        assert_eq!(
            s.resync(1_000),
            None,
            "step_host never moves the system's clock"
        );
    }
}
