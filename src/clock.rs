//! The node's clock: the one place the wall clock is read. Everything below
//! the node (store, federation, exchange, admin, the TLS gate) asks the
//! [`Clock`] it was given, so tests can run time-driven behaviour (quarantine
//! expiry, backoff, CRL staleness) on tokio's paused clock instead of sleeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The system's wall clock now, in Unix ms: for what commands display and
/// tools outside the node (CLI, benchmark, tests).
pub fn wall_ms() -> i64 {
    Clock::system().now_ms()
}

/// A Unix ms time as RFC 3339 in UTC with exactly three fraction digits
/// (`2026-12-06T03:01:25.500Z`), so times line up in columns and sort as
/// text; `None` out of range.
pub fn rfc3339_millis(ms: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
}

/// [`rfc3339_millis`], or the number itself when it is out of range.
pub fn rfc3339(ms: i64) -> String {
    rfc3339_millis(ms).unwrap_or_else(|| ms.to_string())
}

/// Where "now" comes from.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Source);

#[derive(Debug, Clone, Copy)]
enum Source {
    /// The system's wall clock.
    System,
    /// A fixed wall time at a tokio instant, advancing with tokio's clock
    /// (which a test can pause and advance).
    Anchored {
        wall_ms: i64,
        at: tokio::time::Instant,
    },
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system's wall clock (what a running node uses).
    pub fn system() -> Self {
        Self(Source::System)
    }

    /// A clock that reads `wall_ms` now and then advances with tokio's
    /// clock, so `tokio::time::pause()` / `advance()` drive it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let clock = threatmesh::clock::Clock::anchored(1_000);
    /// tokio::time::advance(std::time::Duration::from_millis(250)).await;
    /// assert_eq!(clock.now_ms(), 1_250);
    /// # }
    /// ```
    pub fn anchored(wall_ms: i64) -> Self {
        Self(Source::Anchored {
            wall_ms,
            at: tokio::time::Instant::now(),
        })
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match self.0 {
            Source::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
            Source::Anchored { wall_ms, at } => {
                let elapsed = tokio::time::Instant::now().saturating_duration_since(at);
                wall_ms.saturating_add(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
            }
        }
    }

    /// Now, as the time type certificate checks take.
    pub fn unix_time(&self) -> rustls_pki_types::UnixTime {
        let ms = u64::try_from(self.now_ms()).unwrap_or(0);
        rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_millis(ms))
    }
}
