//! Billing periods: calendar months in the billing time zone. A period runs
//! from local midnight of its 1st to local midnight of the next month's 1st,
//! daylight-saving changes included.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

use crate::error::{AppError, AppResult};

/// A calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BillingPeriod {
    year: i32,
    month: u32,
}

impl BillingPeriod {
    /// The month `month` (1..=12) of `year` (1970..=9998); `field` names the
    /// proto field for errors.
    pub fn new(field: &str, year: i32, month: i32) -> AppResult<Self> {
        if !(1..=12).contains(&month) {
            return Err(AppError::invalid(
                format!("{field}.month"),
                format!("must be between 1 and 12, got {month}"),
            ));
        }
        if !(1970..=9998).contains(&year) {
            return Err(AppError::invalid(
                format!("{field}.year"),
                format!("must be between 1970 and 9998, got {year}"),
            ));
        }
        Ok(BillingPeriod {
            year,
            month: month.unsigned_abs(),
        })
    }

    /// The period containing `instant` in `tz`.
    pub fn containing(instant: DateTime<Utc>, tz: Tz) -> Self {
        let local = instant.with_timezone(&tz);
        BillingPeriod {
            year: local.year(),
            month: local.month(),
        }
    }

    /// The year.
    pub fn year(self) -> i32 {
        self.year
    }

    /// The month, 1..=12.
    pub fn month(self) -> u32 {
        self.month
    }

    /// The month before.
    pub fn previous(self) -> Self {
        match self.month {
            1 => BillingPeriod {
                year: self.year - 1,
                month: 12,
            },
            m => BillingPeriod {
                year: self.year,
                month: m - 1,
            },
        }
    }

    /// The month after.
    pub fn next(self) -> Self {
        match self.month {
            12 => BillingPeriod {
                year: self.year + 1,
                month: 1,
            },
            m => BillingPeriod {
                year: self.year,
                month: m + 1,
            },
        }
    }

    /// The period's first instant: local midnight of the 1st in `tz` (or the
    /// first local time after it, where a daylight-saving gap skips midnight).
    pub fn start(self, tz: Tz) -> DateTime<Utc> {
        let midnight = NaiveDate::from_ymd_opt(self.year, self.month, 1)
            .and_then(|date| date.and_hms_opt(0, 0, 0))
            .unwrap_or_default();
        (0..=24 * 4)
            .find_map(|quarter_hours| {
                tz.from_local_datetime(&(midnight + TimeDelta::minutes(15 * quarter_hours)))
                    .earliest()
            })
            .map(|local| local.with_timezone(&Utc))
            .unwrap_or_else(|| midnight.and_utc())
    }

    /// The instant the period ends (exclusive): the next period's start.
    pub fn end(self, tz: Tz) -> DateTime<Utc> {
        self.next().start(tz)
    }

    /// The period of `month` (1..=12) in the latest year in which it has
    /// started by `now`.
    pub fn latest_started(field: &str, month: i32, now: DateTime<Utc>, tz: Tz) -> AppResult<Self> {
        let current = Self::containing(now, tz);
        let candidate = Self::new(field, current.year, month)?;
        Ok(if candidate > current {
            BillingPeriod {
                year: current.year - 1,
                month: candidate.month,
            }
        } else {
            candidate
        })
    }
}

impl BillingPeriod {
    /// The month as one sortable number, `year * 100 + month` (e.g.
    /// `202611`): how storage keeps a call's billing month and a customer's
    /// last invoiced month.
    pub fn key(self) -> i32 {
        self.year * 100 + self.month.cast_signed()
    }

    /// The month of a stored [`BillingPeriod::key`].
    pub fn from_key(key: i32) -> AppResult<Self> {
        BillingPeriod::new("period", key / 100, key % 100)
            .map_err(|_| AppError::internal(format!("stored billing month {key} is not a month")))
    }

    /// The instant the month closes for usage: the end of the month plus
    /// `grace`. Until then calls that started in it belong to it, and its
    /// invoice cannot be issued.
    pub fn closes_at(self, tz: Tz, grace: TimeDelta) -> DateTime<Utc> {
        self.end(tz) + grace
    }
}

impl fmt::Display for BillingPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn period(year: i32, month: i32) -> BillingPeriod {
        BillingPeriod::new("period", year, month).unwrap()
    }

    #[test]
    fn utc_months_run_from_midnight_to_midnight() {
        let feb = period(2028, 2);
        assert_eq!(feb.start(Tz::UTC), at("2028-02-01T00:00:00Z"));
        assert_eq!(feb.end(Tz::UTC), at("2028-03-01T00:00:00Z"));
        assert_eq!(period(2026, 12).end(Tz::UTC), at("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn months_across_a_daylight_saving_change_follow_local_midnight() {
        let ny = chrono_tz::America::New_York;
        // March 2026: starts in EST (UTC-5), ends in EDT (UTC-4).
        let march = period(2026, 3);
        assert_eq!(march.start(ny), at("2026-03-01T05:00:00Z"));
        assert_eq!(march.end(ny), at("2026-04-01T04:00:00Z"));
        assert_eq!(
            BillingPeriod::containing(at("2026-04-01T03:59:59Z"), ny),
            march
        );
        assert_eq!(
            BillingPeriod::containing(at("2026-04-01T04:00:00Z"), ny),
            period(2026, 4)
        );
        assert_eq!(
            BillingPeriod::containing(at("2026-03-01T04:59:59Z"), ny),
            period(2026, 2)
        );
        // October 2026 in Berlin ends after the switch back to CET (UTC+1).
        let berlin = chrono_tz::Europe::Berlin;
        assert_eq!(period(2026, 10).start(berlin), at("2026-09-30T22:00:00Z"));
        assert_eq!(period(2026, 10).end(berlin), at("2026-10-31T23:00:00Z"));
    }

    #[test]
    fn a_midnight_skipped_by_daylight_saving_starts_at_the_first_local_time() {
        // Chile moved clocks from 00:00 to 01:00 on 2022-09-11: not a 1st, but
        // Cuba skipped midnight on 2012-04-01 (00:00 -> 01:00).
        let havana = chrono_tz::America::Havana;
        let april = period(2012, 4);
        assert_eq!(april.start(havana), at("2012-04-01T05:00:00Z"));
        assert_eq!(period(2012, 3).end(havana), april.start(havana));
    }

    #[test]
    fn months_are_validated_naming_the_field() {
        for month in [0, 13, -1] {
            let err = BillingPeriod::new("period", 2026, month).unwrap_err();
            assert!(err.to_string().starts_with("period.month"), "{err}");
        }
        assert!(
            BillingPeriod::new("from_period", 0, 5)
                .unwrap_err()
                .to_string()
                .starts_with("from_period.year")
        );
    }

    #[test]
    fn the_latest_started_month_is_this_year_or_last() {
        let now = at("2026-11-24T12:00:00Z");
        assert_eq!(
            BillingPeriod::latest_started("period", 11, now, Tz::UTC).unwrap(),
            period(2026, 11)
        );
        assert_eq!(
            BillingPeriod::latest_started("period", 3, now, Tz::UTC).unwrap(),
            period(2026, 3)
        );
        assert_eq!(
            BillingPeriod::latest_started("period", 12, now, Tz::UTC).unwrap(),
            period(2025, 12)
        );
    }

    #[test]
    fn keys_sort_as_months_and_read_back() {
        let months = [period(2025, 12), period(2026, 1), period(2026, 11)];
        let keys: Vec<i32> = months.iter().map(|m| m.key()).collect();
        assert_eq!(keys, [202512, 202601, 202611]);
        for month in months {
            assert_eq!(BillingPeriod::from_key(month.key()).unwrap(), month);
        }
        assert!(BillingPeriod::from_key(202613).is_err());
    }

    #[test]
    fn a_month_closes_its_grace_after_its_end() {
        let nov = period(2026, 11);
        assert_eq!(
            nov.closes_at(Tz::UTC, TimeDelta::hours(4)),
            at("2026-12-01T04:00:00Z")
        );
        assert_eq!(nov.closes_at(Tz::UTC, TimeDelta::zero()), nov.end(Tz::UTC));
    }

    #[test]
    fn neighbours_wrap_around_the_year() {
        assert_eq!(period(2026, 1).previous(), period(2025, 12));
        assert_eq!(period(2026, 12).next(), period(2027, 1));
        assert_eq!(period(2026, 7).to_string(), "2026-07");
    }
}
