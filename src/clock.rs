//! The one clock the service reads time from. It is the system clock, or one
//! that starts at a chosen instant and then runs on in real time (for
//! rehearsing a month end and for tests). Tests may also move a clock to
//! another instant; whoever waits on time (the scheduler) is told.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;

/// A source of the current time. Cheap to clone; clones share one clock.
#[derive(Debug, Clone)]
pub struct Clock {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// `None`: system time. `Some((t, at))`: `t` at the monotonic instant `at`.
    origin: Mutex<Option<(DateTime<Utc>, Instant)>>,
    /// Bumped whenever the clock is moved.
    moved: watch::Sender<u64>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::with_origin(None)
    }

    /// A clock that reads `start` now and advances in real time from there.
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        Self::with_origin(Some((start, Instant::now())))
    }

    fn with_origin(origin: Option<(DateTime<Utc>, Instant)>) -> Self {
        Clock {
            shared: Arc::new(Shared {
                origin: Mutex::new(origin),
                moved: watch::Sender::new(0),
            }),
        }
    }

    /// The current instant, truncated to whole microseconds (the precision
    /// the database stores).
    pub fn now(&self) -> DateTime<Utc> {
        let origin = *self
            .shared
            .origin
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = match origin {
            None => Utc::now(),
            Some((start, at)) => {
                let elapsed = TimeDelta::from_std(at.elapsed()).unwrap_or(TimeDelta::MAX);
                start.checked_add_signed(elapsed).unwrap_or(start)
            }
        };
        DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
    }

    /// Moves the clock to `instant`, from where it runs on in real time, and
    /// wakes everyone waiting on [`Clock::moved`].
    pub fn set(&self, instant: DateTime<Utc>) {
        *self
            .shared
            .origin
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((instant, Instant::now()));
        self.shared.moved.send_modify(|n| *n += 1);
    }

    /// A receiver that changes whenever the clock is moved.
    pub fn moved(&self) -> watch::Receiver<u64> {
        self.shared.moved.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn a_started_clock_begins_at_its_start_and_moves_forward() {
        let start = at("2026-12-01T00:00:00Z");
        let clock = Clock::starting_at(start);
        let first = clock.now();
        assert!(first >= start && first - start < TimeDelta::seconds(5));
        assert!(clock.now() >= first);
    }

    #[test]
    fn setting_a_clock_moves_every_clone_and_signals_the_move() {
        let clock = Clock::starting_at(at("2026-01-01T00:00:00Z"));
        let clone = clock.clone();
        let moved = clock.moved();
        clock.set(at("2026-02-01T00:00:00Z"));
        assert!(clone.now() >= at("2026-02-01T00:00:00Z"));
        assert!(moved.has_changed().unwrap());
    }
}
