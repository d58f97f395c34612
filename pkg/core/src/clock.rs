//! Wall-clock milliseconds derived from `tokio::time::Instant`.
//!
//! Schedules are expressed in Unix milliseconds so that every monitor agrees
//! on a cluster's due times; the clock reads them through tokio's time so
//! that tests can pause and advance it. `std::time::Instant` is not used.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_ms: i64,
    base: Instant,
}

impl Clock {
    /// Anchors tokio's monotonic time to the system clock once.
    // The one read of the system clock; everything else derives from it.
    #[allow(clippy::disallowed_methods)]
    pub fn system() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self::at(ms)
    }

    /// A clock reading `ms` now (tests).
    pub fn at(ms: i64) -> Self {
        Self {
            base_ms: ms,
            base: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.base_ms + self.base.elapsed().as_millis() as i64
    }

    /// [`Self::now_ms`] as a UTC date-time (for documents that carry one).
    pub fn now_utc(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.now_ms()).unwrap_or_default()
    }

    /// The tokio instant at which this clock will read `ms`.
    pub fn instant_at(&self, ms: i64) -> Instant {
        let delta = ms - self.base_ms;
        if delta >= 0 {
            self.base + Duration::from_millis(delta as u64)
        } else {
            self.base
                .checked_sub(Duration::from_millis((-delta) as u64))
                .unwrap_or(self.base)
        }
    }
}

pub fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}
