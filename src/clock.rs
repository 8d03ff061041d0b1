//! The one clock the service reads time from. It is the system clock, or one
//! that starts at a chosen instant and then runs on in real time (for
//! rehearsing a month end and for tests).

use chrono::{DateTime, TimeDelta, Utc};
use std::time::Instant;

/// A source of the current time. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Option<(DateTime<Utc>, Instant)>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock { origin: None }
    }

    /// A clock that reads `start` now and advances in real time from there.
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        Clock {
            origin: Some((start, Instant::now())),
        }
    }

    /// The current instant, truncated to whole microseconds (the precision
    /// the database stores).
    pub fn now(&self) -> DateTime<Utc> {
        let now = match self.origin {
            None => Utc::now(),
            Some((start, at)) => {
                let elapsed = TimeDelta::from_std(at.elapsed()).unwrap_or(TimeDelta::MAX);
                start.checked_add_signed(elapsed).unwrap_or(start)
            }
        };
        DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_clock_begins_at_its_start_and_moves_forward() {
        let start = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let clock = Clock::starting_at(start);
        let first = clock.now();
        assert!(first >= start && first - start < TimeDelta::seconds(5));
        assert!(clock.now() >= first);
    }
}
