//! The login throttle: how many passwords of one username may be checked
//! before it is locked, and for how long.
//!
//! An attempt is counted before its password is checked (and forgotten if
//! the password was right), so however many attempts arrive at once, on
//! however many replicas, at most [`MAX_LOGIN_FAILURES`] passwords are
//! checked per username per lock window: the count is reserved in the
//! database, under the row's lock, before the hash is computed.

use chrono::{DateTime, TimeDelta, Utc};

/// Consecutive failed logins of one username that lock it.
pub const MAX_LOGIN_FAILURES: i32 = 10;
/// How long a locked username stays locked.
pub const LOGIN_LOCK: TimeDelta = TimeDelta::seconds(60);
/// Failures this old, of a username not locked, are forgotten.
pub const FORGET_FAILURES_AFTER: TimeDelta = TimeDelta::hours(1);

/// A username's failed (or still unchecked) logins, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailures {
    /// Attempts counted since the last success or the last lock ran out.
    pub failures: i32,
    pub last_failure_at: DateTime<Utc>,
    /// Set by the attempt that reached [`MAX_LOGIN_FAILURES`].
    pub locked_until: Option<DateTime<Utc>>,
}

/// What an attempt at `now` may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAttempt {
    /// The username is locked until then: no password is checked.
    Locked(DateTime<Utc>),
    /// The password may be checked; store this count first.
    Check(LoginFailures),
}

/// Reserves an attempt on `stored` at `now`: refused while a lock holds;
/// otherwise counted, and the attempt that reaches [`MAX_LOGIN_FAILURES`]
/// sets the lock (its own password is still checked, and a right one
/// forgets everything).
pub fn reserve_attempt(stored: Option<LoginFailures>, now: DateTime<Utc>) -> LoginAttempt {
    let counted = match stored {
        Some(LoginFailures {
            locked_until: Some(until),
            ..
        }) if until > now => return LoginAttempt::Locked(until),
        // A lock that ran out starts a new count; so do old failures.
        Some(LoginFailures {
            locked_until: Some(_),
            ..
        })
        | None => 0,
        Some(stored) if stored.last_failure_at < now - FORGET_FAILURES_AFTER => 0,
        Some(stored) => stored.failures,
    };
    let failures = counted.saturating_add(1);
    LoginAttempt::Check(LoginFailures {
        failures,
        last_failure_at: now,
        locked_until: (failures >= MAX_LOGIN_FAILURES).then(|| now + LOGIN_LOCK),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    /// Attempts one after the other, none of them right.
    fn attempts(n: usize, from: Option<LoginFailures>, now: DateTime<Utc>) -> Vec<LoginAttempt> {
        let mut stored = from;
        (0..n)
            .map(|_| {
                let attempt = reserve_attempt(stored, now);
                if let LoginAttempt::Check(next) = attempt {
                    stored = Some(next);
                }
                attempt
            })
            .collect()
    }

    #[test]
    fn at_most_ten_passwords_are_checked_per_lock_window() {
        let all = attempts(300, None, at(0));
        let checked = all
            .iter()
            .filter(|a| matches!(a, LoginAttempt::Check(_)))
            .count();
        assert_eq!(checked, 10);
        assert_eq!(all[10], LoginAttempt::Locked(at(0) + LOGIN_LOCK));
        assert!(matches!(
            all[9],
            LoginAttempt::Check(LoginFailures {
                failures: 10,
                locked_until: Some(_),
                ..
            })
        ));
    }

    #[test]
    fn a_lock_that_ran_out_and_old_failures_start_a_new_count() {
        let locked = LoginFailures {
            failures: 10,
            last_failure_at: at(0),
            locked_until: Some(at(60)),
        };
        assert_eq!(
            reserve_attempt(Some(locked), at(59)),
            LoginAttempt::Locked(at(60))
        );
        let LoginAttempt::Check(after) = reserve_attempt(Some(locked), at(60)) else {
            panic!("the lock ran out");
        };
        assert_eq!((after.failures, after.locked_until), (1, None));
        let old = LoginFailures {
            failures: 9,
            last_failure_at: at(0),
            locked_until: None,
        };
        let LoginAttempt::Check(fresh) = reserve_attempt(Some(old), at(3601)) else {
            panic!("not locked");
        };
        assert_eq!(fresh.failures, 1);
        let LoginAttempt::Check(tenth) = reserve_attempt(Some(old), at(3599)) else {
            panic!("not locked");
        };
        assert_eq!(tenth.locked_until, Some(at(3599) + LOGIN_LOCK));
    }
}
